"""Tests for voipmon.central.mirror and the central's MirrorSession: per-sensor analyses,
duplicate batches, acknowledgements only once the CDRs are durable, END."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from voipmon.central.cdrqueue import CentralCdrQueue
from voipmon.central.mirror import MirrorAnalyses
from voipmon.central.sessions import CentralSessions
from voipmon.protocols.handshake import Hello
from voipmon.protocols.wire import MessageType, PacketBatch, ProtocolError
from voipmon.queue import DurableQueue
from voipmon.sensor.mirror import MirrorUplink
from voipmon.sensor.uplink import UplinkFactory
from voipmon.test.dispatching import to_central
from voipmon.test.fakes import Engines, FakeStore
from voipmon.test.fakes_channel import ChannelPair, FakeMessageTransport


def hello(instance: str = "aa" * 8, replay: bool = False, id_sensor: int = 3) -> Hello:
    return Hello(id_sensor, "m", "0.1.0", "mirror", "zstd", 0.0, b"\0" * 32, instance,
                 replay=replay)


def packets_payload(seq: int, frames: list[bytes], linktype: int = 1) -> bytes:
    batch = PacketBatch(linktype)
    for i, frame in enumerate(frames):
        batch.add(100.0 + i, frame)
    return batch.seal(seq)


def cdr_queue(test: SynchronousTestCase, store, clock, **options) -> CentralCdrQueue:
    """A started CentralCdrQueue on a fresh directory, stopped at cleanup."""
    queue = CentralCdrQueue(DurableQueue(test.mktemp()), store, clock, **options)
    test.addCleanup(queue.stop)
    queue.start()
    return queue


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.engines = Engines()
        self.clock = Clock()
        self.store = FakeStore(self.clock)
        self.cdr_queue = cdr_queue(self, self.store, self.clock, batch=2)
        self.mirrors = MirrorAnalyses(self.engines.analyzer, self.cdr_queue, self.clock,
                                      idle_finish=300)
        self.sessions = CentralSessions(self.store, self.clock, mirrors=self.mirrors)
        self.channel = FakeMessageTransport()

    def open(self, **kwargs):
        return self.sessions.open_session(self.channel, hello(**kwargs))


class MirrorSessionTests(Base):
    def test_batch_analysed_and_acked(self) -> None:
        """Packets reach the sensor's analyser in order; the batch is acknowledged."""
        session = self.open()
        to_central(session, MessageType.PACKETS, packets_payload(1, [b"a1", b"b1"], 113))
        self.assertEqual(self.channel.take(), [(MessageType.PACKETS_ACK, {"upto": 1})])
        [analyzer] = self.engines.all
        self.assertEqual(analyzer.id_sensor, 3)
        self.assertEqual(analyzer.frames, [(100.0, 113, b"a1"), (101.0, 113, b"b1")])

    def test_duplicate_batch_ignored_but_acked(self) -> None:
        """A batch resent after a lost ack is acknowledged again but not analysed twice."""
        session = self.open()
        to_central(session, MessageType.PACKETS, packets_payload(1, [b"a"]))
        to_central(session, MessageType.PACKETS, packets_payload(1, [b"a"]))
        self.assertEqual(len(self.engines.all[0].frames), 1)
        self.assertEqual(len(self.channel.take()), 2)
        self.assertEqual(self.mirrors.analyses[3].duplicate_batches, 1)

    def test_engine_error_logged_batch_acked(self) -> None:
        """An analyser bug on one batch is logged; the session goes on."""
        session = self.open()
        to_central(session, MessageType.PACKETS, packets_payload(1, [b"crash"]))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        to_central(session, MessageType.PACKETS, packets_payload(2, [b"x"]))
        self.assertEqual(len(self.channel.take()), 2)

    def test_end_acks_once_durable_even_while_the_database_is_down(self) -> None:
        """END closes the sensor's open calls; END_ACK goes once their CDRs are on the
        central's disk, not before, and without waiting for the database; they are stored
        (for that sensor, pcaps on the central) when it is back."""
        session = self.open()
        to_central(session, MessageType.PACKETS, packets_payload(1, [b"a", b"b", b"c"]))
        self.channel.take()
        self.store.down = True
        to_central(session, MessageType.END, b'{"packets":3,"dropped":0}')
        self.assertEqual(self.channel.take(), [])
        self.assertEqual(self.cdr_queue.queue.buffered, 3)
        self.clock.advance(0)
        self.assertEqual(self.cdr_queue.queue.durable, 3)
        self.assertEqual(self.channel.take(),
                         [(MessageType.END_ACK, {"cdrs": 3, "undelivered": 0})])
        self.assertEqual(len(self.store.cdrs), 0)
        self.store.down = False
        self.clock.advance(5)
        self.assertEqual(len(self.store.cdrs), 3)
        self.assertEqual({on for _, on in self.store.batches}, {"central"})
        self.assertEqual({cdr.id_sensor for cdr in self.store.cdrs.values()}, {3})
        self.assertEqual(self.cdr_queue.depth, 0)

    def test_batch_closing_calls_acked_once_their_cdrs_are_durable(self) -> None:
        """A batch that completes calls is acknowledged only after the CDR queue's flush;
        a later batch completing none waits behind it: acknowledgements keep their order."""
        session = self.open()
        to_central(session, MessageType.PACKETS, packets_payload(1, [b"a", b"b"]))
        self.assertEqual(self.channel.take(), [(MessageType.PACKETS_ACK, {"upto": 1})])
        to_central(session, MessageType.PACKETS, packets_payload(2, [b"end:"]))
        to_central(session, MessageType.PACKETS, packets_payload(3, [b"c"]))
        self.assertEqual(self.channel.take(), [])
        self.assertEqual(self.cdr_queue.queue.durable, 0)
        self.clock.advance(0)
        self.assertEqual(self.cdr_queue.queue.durable, 2)
        self.assertEqual(self.channel.take(), [(MessageType.PACKETS_ACK, {"upto": 2}),
                                               (MessageType.PACKETS_ACK, {"upto": 3})])

    def test_no_ack_while_the_queue_cannot_be_written(self) -> None:
        """A CDR queue that cannot be written (disk full) holds the acknowledgements back,
        so the sensor keeps the packets; they go out once a write succeeds."""
        from voipmon.queue import QueueError

        session = self.open()
        real_flush = self.cdr_queue.queue.flush
        failures = [QueueError("disk full")]

        def flaky_flush() -> int:
            if failures:
                raise failures.pop()
            return real_flush()

        self.cdr_queue.queue.flush = flaky_flush
        to_central(session, MessageType.PACKETS, packets_payload(1, [b"a", b"end:"]))
        self.clock.advance(0)
        self.assertEqual(self.channel.take(), [])
        self.clock.advance(1)
        self.assertEqual(self.channel.take(), [(MessageType.PACKETS_ACK, {"upto": 1})])
        self.assertEqual(len(self.store.cdrs), 1)

    def test_unexpected_message(self) -> None:
        session = self.open()
        self.assertRaises(ProtocolError, to_central, session, MessageType.CDRS, b"{}")
        self.assertRaises(ProtocolError, to_central, session, MessageType.PACKETS, b"x")


