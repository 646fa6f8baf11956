"""``twistd voipmon-sensor``: command-line options and service assembly."""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from voipmon.config import load_sensor_config

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
         "With --read-pcap: exit 0 once every CDR or packet is acknowledged by a central."],
    ]

    def postOptions(self) -> None:
        if self["exit-when-done"] and not self["read-pcap"]:
            raise usage.UsageError("--exit-when-done needs --read-pcap")
        pcap = self["read-pcap"]
        if pcap is not None and not os.path.isfile(pcap):
            raise usage.UsageError(f"--read-pcap {pcap}: no such file")
        self["sensor"] = load_sensor_config(self["config"])


def makeService(config: Options, reactor: Any = None) -> service.MultiService:
    """Build the sensor's service tree from parsed Options."""
    if reactor is None:
        from twisted.internet import reactor
    settings = config["sensor"]
    for warning in settings.warnings:
        log.warn("config: {warning}", warning=warning)
    top = service.MultiService()
    top.setName("voipmon-sensor")
    return top
