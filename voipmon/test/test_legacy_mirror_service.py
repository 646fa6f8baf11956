"""Tests for the legacy mirror's services (voipmon.sensor.legacy_mirror and
voipmon.central.legacy_mirror): reconnects, buffering, stopping.

Timing runs on task.Clock with the protocols joined in memory; then the same path runs
over real TCP on 127.0.0.1 with a bundled SIPp capture.
"""

from __future__ import annotations

import os
import socket

import dpkt
from twisted.internet import defer, reactor, task
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from voipmon.analysis.engine import Engine
from voipmon.central.cdrqueue import CentralCdrQueue
from voipmon.central.legacy_mirror import CannotListen, LegacyMirrorReceiver, receiver_service
from voipmon.config import Destination, load_central_config, load_sensor_config
from voipmon.queue import DurableQueue
from voipmon.records.cdr import Cdr
from voipmon.sensor.legacy_mirror import LegacyMirrorSender, sender_service
from voipmon.spool.deadletter import DeadLetters
from voipmon.test.common import data_path
from voipmon.test.fakes import Engines, FakeStore, RecordingEngine
from voipmon.test.mirror_fakes import PASSWORD, make_pair

EN10MB = 1
T0 = 1_700_000_000.0


class FakePort:
    def stopListening(self) -> None:
        return None


