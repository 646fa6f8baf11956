"""``twistd voipmon-sensor``: command-line options and service assembly."""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from voipmon.config import SensorSettings, load_sensor_config
from voipmon.protocols import tls
from voipmon.sensor.service import SensorService
from voipmon.sources import registry as sources

log = Logger()


class Options(usage.Options):
    synopsis = "--config PATH [--read-pcap FILE] [--exit-when-done]"
    longdesc = (
        "Run a voipmon sensor: capture SIP/RTP from an interface (or replay a capture "
        "file), and send CDRs or raw packets to a voipmon central over TLS."
    )
    optParameters = [
        ["config", "c", "/etc/voipmon/voipmon-sensor.conf",
         "Sensor config file (voipmonitor.conf syntax)."],
        ["read-pcap", "r", None, "Replay this pcap/pcapng file instead of capturing live."],
    ]
    optFlags = [
        ["exit-when-done", None,
         "With --read-pcap: exit 0 once every CDR or packet is acknowledged by a central; "
         "1 or 2 if it cannot deliver; 3 if some CDRs could not be taken (dead letters)."],
    ]

    def postOptions(self) -> None:
        if self["exit-when-done"] and not self["read-pcap"]:
            raise usage.UsageError("--exit-when-done needs --read-pcap")
        pcap = self["read-pcap"]
        if pcap is not None and not os.path.isfile(pcap):
            raise usage.UsageError(f"--read-pcap {pcap}: no such file")
        settings = load_sensor_config(self["config"])
        channel = settings.channel
        if channel.server_certificate_sha256:
            try:
                tls.parse_fingerprint(channel.server_certificate_sha256)
            except ValueError as exc:
                raise settings.error("server_certificate_sha256", str(exc),
                                     "64 hex digits, colons optional")
        if channel.server_ca_file:
            try:
                tls.load_ca(channel.server_ca_file)
            except tls.CertificateError as exc:
                raise settings.error("server_ca_file", str(exc), "a readable PEM CA file")
        self["sensor"] = settings


def makeService(config: Options, reactor: Any = None) -> service.MultiService:
    """Build the sensor's service tree from parsed Options."""
    if reactor is None:
        from twisted.internet import reactor
    settings = config["sensor"]
    for warning in settings.warnings:
        log.warn("config: {warning}", warning=warning)
    if settings.mirroring.mirror_destination and not settings.channel.server_destination:
        try:
            return _legacy_mirror(settings, reactor, config["read-pcap"],
                                  config["exit-when-done"])
        except usage.UsageError as exc:
            raise SystemExit(f"voipmon-sensor: {exc}")
    exits = ExitCode(reactor)
    try:
        return SensorService(settings, reactor, read_pcap=config["read-pcap"],
                             exit_when_done=config["exit-when-done"], on_exit=exits.exit)
    except usage.UsageError as exc:
        # makeService runs outside twistd's option handling: exit with one clear line.
        raise SystemExit(f"voipmon-sensor: {exc}")


class ExitCode:
    """Stops the reactor for --exit-when-done, and makes the process exit with ``status``.

    twistd always exits 0 after a clean reactor stop, so a failure status is applied by an
    ``atexit`` hook once twistd has shut down and removed its pid file.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.status: int | None = None

    def exit(self, status: int, message: str) -> None:
        if self.status is not None:
            return
        self.status = status
        if status:
            sys.stderr.write(f"voipmon-sensor: {message}\n")
            atexit.register(self._final, status)
        self.reactor.callLater(0, self._stop)

    def _stop(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    @staticmethod
    def _final(status: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _legacy_mirror(settings: SensorSettings, reactor: Any, read_pcap: str | None,
                   exit_when_done: bool) -> service.MultiService:
    """The deprecated legacy mirror sender (mirror_destination, no server_destination)."""
    from voipmon.protocols.legacy_mirror_service import LegacyMirrorSender

    if exit_when_done:
        raise usage.UsageError("--exit-when-done is not available with mirror_destination "
                               "(the legacy mirror); use server_destination with "
                               "packetbuffer_sender = yes")
    top = service.MultiService()
    top.setName("voipmon-sensor")
    sender = LegacyMirrorSender.from_config(settings.channel, settings.mirroring, reactor)
    sender.setServiceParent(top)
    source = sources.from_config(settings, sender, reactor, read_pcap=read_pcap)
    source.setServiceParent(top)
    return top
