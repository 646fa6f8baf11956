"""``twistd voipmon-central``: command-line options and service assembly."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from voipmon.config import is_loopback, load_central_config

log = Logger()


class Options(usage.Options):
    synopsis = "--config PATH"
    longdesc = (
        "Run a voipmon central: accept sensors over TLS, store their CDRs in MySQL/MariaDB "
        "or embedded SQLite, and serve the HTTP API and web page."
    )
    optParameters = [
        ["config", "c", "/etc/voipmon/voipmon-central.conf",
         "Central config file (voipmonitor.conf syntax)."],
    ]

    def postOptions(self) -> None:
        settings = load_central_config(self["config"])
        if settings.http_port and not is_loopback(settings.http_bind):
            for key in ("http_user", "http_password"):
                if not getattr(settings, key):
                    raise settings.error(
                        key,
                        f"is required because http_bind = {settings.http_bind} is not loopback",
                        "a non-empty text",
                    )
        self["central"] = settings


def makeService(config: Options, reactor: Any = None) -> service.MultiService:
    """Build the central's service tree from parsed Options."""
    if reactor is None:
        from twisted.internet import reactor
    settings = config["central"]
    for warning in settings.warnings:
        log.warn("config: {warning}", warning=warning)
    top = service.MultiService()
    top.setName("voipmon-central")
    return top
