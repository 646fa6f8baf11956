"""The channel's output scheduler: control first, records and answers in turn, pulled
answers, bounded by the transport's pause/resume."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from voipmon.counters import nested
from voipmon.protocols.scheduler import IFrameOutput, IFrameSource, OutputScheduler
from voipmon.protocols.wire import MessageType

M = MessageType


@implementer(IFrameSource)
class Source:
    """Gives ``count`` answer frames named ``name:i``; counts how many were pulled."""

    def __init__(self, name: str, count: int, output: Any = None) -> None:
        self.name = name
        self.left = count
        self.pulled = 0
        self.output = output
        self.held = False    # ready() is False while held (no credit)

    def ready(self) -> bool:
        return self.left > 0 and not self.held

    def next_frame(self) -> tuple[MessageType, bytes] | None:
        self.pulled += 1
        self.left -= 1
        frame = (M.ANSWER, f"{self.name}:{self.pulled}".encode())
        if not self.left and self.output is not None:
            self.output.discard(self)   # finished: as the responder does
        return frame


class Transport:
    """Records frames; pauses the scheduler after ``capacity`` frames until ``drain``."""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.frames: list[tuple[MessageType, bytes]] = []
        self.unread = 0
        self.scheduler: OutputScheduler | None = None
        self.on_write: Any = None

    def write(self, kind: MessageType, payload: bytes) -> None:
        self.frames.append((kind, payload))
        self.unread += 1
        if self.on_write is not None:
            self.on_write(kind, payload)
        if self.capacity is not None and self.unread >= self.capacity:
            self.scheduler.pauseProducing()

    def drain(self) -> None:
        self.unread = 0
        self.scheduler.resumeProducing()

    def names(self) -> list[str]:
        return [payload.decode() for _, payload in self.frames]


def make(capacity: int | None = None) -> tuple[OutputScheduler, Transport]:
    transport = Transport(capacity)
    scheduler = OutputScheduler(transport.write)
    transport.scheduler = scheduler
    return scheduler, transport


class SchedulerTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        scheduler, _ = make()
        verifyObject(IPushProducer, scheduler)
        verifyObject(IFrameOutput, scheduler)
        verifyObject(IFrameSource, Source("a", 1))

    def test_written_at_once_while_the_transport_takes_data(self) -> None:
        scheduler, transport = make()
        scheduler.send(M.CDRS, b"c1")
        scheduler.send(M.PING, b"p")
        source = Source("a", 3)
        scheduler.wake(source)
        self.assertEqual(transport.names(), ["c1", "p", "a:1", "a:2", "a:3"])
        self.assertEqual(scheduler.sources, 0)
        self.assertEqual(nested(scheduler.counters())["frames"], {"control": 1, "records": 1,
                                                        "answers": 3})

    def test_control_goes_while_paused_records_wait_in_order(self) -> None:
        scheduler, transport = make()
        scheduler.pauseProducing()
        for name in ("c1", "c2", "c3"):
            scheduler.send(M.CDRS, name.encode())
        for kind in (M.PONG, M.CDR_ACK, M.PACKETS_ACK, M.END_ACK, M.REQUEST, M.CREDIT,
                     M.CANCEL):
            scheduler.send(kind, kind.name.encode())
        self.assertEqual(transport.names(), ["PONG", "CDR_ACK", "PACKETS_ACK", "END_ACK",
                                             "REQUEST", "CREDIT", "CANCEL"])
        self.assertEqual(scheduler.counters()["queued_records"], 3)
        self.assertEqual(scheduler.queued_bytes, 6)
        scheduler.resumeProducing()
        self.assertEqual(transport.names()[-3:], ["c1", "c2", "c3"])
        self.assertEqual(scheduler.queued_bytes, 0)

    def test_records_keep_their_order_with_the_capture_clock(self) -> None:
        # STATS, END and CLOCK-like records never overtake the batches before them.
        scheduler, transport = make(capacity=1)
        scheduler.send(M.PACKETS, b"b1")          # pauses
        scheduler.send(M.PACKETS, b"b2")
        scheduler.send(M.END, b"end")
        scheduler.send(M.STATS, b"stats")
        for _ in range(4):
            transport.drain()
        self.assertEqual(transport.names(), ["b1", "b2", "end", "stats"])

    def test_records_and_answers_take_turns_after_a_pause(self) -> None:
        scheduler, transport = make(capacity=1)
        source = Source("a", 5)
        scheduler.wake(source)                    # a:1, then paused
        for name in ("c1", "c2", "c3"):
            scheduler.send(M.CDRS, name.encode())
        self.assertEqual(transport.names(), ["a:1"])
        for _ in range(8):
            transport.drain()
        self.assertEqual(transport.names(), ["a:1", "c1", "a:2", "c2", "a:3", "c3", "a:4",
                                             "a:5"])

    def test_answer_sources_take_turns(self) -> None:
        scheduler, transport = make(capacity=1)
        scheduler.pauseProducing()
        a, b, c = Source("a", 3), Source("b", 1), Source("c", 2)
        for source in (a, b, c):
            scheduler.wake(source)
        scheduler.wake(a)                         # already scheduled: once only
        self.assertEqual(scheduler.sources, 3)
        for _ in range(7):
            transport.drain()
        self.assertEqual(transport.names(), ["a:1", "b:1", "c:1", "a:2", "c:2", "a:3"])

    def test_sources_are_pulled_only_when_the_transport_takes_data(self) -> None:
        # The memory bound: while paused nothing is read, whatever the source holds.
        scheduler, transport = make(capacity=2)
        source = Source("big", 1_000_000)
        scheduler.wake(source)
        self.assertEqual(source.pulled, 2)
        scheduler.wake(source)
        scheduler.send(M.CDRS, b"c1")
        self.assertEqual(source.pulled, 2)
        transport.drain()
        self.assertEqual(source.pulled, 3)        # the record took one of the two turns
        self.assertEqual(transport.names()[-2:], ["c1", "big:3"])

    def test_a_source_without_credit_leaves_the_rotation_until_woken(self) -> None:
        scheduler, _ = make()
        source = Source("a", 4)
        source.held = True
        scheduler.wake(source)
        self.assertEqual((source.pulled, scheduler.sources), (0, 0))
        source.held = False
        scheduler.wake(source)
        self.assertEqual(source.pulled, 4)

    def test_discard_while_making_a_frame(self) -> None:
        scheduler, transport = make()
        source = Source("a", 2, output=scheduler)
        scheduler.wake(source)
        self.assertEqual(transport.names(), ["a:1", "a:2"])
        self.assertEqual(scheduler.sources, 0)
        scheduler.discard(source)                 # twice: harmless
        other = Source("b", 1)
        scheduler.pauseProducing()
        scheduler.wake(other)
        scheduler.discard(other)
        scheduler.resumeProducing()
        self.assertEqual(other.pulled, 0)

    def test_wake_from_inside_a_write(self) -> None:
        # In memory a peer may answer (credit) from inside write: no recursion, no loss.
        scheduler, transport = make()
        a, b = Source("a", 2), Source("b", 2)

        def on_write(kind: MessageType, payload: bytes) -> None:
            if payload == b"a:1":
                scheduler.wake(b)
                scheduler.send(M.CDRS, b"c1")

        transport.on_write = on_write
        scheduler.wake(a)
        self.assertEqual(sorted(transport.names()), ["a:1", "a:2", "b:1", "b:2", "c1"])
        self.assertEqual(transport.names()[:2], ["a:1", "c1"])

    def test_close_goes_after_the_queued_records_and_ends_output(self) -> None:
        scheduler, transport = make()
        scheduler.pauseProducing()
        scheduler.send(M.CDRS, b"c1")
        source = Source("a", 10)
        scheduler.wake(source)
        scheduler.send(M.CLOSE, b"bye")
        self.assertEqual(transport.names(), ["c1", "bye"])
        self.assertTrue(scheduler.stopped)
        scheduler.resumeProducing()
        scheduler.send(M.CDRS, b"c2")
        scheduler.send(M.PING, b"p")
        scheduler.wake(Source("b", 1))
        self.assertEqual(transport.names(), ["c1", "bye"])
        self.assertEqual(source.pulled, 0)

    def test_stop_drops_what_is_queued(self) -> None:
        scheduler, transport = make()
        scheduler.pauseProducing()
        scheduler.send(M.CDRS, b"c1")
        scheduler.wake(Source("a", 1))
        scheduler.stopProducing()
        self.assertEqual(scheduler.counters()["queued_records"], 0)
        self.assertEqual(scheduler.sources, 0)
        scheduler.resumeProducing()
        self.assertEqual(transport.frames, [])

    def test_flush_ignores_the_pause(self) -> None:
        scheduler, transport = make()
        scheduler.pauseProducing()
        scheduler.send(M.CDRS, b"c1")
        scheduler.send(M.STATS, b"s")
        scheduler.flush()
        self.assertEqual(transport.names(), ["c1", "s"])
        self.assertEqual(scheduler.counters()["max_queued_bytes"], 3)
