"""Where a call's pcap is and how it reaches the HTTP client.

A CDR says where its pcaps live (``pcap_on``, see voipmon.store.interfaces): in the
central's spool (packet mirroring) they are merged and streamed from disk; on a sensor
(local processing) the central asks the sensor's management port for ``getcallpcap`` and
streams the reply through, the sensor's TCP connection registered as the HTTP response's
producer so nothing piles up in the central. :class:`PcapUnavailable` carries the HTTP
status and the message the user sees.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from twisted.internet import defer, error, interfaces
from twisted.logger import Logger
from zope.interface import implementer

from voipmon.manager.client import ManagerError
from voipmon.manager.commands import (
    E_NOT_FOUND,
    CommandError,
    Reply,
    merged_call_pcap,
)
from voipmon.records.times import parse_iso_ms
from voipmon.spool.layout import minute_dir

log = Logger()
_MINUTE = re.compile(r"(\d{4}-\d{2}-\d{2}/\d{2}/\d{2})/")


class PcapUnavailable(Exception):
    """The pcap cannot be served: ``status`` (404, 502...) and a message naming why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def call_relpaths(cdr: dict[str, Any]) -> list[str]:
    return [path for path in (cdr.get("sip_pcap"), cdr.get("rtp_pcap")) if path]


def call_minute(cdr: dict[str, Any]) -> str:
    """The spool minute of the call: from its pcap path, else from its calldate."""
    for path in call_relpaths(cdr):
        match = _MINUTE.match(path)
        if match:
            return match.group(1)
    return minute_dir(parse_iso_ms(cdr["calldate"]))


def sensor_label(sensor: dict[str, Any] | None, id_sensor: int) -> str:
    name = (sensor or {}).get("name")
    return f"sensor {id_sensor}" + (f" ({name})" if name else "")


@implementer(interfaces.IPullProducer)
class ChunkSender:
    """Writes an iterator's chunks to a consumer as fast as it takes them; ``done`` fires
    when all were written, errbacks if reading fails or the consumer goes away."""

    def __init__(self, chunks: Iterator[bytes], consumer: Any) -> None:
        self.chunks = chunks
        self.consumer = consumer
        self.done: defer.Deferred[None] = defer.Deferred()
        consumer.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.done.called:
            return
        try:
            data = next(self.chunks, None)
        except Exception as exc:
            self.consumer.unregisterProducer()
            self.done.errback(exc)
            return
        if data is None:
            self.consumer.unregisterProducer()
            self.done.callback(None)
        else:
            self.consumer.write(data)

    def stopProducing(self) -> None:
        if not self.done.called:
            self.done.errback(error.ConnectionLost("the client went away"))
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()


class CallPcaps:
    """Serves one call's merged pcap, or one of its files, wherever it lives.

    ``spooldir`` is the central's spool; ``connector`` a ManagerConnector;
    ``sensors`` a callable ``id_sensor -> Deferred[sensor dict or None]``.
    """

    def __init__(self, spooldir: str, connector: Any, sensors: Any) -> None:
        self.spooldir = spooldir
        self.connector = connector
        self.sensors = sensors

    def _check(self, cdr: dict[str, Any], sip_only: bool) -> list[str]:
        relpaths = [cdr["sip_pcap"]] if sip_only and cdr.get("sip_pcap") else \
            [] if sip_only else call_relpaths(cdr)
        if not cdr.get("pcap_on") or not relpaths:
            what = "SIP pcap" if sip_only else "pcap"
            raise PcapUnavailable(404, f"call {cdr.get('id')} has no {what} (savesip/savertp "
                                       "were off, or no packet was saved)")
        return relpaths

    def local_reply(self, relpaths: list[str], cdr: dict[str, Any]) -> Reply:
        try:
            return merged_call_pcap(self.spooldir, relpaths)
        except CommandError as exc:
            if exc.code == E_NOT_FOUND:
                raise PcapUnavailable(404, f"the pcap of call {cdr.get('id')} is no longer in "
                                           "the central's spool (removed by retention?)")
            raise PcapUnavailable(500, f"the pcap of call {cdr.get('id')}: {exc.message}")

    @defer.inlineCallbacks
    def sensor_address(self, cdr: dict[str, Any]) -> Any:
        id_sensor = cdr["id_sensor"]
        sensor = yield self.sensors(id_sensor)
        label = sensor_label(sensor, id_sensor)
        if sensor is None:
            raise PcapUnavailable(502, f"{label} is unknown to this central")
        host, port = sensor.get("manager_host"), sensor.get("manager_port")
        if not host or not port:
            raise PcapUnavailable(502, f"{label} offers no management port to the central "
                                       "(managerport = 0, or plain-text loopback only)")
        return host, int(port), label

    @defer.inlineCallbacks
    def send(self, cdr: dict[str, Any], consumer: Any, on_size: Any,
             sip_only: bool = False) -> Any:
        """Stream the call's merged pcap (or only its SIP pcap) into ``consumer``.

        ``on_size(size)`` runs before the first byte. Errbacks PcapUnavailable when nothing
        was sent yet; any later failure means a truncated body (the caller aborts).
        """
        relpaths = self._check(cdr, sip_only)
        if cdr.get("pcap_on") == "central":
            reply = self.local_reply(relpaths, cdr)
            on_size(reply.size)
            yield ChunkSender(reply.chunks(), consumer).done
            return reply.size
        host, port, label = yield self.sensor_address(cdr)
        if sip_only:
            command = f"getfile {relpaths[0]}"
        else:
            command = f"getcallpcap {call_minute(cdr)} {cdr['fbasename']}"
        started = []

        def sized(size: int) -> None:
            started.append(size)
            on_size(size)

        try:
            size = yield self.connector.run(host, port, cdr["id_sensor"], command, consumer,
                                            sized)
        except ManagerError as exc:
            if exc.code == E_NOT_FOUND:
                raise PcapUnavailable(404, f"{label} no longer has the pcap of call "
                                           f"{cdr.get('id')} ({exc.message})")
            raise PcapUnavailable(502, f"{label} at {host}:{port} refused: {exc.message}")
        except Exception as exc:
            if started:
                raise
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise PcapUnavailable(502, f"{label} at {host}:{port} is unreachable: {reason}")
        return size
