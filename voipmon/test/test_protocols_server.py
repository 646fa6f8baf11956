"""Tests for voipmon.protocols.server: the central's handshake, registry and refusals (iosim)."""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from voipmon.protocols.client import HandshakeFailed
from voipmon.protocols.handshake import (
    BAD_PASSWORD,
    CLOCK_SKEW,
    ID_IN_USE,
    ID_OUT_OF_RANGE,
    UNSUPPORTED_COMPRESSION,
    UNSUPPORTED_VERSION,
    Rejection,
)
from voipmon.protocols.server import CentralChannel, SessionRegistry
from voipmon.protocols.wire import (
    HEADER,
    FrameDecoder,
    MessageType,
    decode_json,
    encode_frame,
    encode_json,
)
from voipmon.test.fakes_channel import ChannelPairCase, SessionRecorder


class CentralBase(ChannelPairCase):
    def central(self, index: int = -1) -> CentralChannel:
        return self.pair.network.pumps[index].server

    def refused(self, code: str, **options) -> str:
        sessions = len(self.pair.handler.sessions)
        d = self.pair.connect(**options)
        failure = self.failureResultOf(d, Rejection)
        self.assertEqual(failure.value.code, code)
        self.assertEqual(len(self.pair.handler.sessions), sessions)
        self.assertEqual(self.pair.factory.refusals[code], 1)
        reason = failure.value.reason
        central_lines = [line for line in self.logged() if line.startswith("refused sensor")]
        self.assertEqual(len(central_lines), 1)
        self.assertIn(reason, central_lines[0])
        sensor_lines = [line for line in self.logged() if "refused this sensor" in line]
        self.assertEqual(len(sensor_lines), 1)
        self.assertTrue(sensor_lines[0].endswith(reason))
        self.assertFalse(self.central().authenticated)
        return reason


class AcceptTests(CentralBase):
    def test_session_opened(self) -> None:
        """A sensor with the right password gets a session with its hello."""
        proto = self.successResultOf(self.pair.connect(name="edge-1", mode="mirror"))
        self.assertIsNotNone(proto)
        [session] = self.pair.handler.sessions
        self.assertEqual((session.hello.id_sensor, session.hello.name, session.hello.mode),
                         (7, "edge-1", "mirror"))
        self.assertIs(self.pair.factory.registry.get(7), self.central())
        self.assertTrue(self.central().authenticated)
        self.assertEqual(self.central().codec.name, "zstd")
        self.assertEqual(self.pair.factory.accepted, 1)
        line = next(x for x in self.logged() if x.startswith("sensor 7 (edge-1) connected"))
        self.assertIn("from 192.0.2.7:40001: mode mirror, compression zstd", line)

    def test_each_compression(self) -> None:
        """Every codec is negotiated as the sensor asked."""
        for number, codec in enumerate(("zstd", "gzip", "lzo", "none")):
            self.successResultOf(self.pair.connect(id_sensor=10 + number, compression=codec))
            self.assertEqual(self.central().codec.name, codec)

    def test_messages_reach_session(self) -> None:
        """After ACCEPT the sensor's messages go to the session, compressed or not (a CDRS
        message as its bytes: the session reads it where it chooses)."""
        proto = self.successResultOf(self.pair.connect())
        big = {"first": 1, "cdrs": [{"callid": "x" * 1000}]}
        proto.transport.send_message(MessageType.CDRS, big)
        proto.transport.send_message(MessageType.STATS, {"packets": 3})
        self.pair.flush()
        session = self.pair.handler.sessions[0]
        self.assertEqual(session.messages, [(MessageType.CDRS, encode_json(big)),
                                            (MessageType.STATS, {"packets": 3})])

    def test_disconnect_releases_id(self) -> None:
        """When the sensor goes, its id is free and the session hears of it."""
        proto = self.successResultOf(self.pair.connect())
        proto.transport.loseConnection()
        self.pair.flush()
        self.assertIsNone(self.pair.factory.registry.get(7))
        self.assertIsNotNone(self.pair.handler.sessions[0].lost)
        self.assertTrue(any(x.startswith("sensor 7 (192.0.2.7:40001) disconnected")
                            for x in self.logged()))


