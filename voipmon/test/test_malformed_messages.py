"""Hostile JSON on the channel (60024) and the management port (5029): numbers that are not
numbers (NaN, infinities, true, absurd times, thousand-digit integers) and deeply nested
arrays are refused as malformed, with a reason and without a traceback (trial fails a test
that logs one). In memory through the central's real protocol, then over real TLS."""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from voipmon.central.sessions import CentralSessions
from voipmon.config import load_central_config
from voipmon.protocols.handshake import MALFORMED, ClientHandshake, derive_key
from voipmon.protocols.server import SessionRegistry
from voipmon.protocols.wire import (
    MAX_JSON_DEPTH,
    FrameDecoder,
    MessageType,
    ProtocolError,
    decode_json,
    encode_frame,
    encode_json,
)
from voipmon.queue import DurableQueue
from voipmon.sensor.mirror import MirrorUplink
from voipmon.sensor.uplink import CdrUplink
from voipmon.store.testing import make_cdr
from voipmon.test.dispatching import to_central, to_sensor
from voipmon.test.fakes import FakeStore
from voipmon.test.fakes_channel import ChannelPairCase, FakeMessageTransport, ack
from voipmon.test.services import build_central
from voipmon.test.test_central_sessions import batch, hello
from voipmon.test.test_manager_service import LoopbackBase, raw_exchange
from voipmon.test.test_protocols_channel import Echo

# Literal JSON texts for a hello's "time" that must be refused as malformed: not a number,
# not finite (Python's json reads NaN, Infinity and 1e999 as floats), before 1970, after
# 9999, a boolean, a thousand-digit integer.
BAD_TIMES = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"-1", b"-0.5",
             b"253402300800", b"1e300", b"true", b"false", b"null", b'"1700000000"', b"[]",
             b"{}", b"1" + b"0" * 1000]


def nested(depth: int, closed: bool = True) -> bytes:
    return b"[" * depth + (b"]" * depth if closed else b"")


def hello_text(clock_seconds: float, **replace: bytes) -> bytes:
    """A good hello's JSON text for sensor 7 (password "pw"), with fields replaced by raw
    JSON texts."""
    body = ClientHandshake(derive_key("pw"), id_sensor=7, name="edge-1", version="0.1.0",
                           mode="local", compression="zstd", instance="ab" * 8,
                           seconds=lambda: clock_seconds).hello()
    for name in replace:
        body[name] = f"@{name}@"
    text = encode_json(body)
    for name, raw in replace.items():
        text = text.replace(f'"@{name}@"'.encode(), raw)
    return text


# Deep nesting in every form: closed and unclosed, in a field and as the whole message, at
# the bound + 1, at Python's own recursion limit, and as deep as a 64 KiB frame allows.
def deep_hellos(now: float) -> list[bytes]:
    out = []
    for depth in (MAX_JSON_DEPTH + 1, 1000, 30000):
        out.append(hello_text(now, analysis=b'{"x":' + nested(depth) + b"}"))
        out.append(hello_text(now, name=nested(depth)))
        out.append(nested(depth))
        out.append(nested(depth, closed=False))
        out.append(b'{"a":' * min(depth, 10000) + b"1" + b"}" * min(depth, 10000))
    return out