class AnalysisLifeTests(Base):
    def test_same_instance_keeps_state(self) -> None:
        """A reconnect of the same process continues its calls."""
        session = self.open()
        to_central(session, MessageType.PACKETS, packets_payload(1, [b"a"]))
        session.connectionLost(Failure(Exception("lost")))
        again = self.open()
        to_central(again, MessageType.PACKETS, packets_payload(2, [b"b"]))
        self.assertEqual(len(self.engines.all), 1)
        self.assertEqual(len(self.engines.all[0].frames), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_restarted_live_sensor_closes_old_calls(self) -> None:
        """A new process of a live sensor: the old calls are closed and stored."""
        to_central(self.open(), MessageType.PACKETS, packets_payload(1, [b"a"]))
        self.open(instance="bb" * 8)
        self.clock.advance(0)
        self.assertTrue(self.engines.all[0].finished)
        self.assertEqual(len(self.store.cdrs), 1)

    def test_restarted_replay_drops_old_state(self) -> None:
        """A restarted replay sends everything again: the old half is dropped, not stored."""
        to_central(self.open(replay=True), MessageType.PACKETS, packets_payload(1, [b"a"]))
        session = self.open(instance="bb" * 8, replay=True)
        self.clock.advance(0)
        self.assertFalse(self.engines.all[0].finished)
        self.assertEqual(len(self.store.cdrs), 0)
        to_central(session, MessageType.PACKETS, packets_payload(1, [b"a"]))
        self.assertEqual(len(self.engines.all), 2)

    def test_idle_sensor_closed_after_timeout(self) -> None:
        """A sensor away for idle_finish seconds has its calls closed."""
        session = self.open()
        to_central(session, MessageType.PACKETS, packets_payload(1, [b"a"]))
        session.connectionLost(Failure(Exception("lost")))
        self.clock.advance(299)
        self.assertFalse(self.engines.all[0].finished)
        self.clock.advance(1)
        self.assertTrue(self.engines.all[0].finished)
        self.clock.advance(0)
        self.assertEqual(len(self.store.cdrs), 1)
        self.assertNotIn(3, self.mirrors.analyses)

    def test_stop_closes_everything(self) -> None:
        """Shutting down closes every sensor's calls and waits until their CDRs are on
        disk (the database up, they are stored too)."""
        to_central(self.open(), MessageType.PACKETS, packets_payload(1, [b"a", b"b"]))
        to_central(self.open(id_sensor=4), MessageType.PACKETS, packets_payload(1, [b"c"]))
        d = self.mirrors.stop()
        self.assertNoResult(d)
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(len(self.store.cdrs), 3)


class EndToEndTests(SynchronousTestCase):
    """A real MirrorUplink and real central sessions over the channel, in memory."""

    def test_replay_mirrored_to_cdrs(self) -> None:
        """Packets go through, END closes the calls, the sensor learns it is done."""
        engines = Engines()
        pair = ChannelPair(handler=None)
        store = FakeStore(pair.clock)
        queue = cdr_queue(self, store, pair.clock)
        mirrors = MirrorAnalyses(engines.analyzer, queue, pair.clock)
        sessions = CentralSessions(store, pair.clock, pair.factory.registry, mirrors)
        pair.factory.handler = sessions
        uplink = MirrorUplink(pair.clock, max_buffer_bytes=1 << 20, batch_packets=10, window=2)
        d = pair.endpoint(mode="mirror", replay=True).connect(UplinkFactory(uplink))
        pair.flush()
        self.successResultOf(d)
        for i in range(95):
            uplink.feed(1000.0 + i, 1, bytes([i % 4]) + b"rtp" * 50)
            pair.flush()
        uplink.finish_source()
        pair.flush()
        pair.clock.advance(0)
        pair.flush()
        self.successResultOf(uplink.when_done())
        self.assertEqual(len(engines.all[0].frames), 95)
        self.assertEqual(uplink.central_cdrs, 4)
        self.assertEqual(len(store.cdrs), 4)
        self.assertEqual(uplink.dropped, 0)
        pair.close_all()
        mirrors.stop()
        sessions.stop()
        queue.stop()
        self.assertEqual(pair.clock.getDelayedCalls(), [])


class CaptureClockTests(Base):
    """CLOCK from a live mirroring sensor moves its analysis on while no packet comes."""

    def test_clock_advances_the_analysis(self) -> None:
        session = self.open()
        to_central(session, MessageType.CLOCK, b'{"t":99.5}')  # nothing to move yet
        to_central(session, MessageType.PACKETS, packets_payload(1, [b"a"]))
        to_central(session, MessageType.CLOCK, b'{"t":105.25}')
        to_central(session, MessageType.CLOCK, b'{"t":106}')
        self.assertEqual(self.engines.all[0].advanced, [105.25, 106.0])

    def test_bad_clock_refused(self) -> None:
        """A CLOCK without a finite time is a protocol error (the channel closes)."""
        session = self.open()
        to_central(session, MessageType.PACKETS, packets_payload(1, [b"a"]))
        for payload in (b'{"t":NaN}', b'{"t":Infinity}', b'{"t":"1"}', b'{"t":true}', b"{}"):
            with self.assertRaises(ProtocolError) as caught:
                to_central(session, MessageType.CLOCK, payload)
            self.assertIn("CLOCK", str(caught.exception))
        self.assertEqual(self.engines.all[0].advanced, [])

    def test_analyser_error_on_advance_logged(self) -> None:
        """An analyser that fails while advancing is logged; the session goes on."""
        session = self.open()
        to_central(session, MessageType.PACKETS, packets_payload(1, [b"a"]))

        def broken(now: float) -> None:
            raise RuntimeError("engine bug")

        self.engines.all[0].advance = broken
        to_central(session, MessageType.CLOCK, b'{"t":200}')
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_clock_refused_from_a_local_processing_sensor(self) -> None:
        local = Hello(5, "l", "0.1.0", "local", "zstd", 0.0, b"\0" * 32, "bb" * 8)
        session = self.sessions.open_session(self.channel, local)
        with self.assertRaises(ProtocolError):
            to_central(session, MessageType.CLOCK, b'{"t":1}')