class RefusalTests(CentralBase):
    def test_bad_password(self) -> None:
        """A wrong password is refused, the same words logged on both sides."""
        reason = self.refused(BAD_PASSWORD, password="wrong")
        self.assertIn("bad password", reason)
        self.assertIsNone(self.pair.factory.registry.get(7))

    def test_proof_bound_to_connection(self) -> None:
        """A proof computed for another TLS connection (another exporter) is refused."""
        self.refused(BAD_PASSWORD, binding=lambda transport: b"M" * 32)

    def test_clock_skew(self) -> None:
        """A sensor 37 s behind is refused, and the message says 37.0 s."""
        reason = self.refused(CLOCK_SKEW, skew=-37.0)
        self.assertIn("clock skew of 37.0 s exceeds client_server_connect_maximum_time_diff_s"
                      " = 2 s", reason)

    def test_id_out_of_range(self) -> None:
        reason = self.refused(ID_OUT_OF_RANGE, id_sensor=70000)
        self.assertEqual(reason, "id_sensor 70000 is outside 1..65535")

    def test_unsupported_version(self) -> None:
        reason = self.refused(UNSUPPORTED_VERSION, protocol_version=9)
        self.assertIn("unsupported protocol version 9", reason)

    def test_unsupported_compression(self) -> None:
        self.refused(UNSUPPORTED_COMPRESSION, compression="brotli")

    def test_id_in_use(self) -> None:
        """A second sensor process with a connected sensor's id is refused; the first stays."""
        first = self.successResultOf(self.pair.connect(instance="01" * 8))
        reason = self.refused(ID_IN_USE, instance="02" * 8, name="impostor")
        self.assertIn("id_sensor 7 is already connected from 192.0.2.7:40001", reason)
        self.assertIsNone(first.lost)
        self.assertIs(self.pair.factory.registry.get(7), self.central(0))

    def test_same_instance_takes_over(self) -> None:
        """The same sensor process reconnecting (after a silent failure) replaces its session."""
        first = self.successResultOf(self.pair.connect(instance="01" * 8))
        second = self.successResultOf(self.pair.connect(instance="01" * 8))
        self.assertIsNotNone(first.lost)
        self.assertIsNone(second.lost)
        self.assertIs(self.pair.factory.registry.get(7), self.central(1))
        self.assertEqual(self.central(0).close_reason,
                         "replaced by a new connection of the same sensor from 192.0.2.7:40002")
        self.assertEqual(len(self.pair.handler.sessions), 2)

    def test_stale_session_replaced(self) -> None:
        """Another process may take an id whose session has been silent for 11 s."""
        self.successResultOf(self.pair.connect(instance="01" * 8))
        self.pair.network.partition(0)  # the first sensor's network fails silently
        self.pair.clock.advance(10)
        self.failureResultOf(self.pair.connect(instance="02" * 8), Rejection)
        self.pair.clock.advance(1)
        self.successResultOf(self.pair.connect(instance="02" * 8))
        self.assertIs(self.pair.factory.registry.get(7), self.central(2))

    def test_probe_registers_nothing(self) -> None:
        """A failback probe authenticates but opens no session and claims no id."""
        self.successResultOf(self.pair.connect(instance="01" * 8))
        probe = self.successResultOf(self.pair.connect(instance="01" * 8, probe=True))
        self.assertEqual(len(self.pair.handler.sessions), 1)
        self.assertIs(self.pair.factory.registry.get(7), self.central(0))
        self.assertTrue(self.central(1).probe)
        probe.transport.send_message(MessageType.CDRS, b"{}")
        self.pair.flush()
        self.assertIn("unexpected CDRS on a failback probe", self.central(1).close_reason)


