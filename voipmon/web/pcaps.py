"""Where a call's pcap is and how it reaches the HTTP client; how the web asks sensors.

A CDR says where its pcaps live (``pcap_on``, see voipmon.store.interfaces): in the
central's spool (packet mirroring) they are merged and streamed from disk; on a sensor
(local processing) the central asks the sensor for ``getcallpcap`` and streams the answer
through. :class:`SensorLink` is the one way the web layer asks a sensor anything: over the
channel the sensor opened to this central (``ISensorChannels``, the central's registry of
connected sensors; the requester's credit makes a slow HTTP client slow the sensor's file
reads, and a client that leaves cancels the request on the sensor); when the sensor is not
connected here, optionally (``sensor_manager_dial``) through its management port, else a
502 that names the sensor and says where it is. :class:`PcapUnavailable` carries the HTTP
status and the message the user sees. ``CallPcaps.send`` (streaming) and
``CallPcaps.fetch`` (bytes, bounded) are the entry points for a call's pcap.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from twisted.internet import defer, error, interfaces
from twisted.logger import Logger
from zope.interface import Interface, implementer

from voipmon.manager.client import ManagerError
from voipmon.manager.commands import (
    E_NOT_FOUND,
    CommandError,
    Reply,
    merged_call_pcap,
)
from voipmon.protocols.rpc.requester import (
    CANCELLED,
    TIMEOUT_CODE,
    TOO_LARGE,
    TOO_MANY,
    Head,
    RequestFailed,
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


class ISensorChannels(Interface):
    """The central's registry of connected sensors (voipmon.protocols.server)."""

    def connected(id_sensor):
        """Whether that sensor's channel is up on this central."""

    def request(id_sensor, command, args, consumer, on_head):
        """Run a command on the sensor, streaming its answer into ``consumer``; fires
        with the size, fails with RequestFailed."""


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


class BoundedConsumer:
    """A consumer for ``CallPcaps.send`` that takes at most ``limit`` bytes: ``check`` (its
    ``on_size``) refuses a larger body with a 413 naming ``what`` and who reads it.

    A pull producer (a pcap in the central's own spool) writes only when asked: such a
    consumer asks until it unregisters, as an HTTP response would; a streaming producer
    (the sensor's connection) writes as data comes.
    """

    def __init__(self, limit: int, what: str, reader: str) -> None:
        self.limit = limit
        self.what = what
        self.reader = reader
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        while not streaming and self.producer is producer:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self.producer = None

    def check(self, size: int) -> None:
        if size > self.limit:
            raise PcapUnavailable(413, f"{self.what} is {size} bytes, more than the "
                                       f"{self.limit} {self.reader}")


