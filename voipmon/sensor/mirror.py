"""The packet-mirroring sender (``packetbuffer_sender = yes``).

Raw packets are gathered into batches held in memory, bounded by ``max_buffer_mem``: a
full buffer drops packets and counts them (logged, and reported to the central in STATS),
never silently. At most ``window`` batches are unacknowledged; unacknowledged batches are
kept and resent, with their numbers, to whichever central the sensor reaches next. When a
replayed capture ends, END goes after the last acknowledged batch, and the central closes
that sensor's open calls. Its END_ACK ``{"cdrs": N}`` says those calls are closed and the
N CDRs made from this sensor's packets are durable on the central (in its CDR queue, on
their way to the database), so the sensor is done with them; ``"undelivered": M`` counts
those the central could not take (kept in its dead-letter directory).

A live sensor also carries its capture clock to the central (``advance_clock``, once a
second: CLOCK, after every packet seen so far), so the central's engine closes this
sensor's calls while no packet comes, as a local-processing sensor's engine does. CLOCK is
held back while any packet is still in the buffer: it must not overtake them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from voipmon.counters import Counters
from voipmon.protocols import capabilities
from voipmon.protocols.channel import IMessageTransport
from voipmon.protocols.wire import (
    MAX_INT,
    PACKET_RECORD,
    MessageType,
    PacketBatch,
    ProtocolError,
    field,
    is_number,
)
from voipmon.sensor.uplink import Done, IUplink, negotiated_window
from voipmon.sources.interfaces import IFlowControlledSink, Record

log = Logger()

MIRROR_BATCH_BYTES = 256 * 1024
MIRROR_BATCH_PACKETS = 4096
MIRROR_FLUSH_INTERVAL = 0.05
MIRROR_WINDOW = 16
DROP_REPORT_INTERVAL = 10.0


@implementer(IUplink, IFlowControlledSink)
class MirrorUplink:
    """Raw packets -> bounded in-memory batches -> window -> acks; drops counted."""

    mode = "mirror"

    def __init__(self, clock: IReactorTime, max_buffer_bytes: int,
                 batch_bytes: int = MIRROR_BATCH_BYTES,
                 batch_packets: int = MIRROR_BATCH_PACKETS,
                 flush_interval: float = MIRROR_FLUSH_INTERVAL, window: int = MIRROR_WINDOW,
                 report_interval: float = DROP_REPORT_INTERVAL) -> None:
        self.clock = clock
        self.max_buffer_bytes = max_buffer_bytes
        self.batch_bytes = batch_bytes
        self.batch_packets = batch_packets
        self.flush_interval = flush_interval
        self.own_window = window
        self.window = window
        self.report_interval = report_interval
        self.transport: IMessageTransport | None = None
        self.current: PacketBatch | None = None
        self._current_bytes = 0
        self.ready: deque[tuple[int, bytes, int, int]] = deque()     # seq, payload, bytes, count
        self.inflight: deque[tuple[int, bytes, int, int]] = deque()
        self.used = 0
        self.next_seq = 1
        self.packets = 0
        self.dropped = 0
        self.packets_acked = 0
        self.batches_acked = 0
        self.batches_sent = 0        # a resend after a reconnect counts again
        self.source_done = False
        self.end_state: str | None = None    # None, "pending", "sent", "acked"
        self.central_cdrs: int | None = None
        self.central_undelivered = 0
        self._flush_call: IDelayedCall | None = None
        self._last_report = -1e18
        self._reported_drops = 0
        self._done = Done()
        self._acknowledged: list[defer.Deferred[None]] = []
        self.producer: IPushProducer | None = None   # a replay held back while full
        self._producer_paused = False
        self.latest_ts: float | None = None    # the newest capture time buffered so far
        self._latest_at = 0.0                  # our clock when it was buffered
        self.clock_sent: float | None = None   # the last CLOCK value sent
        self.capture_clock = False             # the capability is agreed: CLOCK may go

    # -- input (the hot path) ------------------------------------------------------

    def feed(self, ts: float, linktype: int, data: bytes) -> bool:
        """Buffer one packet (a live capture's sink); False (and counted) when full."""
        return self.feed_all(((ts, linktype, data),)) == 1

    def feed_all(self, records: Iterable[Record]) -> int:
        """Buffer ``(ts, linktype, frame)`` records; returns how many fitted.

        The hot path of mirroring: one loop, no call per packet. Beyond
        ``max_buffer_mem`` a packet is dropped and counted.
        """
        pack = PACKET_RECORD.pack
        header = PACKET_RECORD.size
        limit = self.max_buffer_bytes
        batch_bytes, batch_packets = self.batch_bytes, self.batch_packets
        current = self.current
        used = self.used
        added = dropped = 0
        latest = self.latest_ts if self.latest_ts is not None else float("-inf")
        for ts, linktype, data in records:
            size = header + len(data)
            if used + size > limit:
                dropped += 1
                continue
            if ts > latest:
                latest = ts
            if current is None or current.linktype != linktype:
                self.used = used
                self.seal()
                current = self.current = PacketBatch(linktype)
            sec = int(ts)
            usec = round((ts - sec) * 1_000_000)
            if usec >= 1_000_000:
                sec, usec = sec + 1, usec - 1_000_000
            buffer = current.buffer
            buffer += pack(sec, usec, len(data), len(data))
            buffer += data
            current.count += 1
            self._current_bytes += size
            used += size
            added += 1
            if self._current_bytes >= batch_bytes or current.count >= batch_packets:
                self.used = used
                self.seal()
                self.pump()
                current = None
                used = self.used
        self.used = used
        self.packets += added
        if added:
            self.latest_ts = latest
            self._latest_at = self.clock.seconds()
        if dropped:
            self.dropped += dropped
            now = self.clock.seconds()
            if now - self._last_report >= self.report_interval:
                self.report_drops(now)
        if self.current is not None and self._flush_call is None:
            self._flush_call = self.clock.callLater(self.flush_interval, self._flush_timer)
        if self.producer is not None and not self._producer_paused and not self.has_room():
            self._producer_paused = True
            self.producer.pauseProducing()
        return added

    def report_drops(self, now: float | None = None) -> None:
        new = self.dropped - self._reported_drops
        if new:
            log.warn("mirroring buffer full (max_buffer_mem {mb:.0f} MB): dropped {new} "
                     "packets, {total} in all", mb=self.max_buffer_bytes / 1048576, new=new,
                     total=self.dropped)
        self._reported_drops = self.dropped
        self._last_report = self.clock.seconds() if now is None else now

    def _flush_timer(self) -> None:
        self._flush_call = None
        self.seal()
        self.pump()

    def seal(self) -> None:
        """Close the batch being filled so it can be sent."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if self.current is None or not self.current.count:
            self.current = None
            return
        payload = self.current.seal(self.next_seq)
        self.ready.append((self.next_seq, payload, self._current_bytes, self.current.count))
        self.next_seq += 1
        self.current = None
        self._current_bytes = 0

    def has_room(self) -> bool:
        """Whether a replayed capture should keep reading (live capture just drops)."""
        return (self.used < self.max_buffer_bytes // 2
                and len(self.ready) < 2 * max(self.window, 1))

    # -- IFlowControlledSink: a source that can wait (a file) waits while we are full ---

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer
        self._producer_paused = False

    def unregisterProducer(self) -> None:
        self.producer = None

    def close(self) -> None:
        """Shutdown: cancel the batch timer (what is buffered in memory is lost)."""
        self.seal()

    def finish_source(self) -> None:
        """End of the replayed capture: send the rest, then END so the central closes calls."""
        self.source_done = True
        self.seal()
        if self.end_state is None:
            self.end_state = "pending"
        self.report_drops()
        self.pump()

    # -- channel -------------------------------------------------------------------

    def attach(self, transport: IMessageTransport) -> None:
        self.transport = transport
        self.window = negotiated_window(transport, self.own_window)
        info = transport.accept_info or {}
        try:
            self.capture_clock = "capture_clock" in capabilities.parse(info, "ACCEPT")
        except ProtocolError:
            self.capture_clock = False
        self.pump()

    def advance_clock(self) -> None:
        """Tell the central our capture clock (live capture, once a second).

        The value is the newest capture time buffered plus the time since, as the local
        engine's clock moves. It goes only when nothing waits in the buffer (the batch being
        filled is sealed first): every packet it covers was sent before it, so the central
        never closes a call whose packets are still on their way. While the window is full
        nothing is sent; the packets themselves move the central's clock then.
        """
        if self.transport is None or not self.capture_clock or self.latest_ts is None:
            return
        self.seal()
        self.pump()
        if self.ready or self.current is not None or self.transport is None:
            return
        now = self.latest_ts + max(0.0, self.clock.seconds() - self._latest_at)
        if self.clock_sent is not None and now <= self.clock_sent:
            return
        self.clock_sent = now
        self.transport.send_message(MessageType.CLOCK, {"t": now})

    def detach(self, reason: Failure | None = None) -> None:
        self.transport = None
        # Unacknowledged batches go back to the front, in order, for the next central.
        while self.inflight:
            self.ready.appendleft(self.inflight.pop())
        if self.end_state == "sent":
            self.end_state = "pending"

    def pump(self) -> None:
        transport = self.transport
        while transport is not None and self.ready and len(self.inflight) < self.window:
            batch = self.ready.popleft()
            self.inflight.append(batch)
            transport.send_message(MessageType.PACKETS, batch[1])
            self.batches_sent += 1
        if (transport is not None and self.end_state == "pending" and not self.ready
                and not self.inflight and self.current is None):
            self.end_state = "sent"
            transport.send_message(MessageType.END, {"packets": self.packets,
                                                     "dropped": self.dropped})
        self._wake_room()
        if self._acknowledged and self._all_acknowledged():
            waiters, self._acknowledged = self._acknowledged, []
            for d in waiters:
                d.callback(None)

    def _wake_room(self) -> None:
        if self.producer is not None and self._producer_paused and self.has_room():
            self._producer_paused = False
            self.producer.resumeProducing()

    def on_packets_ack(self, body: dict[str, Any]) -> None:
        upto = field(body, "upto", int, "PACKETS_ACK")
        if not self.inflight or upto < self.inflight[0][0] or upto > self.inflight[-1][0]:
            raise ProtocolError(f"PACKETS_ACK for {upto} does not match any batch in flight")
        while self.inflight and self.inflight[0][0] <= upto:
            _seq, _payload, size, count = self.inflight.popleft()
            self.used -= size
            self.packets_acked += count
            self.batches_acked += 1
        self.pump()

    def on_end_ack(self, body: dict[str, Any]) -> None:
        if self.end_state != "sent":
            raise ProtocolError("END_ACK without END")
        self.end_state = "acked"
        cdrs, undelivered = body.get("cdrs"), body.get("undelivered")
        self.central_cdrs = cdrs if is_number(cdrs, 0, MAX_INT, integer=True) else None
        # CDRs of our packets the central kept as dead letters (not stored).
        self.central_undelivered = (undelivered if is_number(undelivered, 0, MAX_INT,
                                                             integer=True) else 0)
        self._done.fire()

    def when_acknowledged(self) -> defer.Deferred[None]:
        """Fires once every packet buffered so far is acknowledged (at once if so now)."""
        if self._all_acknowledged():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(self._acknowledged.remove)
        self._acknowledged.append(d)
        return d

    def _all_acknowledged(self) -> bool:
        return not self.ready and not self.inflight and (
            self.current is None or not self.current.count)

    def when_done(self) -> defer.Deferred:
        return self._done.wait()

    def counters(self) -> Counters:
        return {"packets": self.packets, "dropped": self.dropped,
                "capture_clock": self.clock_sent,
                "packets_acked": self.packets_acked, "buffer_bytes": self.used,
                "batches_sent": self.batches_sent, "batches_acked": self.batches_acked,
                "inflight_batches": len(self.inflight), "ready_batches": len(self.ready)}