class HostileTests(CentralBase):
    def raw_client(self):
        """A raw connection to the central whose bytes the test writes itself."""
        server = self.pair.factory.buildProtocol(IPv4Address("TCP", "198.51.100.66", 5555))
        server_io = iosim.FakeTransport(server, True,
                                        IPv4Address("TCP", "192.0.2.1", 60024),
                                        IPv4Address("TCP", "198.51.100.66", 5555))
        server.makeConnection(server_io)
        self.addCleanup(lambda: server.connectionLost(None) if not server_io.disconnected
                        else None)
        return server, server_io

    def test_garbage_closes_only_that_connection(self) -> None:
        """Garbage closes its own connection, with a logged reason; a good sensor stays."""
        good = self.successResultOf(self.pair.connect())
        server, server_io = self.raw_client()
        server.dataReceived(b"\x16\x03\x01\x02\x00garbage garbage")
        self.assertTrue(server_io.disconnecting)
        self.assertTrue(any("closing connection with 198.51.100.66:5555" in x
                            for x in self.logged()))
        good.transport.send_message(MessageType.STATS, {"ok": 1})
        self.pair.flush()
        self.assertEqual(len(self.pair.handler.sessions[0].messages), 1)
        self.assertIsNone(good.lost)

    def test_four_gib_header(self) -> None:
        """A 4 GiB frame header is refused before anything is buffered."""
        server, server_io = self.raw_client()
        server.dataReceived(HEADER.pack(0xFFFFFFFF, MessageType.HELLO, 0))
        self.assertTrue(server_io.disconnecting)
        self.assertEqual(server.decoder.buffered, 0)
        [close] = FrameDecoder().feed(server_io.getOutBuffer())
        self.assertIn("4294967295", decode_json(close.kind, close.payload)["reason"])

    def test_messages_before_auth_refused(self) -> None:
        """Anything but HELLO/PROOF before authentication closes the connection."""
        server, _io = self.raw_client()
        server.dataReceived(encode_frame(MessageType.CDRS, b"{}"))
        self.assertIn("unexpected CDRS before authentication", server.close_reason)

    def test_handshake_stages_dispatch(self) -> None:
        """The handshake goes through the same dispatcher as the session, one table per
        stage: before authentication HELLO, PROOF and CLOSE; once in, the session's
        handlers, where a second HELLO is unexpected (the handshake's table is gone)."""
        server, _io = self.raw_client()
        self.assertEqual(set(server.dispatcher.handlers),
                         {MessageType.HELLO, MessageType.PROOF, MessageType.CLOSE})
        self.successResultOf(self.pair.connect())
        central = self.central()
        self.assertFalse(central.dispatcher.handles(MessageType.HELLO))
        self.assertFalse(central.dispatcher.handles(MessageType.PROOF))
        self.assertTrue(central.dispatcher.handles(MessageType.PING))
        central.dataReceived(encode_frame(MessageType.HELLO, b"{}"))
        self.assertIn("unexpected HELLO from a local-processing sensor", central.close_reason)

    def test_sensor_handshake_stage(self) -> None:
        """The sensor's handshake table: CHALLENGE, ACCEPT, REJECT and CLOSE; anything
        else from the central before ACCEPT closes the connection, naming the stage."""
        d = self.pair.endpoint().connect(protocol.Factory.forProtocol(SessionRecorder))
        sensor = self.pair.network.pumps[-1].client
        self.assertEqual(set(sensor.dispatcher.handlers),
                         {MessageType.CHALLENGE, MessageType.ACCEPT, MessageType.REJECT,
                          MessageType.CLOSE})
        sensor.dataReceived(encode_frame(MessageType.CDR_ACK, encode_json({"upto": 1})))
        self.assertEqual(sensor.close_reason, "unexpected CDR_ACK during the handshake")
        self.pair.flush()
        self.failureResultOf(d, HandshakeFailed)

    def test_malformed_hello(self) -> None:
        """A hello that cannot be read is refused with the reason (code 'malformed')."""
        server, server_io = self.raw_client()
        server.dataReceived(encode_frame(MessageType.HELLO, encode_json({"protocol": 1})))
        self.assertIn("malformed HELLO", server.close_reason)
        [reject] = FrameDecoder().feed(server_io.getOutBuffer())
        self.assertEqual(reject.kind, MessageType.REJECT)
        self.assertEqual(decode_json(reject.kind, reject.payload)["code"], "malformed")

    def test_name_too_long_refused(self) -> None:
        """A sensor name over 200 characters is refused, saying so."""
        d = self.pair.connect(name="x" * 201)
        failure = self.failureResultOf(d, Rejection)
        self.assertEqual(failure.value.code, "malformed")
        self.assertIn("'name' (text of at most 200 characters", failure.value.reason)

    def test_silent_connection_dropped(self) -> None:
        """A connection that never says hello is dropped after 10 s."""
        server, server_io = self.raw_client()
        self.pair.clock.advance(10)
        self.assertTrue(server_io.disconnecting)
        server.connectionLost(None)


class RegistryTests(SynchronousTestCase):
    def test_release_only_own_channel(self) -> None:
        """An old channel's release does not remove its replacement."""
        from twisted.internet.task import Clock

        from voipmon.protocols.handshake import Hello

        class Channel:
            def __init__(self, instance: str) -> None:
                self.hello = Hello(7, "n", "v", "local", "zstd", 0.0, b"\0" * 32, instance)
                self.peer = "p"
                self.last_received = 0.0

        registry = SessionRegistry(Clock())
        old, new = Channel("aa"), Channel("aa")
        registry.claim(old.hello, old)
        self.assertIs(registry.claim(new.hello, new), old)
        self.assertFalse(registry.release(old))
        self.assertIs(registry.get(7), new)
        self.assertEqual(len(registry), 1)
        self.assertTrue(registry.release(new))
        self.assertEqual(registry.channels(), [])