def stopped(sender: LegacyMirrorSender, endpoint) -> defer.Deferred:
    """Stop ``sender``, letting its in-memory connection close."""
    stopping = sender.stopService()
    endpoint.flush()
    return stopping


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(T0)

    def start(self, **kwargs):
        sender, receiver, endpoint, engines = make_pair(self.clock, **kwargs)
        receiver.port = FakePort()  # listening is tested over real TCP below
        receiver.startService()
        sender.startService()
        endpoint.flush()
        return sender, receiver, endpoint, engines

    def test_resend_after_reconnect_loses_and_doubles_nothing(self) -> None:
        sender, receiver, endpoint, engines = self.start()
        for i in range(3):
            sender.feed(T0 + i, EN10MB, b"a%d" % i)
        sender.flush()
        pump = endpoint.pumps[0]
        pump.pump()            # the batch reaches the receiver ...
        pump.serverIO.stream = []  # ... but its acknowledgement is lost with the link
        pump.serverIO.loseConnection()
        pump.flush()
        self.assertFalse(sender.stats()["connected"])
        self.assertEqual(sender.stats()["unacknowledged"], 3)
        sender.feed(T0 + 3, EN10MB, b"b0")  # captured while disconnected
        self.clock.advance(1.0)             # ClientService retries
        endpoint.flush()
        sender.flush()
        endpoint.flush()
        frames = [f for _, _, f in engines.made[7].frames]
        self.assertEqual(frames, [b"a0", b"a1", b"a2", b"b0"])
        sensor = receiver.stats()["sensors"][7]
        self.assertEqual((sensor["duplicate_batches"], sensor["packets"]), (1, 4))
        self.assertEqual(sender.stats()["unacknowledged"], 0)
        self.assertEqual(sender.stats()["acknowledged"], 4)
        self.successResultOf(stopped(sender, endpoint))
        receiver.stopService()

    def test_new_sender_process_starts_its_numbering_afresh(self) -> None:
        sender, receiver, endpoint, engines = self.start()
        sender.feed(T0, EN10MB, b"first")
        sender.flush()
        endpoint.flush()
        self.successResultOf(stopped(sender, endpoint))
        restarted = LegacyMirrorSender(Destination("127.0.0.1", 1), id_sensor=7, name="edge-7",
                                       password=PASSWORD, max_buffer_mb=1, reactor=self.clock,
                                       clock=self.clock, endpoint=endpoint)
        restarted.startService()
        endpoint.flush()
        restarted.feed(T0 + 1, EN10MB, b"second")
        restarted.flush()
        endpoint.flush()
        self.assertEqual([f for _, _, f in engines.made[7].frames], [b"first", b"second"])
        self.assertEqual(len(engines.made), 1)  # the same engine: calls survive reconnects
        self.successResultOf(stopped(restarted, endpoint))
        receiver.stopService()

    def test_full_buffer_is_logged_once_and_counted(self) -> None:
        sender, receiver, endpoint, _engines = self.start(max_buffer_mb=1)
        endpoint.refuse = True
        endpoint.pumps[0].clientIO.loseConnection()
        endpoint.flush()
        frame = bytes(60_000)
        with capturedLogs() as events:
            for _ in range(40):
                sender.feed(T0, EN10MB, frame)
        stats = sender.stats()
        self.assertEqual(stats["packets"] + stats["dropped"], 40)
        self.assertGreater(stats["dropped"], 20)
        full = [e for e in events if "buffer full" in e["log_format"]]
        self.assertEqual(len(full), 1)
        self.assertEqual(full[0]["log_level"].name, "warn")
        self.assertLessEqual(stats["buffer_bytes"], 1 << 20)
        sender.client.stopService()
        receiver.stopService()

    def test_stop_waits_for_the_acknowledgement(self) -> None:
        sender, receiver, endpoint, _engines = self.start()
        sender.feed(T0, EN10MB, b"last words")
        stopping = sender.stopService()
        self.assertNoResult(stopping)
        with capturedLogs() as events:
            endpoint.flush()
            self.successResultOf(stopping)
        self.assertEqual([e for e in events if "they are lost" in e["log_format"]], [])
        self.assertEqual(sender.stats()["acknowledged"], 1)
        receiver.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_while_connecting_still_delivers(self) -> None:
        sender, receiver, endpoint, engines = make_pair(self.clock)
        receiver.port = FakePort()
        receiver.startService()
        endpoint.refuse = True
        sender.startService()
        sender.feed(T0, EN10MB, b"early")
        stopping = sender.stopService()
        self.assertNoResult(stopping)
        endpoint.refuse = False
        self.clock.advance(1.0)  # the ClientService's next attempt
        endpoint.flush()
        self.successResultOf(stopping)
        self.assertEqual([f for _, _, f in engines.made[7].frames], [b"early"])
        receiver.stopService()

    def test_stop_gives_up_after_the_timeout_and_says_what_is_lost(self) -> None:
        sender, receiver, endpoint, _engines = self.start(stop_timeout=5.0)
        sender.feed(T0, EN10MB, b"x")
        sender.feed(T0, EN10MB, b"y")
        with capturedLogs() as events:
            stopping = sender.stopService()
            self.clock.advance(4.9)
            self.assertNoResult(stopping)
            self.clock.advance(0.1)
            endpoint.flush()
            self.successResultOf(stopping)
        lost = [e for e in events if "they are lost" in e["log_format"]]
        self.assertEqual(lost[0]["count"], 2)
        receiver.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_receiver_advances_engines_and_finishes_them(self) -> None:
        sender, receiver, endpoint, engines = self.start()
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        engine = engines.made[7]
        self.assertEqual(engine.advanced, [T0 + 1.0, T0 + 2.0])
        receiver.stopService()
        endpoint.flush()
        self.assertTrue(engine.finished)
        self.assertFalse(receiver.stats()["sensors"][7]["connected"])
        self.successResultOf(stopped(sender, endpoint))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_advance_survives_an_engine_error(self) -> None:
        _sender, receiver, _endpoint, engines = self.start()
        engine = engines.made[7]
        engine.advance = lambda now: 1 / 0
        self.clock.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.clock.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        receiver.stopService()

    def test_from_config(self) -> None:
        """Both services from their settings: the sender fed by the sensor's source, the
        receiver on mirror_bind (absent without it)."""
        spool = self.mktemp()
        sensor = load_sensor_config("s.conf", text=(
            "id_sensor = 9\nname_sensor = edge\nserver_password = pw\ninterface = lo\n"
            "mirror_destination = 127.0.0.1:6001\nmax_buffer_mem = 3\n"))
        self.assertEqual(sensor.channel.server_destination, ())  # a mirror sender needs no central
        top = sender_service(sensor, MemoryReactorClock())
        sender, source = list(top)
        self.assertIsInstance(sender, LegacyMirrorSender)
        self.assertIs(source.sink, sender)
        self.assertEqual(sender.destination, Destination("127.0.0.1", 6001))
        self.assertEqual(sender.uplink.max_buffer_bytes, 3 << 20)
        text = (f"server_bind = 0.0.0.0\nserver_password = pw\nspooldir = {spool}\n"
                f"mirror_connect_maximum_time_diff_s = 5\n")
        queue = CentralCdrQueue(DurableQueue(os.path.join(spool, "q")), FakeStore(),
                                self.clock)
        central = load_central_config("c.conf", text=text)
        self.assertIsNone(receiver_service(central, queue, DeadLetters(None), self.clock))
        central = load_central_config("c.conf", text=text + "mirror_bind = 127.0.0.1:6001\n")
        receiver = receiver_service(central, queue, DeadLetters(None), self.clock)
        self.assertEqual((receiver.bind, receiver.max_time_diff),
                         (Destination("127.0.0.1", 6001), 5.0))
        engine = receiver.engine_factory(9, "edge")
        self.assertEqual((engine.id_sensor, engine.sip_ports), (9, frozenset({5060})))
        queue.stop()


