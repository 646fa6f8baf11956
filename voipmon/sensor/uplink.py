"""What the sensor sends over the channel, and what it does with the acknowledgements.

An uplink outlives any one connection (the channel comes and goes with failover).
``CdrUplink`` (local processing): every record of the engine (CDRs, and the registration,
SIP message and alert records, as ``voipmon.records.kinds`` items) goes into the durable
queue; once flushed
(fsync'd) it is sent in batches, at most ``window`` batches unacknowledged, and deleted
from the queue only when the central acknowledges it, which it does after its database
committed it. After a reconnect everything unacknowledged is sent again, in order. The
packet-mirroring uplink is ``voipmon.sensor.mirror.MirrorUplink``.

``UplinkProtocol`` is the thin session protocol above the channel; the channel's dispatcher
hands the central's messages to the uplink's ``on_<type>`` handlers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from voipmon.counters import Counters
from voipmon.protocols.channel import ChannelProtocol, IMessageTransport
from voipmon.protocols.client import ISessionProtocol
from voipmon.protocols.wire import (
    MAX_INT,
    MessageType,
    ProtocolError,
    encode_cdr_batch,
    field,
    is_number,
)
from voipmon.queue import DurableQueue, QueueError
from voipmon.records.codec import Record
from voipmon.records.kinds import item_bytes
from voipmon.spool.deadletter import RecordRefused

log = Logger()

CDR_BATCH_RECORDS = 1000
CDR_FIRST_BATCH = 50       # after (re)connecting, batches start small and double
CDR_BATCH_BYTES = 4 << 20
CDR_WINDOW = 8
# A CDR bigger than this could never cross the channel (frames are at most 16 MiB) and
# would block every CDR queued behind it.
MAX_CDR_BYTES = 8 * 1024 * 1024


class IUplink(Interface):
    """Long-lived sending logic; the channel of the moment is attached and detached."""

    mode = Attribute("'local' (CDRs) or 'mirror' (packets).")

    def attach(transport):
        """A channel to a central is up (an IMessageTransport)."""

    def detach(reason):
        """That channel is gone."""

    def when_done():
        """A Deferred that fires once the source has ended and everything is acknowledged."""

    def counters():
        """Its counters (``voipmon.counters``), for logs, STATS messages, the management
        port and the metrics."""


class Done:
    """Deferreds waiting for an uplink to finish."""

    def __init__(self) -> None:
        self.waiters: list[defer.Deferred] = []
        self.done = False

    def wait(self) -> defer.Deferred:
        if self.done:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self.waiters.append(d)
        return d

    def fire(self) -> None:
        if self.done:
            return
        self.done = True
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(None)


def negotiated_window(transport: IMessageTransport, own: int) -> int:
    info = transport.accept_info or {}
    theirs = info.get("window")
    if isinstance(theirs, int) and not isinstance(theirs, bool) and theirs > 0:
        return min(own, theirs)
    return own


@implementer(IUplink)
class CdrUplink:
    """CDRs from the engine -> durable queue -> batches -> acks -> deleted."""

    mode = "local"

    def __init__(self, queue: DurableQueue, clock: IReactorTime,
                 batch_records: int = CDR_BATCH_RECORDS, batch_bytes: int = CDR_BATCH_BYTES,
                 window: int = CDR_WINDOW, first_batch: int = CDR_FIRST_BATCH) -> None:
        self.queue = queue
        self.clock = clock
        self.batch_records = batch_records
        self.first_batch = min(first_batch, batch_records)
        self.batch_limit = self.first_batch
        self.batch_bytes = batch_bytes
        self.own_window = window
        self.window = window
        self.transport: IMessageTransport | None = None
        self.inflight: deque[tuple[int, int]] = deque()
        self.sent_upto = 0
        self.produced = 0        # records added by this process
        self.cdrs = 0            # of those, CDRs
        self.delivered = 0       # records acknowledged in this process
        self.stored = 0          # of those, newly inserted by the central (not duplicates)
        self.batches_sent = 0
        self.cdrs_sent = 0           # a resend after a reconnect counts again
        self.oversized = 0       # CDRs too big to ever deliver (dead letters, not queued)
        self.source_done = False
        self._flush_call: IDelayedCall | None = None
        self._done = Done()

    # -- input ---------------------------------------------------------------------

    def add(self, record: Record) -> None:
        """Queue one record (the engine's on_cdr and on_record callback) as its item; it
        is sent once flushed. One that can never be delivered raises (the engine keeps it
        as a dead letter)."""
        item = item_bytes(record)
        if len(item) > MAX_CDR_BYTES:
            self.oversized += 1
            raise RecordRefused(f"the {record.KIND} record is {len(item)} bytes, over the "
                                f"{MAX_CDR_BYTES} the channel carries")
        if record.KIND == "cdr":
            self.cdrs += 1
        self.add_raw(item)

    def add_raw(self, record: bytes) -> None:
        self.queue.append(record)
        self.produced += 1
        if self.queue.buffered >= self.batch_records:
            self.flush()
        elif self._flush_call is None:
            # Group commit: one fsync for everything the engine emits in this turn.
            self._flush_call = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Make the buffered CDRs durable, then send what the window allows."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        try:
            self.queue.flush()
        except QueueError:
            log.failure("cannot write the CDR queue; retrying in 1 s (CDRs stay in memory)")
            self._flush_call = self.clock.callLater(1.0, self.flush)
            return
        self.pump()
        self._check_done()

    def finish_source(self) -> None:
        """The source ended (end of a replayed capture): flush and wait for the last acks."""
        self.source_done = True
        self.flush()

    def close(self) -> None:
        """Shutdown: make everything buffered durable; no timer is left."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self.queue.flush()

    # -- channel -------------------------------------------------------------------

    def attach(self, transport: IMessageTransport) -> None:
        self.transport = transport
        self.window = negotiated_window(transport, self.own_window)
        self.inflight.clear()
        self.sent_upto = self.queue.acked
        # A central just reached (after a failover, say) acknowledges a small batch
        # sooner: start small, double with each batch sent.
        self.batch_limit = self.first_batch
        if self.queue.depth:
            log.info("sending {count} queued CDRs to {central}", count=self.queue.depth,
                     central=transport.peer)
        self.pump()

    def detach(self, reason: Failure | None = None) -> None:
        self.transport = None
        self.inflight.clear()

    def pump(self) -> None:
        while self.transport is not None and len(self.inflight) < self.window:
            records = self.queue.read(self.sent_upto, self.batch_limit, self.batch_bytes)
            if not records:
                return
            self.batch_limit = min(self.batch_limit * 2, self.batch_records)
            first, last = records[0][0], records[-1][0]
            self.transport.send_message(MessageType.CDRS,
                                        encode_cdr_batch(first, [r for _, r in records]))
            self.inflight.append((first, last))
            self.sent_upto = last
            self.batches_sent += 1
            self.cdrs_sent += len(records)

    def on_cdr_ack(self, body: dict[str, object]) -> None:
        upto = field(body, "upto", int, "CDR_ACK")
        if not self.inflight or upto < self.inflight[0][1] or upto > self.sent_upto:
            raise ProtocolError(f"CDR_ACK for {upto} does not match any batch in flight")
        while self.inflight and self.inflight[0][1] <= upto:
            self.inflight.popleft()
        self.delivered += self.queue.ack(upto)
        stored = body.get("stored")
        if is_number(stored, 0, MAX_INT, integer=True):
            self.stored += stored
        self.pump()
        self._check_done()

    def on_end_ack(self, body: dict[str, object]) -> None:
        """A local-processing sensor sends no END; an END_ACK is ignored."""

    # -- completion and stats ------------------------------------------------------

    def _check_done(self) -> None:
        if self.source_done and not self.queue.buffered and not self.queue.depth:
            self._done.fire()

    def when_done(self) -> defer.Deferred:
        return self._done.wait()

    def counters(self) -> Counters:
        return {"cdrs": self.cdrs, "records": self.produced, "sent": self.cdrs_sent,
                "delivered": self.delivered,
                "stored": self.stored, "oversized": self.oversized,
                "queue_depth": self.queue.depth + self.queue.buffered,
                "queue_bytes": self.queue.disk_bytes, "inflight_batches": len(self.inflight)}


@implementer(ISessionProtocol)
class UplinkProtocol(protocol.Protocol):
    """The session protocol ClientService sees; its uplink handles the central's messages."""

    def __init__(self, uplink: IUplink, on_lost: Callable[[Failure], None] | None = None,
                 on_made: Callable[[ChannelProtocol], None] | None = None):
        self.uplink = uplink
        self.on_lost = on_lost
        self.on_made = on_made

    def connectionMade(self) -> None:
        if self.on_made is not None:
            self.on_made(self.transport)
        self.uplink.attach(self.transport)

    def handlers(self) -> list[object]:
        return [self.uplink]

    def dataReceived(self, data: bytes) -> None:
        raise ProtocolError("the channel delivers messages, not bytes")

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.uplink.detach(reason)
        if self.on_lost is not None:
            self.on_lost(reason)


class UplinkFactory(protocol.Factory):
    def __init__(self, uplink: IUplink, on_lost: Callable[[Failure], None] | None = None,
                 on_made: Callable[[ChannelProtocol], None] | None = None) -> None:
        self.uplink = uplink
        self.on_lost = on_lost
        self.on_made = on_made

    def buildProtocol(self, addr: object) -> UplinkProtocol:
        proto = UplinkProtocol(self.uplink, self.on_lost, self.on_made)
        proto.factory = self
        return proto