class CentralHelloTests(ChannelPairCase):
    """The central's protocol (server.py) refusing hostile hellos: REJECT 'malformed'."""

    def raw_client(self):
        server = self.pair.factory.buildProtocol(IPv4Address("TCP", "198.51.100.66", 5555))
        server_io = iosim.FakeTransport(server, True,
                                        IPv4Address("TCP", "192.0.2.1", 60024),
                                        IPv4Address("TCP", "198.51.100.66", 5555))
        server.makeConnection(server_io)
        self.addCleanup(lambda: server.connectionLost(None) if not server_io.disconnected
                        else None)
        return server, server_io

    def refused(self, payload: bytes) -> str:
        server, server_io = self.raw_client()
        server.dataReceived(encode_frame(MessageType.HELLO, payload))
        frames = FrameDecoder().feed(server_io.getOutBuffer())
        self.assertEqual([f.kind for f in frames], [MessageType.REJECT], payload[:80])
        body = decode_json(frames[0].kind, frames[0].payload)
        self.assertEqual(body["code"], MALFORMED, payload[:80])
        self.assertTrue(server_io.disconnecting)
        self.assertFalse(server.authenticated)
        self.assertIsNone(self.pair.factory.registry.get(7))
        return body["reason"]

    def test_good_hello_text_is_accepted(self) -> None:
        """The hello these tests break is itself good: the central challenges it."""
        server, server_io = self.raw_client()
        server.dataReceived(encode_frame(MessageType.HELLO,
                                         hello_text(self.pair.clock.seconds())))
        [challenge] = FrameDecoder().feed(server_io.getOutBuffer())
        self.assertEqual(challenge.kind, MessageType.CHALLENGE)

    def test_time_that_is_not_a_sane_number(self) -> None:
        """NaN (was accepted: NaN compares false with the skew limit), infinities (were
        refused as clock skew), 1e999, negative, after 9999, true, a string: malformed."""
        for raw in BAD_TIMES:
            reason = self.refused(hello_text(self.pair.clock.seconds(), time=raw))
            self.assertIn("HELLO", reason, raw)
        self.assertEqual(self.pair.factory.refusals[MALFORMED], len(BAD_TIMES))
        self.assertEqual(self.pair.handler.sessions, [])

    def test_other_numbers_of_the_hello(self) -> None:
        """id_sensor, protocol and the analysis timeouts: no NaN, infinity, true or
        thousand-digit integer gets through."""
        now = self.pair.clock.seconds()
        big = b"1" + b"0" * 1000
        for fields in ({"id_sensor": big}, {"id_sensor": b"7.0"}, {"id_sensor": b"true"},
                       {"protocol": big}, {"protocol": b"-1"}, {"protocol": b"NaN"},
                       {"analysis": b'{"rtptimeout": NaN}'},
                       {"analysis": b'{"rtptimeout": 1e999}'},
                       {"analysis": b'{"absolute_timeout": Infinity}'},
                       {"analysis": b'{"sipwithoutrtptimeout": true}'},
                       {"analysis": b'{"sipport": [5060, 1e999]}'}):
            self.refused(hello_text(now, **fields))

    def test_deep_nesting(self) -> None:
        """Nested arrays or objects deeper than the bound: malformed, no RecursionError."""
        for payload in deep_hellos(self.pair.clock.seconds()):
            reason = self.refused(payload)
            self.assertIn("malformed HELLO message", reason)

    def test_nesting_within_the_bound_is_read(self) -> None:
        """An unknown field nested as deep as allowed does not stop a hello."""
        server, server_io = self.raw_client()
        depth = MAX_JSON_DEPTH - 1  # inside the hello object
        server.dataReceived(encode_frame(MessageType.HELLO, hello_text(
            self.pair.clock.seconds(), future=nested(depth))))
        [challenge] = FrameDecoder().feed(server_io.getOutBuffer())
        self.assertEqual(challenge.kind, MessageType.CHALLENGE)

    def test_deep_proof_after_a_good_hello(self) -> None:
        """A PROOF nested too deep closes the connection with the reason, no traceback."""
        server, server_io = self.raw_client()
        server.dataReceived(encode_frame(MessageType.HELLO,
                                         hello_text(self.pair.clock.seconds())))
        server.dataReceived(encode_frame(MessageType.PROOF, nested(5000)))
        self.assertTrue(server_io.disconnecting)
        self.assertIn("malformed PROOF message", server.close_reason)


