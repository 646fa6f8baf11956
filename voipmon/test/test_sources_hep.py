"""The HEP source (voipmon.sources.hep): the pure intake, the sender filter, the registry,
and the listeners on real loopback sockets.

- ``HepIntake``: the spec's example becomes a frame at its own time; malformed messages
  are counted by reason and dropped; the password and capture-id checks; a message
  without a time follows the capture clock; LOG is ignored, not a loss; a failing sink
  is counted, never raised.
- ``HepSource`` on 127.0.0.1: a call sent over UDP and TCP of the same port (one TCP
  connection per direction, cut at every byte boundary) gives the engine the very CDR
  that the same messages give without sockets; TLS on a second port with the spool's
  certificate and the password; garbage closes only its own connection; the allow-list
  refuses other senders (datagrams dropped, connections closed); the warning for an open
  port; pausing stops reading until resumed.
"""

from __future__ import annotations

import dataclasses
import os
import socket

from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from voipmon.analysis.engine import Engine
from voipmon.config import ConfigError, load_sensor_config
from voipmon.packet.decode import Decoder
from voipmon.packet.hep import decode_hep
from voipmon.packet.synth import HepFrames
from voipmon.protocols import tls
from voipmon.records.cdr import Cdr
from voipmon.sensor.mirror import MirrorUplink
from voipmon.sources import registry
from voipmon.sources.hep import HepIntake, HepSource, SenderFilter
from voipmon.sources.registry import SourceSet
from voipmon.test.hepsupport import hep2_message, hep3_message, spec_example
from voipmon.test.live_support import free_udp_port
from voipmon.test.services import build_sensor
from voipmon.test.test_hep_pipeline import CALLEE, CALLER, call_messages

T0 = 1313440459.12


class FrameList:
    """An IFrameSink keeping every frame; ``when(n)`` fires once it holds ``n``."""

    def __init__(self, then: object = None) -> None:
        self.frames: list[tuple[float, int, bytes]] = []
        self._waits: list[tuple[int, defer.Deferred[None]]] = []
        self.then = then
        self.batches: list[int] = []   # the size of each feed_all

    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        self.frames.append((ts, linktype, frame))
        if self.then is not None:
            self.then(ts, linktype, frame)  # type: ignore[operator]
        ready = [d for n, d in self._waits if len(self.frames) >= n]
        self._waits = [(n, d) for n, d in self._waits if len(self.frames) < n]
        for d in ready:  # on the next turn: the source finishes its message first
            reactor.callLater(0, d.callback, None)

    def feed_all(self, records: object) -> int:
        count = 0
        self.batches.append(0)
        for ts, linktype, frame in records:  # type: ignore[attr-defined]
            self.batches[-1] += 1
            self.feed(ts, linktype, frame)
            count += 1
        return count

    def when(self, n: int) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if len(self.frames) >= n:
            d.callback(None)
        else:
            self._waits.append((n, d))
        return d


def payloads(frames: list[tuple[float, int, bytes]]) -> list[tuple[float, bytes]]:
    out: list[tuple[float, bytes]] = []
    decoder = Decoder(lambda d: out.append((d.ts, d.payload)), sip_ports=[5060])
    for ts, linktype, frame in frames:
        decoder.feed(ts, linktype, frame)
    return out


def message(payload: bytes = b"OPTIONS sip:a@b SIP/2.0\r\n\r\n", **kw: object) -> bytes:
    return hep3_message("10.0.0.1", 5060, "10.0.0.2", 5060, payload, **kw)  # type: ignore[arg-type]


class IntakeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.sink = FrameList()

    def intake(self, **options: object) -> HepIntake:
        return HepIntake(self.sink, self.clock.seconds, **options)  # type: ignore[arg-type]

    def test_spec_example_becomes_a_frame_at_its_own_time(self) -> None:
        self.clock.advance(T0)
        intake = self.intake()
        self.assertTrue(intake.message(spec_example()))
        self.assertEqual(payloads(self.sink.frames), [(T0, b"INVITE sip:bob")])
        c = intake.counters()
        self.assertEqual((c["received"], c["decoded"], c["frames"], c["dropped"],
                          c["by_type.1"]), (1, 1, 1, 0, 1))

    def test_malformed_messages_are_counted_and_dropped(self) -> None:
        intake = self.intake()
        good = spec_example()
        for data in (good[:50], b"GET / HTTP/1.1\r\n", good[:-1] + b"", b"HE",
                     message(proto_type=1)[:6] + b"\x00" * 10):
            self.assertFalse(intake.message(data))
        self.assertEqual(self.sink.frames, [])
        c = intake.counters()
        self.assertEqual(c["received"], 5)
        self.assertEqual(c["decoded"], 0)
        self.assertEqual(c["dropped"], 5)
        self.assertEqual({k: v for k, v in c.items() if k.startswith("dropped.")},
                         {"dropped.truncated": 4, "dropped.bad_magic": 1})

    def test_password_must_match_the_auth_key(self) -> None:
        intake = self.intake(password=b"s3cret")
        self.assertFalse(intake.message(message()))
        self.assertFalse(intake.message(message(auth_key=b"s3cre")))
        self.assertFalse(intake.message(hep2_message("10.0.0.1", 5060, "10.0.0.2", 5060,
                                                     b"OPTIONS sip:a@b SIP/2.0\r\n\r\n")))
        self.assertTrue(intake.message(message(auth_key=b"s3cret")))
        self.assertEqual(len(self.sink.frames), 1)
        self.assertEqual(intake.counters()["dropped.auth"], 3)

    def test_capture_ids_as_sent_and_as_sngrep_sends_them(self) -> None:
        intake = self.intake(capture_ids=(4242, 77))
        for capture_id, taken in ((4242, True), (77 << 16, True), (77, True), (5, False),
                                  (77 << 16 | 1, False), (4242 << 16 | 7, False)):
            self.assertEqual(intake.message(message(capture_id=capture_id)), taken,
                             capture_id)
        self.assertEqual(len(self.sink.frames), 3)
        self.assertEqual(intake.counters()["dropped.capture_id"], 3)

    def test_message_without_time_follows_the_capture_clock(self) -> None:
        """HEPv1 has no time: before any timed message it gets the wall clock, after one
        the newest message time plus the wall time elapsed since (never the wall clock)."""
        intake = self.intake()
        v1 = hep2_message("10.0.0.1", 5060, "10.0.0.2", 5060,
                          b"OPTIONS sip:a@b SIP/2.0\r\n\r\n", version=1)
        intake.message(v1)
        intake.message(message(ts=(500, 250000)))
        self.clock.advance(7.0)
        intake.message(v1)
        intake.message(message(ts=(400, 0)))   # older: the clock does not go back
        intake.message(v1)
        self.assertEqual([ts for ts, _, _ in self.sink.frames],
                         [1000.0, 500.25, 507.25, 400.0, 507.25])

    def test_log_and_unknown_types_are_ignored_not_lost(self) -> None:
        intake = self.intake()
        intake.message(message(b"a log line", proto_type=100))
        intake.message(message(b"\x00\x01", proto_type=53))
        c = intake.counters()
        self.assertEqual((c["ignored.log"], c["ignored.type"], c["dropped"], c["frames"]),
                         (1, 1, 0, 0))
        self.assertEqual((c["by_type.100"], c["by_type.53"]), (1, 1))

    def test_a_failing_sink_is_counted(self) -> None:
        class Failing(FrameList):
            def feed(self, ts: float, linktype: int, frame: bytes) -> None:
                if b"boom" in frame:
                    raise RuntimeError("sink down")
                super().feed(ts, linktype, frame)
        self.sink = Failing()
        intake = self.intake()
        for payload in (b"OPTIONS sip:a@b SIP/2.0\r\n\r\n", b"OPTIONS sip:boom@b SIP/2.0\r\n",
                        b"OPTIONS sip:c@d SIP/2.0\r\n\r\n"):
            self.assertTrue(intake.take(message(payload)))
        self.assertEqual(intake.deliver(), 3)
        self.assertEqual(len(self.sink.frames), 2)   # the frames after the failing one go
        self.assertEqual(intake.counters()["sink_errors"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_the_messages_of_a_read_are_one_batch(self) -> None:
        intake = self.intake()
        for _ in range(3):
            intake.take(message())
        self.assertEqual(self.sink.frames, [])
        self.assertEqual(intake.deliver(), 3)
        self.assertEqual((self.sink.batches, len(self.sink.frames)), ([3], 3))
        self.assertEqual(intake.deliver(), 0)   # nothing taken since: no empty batch
        self.assertEqual(self.sink.batches, [3])

    def test_a_time_far_ahead_of_the_wall_clock_is_clamped(self) -> None:
        """A sender whose clock is an hour ahead must not move the engine's clock: its
        message gets the time a message without one gets (the newest accepted time plus
        the wall time since), within ``max_future`` it keeps its own."""
        wall = 1.7e9
        self.clock.advance(wall - self.clock.seconds())
        intake = self.intake(max_future=60.0)
        intake.message(message(ts=(int(wall) - 100, 0)))      # an agent 100 s behind
        self.clock.advance(5.0)
        intake.message(message(ts=(int(wall) + 3600, 0)))     # an hour ahead: clamped
        intake.message(message(ts=(int(wall) + 60, 0)))       # 55 s ahead: its own time
        intake.message(message(ts=(int(wall) + 66, 0)))       # 61 s ahead: clamped
        self.assertEqual([ts for ts, _, _ in self.sink.frames],
                         [wall - 100, wall - 95, wall + 60, wall + 60])
        c = intake.counters()
        self.assertEqual((c["clamped"], c["clamped.future"], c["frames"], c["dropped"]),
                         (2, 2, 4, 0))
        self.assertEqual(intake.latest_ts, wall + 60)

    def test_a_far_future_time_before_any_other_gets_the_wall_clock(self) -> None:
        intake = self.intake(max_future=0.0)
        intake.message(message(ts=(1001, 0)))
        intake.message(message(ts=(999, 0)))
        self.assertEqual([ts for ts, _, _ in self.sink.frames], [1000.0, 999.0])
        self.assertEqual(intake.counters()["clamped.future"], 1)


class SenderFilterTests(SynchronousTestCase):
    def test_addresses_and_networks(self) -> None:
        f = SenderFilter(["10.1.0.0/16", "192.0.2.7", "2001:db8::/32"])
        self.assertTrue(f)
        for host, allowed in (("10.1.2.3", True), ("10.2.0.1", False), ("192.0.2.7", True),
                              ("192.0.2.8", False), ("::ffff:10.1.9.9", True),
                              ("2001:db8:1::5", True), ("fe80::1%lo", False),
                              ("not-an-address", False)):
            self.assertEqual(f.allows(host), allowed, host)

    def test_empty_allows_anyone(self) -> None:
        self.assertFalse(SenderFilter([]))
        self.assertTrue(SenderFilter([]).allows("203.0.113.1"))


def settings(**keys: str):
    text = "".join(f"{k} = {v}\n" for k, v in {"id_sensor": "1", "server_destination":
                                                "127.0.0.1", "server_password": "pw",
                                                **keys}.items())
    return load_sensor_config("sensor.conf", text=text)


class RegistryTests(SynchronousTestCase):
    def test_hep_alone_needs_no_interface(self) -> None:
        source = registry.from_config(settings(hep_bind_port="9060", hep_password="x",
                                               hep_capture_id="1, 0x10"), FrameList(),
                                      reactor)
        self.assertIsInstance(source, HepSource)
        assert isinstance(source, HepSource)
        self.assertEqual((source.host, source.port, source.tls_port), ("127.0.0.1", 9060,
                                                                       None))
        self.assertEqual(source.intake.capture_ids, {1, 16})
        self.assertTrue(source.live)

    def test_hep_beside_live_capture(self) -> None:
        source = registry.from_config(settings(hep_bind_port="9060", interface="lo"),
                                      FrameList(), reactor)
        self.assertIsInstance(source, SourceSet)
        self.assertEqual([s.name for s in source.sources], ["live lo", "hep 127.0.0.1:9060"])

    def test_replay_stands_alone(self) -> None:
        source = registry.from_config(settings(hep_bind_port="9060"), FrameList(), reactor,
                                      read_pcap="x.pcap")
        self.assertNotIsInstance(source, HepSource)

    def test_bad_values_name_their_key(self) -> None:
        for key, value in (("hep_capture_id", "abc"), ("hep_capture_id", "-1"),
                           ("hep_allow", "10.0.0.0/33")):
            error = self.assertRaises(ConfigError, registry.from_config,
                                      settings(hep_bind_port="9060", **{key: value}),
                                      FrameList(), reactor)
            self.assertIn(f"{key} = ", str(error))

    def test_a_bounded_sink_can_pause_it(self) -> None:
        uplink = MirrorUplink(Clock(), max_buffer_bytes=1 << 18)
        source = registry.from_config(settings(hep_bind_port="9060"), uplink, reactor)
        self.assertIs(uplink.producer, source)


class _Sender(protocol.Protocol):
    def __init__(self) -> None:
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)


class LoopbackTests(TestCase):
    """Real sockets on 127.0.0.1."""

    timeout = 60

    def start(self, sink: FrameList, **options: object) -> HepSource:
        source = HepSource(sink, reactor, host="127.0.0.1", port=0, **options)  # type: ignore[arg-type]
        source.startService()
        self.addCleanup(source.stopService)
        return source

    @defer.inlineCallbacks
    def connect(self, port: int, bind: str = "127.0.0.1", tls_port: bool = False) -> object:
        connected: defer.Deferred[_Sender] = defer.Deferred()

        class Factory(protocol.ClientFactory):
            def buildProtocol(self, addr: object) -> _Sender:
                p = _Sender()
                reactor.callLater(0, connected.callback, p)
                return p

            def clientConnectionFailed(self, connector: object, reason: object) -> None:
                connected.errback(reason)  # type: ignore[arg-type]

        if tls_port:
            reactor.connectSSL("127.0.0.1", port, Factory(), ssl.CertificateOptions(),
                               bindAddress=(bind, 0))
        else:
            reactor.connectTCP("127.0.0.1", port, Factory(), bindAddress=(bind, 0))
        sender = yield connected
        self.addCleanup(lambda: sender.transport.loseConnection() or sender.closed)
        return sender

    def udp(self, bind: str = "127.0.0.1") -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((bind, 0))
        self.addCleanup(sock.close)
        return sock

    @defer.inlineCallbacks
    def test_a_call_over_udp_and_tcp_of_one_port(self) -> None:
        """SIP over TCP (HEP over TCP, a stream per direction cut at every possible
        place), RTP and RTCP over UDP, on the same port: the engine makes the CDR the same
        messages make without sockets."""
        msgs = call_messages("loop@hep", CALLER, CALLEE, 1.7e9)

        def encode(ts: float, src: tuple[str, int], dst: tuple[str, int], kind: int,
                   payload: bytes) -> bytes:
            return hep3_message(src[0], src[1], dst[0], dst[1], payload,
                                ts=(int(ts), round(ts % 1 * 1e6)), proto_type=kind,
                                ip_proto=6 if kind == 1 else 17)

        expected = engine_cdrs([encode(*m) for m in msgs])
        engine, cdrs = new_engine()
        sink = FrameList(engine.feed)
        source = self.start(sink)
        tcp = {CALLER: (yield self.connect(source.port)), CALLEE: (yield self.connect(
            source.port))}
        udp = self.udp()
        for m in msgs:
            data = encode(*m)
            before = len(sink.frames)
            if m[3] == 1:
                conn = tcp[m[1]]
                for i in range(len(data)):   # a byte at a time: every cut
                    conn.transport.write(data[i:i + 1])
            else:
                udp.sendto(data, ("127.0.0.1", source.port))
            # in order: each message is in before the next is sent
            yield sink.when(before + 1)
        engine.finish()
        self.assertEqual([dataclasses.asdict(c) for c in cdrs],
                         [dataclasses.asdict(c) for c in expected])
        c = source.counters()
        self.assertEqual((c["received"], c["dropped"], c["tcp.opened"], c["tcp_open"]),
                         (len(msgs), 0, 2, 2))

    @defer.inlineCallbacks
    def test_tls_port_with_the_spool_certificate_and_password(self) -> None:
        spool = os.path.abspath(self.mktemp())
        sink = FrameList()
        source = self.start(sink, tls_port=0, password="s3cret",
                            certificate=lambda: tls.load_or_create(spool))
        conn = yield self.connect(source.tls_port, tls_port=True)
        conn.transport.write(message(auth_key=b"wrong") + message(auth_key=b"s3cret"))
        yield sink.when(1)
        c = source.counters()
        self.assertEqual((c["received"], c["dropped.auth"], c["frames"]), (2, 1, 1))

    @defer.inlineCallbacks
    def test_garbage_closes_only_its_connection(self) -> None:
        sink = FrameList()
        source = self.start(sink)
        good = yield self.connect(source.port)
        bad = yield self.connect(source.port)
        good.transport.write(message()[:20])
        bad.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        yield bad.closed
        good.transport.write(message()[20:] + message())
        yield sink.when(2)
        c = source.counters()
        self.assertEqual((c["tcp.garbage"], c["dropped.stream_bad_magic"], c["tcp_open"]),
                         (1, 1, 1))
        self.assertFalse(good.closed.called)

    @defer.inlineCallbacks
    def test_allow_list_refuses_other_senders(self) -> None:
        sink = FrameList()
        source = self.start(sink, allow=["127.0.0.2"])
        refused = yield self.connect(source.port, bind="127.0.0.1")
        yield refused.closed
        self.udp("127.0.0.1").sendto(message(b"OPTIONS sip:refused SIP/2.0\r\n\r\n"),
                                     ("127.0.0.1", source.port))
        self.udp("127.0.0.2").sendto(message(), ("127.0.0.1", source.port))
        allowed = yield self.connect(source.port, bind="127.0.0.2")
        allowed.transport.write(message())
        yield sink.when(2)
        c = source.counters()
        self.assertEqual((c["dropped.not_allowed"], c["tcp.refused"], c["received"]),
                         (2, 1, 2))
        self.assertNotIn(b"refused", b"".join(p for _, p in payloads(sink.frames)))

    @defer.inlineCallbacks
    def test_pause_stops_reading_until_resumed(self) -> None:
        sink = FrameList()
        source = self.start(sink)
        conn = yield self.connect(source.port)
        source.pauseProducing()
        conn.transport.write(message())
        udp = self.udp()
        udp.sendto(message(), ("127.0.0.1", source.port))
        # a marker through a second source shows a reactor turn has read the sockets
        other = FrameList()
        marker = self.start(other)
        udp.sendto(message(), ("127.0.0.1", marker.port))
        yield other.when(1)
        self.assertEqual(sink.frames, [])
        source.resumeProducing()
        yield sink.when(2)

    @defer.inlineCallbacks
    def test_the_messages_of_one_read_are_one_batch(self) -> None:
        """Datagrams waiting in the socket are read in one turn and reach the sink in one
        feed_all; so do the messages of one TCP read."""
        sink = FrameList()
        source = self.start(sink)
        udp = self.udp()
        for _ in range(5):
            udp.sendto(message(), ("127.0.0.1", source.port))
        yield sink.when(5)
        self.assertEqual(sink.batches, [5])
        conn = yield self.connect(source.port)
        conn.transport.write(message() * 3)
        yield sink.when(8)
        self.assertEqual(sink.batches, [5, 3])

    def test_a_receive_buffer_the_kernel_caps_is_warned_about(self) -> None:
        """Asking more than net.core.rmem_max: the granted size is counted and a warning
        names the sysctl to raise; asking less: no warning."""
        warnings: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_level") == LogLevel.warn and "receive buffer" in \
                    event.get("log_format", ""):
                warnings.append(event["log_format"].format(**event))
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        with open("/proc/sys/net/core/rmem_max") as f:
            rmem_max = int(f.read())
        small = self.start(FrameList(), tcp=False, udp_rcvbuf=64 << 10)
        self.assertEqual((small.counters()["udp_rcvbuf"], warnings), (64 << 10, []))
        big = self.start(FrameList(), tcp=False, udp_rcvbuf=rmem_max + (1 << 20))
        self.assertEqual(big.counters()["udp_rcvbuf"], rmem_max)
        self.assertEqual(len(warnings), 1)
        self.assertIn(f"granted {rmem_max}", warnings[0])
        self.assertIn("net.core.rmem_max", warnings[0])

    def test_open_port_is_warned_about(self) -> None:
        warnings: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_level") == LogLevel.warn and "HEP port" in \
                    event.get("log_format", ""):
                warnings.append(event["log_format"])
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        stopped = []
        for host, options in (("0.0.0.0", {"password": "x"}),
                              ("0.0.0.0", {"allow": ["10.0.0.0/8"]}),
                              ("127.0.0.1", {}), ("0.0.0.0", {})):
            source = HepSource(FrameList(), reactor, host=host, port=0, **options)  # type: ignore[arg-type]
            source.listen()
            stopped.append(source.stopService())
        self.assertEqual(len(warnings), 1)
        return defer.gatherResults(stopped)


def new_engine() -> tuple[Engine, list[Cdr]]:
    cdrs: list[Cdr] = []
    return Engine(id_sensor=1, on_cdr=cdrs.append), cdrs


def engine_cdrs(messages: list[bytes]) -> list[Cdr]:
    engine, cdrs = new_engine()
    frames = HepFrames(engine.feed)
    for data in messages:
        msg = decode_hep(data)
        frames.feed(msg, msg.ts)  # type: ignore[arg-type]
    engine.finish()
    return cdrs


class _Unreachable:
    def connect(self, factory: object) -> defer.Deferred[object]:
        return defer.fail(ConnectionRefusedError("no central in this test"))


class SensorClockTests(TestCase):
    """A HEP-only sensor (no interface), as its tap wires it, timers on a Clock."""

    timeout = 60

    def test_quiet_input_moves_the_engine_clock_by_wall_time_only(self) -> None:
        """HEP from an agent 5000 s behind: while the input is quiet the engine's clock
        moves on from the last message by the wall time elapsed, so an answered call is
        still open 10 s later and closes by rtptimeout (300 s) of its own time."""
        clock = Clock()
        t = 1.7e9
        clock.advance(t + 5000.0)
        spool = os.path.abspath(self.mktemp())
        svc = build_sensor(settings(hep_bind_port=str(free_udp_port()), spooldir=spool,
                                    managerport="0"), reactor, clock=clock,
                           connect=lambda d: _Unreachable())  # type: ignore[arg-type,return-value]
        self.assertIsInstance(svc.source, HepSource)
        svc.startService()
        self.addCleanup(svc.stopService)
        engine = svc.engine
        assert engine is not None
        msgs = [m for m in call_messages("quiet@hep", CALLER, CALLEE, t) if m[0] < t + 3.0]
        for ts, src, dst, kind, payload in msgs:
            svc.source.intake.message(hep3_message(  # type: ignore[attr-defined]
                src[0], src[1], dst[0], dst[1], payload, ts=(int(ts), round(ts % 1 * 1e6)),
                proto_type=kind))
        last = max(m[0] for m in msgs)
        start = engine.now   # the engine follows frames in one-second steps
        self.assertTrue(last - 1.0 <= start <= last, (start, last))
        clock.advance(1.0)
        clock.advance(10.0)
        self.assertEqual(engine.now, start + 10.0)
        self.assertEqual(len(engine.active_calls()), 1)
        clock.pump([1.0] * 289)
        self.assertEqual(len(engine.active_calls()), 1)
        clock.pump([1.0] * 3)
        self.assertEqual(engine.active_calls(), [])
        self.assertEqual(svc.queue.depth, 1)  # type: ignore[union-attr]
        self.assertLess(engine.now, t + 400.0)

    def test_a_far_future_message_does_not_move_the_engine_clock(self) -> None:
        """A message timed a day ahead of the wall clock (a sender with a wrong clock)
        after a call from an agent 5000 s behind: it is clamped, so the engine's clock
        stays at the call's time and the answered call stays open."""
        clock = Clock()
        t = 1.7e9
        clock.advance(t + 5000.0)
        svc = build_sensor(settings(hep_bind_port=str(free_udp_port()),
                                    spooldir=os.path.abspath(self.mktemp()),
                                    managerport="0"), reactor, clock=clock,
                           connect=lambda d: _Unreachable())  # type: ignore[arg-type,return-value]
        svc.startService()
        self.addCleanup(svc.stopService)
        engine = svc.engine
        assert engine is not None
        intake = svc.source.intake  # type: ignore[attr-defined]
        for ts, src, dst, kind, payload in call_messages("future@hep", CALLER, CALLEE, t):
            if ts < t + 3.0:
                intake.message(hep3_message(src[0], src[1], dst[0], dst[1], payload,
                                            ts=(int(ts), round(ts % 1 * 1e6)),
                                            proto_type=kind))
        start = engine.now
        intake.message(message(ts=(int(t) + 5000 + 86400, 0)))
        self.assertEqual(intake.counters()["clamped.future"], 1)
        clock.advance(1.0)
        self.assertLessEqual(engine.now, start + 1.0)
        self.assertEqual(len(engine.active_calls()), 1)
