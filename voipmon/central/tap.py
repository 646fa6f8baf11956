"""``twistd voipmon-central``: command-line options and service assembly."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from voipmon.central.service import CentralService
from voipmon.config import is_loopback, load_central_config
from voipmon.protocols import tls

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
        http, channel = settings.http, settings.channel
        if http.http_port and not is_loopback(http.http_bind):
            for key, value in (("http_user", http.http_user),
                               ("http_password", http.http_password)):
                if not value:
                    raise settings.error(
                        key,
                        f"is required because http_bind = {http.http_bind} is not loopback",
                        "a non-empty text",
                    )
        if channel.tls_certificate:
            try:
                tls.load_certificate(channel.tls_certificate, channel.tls_private_key)
            except tls.CertificateError as exc:
                raise settings.error("tls_certificate", str(exc),
                                     "a readable PEM certificate whose key matches")
        elif channel.tls_private_key:
            raise settings.error("tls_private_key", "is set but tls_certificate is not",
                                 "both, or neither (a self-signed certificate is made)")
        self["central"] = settings


def makeService(config: Options, reactor: Any = None) -> service.MultiService:
    """Build the central's service tree from parsed Options."""
    if reactor is None:
        from twisted.internet import reactor
    settings = config["central"]
    for warning in settings.warnings:
        log.warn("config: {warning}", warning=warning)
    try:
        return CentralService(settings, reactor)
    except usage.UsageError as exc:
        # makeService runs outside twistd's option handling: exit with one clear line.
        raise SystemExit(f"voipmon-central: {exc}")