class CountingEngine(RecordingEngine):
    """Fires ``done`` once it has ``expect`` frames."""

    expect = 0
    done: defer.Deferred

    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        super().feed(ts, linktype, frame)
        if len(self.frames) == self.expect:
            self.done.callback(None)


class LoopbackTests(TestCase):
    """Sender and receiver over real TCP on 127.0.0.1, with a real capture."""

    timeout = 30

    def test_real_capture_over_tcp(self) -> None:
        with open(data_path("sipp_uac_pcap_rtp_echo_lo_3calls.pcap"), "rb") as handle:
            reader = dpkt.pcap.Reader(handle)
            packets = [(ts, bytes(frame)) for ts, frame in reader]
        done: defer.Deferred[None] = defer.Deferred()
        engines: dict[int, CountingEngine] = {}

        def factory(id_sensor: int, name: str) -> CountingEngine:
            engine = engines[id_sensor] = CountingEngine(id_sensor, name)
            engine.expect, engine.done = len(packets), done
            return engine

        receiver = LegacyMirrorReceiver(Destination("127.0.0.1", 0), password=PASSWORD,
                                        max_time_diff=2.0, engine_factory=factory,
                                        reactor=reactor)
        receiver.startService()
        self.addCleanup(receiver.stopService)
        port = receiver.port.getHost().port
        sender = LegacyMirrorSender(Destination("127.0.0.1", port), id_sensor=3, name="lo",
                                    password=PASSWORD, max_buffer_mb=16, reactor=reactor)
        sender.startService()
        for ts, frame in packets:
            sender.feed(ts, EN10MB, frame)
        timeout = reactor.callLater(20, done.cancel)

        def check(_: object) -> defer.Deferred:
            timeout.cancel()
            self.assertEqual(engines[3].frames, [(ts, EN10MB, f) for ts, f in packets])
            self.assertEqual(engines[3].name, "lo")
            return sender.stopService()

        def acknowledged(_: object) -> None:
            self.assertEqual(sender.stats()["acknowledged"], len(packets))
            self.assertEqual(sender.stats()["dropped"], 0)

        return done.addCallback(check).addCallback(acknowledged)

    def test_calls_analysed_on_the_receiver(self) -> None:
        """A real engine per sensor on the receiver makes the capture's CDRs."""
        with open(data_path("sipp_uac_pcap_rtp_echo_lo_3calls.pcap"), "rb") as handle:
            packets = [(ts, bytes(frame)) for ts, frame in dpkt.pcap.Reader(handle)]
        cdrs: list[Cdr] = []
        engines: dict[int, Engine] = {}

        def factory(id_sensor: int, name: str) -> Engine:
            engine = engines[id_sensor] = Engine(id_sensor=id_sensor, on_cdr=cdrs.append)
            return engine

        receiver = LegacyMirrorReceiver(Destination("127.0.0.1", 0), password=PASSWORD,
                                        max_time_diff=2.0, engine_factory=factory,
                                        reactor=reactor)
        receiver.startService()
        self.addCleanup(lambda: receiver.running and receiver.stopService())
        sender = LegacyMirrorSender(Destination("127.0.0.1", receiver.port.getHost().port),
                                    id_sensor=4, name="edge", password=PASSWORD,
                                    max_buffer_mb=16, reactor=reactor)
        sender.startService()
        for ts, frame in packets:
            sender.feed(ts, EN10MB, frame)

        def check(_: object) -> defer.Deferred:
            self.assertEqual(sender.stats()["acknowledged"], len(packets))
            # The port listens behind an admission gate; the sender went through it.
            self.assertEqual((receiver.gate.totals["done"], receiver.gate.pending), (1, 0))
            stopping = receiver.stopService()  # finishes the engines
            self.assertEqual(sorted(c.lastSIPresponseNum for c in cdrs), [200, 200, 200])
            self.assertEqual({c.id_sensor for c in cdrs}, {4})
            self.assertEqual(sorted(s.received for c in cdrs for s in c.rtp),
                             [10] * 6 + [236] * 6)
            return stopping

        return sender.stopService().addCallback(check)  # stopping waits for the acks

    def test_port_in_use_is_one_clear_error(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            receiver = LegacyMirrorReceiver(Destination("127.0.0.1", port), password="x",
                                            max_time_diff=2.0, engine_factory=Engines(),
                                            reactor=reactor)
            error = self.assertRaises(CannotListen, receiver.listen)
            with capturedLogs():
                exit_ = self.assertRaises(SystemExit, receiver.privilegedStartService)
        self.assertIn(f"mirror_bind 127.0.0.1:{port}: cannot listen", str(error))
        self.assertIn("in use", str(error))
        self.assertEqual(str(exit_), f"voipmon-central: {error}")
        self.assertIsNone(receiver.port)
