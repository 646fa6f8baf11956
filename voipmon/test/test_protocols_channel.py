"""Tests for voipmon.protocols.channel: framing, limits, keepalive and closing, on a Clock."""

from __future__ import annotations

import functools
import os
from typing import Any

import zstandard
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from voipmon.protocols.channel import ChannelProtocol, IMessageTransport
from voipmon.protocols.compression import get_codec
from voipmon.protocols.dispatch import CENTRAL, DECODERS, Dispatcher, raw
from voipmon.protocols.wire import (
    FLAG_COMPRESSED,
    HEADER,
    MAX_FRAME,
    FrameDecoder,
    MessageType,
    ProtocolError,
    decode_json,
    encode_frame,
    encode_json,
)


class Echo(ChannelProtocol):
    """A channel that records messages; ``boom`` makes handling raise."""

    side = "test"

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock, lambda t: b"")
        self.messages: list[tuple[MessageType, bytes]] = []
        self.closed_by_peer: list[str] = []

    def connectionMade(self) -> None:
        super().connectionMade()
        self.stage()

    def authenticated_as(self, codec: Any) -> None:
        super().authenticated_as(codec)
        self.stage(self.keepalive())

    def stage(self, own: dict | None = None) -> None:
        """Every type recorded raw, but what the channel handles itself (CLOSE; PING
        and PONG once authenticated)."""
        own = {MessageType.CLOSE: self.on_close, **(own or {})}
        table = {kind: functools.partial(self.messageReceived, kind) for kind in MessageType}
        table.update(own)
        decoders = {kind: DECODERS.get(kind, decode_json) if kind in own else raw
                    for kind in MessageType}
        self.dispatcher = Dispatcher(CENTRAL, table=table, decoders=decoders)

    def messageReceived(self, kind: MessageType, payload: bytes) -> None:
        if payload == b"protocol-error":
            raise ProtocolError("you sent protocol-error")
        if payload == b"boom":
            raise RuntimeError("bug")
        self.messages.append((kind, payload))


def sent_frames(transport: StringTransport, codec=None):
    frames = FrameDecoder(MAX_FRAME).feed(transport.value())
    out = []
    for frame in frames:
        payload = frame.payload
        if frame.flags & FLAG_COMPRESSED:
            payload = codec.decompress(payload, 1 << 26)
        out.append((frame.kind, payload))
    return out


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.proto = Echo(self.clock)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 4444))
        self.proto.makeConnection(self.transport)
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.addCleanup(self.lose)

    def lose(self) -> None:
        if self.transport.connected or not self.proto.closing:
            self.proto.connectionLost(Failure(Exception("test over")))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def logged(self) -> list[str]:
        return [formatEvent(e) for e in self.observer]

    def authenticate(self, codec: str = "zstd") -> None:
        self.proto.authenticated_as(get_codec(codec))
        self.transport.clear()