class Collect(BoundedConsumer):
    """A consumer keeping a body of at most ``limit`` bytes in memory."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__(limit, what, "read here")
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def value(self) -> bytes:
        return b"".join(self.parts)


class SensorLink:
    """Asks a sensor: over its channel when it is connected here, else (``connector``
    given: sensor_manager_dial) through its management port, else a 502 naming it.

    ``channels`` is the central's ISensorChannels, ``lookup`` ``id_sensor -> Deferred[the
    sensors table's row or None]``, ``central_name`` this central as the table names it.
    """

    def __init__(self, channels: Any, lookup: Any, central_name: str = "",
                 connector: Any = None) -> None:
        self.channels = channels
        self.lookup = lookup
        self.central_name = central_name
        self.connector = connector

    @defer.inlineCallbacks
    def send(self, id_sensor: int, command: str, args: str, consumer: Any,
             on_size: Any, what: str) -> Any:
        """Stream the answer to ``command args`` into ``consumer``; ``on_size(size)`` runs
        before the first byte. Errbacks PcapUnavailable when nothing was sent yet; a later
        failure means a truncated body (the caller aborts). ``what`` names the answer in
        errors ("the pcap of call 7")."""
        started: list[int] = []

        def sized(size: int) -> None:
            on_size(size)
            started.append(size)

        if self.channels is not None and self.channels.connected(id_sensor):
            refused: list[PcapUnavailable] = []

            def head(head: Head) -> None:
                try:
                    sized(head.size)
                except PcapUnavailable as exc:   # too large for the consumer
                    refused.append(exc)
                    raise RequestFailed(TOO_LARGE, exc.message)

            try:
                size = yield self.channels.request(id_sensor, command, args, consumer, head)
            except RequestFailed as exc:
                if refused:
                    raise refused[0]
                if started or exc.code == CANCELLED:
                    raise
                sensor = yield self.lookup(id_sensor)
                raise self._failed(exc, sensor_label(sensor, id_sensor), what)
            return size
        sensor = yield self.lookup(id_sensor)
        label = sensor_label(sensor, id_sensor)
        if self.connector is None:
            raise self.offline(sensor, label)
        size = yield self._dial(sensor, label, f"{command} {args}".strip(), consumer, sized,
                                started, what)
        return size

    def query(self, id_sensor: int, command: str, args: str = "",
              limit: int = 16 * 1024 * 1024) -> defer.Deferred[bytes]:
        """A small answer (JSON, text) as bytes."""
        collect = Collect(limit, f"the answer to {command}")
        d = self.send(id_sensor, command, args, collect, collect.check,
                      f"the answer to {command}")
        return d.addCallback(lambda _: collect.value())

    def offline(self, sensor: dict[str, Any] | None, label: str) -> PcapUnavailable:
        """The 502 for a sensor not connected here: where the sensors table says it is."""
        if sensor is None:
            return PcapUnavailable(502, f"{label} is unknown to this central")
        holder = sensor.get("central")
        if sensor.get("connected") and holder and holder != self.central_name:
            return PcapUnavailable(502, f"{label} is connected to central {holder}, not to "
                                        "this one: open the page of that central")
        return PcapUnavailable(502, f"{label} is offline: it is not connected to this "
                                    "central (sensors open the channel; the central never "
                                    "dials them)")

    @staticmethod
    def _failed(exc: RequestFailed, label: str, what: str) -> PcapUnavailable:
        if exc.remote and exc.code == E_NOT_FOUND:
            return PcapUnavailable(404, f"{label} no longer has {what} ({exc.message})")
        if exc.remote:
            return PcapUnavailable(502, f"{label} refused {what}: {exc.code}: {exc.message}")
        if exc.code == TIMEOUT_CODE:
            return PcapUnavailable(504, exc.message)
        if exc.code == TOO_MANY:
            return PcapUnavailable(503, exc.message)
        return PcapUnavailable(502, f"{what} from {label} failed: {exc.message}")

    @defer.inlineCallbacks
    def _dial(self, sensor: dict[str, Any] | None, label: str, line: str, consumer: Any,
              sized: Any, started: list[int], what: str) -> Any:
        """The optional old way: the sensor's management port (5029)."""
        if sensor is None:
            raise PcapUnavailable(502, f"{label} is unknown to this central")
        host, port = sensor.get("manager_host"), sensor.get("manager_port")
        if not host or not port:
            raise PcapUnavailable(502, f"{self.offline(sensor, label).message}; and it offers "
                                       "no management port (managerport = 0, or plain-text "
                                       "loopback only)")
        try:
            size = yield self.connector.run(host, int(port), sensor["id_sensor"], line,
                                            consumer, sized)
        except ManagerError as exc:
            if exc.code == E_NOT_FOUND:
                raise PcapUnavailable(404, f"{label} no longer has {what} ({exc.message})")
            raise PcapUnavailable(502, f"{label} at {host}:{port} refused: {exc.message}")
        except Exception as exc:
            if started:
                raise
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise PcapUnavailable(502, f"{label} at {host}:{port} is unreachable: {reason}")
        return size


class CallPcaps:
    """Serves one call's merged pcap, or one of its files, wherever it lives.

    ``spooldir`` is the central's spool; ``link`` the SensorLink to the sensors.
    """

    def __init__(self, spooldir: str, link: SensorLink) -> None:
        self.spooldir = spooldir
        self.link = link

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
    def send(self, cdr: dict[str, Any], consumer: Any, on_size: Any,
             sip_only: bool = False) -> Any:
        """Stream the call's merged pcap (or only its SIP pcap) into ``consumer``.

        ``on_size(size)`` runs before the first byte. Errbacks PcapUnavailable when nothing
        was sent yet; any later failure means a truncated body (the caller aborts).
        Cancelling the Deferred cancels the fetch (on the sensor too).
        """
        relpaths = self._check(cdr, sip_only)
        if cdr.get("pcap_on") == "central":
            reply = self.local_reply(relpaths, cdr)
            on_size(reply.size)
            yield ChunkSender(reply.chunks(), consumer).done
            return reply.size
        if sip_only:
            command, args = "getfile", relpaths[0]
        else:
            command, args = "getcallpcap", f"{call_minute(cdr)} {cdr['fbasename']}"
        what = f"the {'SIP ' if sip_only else ''}pcap of call {cdr.get('id')}"
        size = yield self.link.send(cdr["id_sensor"], command, args, consumer, on_size, what)
        return size

    def fetch(self, cdr: dict[str, Any], limit: int, sip_only: bool = False
              ) -> defer.Deferred[bytes]:
        """The call's merged pcap (or its SIP pcap) as bytes; a 413 beyond ``limit``."""
        collect = Collect(limit, f"the {'SIP ' if sip_only else ''}pcap")
        d = self.send(cdr, collect, collect.check, sip_only)
        return d.addCallback(lambda _: collect.value())
