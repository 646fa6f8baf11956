"""Tests for voipmon.protocols.wire."""

from __future__ import annotations

import json
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voipmon.protocols.wire import (
    FLAG_COMPRESSED,
    HEADER,
    MAX_HANDSHAKE_FRAME,
    PACKET_RECORD,
    PACKETS_HEADER,
    FrameDecoder,
    FrameTooLarge,
    MessageType,
    PacketBatch,
    ProtocolError,
    decode_json,
    decode_packets,
    encode_cdr_batch,
    encode_frame,
    encode_json,
    field,
    packets_seq,
)


class FrameTests(SynchronousTestCase):
    def test_header_layout(self) -> None:
        """A frame is u32 big-endian length, u8 type, u8 flags, then the payload."""
        frame = encode_frame(MessageType.PING, b"hello", FLAG_COMPRESSED)
        self.assertEqual(frame, b"\x00\x00\x00\x05\x06\x01hello")
        self.assertEqual(HEADER.size, 6)

    def test_decode_whole_and_split(self) -> None:
        """Frames come out whole however the bytes are split, in order."""
        frames = [encode_frame(MessageType.CDRS, b"a" * n) for n in (0, 1, 300, 7000)]
        stream = b"".join(frames)
        for chunk in (1, 2, 5, 6, 7, 64, len(stream)):
            decoder = FrameDecoder(max_frame=10_000)
            out = []
            for i in range(0, len(stream), chunk):
                out.extend(decoder.feed(stream[i:i + chunk]))
            self.assertEqual([len(f.payload) for f in out], [0, 1, 300, 7000])
            self.assertEqual({f.kind for f in out}, {MessageType.CDRS})
            self.assertEqual(decoder.buffered, 0)

    def test_oversized_header_refused_before_payload(self) -> None:
        """A header announcing 4 GiB is refused as soon as its 6 bytes arrive."""
        decoder = FrameDecoder(max_frame=MAX_HANDSHAKE_FRAME)
        self.assertEqual(decoder.feed(b"\xff\xff\xff"), [])
        with self.assertRaises(FrameTooLarge) as caught:
            decoder.feed(b"\xff\x01\x00")
        self.assertIn("4294967295", str(caught.exception))
        self.assertIn(str(MAX_HANDSHAKE_FRAME), str(caught.exception))
        self.assertEqual(decoder.buffered, 0)

    def test_limit_is_inclusive(self) -> None:
        """A frame of exactly the limit passes; one byte more does not."""
        decoder = FrameDecoder(max_frame=100)
        self.assertEqual(len(decoder.feed(encode_frame(MessageType.CDRS, b"x" * 100))), 1)
        with self.assertRaises(FrameTooLarge):
            decoder.feed(encode_frame(MessageType.CDRS, b"x" * 101))

    def test_limit_can_be_raised(self) -> None:
        """After authentication the limit is raised for the frames still to come."""
        decoder = FrameDecoder(max_frame=10)
        decoder.max_frame = 1000
        self.assertEqual(len(decoder.feed(encode_frame(MessageType.PACKETS, b"x" * 500))), 1)

    def test_buffer_bounded_by_one_frame(self) -> None:
        """While a frame is incomplete only its own bytes are held."""
        decoder = FrameDecoder(max_frame=1000)
        decoder.feed(HEADER.pack(1000, MessageType.CDRS, 0) + b"x" * 999)
        self.assertEqual(decoder.buffered, 999)  # the header was consumed
        self.assertEqual(len(decoder.feed(b"x")), 1)
        self.assertEqual(decoder.buffered, 0)

    def test_unknown_type(self) -> None:
        """An unknown type byte is a protocol error naming it."""
        with self.assertRaises(ProtocolError) as caught:
            FrameDecoder().feed(HEADER.pack(0, 200, 0))
        self.assertIn("200", str(caught.exception))

    def test_unknown_flags(self) -> None:
        """Flag bits other than 'compressed' are refused."""
        with self.assertRaises(ProtocolError):
            FrameDecoder().feed(HEADER.pack(0, MessageType.PING, 0x80))

    def test_garbage(self) -> None:
        """HTTP or TLS bytes sent to the port are refused at once."""
        for garbage in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc"):
            with self.assertRaises(ProtocolError):
                FrameDecoder().feed(garbage)

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(list(MessageType)), st.binary(max_size=300)),
                    max_size=10),
           st.integers(1, 50))
    def test_any_sequence(self, messages: list[tuple[MessageType, bytes]], chunk: int) -> None:
        """Any message sequence decodes back to itself."""
        stream = b"".join(encode_frame(kind, payload) for kind, payload in messages)
        decoder = FrameDecoder(max_frame=300)
        out = []
        for i in range(0, len(stream), chunk):
            out.extend(decoder.feed(stream[i:i + chunk]))
        self.assertEqual([(f.kind, f.payload) for f in out], messages)


class JsonTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """Control messages are compact UTF-8 JSON objects."""
        body = {"a": 1, "name": "sensör"}
        payload = encode_json(body)
        self.assertNotIn(b" ", payload)
        self.assertEqual(decode_json(MessageType.HELLO, payload), body)

    def test_not_an_object(self) -> None:
        """A JSON list or invalid text is a protocol error naming the message type."""
        for payload in (b"[1]", b"{", b"\xff"):
            with self.assertRaises(ProtocolError) as caught:
                decode_json(MessageType.HELLO, payload)
            self.assertIn("HELLO", str(caught.exception))

    def test_field(self) -> None:
        """field() checks presence and type, and never takes a boolean for a number."""
        self.assertEqual(field({"n": 3}, "n", int, "X"), 3)
        for body in ({}, {"n": "3"}, {"n": True}):
            self.assertRaises(ProtocolError, field, body, "n", int, "X")
        self.assertTrue(field({"b": True}, "b", bool, "X"))

    def test_cdr_batch(self) -> None:
        """A CDRS payload is built from already-serialised CDR texts."""
        payload = encode_cdr_batch(7, [b'{"callid":"a"}', b'{"callid":"b"}'])
        self.assertEqual(json.loads(payload),
                         {"first": 7, "cdrs": [{"callid": "a"}, {"callid": "b"}]})
        self.assertEqual(json.loads(encode_cdr_batch(1, [])), {"first": 1, "cdrs": []})


class PacketBatchTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """Packets keep their time (to the microsecond), wire length and bytes."""
        batch = PacketBatch(linktype=1)
        added = batch.add(1700000000.123456, b"\x01" * 60)
        self.assertEqual(added, PACKET_RECORD.size + 60)
        batch.add(1700000001.0, b"\x02" * 10, wirelen=1514)
        batch.add(5.9999999, b"")
        payload = batch.seal(42)
        self.assertEqual(len(payload), len(batch))
        self.assertEqual(packets_seq(payload), 42)
        seq, linktype, packets = decode_packets(payload)
        self.assertEqual((seq, linktype), (42, 1))
        self.assertEqual(len(packets), 3)
        ts, linktype, data = packets[0]
        self.assertAlmostEqual(ts, 1700000000.123456, places=6)
        self.assertEqual((linktype, data), (1, b"\x01" * 60))
        self.assertEqual(packets[1][1:], (1, b"\x02" * 10))
        self.assertEqual(packets[2][0], 6.0)  # microsecond rounding carries into seconds

    def test_empty(self) -> None:
        """An empty batch is valid."""
        self.assertEqual(decode_packets(PacketBatch(101).seal(1)), (1, 101, []))

    def test_malformed(self) -> None:
        """Truncated, overlong and inconsistent batches are protocol errors."""
        batch = PacketBatch(1)
        batch.add(1.0, b"abcdef")
        good = batch.seal(3)
        bad = [
            good[:5],                                         # header cut
            good[:-1],                                        # record cut
            good + b"x",                                      # trailing bytes
            PACKETS_HEADER.pack(3, 1, 2) + good[PACKETS_HEADER.size:],   # count too high
            PACKETS_HEADER.pack(3, 1, 1) + struct.pack("<IIII", 1, 1_000_000, 0, 0),
            PACKETS_HEADER.pack(3, 1, 1) + struct.pack("<IIII", 1, 0, 0xFFFFFFFF, 0),
            PACKETS_HEADER.pack(3, 1, 1) + struct.pack("<IIII", 1, 0, 2, 1) + b"ab",
            PACKETS_HEADER.pack(3, 1, 0xFFFFFFFF) + struct.pack("<IIII", 1, 0, 0, 0),
        ]
        for payload in bad:
            with self.assertRaises(ProtocolError):
                decode_packets(payload)