class FramingTests(Base):
    def test_provides_message_transport(self) -> None:
        self.assertTrue(IMessageTransport.providedBy(self.proto))
        self.assertEqual(self.proto.peer, "192.0.2.9:4444")

    def test_messages_delivered(self) -> None:
        """Frames are delivered whole, split or batched, in order."""
        data = encode_frame(MessageType.CDRS, b"a" * 10) + encode_frame(MessageType.STATS, b"b")
        for byte in data:
            self.proto.dataReceived(bytes([byte]))
        self.assertEqual(self.proto.messages, [(MessageType.CDRS, b"a" * 10),
                                               (MessageType.STATS, b"b")])

    def test_oversized_before_auth(self) -> None:
        """Before authentication a 64 KiB+1 frame closes the connection with the reason."""
        self.proto.dataReceived(HEADER.pack(65537, MessageType.HELLO, 0))
        self.assertTrue(self.transport.disconnecting)
        kind, payload = sent_frames(self.transport)[-1]
        self.assertEqual(kind, MessageType.CLOSE)
        self.assertIn("65537 bytes, over the 65536-byte limit",
                      decode_json(kind, payload)["reason"])
        self.assertIn("test: closing connection with 192.0.2.9:4444: frame header announces "
                      "65537 bytes, over the 65536-byte limit", self.logged())

    def test_four_gib_header(self) -> None:
        """A header announcing 4 GiB is refused at once; nothing is buffered afterwards."""
        self.authenticate()
        self.proto.dataReceived(b"\xff\xff\xff\xff\x08\x00" + b"x" * 1000)
        self.assertTrue(self.transport.disconnecting)
        self.proto.dataReceived(b"y" * 100_000)  # the peer keeps sending: ignored
        self.assertEqual(self.proto.decoder.buffered, 0)
        self.assertEqual(self.proto.messages, [])

    def test_big_frames_after_auth(self) -> None:
        """After authentication frames up to 16 MiB are accepted."""
        self.authenticate()
        self.proto.dataReceived(encode_frame(MessageType.PACKETS, b"p" * 200_000))
        self.assertEqual(len(self.proto.messages[0][1]), 200_000)

    def test_compressed_before_handshake(self) -> None:
        """A compressed frame before any codec was negotiated is refused."""
        self.proto.dataReceived(encode_frame(MessageType.HELLO, b"x", FLAG_COMPRESSED))
        self.assertTrue(self.transport.disconnecting)
        self.assertIn("compressed frame before the handshake",
                      decode_json(MessageType.CLOSE, sent_frames(self.transport)[-1][1])["reason"])

    def test_decompression_bomb(self) -> None:
        """A small frame that would expand past 64 MiB is refused."""
        self.authenticate()
        bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 * 1024 * 1024 + 1))
        self.proto.dataReceived(encode_frame(MessageType.CDRS, bomb, FLAG_COMPRESSED))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.proto.messages, [])

    def test_protocol_error_from_logic(self) -> None:
        """A ProtocolError raised by the logic closes the connection with its text."""
        self.proto.dataReceived(encode_frame(MessageType.CDRS, b"protocol-error"))
        reason = decode_json(MessageType.CLOSE, sent_frames(self.transport)[-1][1])["reason"]
        self.assertEqual(reason, "you sent protocol-error")

    def test_bug_in_logic(self) -> None:
        """Any other exception is logged with its traceback and closes this connection only."""
        self.proto.dataReceived(encode_frame(MessageType.CDRS, b"boom"))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_garbage(self) -> None:
        """Random bytes close the connection with a reason."""
        self.proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(self.transport.disconnecting)


