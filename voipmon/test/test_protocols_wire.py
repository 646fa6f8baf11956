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
    MAX_JSON_DEPTH,
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
    is_number,
    number_field,
    packets_seq,
    parse_json,
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


def depth_of(value: object) -> int:
    """How deeply the lists and dicts of a decoded JSON value nest (the reference)."""
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


# JSON values whose strings are full of what a structure scan trips on.
_TRICKY = st.text(alphabet='[]{}"\\:,ab\u00e9\n\u2028\U0001f600', max_size=8)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                          allow_infinity=False) | _TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
    max_leaves=60)


class SafeJsonTests(SynchronousTestCase):
    """parse_json: one decoder for every JSON from the network, bounded and finite."""

    def nest(self, depth: int, kind: str = "[") -> bytes:
        if kind == "[":
            return b"[" * depth + b"]" * depth
        return b'{"k":' * (depth - 1) + b"{}" + b"}" * (depth - 1)

    def test_depth_bound_is_exact(self) -> None:
        """Arrays, objects and a mix nest up to MAX_JSON_DEPTH and not one level more."""
        for kind in ("[", "{"):
            self.assertEqual(depth_of(parse_json(self.nest(MAX_JSON_DEPTH, kind))),
                             MAX_JSON_DEPTH)
            with self.assertRaises(ValueError) as caught:
                parse_json(self.nest(MAX_JSON_DEPTH + 1, kind))
            self.assertIn(f"nested more than {MAX_JSON_DEPTH} deep", str(caught.exception))
        mixed = b'[{"a":' * 16 + b"1" + b"}]" * 16
        self.assertEqual(depth_of(parse_json(mixed)), 32)
        self.assertRaises(ValueError, parse_json, b"[" + mixed + b"]")

    def test_no_recursion_error_ever(self) -> None:
        """Deep text in every form, valid or not, is a ValueError: never RecursionError."""
        for text in (b"[" * 100000, b"[" * 100000 + b"]" * 99999, b"]" * 5000 + b"[" * 5000,
                     b'{"a":' * 50000, b"[" * 999 + b"1" + b"]" * 999,
                     b'["\\' + b"[" * 5000 + b'"' + b"[" * 5000):
            self.assertRaises(ValueError, parse_json, text)

    def test_brackets_in_strings_do_not_count(self) -> None:
        """Brackets, quotes and backslashes inside strings are text, not structure."""
        texts = [b'["' + b"[" * 100 + b'"]', b'{"' + b"{" * 100 + b'":"' + b"]" * 100 + b'"}',
                 b'["\\"", "' + b"[" * 50 + b'\\\\", "\\""]',
                 b'["sip:[2001:db8::1]:5060", "a]b", "[", "]]", "\\\\[", "\\"["]',
                 b'["\\u005b\\u005b", "\\\\\\"[["]']
        for text in texts:
            self.assertEqual(parse_json(text), json.loads(text), text)

    def test_depth_hidden_behind_strings_is_found(self) -> None:
        """Strings of closing brackets cannot hide real depth from the scan."""
        deep = b'["]",' * 40 + b"1" + b"]" * 40
        self.assertEqual(depth_of(json.loads(deep)), 40)
        self.assertRaises(ValueError, parse_json, deep)
        deep = b'["\\"]",' * 40 + b"1" + b"]" * 40
        self.assertRaises(ValueError, parse_json, deep)

    @settings(max_examples=300, deadline=None)
    @given(_VALUES)
    def test_any_value(self, value: object) -> None:
        """Any JSON value: read back as json reads it if it nests up to the bound, refused
        otherwise, in either text form (compact, spaced, ASCII-escaped)."""
        for text in (json.dumps(value, ensure_ascii=False).encode(),
                     json.dumps(value, separators=(",", ":")).encode(),
                     json.dumps(value, indent=1).encode()):
            if depth_of(value) <= MAX_JSON_DEPTH:
                self.assertEqual(parse_json(text), json.loads(text))
            else:
                self.assertRaises(ValueError, parse_json, text)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(MAX_JSON_DEPTH - 3, MAX_JSON_DEPTH + 3), _TRICKY, st.booleans())
    def test_depth_at_the_bound(self, depth: int, text: str, objects: bool) -> None:
        """Around the bound, with tricky strings at the bottom: exact."""
        value: object = text
        for level in range(depth):
            value = {text: value} if objects and level % 2 else [text, value]
        raw = json.dumps(value).encode()
        if depth <= MAX_JSON_DEPTH:
            self.assertEqual(parse_json(raw), value)
        else:
            self.assertRaises(ValueError, parse_json, raw)

    def test_nan_and_infinity_refused(self) -> None:
        """NaN, Infinity and numbers beyond a double (Python's json takes all of them)."""
        for text in (b"NaN", b"[Infinity]", b'{"a":-Infinity}', b"1e999", b"[-1e400]",
                     b'{"t":' + b"9" * 400 + b".0}"):
            self.assertRaises(ValueError, parse_json, text)
            with self.assertRaises(ProtocolError):
                decode_json(MessageType.PONG, text)
        self.assertEqual(parse_json(b"[1e308, -1e-400, 0.5]"), [1e308, -0.0, 0.5])

    def test_only_utf8(self) -> None:
        """UTF-16 or Latin-1 text is refused (json.loads would guess UTF-16)."""
        for text in ('{"a": 1}'.encode("utf-16"), '{"a": "\u00e9"}'.encode("latin-1"),
                     b"\xef\xbb\xbf{}"):
            self.assertRaises(ValueError, parse_json, text)

    def test_encode_refuses_what_decode_refuses(self) -> None:
        for bad in (float("nan"), float("inf"), -float("inf")):
            self.assertRaises(ValueError, encode_json, {"t": bad})

    def test_numbers(self) -> None:
        """is_number/number_field: never true/false, NaN, an infinity or out of range."""
        for value in (1, 1.5, 0, 10):
            self.assertTrue(is_number(value, 0, 10))
        for value in (True, False, float("nan"), float("inf"), -float("inf"), 11, -1,
                      10 ** 1000, "1", None, [1]):
            self.assertFalse(is_number(value, 0, 10), value)
        self.assertFalse(is_number(1.5, 0, 10, integer=True))
        self.assertEqual(number_field({"n": 3}, "n", "X", 1, 5, integer=True), 3)
        with self.assertRaises(ProtocolError) as caught:
            number_field({"n": float("nan")}, "n", "X", 1, 5)
        self.assertIn("malformed X message: bad or missing 'n' (a number from 1 to 5)",
                      str(caught.exception))


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
