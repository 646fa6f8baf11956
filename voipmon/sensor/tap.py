"""``twistd voipmon-sensor``: command-line options and the sensor's wiring diagram.

``Options`` reads and checks the config; ``makeService`` builds every part from the
settings (the durable queue, the engine or the mirroring buffer, the source, the route to
each central) and hands them to ``SensorService``. A config problem found while building
(a spool the queue cannot use, an interface this host lacks...) is a ``UsageError``,
raised before anything starts; the plugin prints it as one line.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from twisted.application import internet, service
from twisted.internet import endpoints, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from voipmon.analysis.engine import Engine
from voipmon.analysis.settings import engine_for
from voipmon.config import SensorSettings, load_sensor_config
from voipmon.manager.commands import ManagerCommands
from voipmon.manager.service import make_manager_service
from voipmon.metrics.calls import CallOutcomes
from voipmon.metrics.collectors import sensor_registry
from voipmon.metrics.resource import metrics_site
from voipmon.protocols import tls
from voipmon.queue import DurableQueue
from voipmon.sensor import legacy_mirror
from voipmon.sensor.centrals import centrals, tls_route
from voipmon.sensor.metrics import SensorMetrics
from voipmon.sensor.mirror import MirrorUplink
from voipmon.sensor.service import SensorService
from voipmon.sensor.uplink import CdrUplink
from voipmon.sources import registry as sources
from voipmon.spool.deadletter import DIRECTORY as DEAD_LETTERS
from voipmon.spool.deadletter import DeadLetters
from voipmon.spool.queues import spool_queue
from voipmon.spool.retention import Retention

log = Logger()

QUEUE = "queue"


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
        if legacy_mirror_only(settings) and self["exit-when-done"]:
            raise usage.UsageError("--exit-when-done is not available with mirror_destination "
                                   "(the legacy mirror); use server_destination with "
                                   "packetbuffer_sender = yes")
        self["sensor"] = settings


def makeService(config: Options, reactor: Any = None) -> service.MultiService:
    """The sensor: source -> (engine -> CDR queue ->) uplink -> channel to its centrals."""
    if reactor is None:
        from twisted.internet import reactor
    settings: SensorSettings = config["sensor"]
    for warning in settings.warnings:
        log.warn("config: {problem}", problem=warning)
    if legacy_mirror_only(settings):
        return legacy_mirror.sender_service(settings, reactor, read_pcap=config["read-pcap"])
    dead_letters = DeadLetters(os.path.join(settings.spool.spooldir, DEAD_LETTERS), reactor)
    metrics = SensorMetrics(settings.channel.id_sensor, reactor, mode_of(settings))
    uplink, engine, queue = uplink_for(settings, reactor, dead_letters, metrics.outcomes)
    source = sources.from_config(settings, uplink if engine is None else engine, reactor,
                                 read_pcap=config["read-pcap"])
    # One command registry for the central's requests over the channel and the
    # management port; its stats and call table are the sensor service's (set below).
    commands = ManagerCommands(settings.spool.spooldir)
    route = centrals(settings, lambda destination: tls_route(settings, reactor, destination),
                     mode=uplink.mode, replay=not source.live, clock=reactor,
                     commands=commands)
    exits = ExitCode(reactor) if config["exit-when-done"] else None
    channel = settings.channel
    sensor = SensorService(uplink, source, route, id_sensor=channel.id_sensor, clock=reactor,
                           dead_letters=dead_letters, engine=engine, queue=queue,
                           failback_interval=channel.failback_probe_interval,
                           verified=bool(channel.server_certificate_sha256
                                         or channel.server_ca_file),
                           on_exit=exits.exit if exits is not None else None,
                           metrics=metrics)
    commands.stats = commands.calls = sensor
    manager = make_manager_service(settings.manager, reactor, commands=commands,
                                   spooldir=settings.spool.spooldir,
                                   password=channel.server_password,
                                   id_sensor=channel.id_sensor)
    spool = settings.spool
    if engine is not None and (spool.maxpoolsize or spool.maxpooldays):
        retention = Retention(spool.spooldir, spool.maxpoolsize, spool.maxpooldays, reactor,
                              blocking=lambda f: threads.deferToThreadPool(
                                  reactor, reactor.getThreadPool(), f))
        retention.setServiceParent(sensor)
    if manager is not None:
        manager.setServiceParent(sensor)
    own = metrics_service(settings, reactor, metrics)
    if own is not None:
        own.setServiceParent(sensor)
    return sensor


def metrics_service(settings: SensorSettings, reactor: Any, metrics: SensorMetrics,
                    port: int | None = None) -> service.Service | None:
    """The sensor's own /metrics on metrics_bind:metrics_port (None when 0; ``port``
    overrides it, 0 there: ephemeral), plain HTTP: figures, no call data."""
    manager = settings.manager
    number = manager.metrics_port if port is None else port
    if port is None and not number:
        return None
    host = manager.metrics_bind
    kind = endpoints.TCP6ServerEndpoint if ":" in host else endpoints.TCP4ServerEndpoint
    site = metrics_site(sensor_registry(metrics.taker, settings.channel.name_sensor))
    own = internet.StreamServerEndpointService(kind(reactor, number, interface=host), site)
    own.setName("metrics")
    log.info("Prometheus metrics on http://{host}:{port}/metrics", host=host, port=number)
    return own


def legacy_mirror_only(settings: SensorSettings) -> bool:
    """A deprecated legacy mirror sender: mirror_destination and no central."""
    return (settings.mirroring.mirror_destination is not None
            and not settings.channel.server_destination)


def mode_of(settings: SensorSettings) -> str:
    return "mirror" if settings.channel.packetbuffer_sender else "local"


def uplink_for(settings: SensorSettings, clock: IReactorTime, dead_letters: DeadLetters,
               outcomes: CallOutcomes | None = None
               ) -> tuple[CdrUplink | MirrorUplink, Engine | None, DurableQueue | None]:
    """What the frames go through: the engine, whose CDRs the durable queue keeps until a
    central has them (local processing), or the mirroring buffer (packet mirroring).
    ``outcomes`` counts each CDR the engine makes (the sensor's metrics)."""
    if settings.channel.packetbuffer_sender:
        return MirrorUplink(clock, settings.mirroring.max_buffer_mem << 20), None, None
    queue = spool_queue(settings, QUEUE)
    uplink = CdrUplink(queue, clock)
    engine = engine_for(settings.analysis, id_sensor=settings.channel.id_sensor,
                        spooldir=settings.spool.spooldir,
                        on_cdr=outcomes.wrap(uplink.add) if outcomes else uplink.add,
                        on_record=uplink.add, dead_letters=dead_letters)
    return uplink, engine, queue


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