class SendTests(Base):
    def test_small_payloads_not_compressed(self) -> None:
        """Payloads under 256 bytes go out uncompressed, even with a codec."""
        self.authenticate()
        self.proto.send_message(MessageType.CDR_ACK, {"upto": 5})
        frame = FrameDecoder().feed(self.transport.value())[0]
        self.assertEqual(frame.flags, 0)
        self.assertEqual(decode_json(frame.kind, frame.payload), {"upto": 5})

    def test_large_payloads_compressed(self) -> None:
        """Bigger payloads are compressed with the negotiated codec when that saves bytes."""
        for name in ("zstd", "gzip", "lzo"):
            self.transport.clear()
            self.proto.codec = get_codec(name)
            body = b"INVITE sip:bob@example.com SIP/2.0\r\n" * 100
            self.proto.send_message(MessageType.CDRS, body)
            frame = FrameDecoder(MAX_FRAME).feed(self.transport.value())[0]
            self.assertEqual(frame.flags, FLAG_COMPRESSED, name)
            self.assertLess(len(frame.payload), len(body) // 4)
            self.assertEqual(self.proto.codec.decompress(frame.payload, 1 << 20), body)

    def test_incompressible_sent_raw(self) -> None:
        """When compression does not help, the payload goes out as it is."""
        self.authenticate("zstd")
        noise = os.urandom(2000)
        self.proto.send_message(MessageType.PACKETS, noise)
        frame = FrameDecoder(MAX_FRAME).feed(self.transport.value())[0]
        self.assertEqual((frame.flags, frame.payload), (0, noise))

    def test_counters(self) -> None:
        self.authenticate()
        self.proto.send_message(MessageType.CDRS, b"x" * 1000)
        self.assertEqual(self.proto.payload_bytes_sent, 1000)
        self.assertEqual(self.proto.wire_bytes_sent, len(self.transport.value()))
        self.assertLess(self.proto.wire_bytes_sent, 100)
        self.assertEqual(self.proto.counters(), {
            "frames_sent": self.proto.frames_sent, "frames_received": 0,
            "payload_bytes_sent": 1000, "wire_bytes_sent": len(self.transport.value()),
            "wire_bytes_received": self.proto.wire_bytes_received})
        self.assertGreater(self.proto.frames_sent, 0)


class KeepaliveTests(Base):
    def test_handshake_timeout(self) -> None:
        """A connection that has not authenticated after 10 s is closed with the reason."""
        self.clock.advance(9.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.assertIn("handshake not completed within 10 s",
                      decode_json(MessageType.CLOSE, sent_frames(self.transport)[-1][1])["reason"])

    def test_ping_every_five_seconds(self) -> None:
        """After authentication a PING goes out every 5 s; none before."""
        self.clock.advance(4)
        self.assertEqual(self.transport.value(), b"")
        self.authenticate()
        for expected in (1, 2, 3):
            self.clock.advance(5)
            self.proto.dataReceived(encode_frame(MessageType.PONG, encode_json({"t": 0})))
            kinds = [k for k, _ in sent_frames(self.transport)]
            self.assertEqual(kinds.count(MessageType.PING), expected)

    def test_ping_answered_and_rtt(self) -> None:
        """A PING is answered with a PONG carrying the same payload; a PONG gives the RTT."""
        self.authenticate()
        self.proto.dataReceived(encode_frame(MessageType.PING, b'{"t":12.5}'))
        self.assertEqual(sent_frames(self.transport), [(MessageType.PONG, b'{"t":12.5}')])
        self.clock.advance(3)
        self.proto.dataReceived(encode_frame(MessageType.PONG, encode_json({"t": 1.0})))
        self.assertEqual(self.proto.rtt, 2.0)
        self.assertEqual(self.proto.messages, [])

    def test_silent_peer_dropped_after_30_s(self) -> None:
        """A peer that sends nothing for 30 s is dropped; 29 s of silence is fine."""
        self.authenticate()
        self.clock.pump([5] * 5)
        self.clock.advance(4)
        self.assertFalse(self.transport.disconnecting)
        self.proto.dataReceived(encode_frame(MessageType.PONG, b'{"t":0}'))  # alive at 29 s
        self.clock.pump([5] * 5)
        self.assertFalse(self.transport.disconnecting)
        self.clock.pump([5] * 2)
        self.assertTrue(self.transport.disconnecting)
        reason = decode_json(MessageType.CLOSE, sent_frames(self.transport)[-1][1])["reason"]
        self.assertRegex(reason, r"^peer silent for 3\d s \(limit 30 s\)$")

    def test_peer_close_logged(self) -> None:
        """A CLOSE from the peer is logged with its reason and not answered."""
        self.proto.dataReceived(encode_frame(MessageType.CLOSE, b'{"reason":"shutting down"}'))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value(), b"")
        self.assertIn("test: 192.0.2.9:4444 closed the channel: shutting down", self.logged())
        self.assertEqual(self.proto.close_reason, "peer closed: shutting down")

    def test_abort_when_close_never_finishes(self) -> None:
        """If the connection is still open 10 s after closing, it is aborted."""
        self.proto.close("bye")
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothing_left_after_loss(self) -> None:
        """Losing the connection stops every timer."""
        self.authenticate()
        self.proto.close("bye")
        self.proto.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_sending_after_close(self) -> None:
        """Once closing, nothing but the CLOSE goes out."""
        self.authenticate()
        self.proto.close("bye")
        size = len(self.transport.value())
        self.proto.send_message(MessageType.CDRS, b"late")
        self.assertEqual(len(self.transport.value()), size)