class MessageNumberTests(SynchronousTestCase):
    """The other messages' numbers, on each side: refused or ignored, never taken."""

    def test_challenge_time(self) -> None:
        """The sensor refuses a CHALLENGE whose time is NaN, infinite or absurd."""
        for raw in BAD_TIMES:
            client = ClientHandshake(derive_key("pw"), id_sensor=7, name="e", version="1",
                                     mode="local", compression="zstd", instance="ab" * 8,
                                     seconds=lambda: 1e9)
            client.hello()
            text = b'{"nonce":"' + b"00" * 32 + b'","time":' + raw + b"}"
            with self.assertRaises(ProtocolError, msg=raw):
                client.receive_challenge(decode_json(MessageType.CHALLENGE, text), b"B" * 32)

    def pong(self, payload: bytes) -> Echo:
        clock = Clock()
        clock.advance(100)
        proto = Echo(clock)
        proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 4)))
        proto.authenticated_as(None)
        proto.dataReceived(encode_frame(MessageType.PONG, payload))
        proto.connectionLost(Failure(Exception("test over")))
        self.assertEqual(clock.getDelayedCalls(), [])
        return proto

    def test_pong_time(self) -> None:
        """A PONG whose t is not a sane time leaves the RTT alone (it was now - t); one
        with NaN or an infinity closes the connection as malformed."""
        self.assertEqual(self.pong(encode_json({"t": 97.5})).rtt, 2.5)
        for body in ({"t": -1e300}, {"t": True}, {"t": 10 ** 30}, {"t": -5}):
            self.assertIsNone(self.pong(encode_json(body)).rtt, body)
        for raw in (b'{"t":NaN}', b'{"t":-Infinity}', b'{"t":1e999}'):
            proto = self.pong(raw)
            self.assertIsNone(proto.rtt)
            self.assertIn("malformed PONG message", proto.close_reason)

    def test_cdr_ack_stored(self) -> None:
        """CDR_ACK's stored count: true or a 31-digit number is not counted."""
        queue = DurableQueue(self.mktemp())
        self.addCleanup(queue.close)
        clock = Clock()
        uplink = CdrUplink(queue, clock, batch_records=1, window=8)
        uplink.attach(FakeMessageTransport({"window": 8}))
        for n in range(3):
            uplink.add(make_cdr(n, id_sensor=7))
        clock.advance(0)
        to_sensor(uplink, *ack(MessageType.CDR_ACK, upto=1, stored=True))
        to_sensor(uplink, *ack(MessageType.CDR_ACK, upto=2, stored=10 ** 30))
        to_sensor(uplink, *ack(MessageType.CDR_ACK, upto=3, stored=-4))
        self.assertEqual((uplink.delivered, uplink.stored), (3, 0))

    def test_end_ack_cdrs(self) -> None:
        """END_ACK's CDR count: true is not a count."""
        uplink = MirrorUplink(Clock(), max_buffer_bytes=10_000)
        uplink.attach(FakeMessageTransport({"window": 8}))
        uplink.finish_source()
        to_sensor(uplink, *ack(MessageType.END_ACK, cdrs=True))
        self.assertIsNone(uplink.central_cdrs)
        uplink.seal()

    def central_session(self):
        clock = Clock()
        store = FakeStore(clock)
        sessions = CentralSessions(store, clock, SessionRegistry(clock))
        return store, sessions, sessions.open_session(FakeMessageTransport(), hello())

    def test_stats_numbers(self) -> None:
        """STATS: only counters from 0 to 2**63-1 reach the sensor's row; NaN is malformed."""
        store, _sessions, session = self.central_session()
        to_central(session, MessageType.STATS, encode_json(
            {"packets": 10 ** 30, "dropped": True, "queue_depth": 4}))
        upsert = store.upserts[-1]
        self.assertEqual(upsert.get("queue_depth"), 4)
        self.assertNotIn("packets", upsert)
        self.assertNotIn("drops", upsert)
        row = store.sensors[7]
        self.assertEqual((row["queue_depth"], row["packets"], row["drops"]), (4, 0, 0))
        for raw in (b'{"packets":NaN}', b'{"packets":1e999}', nested(100)):
            self.assertRaises(ProtocolError, to_central, session, MessageType.STATS, raw)

    def test_cdrs_first(self) -> None:
        """CDRS 'first' beyond a 64-bit sequence, or true, is malformed."""
        _store, _sessions, session = self.central_session()
        good = batch(1, [0])
        for first in (b"true", b"1" + b"0" * 30, b"1.5", b"NaN"):
            bad = good.replace(b'"first":1', b'"first":' + first, 1)
            self.assertNotEqual(bad, good)
            self.assertRaises(ProtocolError, to_central, session, MessageType.CDRS, bad)


class ManagerPortTests(LoopbackBase):
    """The management port over real TLS: a deep or non-finite HELLO is refused like any
    hello without a proof, with no traceback (it was a RecursionError in the log)."""

    @defer.inlineCallbacks
    def test_deep_hello_refused(self):
        for payload in (nested(100000 // 4), hello_text(0.0, name=nested(1000)),
                        hello_text(0.0, time=b"NaN")):
            got = yield raw_exchange(self.port, [encode_frame(MessageType.HELLO, payload)])
            self.assertEqual(got, b"ERR auth this port needs the voipmon password proof "
                                  b"before any command\n")


class CentralLoopbackTests(TestCase):
    """A real CentralService on 127.0.0.1 over TLS: the same refusals on a live socket."""

    timeout = 60

    @defer.inlineCallbacks
    def test_hostile_hellos_over_tls(self):
        base = os.path.abspath(self.mktemp())
        text = (f"server_bind = 127.0.0.1\nserver_password = pw\nspooldir = {base}\n"
                "http_port = 0\n")
        central = build_central(load_central_config("central.conf", text=text), reactor,
                                store=FakeStore(), port=0)
        central.startService()
        self.addCleanup(central.stopService)
        port = (yield central.channel.listening).getHost().port
        now = reactor.seconds()
        for payload in [hello_text(now, time=b"NaN"), hello_text(now, time=b"Infinity"),
                        nested(30000), hello_text(now, analysis=nested(1000))]:
            got = yield raw_exchange(port, [encode_frame(MessageType.HELLO, payload)])
            [reject] = FrameDecoder().feed(got)
            self.assertEqual(reject.kind, MessageType.REJECT)
            self.assertEqual(decode_json(reject.kind, reject.payload)["code"], MALFORMED)
