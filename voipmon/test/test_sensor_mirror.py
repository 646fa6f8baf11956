"""Tests for voipmon.sensor.mirror: batches, window, acks, resends, buffer limits, END."""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from voipmon.protocols.wire import PACKET_RECORD, MessageType, ProtocolError, decode_packets
from voipmon.sensor.mirror import MirrorUplink
from voipmon.sources.interfaces import IFlowControlledSink
from voipmon.test.dispatching import to_sensor
from voipmon.test.fakes_channel import FakeMessageTransport, ack


class MirrorUplinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.uplink = MirrorUplink(self.clock, max_buffer_bytes=100_000, batch_bytes=1000,
                                   batch_packets=5, window=2)
        self.transport = FakeMessageTransport({"window": 8})
        self.addCleanup(self.cleanup)

    def cleanup(self) -> None:
        self.uplink.seal()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def add(self, count: int, size: int = 100, linktype: int = 1, ts: float = 1.0) -> None:
        for i in range(count):
            self.assertTrue(self.uplink.feed(ts + i, linktype, bytes([i % 256]) * size))

    def seqs(self, transport: FakeMessageTransport | None = None) -> list[int]:
        transport = transport or self.transport
        return [decode_packets(body)[0] for kind, body in transport.take()
                if kind == MessageType.PACKETS]

    def test_batches_by_count_and_timer(self) -> None:
        """Five packets make a batch; a partial batch goes after 50 ms."""
        self.uplink.attach(self.transport)
        self.add(7, size=10)
        self.assertEqual(self.seqs(), [1])
        self.clock.advance(0.049)
        self.assertEqual(self.transport.sent, [])
        self.clock.advance(0.001)
        [(_kind, body)] = self.transport.take()
        seq, linktype, packets = decode_packets(body)
        self.assertEqual((seq, linktype, len(packets)), (2, 1, 2))
        self.assertEqual(packets[0], (6.0, 1, b"\x05" * 10))

    def test_batches_by_size(self) -> None:
        self.uplink.attach(self.transport)
        self.add(2, size=600)
        self.assertEqual(self.seqs(), [1])

    def test_bulk_records(self) -> None:
        """feed_all takes a whole slice of records: batches, link types and drops as
        packet by packet."""
        uplink = MirrorUplink(self.clock, max_buffer_bytes=12 * (PACKET_RECORD.size + 10),
                              batch_packets=5, window=8)
        uplink.attach(self.transport)
        records = [(float(i), 1 if i < 7 else 113, bytes([i]) * 10) for i in range(14)]
        self.assertEqual(uplink.feed_all(records), 12)
        self.assertEqual((uplink.packets, uplink.dropped), (12, 2))
        self.clock.advance(0.05)
        batches = [decode_packets(b) for _, b in self.transport.take()]
        self.assertEqual([(s, lt, len(p)) for s, lt, p in batches],
                         [(1, 1, 5), (2, 1, 2), (3, 113, 5)])
        self.assertEqual(batches[2][2][0], (7.0, 113, b"\x07" * 10))
        uplink.seal()

    def test_linktype_change_seals(self) -> None:
        """A batch holds one link type; a change starts a new batch."""
        self.uplink.attach(self.transport)
        self.add(2, size=10, linktype=1)
        self.add(1, size=10, linktype=113)
        self.clock.advance(0.05)
        batches = [decode_packets(b) for _, b in self.transport.take()]
        self.assertEqual([(s, lt, len(p)) for s, lt, p in batches], [(1, 1, 2), (2, 113, 1)])

    def test_window_bounds_inflight(self) -> None:
        """With a window of two, the third batch waits for an ack."""
        self.uplink.attach(self.transport)
        self.add(20, size=10)
        self.assertEqual(self.seqs(), [1, 2])
        to_sensor(self.uplink, *ack(MessageType.PACKETS_ACK, upto=1))
        self.assertEqual(self.seqs(), [3])
        to_sensor(self.uplink, *ack(MessageType.PACKETS_ACK, upto=3))
        self.assertEqual(self.seqs(), [4])
        self.assertEqual(self.uplink.packets_acked, 15)

    def test_bad_acks(self) -> None:
        self.uplink.attach(self.transport)
        self.add(10, size=10)
        for upto in (0, 3):
            self.assertRaises(ProtocolError, to_sensor, self.uplink,
                              *ack(MessageType.PACKETS_ACK, upto=upto))
        self.assertRaises(ProtocolError, to_sensor, self.uplink,
                          *ack(MessageType.END_ACK, cdrs=0))
        self.assertRaises(ProtocolError, to_sensor, self.uplink,
                          *ack(MessageType.CDR_ACK, upto=1))

    def test_buffer_full_drops_and_counts(self) -> None:
        """Beyond max_buffer_mem packets are dropped, counted and logged, never silently."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        uplink = MirrorUplink(self.clock, max_buffer_bytes=10 * (PACKET_RECORD.size + 100),
                              batch_packets=5, window=1)
        accepted = [uplink.feed(float(i), 1, b"x" * 100) for i in range(14)]
        self.assertEqual(accepted, [True] * 10 + [False] * 4)
        self.assertEqual(uplink.dropped, 4)
        lines = [formatEvent(e) for e in observer if "dropped" in formatEvent(e)]
        self.assertEqual(lines, ["mirroring buffer full (max_buffer_mem 0 MB): dropped 1 packets,"
                                 " 1 in all"])
        self.clock.advance(10)
        uplink.feed(99.0, 1, b"x" * 100)
        self.assertIn("dropped 4 packets, 5 in all", formatEvent(list(observer)[-1]))
        transport = FakeMessageTransport()
        uplink.attach(transport)
        to_sensor(uplink, *ack(MessageType.PACKETS_ACK, upto=1))
        self.assertTrue(uplink.feed(100.0, 1, b"x" * 100))
        self.assertEqual(uplink.counters()["dropped"], 5)
        uplink.seal()

    def test_resend_after_reconnect(self) -> None:
        """Unacknowledged batches are resent, with the same numbers, to the next central."""
        self.uplink.attach(self.transport)
        self.add(20, size=10)
        to_sensor(self.uplink, *ack(MessageType.PACKETS_ACK, upto=1))
        self.assertEqual(self.seqs(), [1, 2, 3])
        self.uplink.detach(Failure(Exception("lost")))
        again = FakeMessageTransport()
        self.uplink.attach(again)
        self.assertEqual(self.seqs(again), [2, 3])
        to_sensor(self.uplink, *ack(MessageType.PACKETS_ACK, upto=3))
        self.assertEqual(self.seqs(again), [4])

    def test_when_acknowledged(self) -> None:
        """Fires once nothing buffered waits for an acknowledgement (the legacy mirror
        sender's stop waits for it); a cancelled wait is forgotten."""
        self.successResultOf(self.uplink.when_acknowledged())
        self.add(7, size=10)
        waiting = self.uplink.when_acknowledged()
        given_up = self.uplink.when_acknowledged()
        given_up.cancel()
        self.failureResultOf(given_up)
        self.uplink.attach(self.transport)
        self.clock.advance(0.05)
        to_sensor(self.uplink, *ack(MessageType.PACKETS_ACK, upto=1))
        self.assertNoResult(waiting)
        to_sensor(self.uplink, *ack(MessageType.PACKETS_ACK, upto=2))
        self.successResultOf(waiting)
        self.assertEqual(self.uplink._acknowledged, [])

    def test_end_after_everything_acked(self) -> None:
        """END goes only after the last batch is acknowledged; END_ACK finishes."""
        self.uplink.attach(self.transport)
        done = self.uplink.when_done()
        self.add(7, size=10)
        self.uplink.finish_source()
        self.assertEqual(self.seqs(), [1, 2])
        to_sensor(self.uplink, *ack(MessageType.PACKETS_ACK, upto=2))
        [(kind, body)] = self.transport.take()
        self.assertEqual((kind, body), (MessageType.END, {"packets": 7, "dropped": 0}))
        self.assertNoResult(done)
        to_sensor(self.uplink, *ack(MessageType.END_ACK, cdrs=3))
        self.successResultOf(done)
        self.assertEqual(self.uplink.central_cdrs, 3)

    def test_end_resent_after_reconnect(self) -> None:
        """An END whose ack was lost with the connection is sent again."""
        self.uplink.attach(self.transport)
        self.uplink.finish_source()
        self.assertEqual(self.transport.kinds(), [MessageType.END])
        self.uplink.detach(None)
        again = FakeMessageTransport()
        self.uplink.attach(again)
        self.assertEqual(again.kinds(), [MessageType.END])

    def test_room_for_replay(self) -> None:
        """A replay (a push producer) is paused while the buffer is half full and resumed
        by acks; a live source, which registers no producer, just has its drops counted."""
        uplink = MirrorUplink(self.clock, max_buffer_bytes=20 * (PACKET_RECORD.size + 100),
                              batch_packets=5, window=1)
        self.assertTrue(verifyObject(IFlowControlledSink, uplink))
        replay = RecordingProducer()
        uplink.registerProducer(replay, True)
        for i in range(9):
            uplink.feed(float(i), 1, b"x" * 100)
        self.assertEqual(replay.calls, [])
        uplink.feed(9.0, 1, b"x" * 100)
        self.assertFalse(uplink.has_room())
        self.assertEqual(replay.calls, ["pause"])
        uplink.feed(10.0, 1, b"x" * 100)  # what a slice still holds goes in; no second pause
        self.assertEqual(replay.calls, ["pause"])
        transport = FakeMessageTransport()
        uplink.attach(transport)
        self.assertEqual(replay.calls, ["pause"])  # still half full: the batch is in flight
        to_sensor(uplink, *ack(MessageType.PACKETS_ACK, upto=1))
        self.assertTrue(uplink.has_room())
        self.assertEqual(replay.calls, ["pause", "resume"])
        to_sensor(uplink, *ack(MessageType.PACKETS_ACK, upto=2))
        self.assertEqual(replay.calls, ["pause", "resume"])
        uplink.unregisterProducer()
        uplink.seal()


@implementer(IPushProducer)
class RecordingProducer:
    """A push producer that records what its consumer asks of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class CaptureClockTests(SynchronousTestCase):
    """CLOCK: a live sensor's capture clock, never ahead of a packet still buffered."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(500)
        self.uplink = MirrorUplink(self.clock, max_buffer_bytes=100_000, batch_packets=5,
                                   window=2)
        self.transport = FakeMessageTransport({"window": 8, "capture_clock": True})
        self.addCleanup(self.cleanup)

    def cleanup(self) -> None:
        self.uplink.seal()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def add(self, count: int, first_ts: float = 1.0) -> None:
        for i in range(count):
            self.uplink.feed(first_ts + i, 1, b"x" * 20)

    def test_clock_goes_after_every_packet_seen(self) -> None:
        """The batch being filled is sealed and sent first; CLOCK follows it with the
        newest capture time plus the time since it was buffered."""
        self.uplink.attach(self.transport)
        self.add(7)
        self.clock.advance(0.01)
        self.uplink.advance_clock()
        sent = self.transport.take()
        self.assertEqual([kind for kind, _ in sent],
                         [MessageType.PACKETS, MessageType.PACKETS, MessageType.CLOCK])
        self.assertEqual([decode_packets(body)[0] for _, body in sent[:2]], [1, 2])
        self.assertAlmostEqual(sent[2][1]["t"], 7.01)

    def test_clock_held_while_packets_wait_for_the_window(self) -> None:
        """With batches waiting for room in the window no CLOCK goes (it would overtake
        them); once they are sent it goes after them."""
        self.uplink.attach(self.transport)
        self.add(20)
        self.assertEqual(self.transport.kinds(), [MessageType.PACKETS] * 2)
        self.transport.take()
        self.clock.advance(1)
        self.uplink.advance_clock()
        self.assertEqual(self.transport.take(), [])
        to_sensor(self.uplink, *ack(MessageType.PACKETS_ACK, upto=2))
        self.uplink.advance_clock()
        self.assertEqual(self.transport.kinds(),
                         [MessageType.PACKETS, MessageType.PACKETS, MessageType.CLOCK])
        self.assertEqual(self.transport.sent[-1][1], {"t": 21.0})
        self.assertEqual(self.uplink.counters()["capture_clock"], 21.0)

    def test_clock_moves_with_time_and_only_forward(self) -> None:
        """Each tick sends the clock once it has moved; nothing before the first packet."""
        self.uplink.attach(self.transport)
        self.uplink.advance_clock()
        self.assertEqual(self.transport.take(), [])
        self.add(1, first_ts=100.0)
        self.uplink.advance_clock()
        self.uplink.advance_clock()
        self.clock.advance(1)
        self.uplink.advance_clock()
        clocks = [body["t"] for kind, body in self.transport.take() if kind == MessageType.CLOCK]
        self.assertEqual(clocks, [100.0, 101.0])

    def test_no_clock_to_a_central_that_does_not_take_it(self) -> None:
        """A central whose ACCEPT does not offer capture_clock (an older one would close the
        connection on the unknown type) gets no CLOCK; nor does anyone while detached."""
        older = FakeMessageTransport({"window": 8})
        self.uplink.attach(older)
        self.add(3)
        self.clock.advance(1)
        self.uplink.advance_clock()
        self.assertNotIn(MessageType.CLOCK, older.kinds())
        self.uplink.detach(None)
        self.uplink.advance_clock()
        self.uplink.attach(self.transport)
        self.uplink.advance_clock()
        self.assertEqual(self.transport.kinds()[-1], MessageType.CLOCK)

    def test_capability_in_either_form(self) -> None:
        """The central may offer capture_clock in its capabilities or as the flag."""
        for n, info in enumerate(({"capabilities": {"capture_clock": 1}},
                                  {"capture_clock": True})):
            transport = FakeMessageTransport(info)
            self.uplink.attach(transport)
            self.add(1, first_ts=50.0 + 10 * n)
            self.clock.advance(1)
            self.uplink.advance_clock()
            self.assertEqual(transport.kinds()[-1], MessageType.CLOCK)
            self.uplink.detach(None)
        broken = FakeMessageTransport({"capabilities": "all of them"})
        self.uplink.attach(broken)
        self.assertFalse(self.uplink.capture_clock)
