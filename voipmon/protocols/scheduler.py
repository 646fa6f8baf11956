"""What one channel sends next: control first, then records and answers in turn. Pure.

Everything a channel sends goes through one :class:`OutputScheduler`, which the channel
registers as the streaming producer of its transport, so the transport's own backpressure
(its buffer over the high-water mark: ``pauseProducing``) decides *when* a frame goes and
the scheduler decides *which*:

- **control** (pings, pongs, acknowledgements, requests, credit, cancels) is written at
  once, paused or not: such frames are small, few, and bounded by the windows they
  acknowledge, and a ping or an ack stuck behind a gigabyte would trip the peer's silence
  timeout or stall its records;
- **records** (CDR batches, mirrored packets, END, STATS, the capture clock...) are written
  at once while the transport takes data, and queued in order while it is paused (their
  senders' windows bound them);
- **answers** are never queued: an answer stream is an ``IFrameSource`` the scheduler
  *pulls* a frame from only when the transport takes data. Several streams take turns.

While paused nothing but control is written. When the transport resumes, records and
answer frames alternate one by one, so a 1 GB download never holds a CDR batch back by
more than one answer chunk, and an answer source reads its file only as fast as the
transport drains. CLOSE goes after the queued records and ends the output.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import Interface, implementer

from voipmon.counters import Counters, family
from voipmon.protocols.wire import MessageType

#: Sent at once, paused or not (small, bounded by the windows they serve).
CONTROL = frozenset({
    MessageType.HELLO, MessageType.CHALLENGE, MessageType.PROOF, MessageType.ACCEPT,
    MessageType.REJECT, MessageType.PING, MessageType.PONG, MessageType.CDR_ACK,
    MessageType.PACKETS_ACK, MessageType.END_ACK, MessageType.REQUEST, MessageType.CREDIT,
    MessageType.CANCEL,
})


class IFrameSource(Interface):
    """A stream of frames pulled one at a time (an answer being sent)."""

    def ready():
        """Whether ``next_frame`` has a frame to give now."""

    def next_frame():
        """``(kind, payload)``, or None if nothing after all (the source is then dropped
        until woken again)."""


class IFrameOutput(Interface):
    """Where a frame source is scheduled (the sensor's responder sees this)."""

    def wake(source):
        """``source`` may have become ready: give it turns until it is not."""

    def discard(source):
        """Forget ``source``: it is finished or cancelled."""


@implementer(IPushProducer, IFrameOutput)
class OutputScheduler:
    """One channel's output; ``write(kind, payload)`` puts one frame on the transport."""

    def __init__(self, write: Callable[[MessageType, bytes], None]) -> None:
        self.write = write
        self.paused = False
        self.stopped = False
        self.records: deque[tuple[MessageType, bytes]] = deque()
        self.queued_bytes = 0
        self._sources: deque[Any] = deque()     # ready sources in turn order
        self._scheduled: set[int] = set()       # id() of those
        self._records_turn = True
        self._pumping = False
        self._again = False
        self.frames = {"control": 0, "records": 0, "answers": 0}
        self.max_queued_bytes = 0

    # -- input -----------------------------------------------------------------------

    def send(self, kind: MessageType, payload: bytes) -> None:
        """Send one message (already encoded) by its lane."""
        if self.stopped:
            return
        if kind in CONTROL:
            self.frames["control"] += 1
            self.write(kind, payload)
        elif kind == MessageType.CLOSE:
            self.flush()
            self.frames["control"] += 1
            self.write(kind, payload)
            self.stopProducing()
        elif self.paused or self.records:
            self.records.append((kind, payload))
            self.queued_bytes += len(payload)
            self.max_queued_bytes = max(self.max_queued_bytes, self.queued_bytes)
            self.pump()
        else:
            self.frames["records"] += 1
            self.write(kind, payload)

    def wake(self, source: Any) -> None:
        if self.stopped or id(source) in self._scheduled or not source.ready():
            return
        self._scheduled.add(id(source))
        self._sources.append(source)
        self.pump()

    def discard(self, source: Any) -> None:
        if id(source) in self._scheduled:
            self._scheduled.discard(id(source))
            try:
                self._sources.remove(source)
            except ValueError:
                pass  # being asked for a frame right now (it finished in next_frame)

    @property
    def sources(self) -> int:
        return len(self._sources)

    # -- output ----------------------------------------------------------------------

    def pump(self) -> None:
        """Write while the transport takes data, records and answer frames in turn."""
        if self._pumping:
            self._again = True   # called back from inside a write: the loop goes on
            return
        self._pumping = True
        try:
            while not self.paused and not self.stopped:
                self._again = False
                if self._records_turn:
                    wrote = self._record() or self._answer()
                else:
                    wrote = self._answer() or self._record()
                if not wrote and not self._again:
                    return
        finally:
            self._pumping = False

    def _record(self) -> bool:
        if not self.records:
            return False
        kind, payload = self.records.popleft()
        self.queued_bytes -= len(payload)
        self._records_turn = False
        self.frames["records"] += 1
        self.write(kind, payload)
        return True

    def _answer(self) -> bool:
        sources = self._sources
        while sources:
            source = sources.popleft()
            frame = source.next_frame() if source.ready() else None
            if id(source) not in self._scheduled:
                pass  # discarded while making its frame
            elif source.ready():
                sources.append(source)
            else:
                self._scheduled.discard(id(source))
            if frame is not None:
                self._records_turn = True
                self.frames["answers"] += 1
                self.write(*frame)
                return True
        return False

    def flush(self) -> None:
        """Write every queued record now, paused or not (the channel is closing)."""
        while self.records and not self.stopped:
            self._record()

    # -- IPushProducer (the transport calls these) -----------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.pump()

    def stopProducing(self) -> None:
        """The connection is gone or closing: drop what is queued, send nothing more."""
        self.stopped = True
        self.records.clear()
        self.queued_bytes = 0
        self._sources.clear()
        self._scheduled.clear()

    def counters(self) -> Counters:
        return {"paused": int(self.paused), "queued_records": len(self.records),
                "queued_bytes": self.queued_bytes, "max_queued_bytes": self.max_queued_bytes,
                "answer_sources": len(self._sources),
                **family("frames", self.frames)}
