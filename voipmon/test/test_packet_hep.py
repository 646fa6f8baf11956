"""HEP decoding (voipmon.packet.hep): the specification's example, messages built byte by
byte for every chunk type (test encoder: voipmon.test.hepsupport), both address families,
compressed payloads and frames, HEPv1/v2, every truncation, every error reason, and
Hypothesis runs that no input raises anything but ``HepError``."""

from __future__ import annotations

import gzip
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voipmon.packet import hep
from voipmon.packet.hep import (
    REASONS,
    HepError,
    HepMessage,
    HepStreamFramer,
    decode_hep,
    decode_hep3,
    inflate,
)
from voipmon.test import hepsupport as h
from voipmon.test.hepsupport import (
    HEPLIFY,
    KAMAILIO,
    SNGREP,
    chunk,
    gzip_frame,
    hep2_message,
    hep3,
    hep3_message,
    packed,
    spec_example,
    u8,
    u16,
    u32,
)

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SIP = (b"INVITE sip:bob@example.com SIP/2.0\r\nCall-ID: a@b\r\nCSeq: 1 INVITE\r\n"
       b"Content-Length: 0\r\n\r\n")


def generic(data: bytes) -> HepMessage:
    """The general chunk walk alone, without the sender layouts' shortcut."""
    return hep._decode_chunks(data, len(data), hep.MAX_PAYLOAD)


class SpecificationTests(SynchronousTestCase):
    def test_worked_example(self) -> None:
        data = spec_example()
        self.assertEqual(len(data), 113)
        msg = decode_hep(data)
        self.assertEqual(msg, HepMessage(
            ts=1313440459.12, proto_type=1, ip_proto=17, src=packed("212.202.0.1"),
            sport=12010, dst=packed("82.116.0.211"), dport=5060, payload=b"INVITE sip:bob",
            capture_id=228, auth_key=None, correlation_id=None, node_name=None, version=3))
        self.assertEqual(generic(data), msg)

    def test_encoder_writes_the_example(self) -> None:
        self.assertEqual(hep3_message("212.202.0.1", 12010, "82.116.0.211", 5060,
                                      b"INVITE sip:bob", ts=(1313440459, 120000),
                                      capture_id=228), spec_example())

    def test_eep3_magic(self) -> None:
        data = b"EEP3" + spec_example()[4:]
        self.assertEqual(decode_hep(data).payload, b"INVITE sip:bob")


class ChunkTests(SynchronousTestCase):
    def base(self, v6: bool = False) -> list[bytes]:
        src, dst = ("2001:db8::1", "2001:db8::2") if v6 else ("10.1.2.3", "10.3.2.1")
        return [chunk(h.FAMILY, u8(10 if v6 else 2)), chunk(h.IP_PROTO, u8(6)),
                chunk(h.SRC6 if v6 else h.SRC4, packed(src)),
                chunk(h.DST6 if v6 else h.DST4, packed(dst)),
                chunk(h.SPORT, u16(5061)), chunk(h.DPORT, u16(5062))]

    def test_every_generic_chunk_type(self) -> None:
        """Each chunk of the rev 37 table, built byte by byte: the ones we keep are read,
        every other is skipped by its length."""
        chunks = self.base() + [
            chunk(h.TS_SEC, u32(1700000001)), chunk(h.TS_USEC, u32(999999)),
            chunk(h.PROTO_TYPE, u8(4)), chunk(h.CAPTURE_ID, u32(0xDEADBEEF)),
            chunk(h.KEEPALIVE, u16(30)), chunk(h.AUTH_KEY, b"s3cret"),
            chunk(h.CORRELATION_ID, b"call-1@host"), chunk(h.VLAN, u16(100)),
            chunk(h.NODE_NAME, b"node1"), chunk(0x14, b"\0\0" + b"\x02" * 6),
            chunk(0x15, b"\0\0" + b"\x04" * 6), chunk(0x16, u16(0x0800)),
            chunk(0x17, u8(0x18)), chunk(0x18, u8(0xB8)),
            *(chunk(t, b"") for t in range(0x19, 0x20)),
            chunk(h.MOS, u16(432)), chunk(h.R_FACTOR, u16(93)), chunk(0x22, b"geo"),
            chunk(0x23, u32(12)), chunk(0x24, b"call"), chunk(0x25, b"{}"),
            chunk(0x26, b"tags"), chunk(0x27, u16(1)), chunk(0x28, u16(1)),
            chunk(0x29, b"group"), chunk(0xFFFF, b"future"),
            chunk(h.PAYLOAD, b"\x80\x00rtp")]
        msg = decode_hep(hep3(chunks))
        self.assertEqual(msg, HepMessage(
            ts=1700000001.999999, proto_type=4, ip_proto=6, src=packed("10.1.2.3"),
            sport=5061, dst=packed("10.3.2.1"), dport=5062, payload=b"\x80\x00rtp",
            capture_id=0xDEADBEEF, auth_key=b"s3cret", correlation_id=b"call-1@host",
            node_name=b"node1", version=3))

    def test_vendor_chunks_are_skipped(self) -> None:
        """Vendor chunks reuse generic type numbers; none of them may be read as one."""
        chunks = self.base(v6=True) + [
            chunk(h.PAYLOAD, b"vendor payload", vendor=2), chunk(h.SRC6, b"x" * 3, vendor=3),
            chunk(h.SPORT, b"", vendor=1), chunk(h.PAYLOAD, SIP),
            chunk(h.PROTO_TYPE, b"\x05\x05", vendor=0x8000)]
        msg = decode_hep(hep3(chunks))
        self.assertEqual((msg.src, msg.sport, msg.payload, msg.proto_type),
                         (packed("2001:db8::1"), 5061, SIP, 0))

    def test_defaults_without_optional_chunks(self) -> None:
        """No time (the caller uses arrival time), type 0, capture id 0, UDP."""
        chunks = [c for c in self.base() if c[3] != h.IP_PROTO] + [chunk(h.PAYLOAD, SIP)]
        msg = decode_hep(hep3(chunks))
        self.assertEqual((msg.ts, msg.proto_type, msg.capture_id, msg.ip_proto),
                         (None, 0, 0, 17))

    def test_a_chunk_seen_twice_counts_the_last_time(self) -> None:
        chunks = self.base() + [chunk(h.SPORT, u16(7)), chunk(h.PAYLOAD, b"one"),
                                chunk(h.PAYLOAD, b"two")]
        msg = decode_hep(hep3(chunks))
        self.assertEqual((msg.sport, msg.payload), (7, b"two"))

    def test_family_picks_the_pair_when_both_are_present(self) -> None:
        both = [chunk(h.SRC4, packed("10.0.0.1")), chunk(h.DST4, packed("10.0.0.2")),
                chunk(h.SRC6, packed("::1")), chunk(h.DST6, packed("::2")),
                chunk(h.SPORT, u16(1)), chunk(h.DPORT, u16(2)), chunk(h.PAYLOAD, b"x")]
        self.assertEqual(decode_hep(hep3([chunk(h.FAMILY, u8(2)), *both])).src,
                         packed("10.0.0.1"))
        self.assertEqual(decode_hep(hep3([chunk(h.FAMILY, u8(10)), *both])).src,
                         packed("::1"))
        # BSD and macOS senders write their own AF_INET6 (28, 30): the address decides
        v6 = [chunk(h.FAMILY, u8(30)), *both[2:]]
        self.assertEqual(decode_hep(hep3(v6)).dst, packed("::2"))

    def test_capture_id_is_kept_raw(self) -> None:
        """sngrep writes htons(id) into the 32-bit chunk: 2002 arrives as 0x07D20000."""
        data = hep3_message("10.0.0.1", 5060, "10.0.0.2", 5060, SIP, order=SNGREP,
                            capture_id=0x07D20000)
        self.assertEqual(decode_hep(data).capture_id, 131203072)

    def test_kamailio_tls_protocol_is_kept(self) -> None:
        data = hep3_message("10.0.0.1", 5061, "10.0.0.2", 5061, SIP, ip_proto=22)
        self.assertEqual(decode_hep(data).ip_proto, 22)


class OrderTests(SynchronousTestCase):
    """The senders' chunk orders, both families, with and without optional chunks: the
    layout shortcut and the general walk agree on every one."""

    def test_sender_orders(self) -> None:
        for order in (KAMAILIO, SNGREP, HEPLIFY, tuple(reversed(KAMAILIO))):
            for src, dst in (("192.0.2.1", "198.51.100.2"), ("2001:db8::a", "2001:db8::b")):
                for extra in ({}, {"auth_key": b"pw", "correlation_id": b"cid",
                                   "node_name": b"n"}):
                    with self.subTest(order=order, src=src, extra=bool(extra)):
                        data = hep3_message(src, 5080, dst, 9060, SIP, order=order,
                                            ts=(1600000000, 5), proto_type=1, **extra)
                        msg = decode_hep(data)
                        self.assertEqual(msg, generic(data))
                        self.assertEqual((msg.src, msg.dst, msg.sport, msg.dport,
                                          msg.payload, msg.ts),
                                         (packed(src), packed(dst), 5080, 9060, SIP,
                                          1600000000.000005))
                        self.assertEqual(msg.auth_key, extra.get("auth_key"))
                        self.assertEqual(msg.correlation_id, extra.get("correlation_id")
                                         if "cid" in order else None)  # sngrep: never

    @given(st.permutations(range(12)), st.booleans(), st.binary(max_size=64))
    @settings(max_examples=300, **SETTINGS)
    def test_any_order(self, perm: list[int], v6: bool, payload: bytes) -> None:
        src, dst = ("2001:db8::1", "2001:db8::2") if v6 else ("10.0.0.1", "10.0.0.2")
        chunks = [chunk(h.FAMILY, u8(10 if v6 else 2)), chunk(h.IP_PROTO, u8(17)),
                  chunk(h.SRC6 if v6 else h.SRC4, packed(src)),
                  chunk(h.DST6 if v6 else h.DST4, packed(dst)), chunk(h.SPORT, u16(1)),
                  chunk(h.DPORT, u16(2)), chunk(h.TS_SEC, u32(3)), chunk(h.TS_USEC, u32(4)),
                  chunk(h.PROTO_TYPE, u8(4)), chunk(h.CAPTURE_ID, u32(5)),
                  chunk(h.PAYLOAD, payload), chunk(h.AUTH_KEY, b"k")]
        data = hep3(chunks[i] for i in perm)
        msg = decode_hep(data)
        self.assertEqual(msg, generic(data))
        self.assertEqual((msg.src, msg.sport, msg.dport, msg.payload, msg.capture_id),
                         (packed(src), 1, 2, payload, 5))


class CompressionTests(SynchronousTestCase):
    def test_compressed_payload_chunk(self) -> None:
        """Chunk 0x0010 in gzip (VoIPmonitor's test), zlib (captagent's compress()) and
        raw deflate; it wins over a 0x000f beside it."""
        for how in ("gzip", "zlib", "deflate"):
            for src in ("10.0.0.1", "2001:db8::1"):
                with self.subTest(how=how, src=src):
                    data = hep3_message(src, 5060, src, 5060, SIP * 20, compressed=how)
                    self.assertEqual(decode_hep(data).payload, SIP * 20)
        both = hep3_message("10.0.0.1", 5060, "10.0.0.2", 5060, b"plain",
                            vendor_chunks=[chunk(h.ZIPPED, zlib.compress(b"zipped"))])
        self.assertEqual(decode_hep(both).payload, b"zipped")

    def test_whole_frame_gzip(self) -> None:
        """heplify's payload_zip: the HEP3 message is a gzip member."""
        for order in (KAMAILIO, HEPLIFY):
            data = hep3_message("10.0.0.1", 5060, "10.0.0.2", 5060, SIP, order=order)
            self.assertEqual(decode_hep(gzip_frame(data)), decode_hep(data))

    def test_inflation_is_bounded(self) -> None:
        bomb = zlib.compress(b"\0" * (1 << 22))  # 4 MiB of zeros in about 4 KiB
        data = hep3_message("10.0.0.1", 5060, "10.0.0.2", 5060, b"",
                            vendor_chunks=[chunk(h.ZIPPED, bomb)])
        self.assertReason(data, "too_large")
        self.assertEqual(len(inflate(zlib.compress(b"x" * 70000), 70000)), 70000)
        with self.assertRaises(HepError) as e:
            inflate(zlib.compress(b"x" * 70001), 70000)
        self.assertEqual(e.exception.reason, "too_large")
        self.assertReason(gzip.compress(b"HEP3" + b"\0" * 100000), "too_large")

    def test_corrupt_compression(self) -> None:
        good = zlib.compress(SIP)
        for bad in (good[:-3], good[:2] + b"\xff" * 10, b"\x1f\x8b" + b"\0" * 20, b""):
            data = hep3_message("10.0.0.1", 5060, "10.0.0.2", 5060, b"",
                                vendor_chunks=[chunk(h.ZIPPED, bad)])
            self.assertReason(data, "bad_compression")
        self.assertReason(gzip.compress(SIP)[:-5], "bad_compression")

    def assertReason(self, data: bytes, reason: str) -> None:
        with self.assertRaises(HepError) as e:
            decode_hep(data)
        self.assertEqual(e.exception.reason, reason, str(e.exception))


class LegacyTests(SynchronousTestCase):
    def test_hepv2_little_endian_time(self) -> None:
        """Kamailio and captagent on x86: the time header in host byte order."""
        data = hep2_message("10.0.0.1", 5060, "10.0.0.2", 5070, SIP, ts=(1700000000, 250000),
                            capture_id=4242)
        self.assertEqual(decode_hep(data), HepMessage(
            ts=1700000000.25, proto_type=1, ip_proto=17, src=packed("10.0.0.1"), sport=5060,
            dst=packed("10.0.0.2"), dport=5070, payload=SIP, capture_id=4242,
            auth_key=None, correlation_id=None, node_name=None, version=2))

    def test_hepv2_packed_time_header(self) -> None:
        """A sender whose time header is 10 bytes, not the C struct's 12."""
        for payload in (SIP, b"SIP/2.0 200 OK\r\n\r\n", b"PRACK sip:a SIP/2.0\r\n\r\n"):
            data = hep2_message("10.0.0.1", 5060, "10.0.0.2", 5070, payload, packed_time=True)
            self.assertEqual(decode_hep(data).payload, payload)
            data = hep2_message("10.0.0.1", 5060, "10.0.0.2", 5070, payload)
            self.assertEqual(decode_hep(data).payload, payload)

    def test_hepv2_big_endian_time_when_unambiguous(self) -> None:
        data = hep2_message("2001:db8::1", 5060, "2001:db8::2", 5060, SIP,
                            ts=(1700000000, 250000), capture_id=7, little_endian=False)
        msg = decode_hep(data)
        self.assertEqual((msg.ts, msg.capture_id, msg.src), (1700000000.25, 7,
                                                             packed("2001:db8::1")))

    def test_hepv2_without_a_valid_time(self) -> None:
        data = bytearray(hep2_message("10.0.0.1", 1, "10.0.0.2", 2, SIP))
        data[20:28] = b"\xff" * 8  # microseconds invalid in either byte order
        self.assertIsNone(decode_hep(bytes(data)).ts)

    def test_hepv1(self) -> None:
        msg = decode_hep(hep2_message("10.0.0.1", 5060, "10.0.0.2", 5060, SIP, version=1))
        self.assertEqual((msg.version, msg.ts, msg.payload, msg.dport), (1, None, SIP, 5060))

    def test_not_hepv2(self) -> None:
        for data in (hep2_message("10.0.0.1", 1, "10.0.0.2", 2, SIP, family=10),
                     b"\x02\x11" + b"\0" * 40, b"\x01\x10\x00\x11" + b"\0" * 40):
            with self.assertRaises(HepError) as e:
                decode_hep(data)
            self.assertEqual(e.exception.reason, "bad_magic")


class MalformedTests(SynchronousTestCase):
    def reason(self, data: bytes) -> str:
        with self.assertRaises(HepError) as e:
            decode_hep(data)
        self.assertIn(e.exception.reason, REASONS)
        return e.exception.reason

    def test_truncation_at_every_offset(self) -> None:
        """Every prefix of a valid message (HEP3 in each order and family, compressed,
        gzip frame, HEPv2) is an error, never a message and never another exception."""
        samples = [spec_example(), gzip_frame(spec_example()),
                   hep2_message("2001:db8::1", 5060, "2001:db8::2", 5060, SIP)]
        for order in (KAMAILIO, SNGREP, HEPLIFY):
            for src in ("10.0.0.1", "2001:db8::1"):
                samples.append(hep3_message(src, 5060, src, 5060, SIP, order=order,
                                            auth_key=b"k", correlation_id=b"c",
                                            node_name=b"n", compressed="zlib"))
        for data in samples:
            for cut in range(len(data)):
                with self.subTest(cut=cut, data=data[:8]):
                    if data[0] == 2 and cut > 52:  # HEPv2 has no length: a shorter
                        self.assertEqual(decode_hep(data[:cut]).payload, data[52:cut])
                        continue                    # payload is all a cut can do
                    self.reason(data[:cut])

    def test_reasons(self) -> None:
        ok = spec_example()
        self.assertEqual(self.reason(b""), "truncated")
        self.assertEqual(self.reason(b"HEP"), "truncated")
        self.assertEqual(self.reason(b"GET / HTTP/1.1\r\n"), "bad_magic")
        self.assertEqual(self.reason(ok[:-1]), "truncated")
        self.assertEqual(self.reason(ok + b"\0"), "bad_length")
        self.assertEqual(self.reason(b"HEP3\x00\x03" + b"\0" * 10), "bad_length")
        self.assertEqual(self.reason(hep3([b"\0\0\0\x01\0\x02"])), "bad_chunk")
        self.assertEqual(self.reason(hep3([b"\0\0\0\x01\0\x09\x02"])), "bad_chunk")
        self.assertEqual(self.reason(hep3([b"\0\0\0\x01"])), "bad_chunk")
        for ctype, value in ((h.FAMILY, u16(2)), (h.SRC4, b"\1\2\3"), (h.SRC6, bytes(4)),
                             (h.SPORT, u32(1)), (h.TS_SEC, u16(1)), (h.PROTO_TYPE, b""),
                             (h.CAPTURE_ID, u16(1))):
            with self.subTest(ctype=ctype):
                self.assertEqual(self.reason(hep3([chunk(ctype, value)])), "bad_chunk_size")
        ports = [chunk(h.SPORT, u16(1)), chunk(h.DPORT, u16(2)), chunk(h.PAYLOAD, b"x")]
        self.assertEqual(self.reason(hep3(ports)), "no_address")
        mixed = [chunk(h.SRC4, packed("10.0.0.1")), chunk(h.DST6, packed("::1")), *ports]
        self.assertEqual(self.reason(hep3(mixed)), "no_address")
        addrs = [chunk(h.SRC4, packed("10.0.0.1")), chunk(h.DST4, packed("10.0.0.2"))]
        self.assertEqual(self.reason(hep3([*addrs, chunk(h.SPORT, u16(1)),
                                           chunk(h.PAYLOAD, b"x")])), "no_port")
        self.assertEqual(self.reason(hep3([*addrs, *ports[:2],
                                           chunk(h.KEEPALIVE, u16(30))])), "no_payload")
        self.assertEqual(self.reason(hep2_message("10.0.0.1", 1, "10.0.0.2", 2, b"")),
                         "no_payload")

    def test_reasons_are_metric_labels(self) -> None:
        for reason in REASONS:
            self.assertRegex(reason, r"^[a-z][a-z0-9_]*$")

    @given(st.binary(max_size=300))
    @settings(max_examples=3000, **SETTINGS)
    def test_any_bytes(self, data: bytes) -> None:
        for prefix in (b"", b"HEP3", b"\x1f\x8b", b"\x02\x10\x02"):
            try:
                decode_hep(prefix + data)
            except HepError as e:
                self.assertIn(e.reason, REASONS)

    @given(st.sampled_from(range(8)), st.lists(st.tuples(st.integers(0, 2000),
                                                         st.integers(0, 255)), max_size=6),
           st.integers(0, 400))
    @settings(max_examples=3000, **SETTINGS)
    def test_mutated_messages(self, which: int, edits: list, cut: int) -> None:
        """Valid messages with bytes replaced and cut: a message or a HepError."""
        orders = (KAMAILIO, SNGREP, HEPLIFY, KAMAILIO)
        src = "2001:db8::1" if which & 1 else "10.0.0.1"
        data = bytearray(hep3_message(src, 5060, src, 5060, SIP, order=orders[which // 2],
                                      auth_key=b"k", compressed="gzip" if which > 5 else None))
        for pos, value in edits:
            if pos < len(data):
                data[pos] = value
        for sample in (bytes(data), bytes(data[:cut]), bytes(data) + bytes(cut % 7)):
            try:
                msg = decode_hep3(sample) if sample[:4] == b"HEP3" else decode_hep(sample)
            except HepError as e:
                self.assertIn(e.reason, REASONS)
            else:
                self.assertEqual(msg, generic(sample))


class FramerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.out: list[bytes] = []
        self.framer = HepStreamFramer(self.out.append)
        self.messages = [hep3_message("10.0.0.1", 5060 + i, "10.0.0.2", 5060, SIP * (i + 1))
                         for i in range(4)] + [spec_example()]
        self.stream = b"".join(self.messages)

    def test_every_split(self) -> None:
        for cut in range(len(self.stream) + 1):
            out: list[bytes] = []
            framer = HepStreamFramer(out.append)
            framer.feed(self.stream[:cut])
            framer.feed(self.stream[cut:])
            self.assertEqual(out, self.messages)
            self.assertEqual(framer.buffered, 0)

    def test_byte_by_byte(self) -> None:
        for i in range(len(self.stream)):
            self.framer.feed(self.stream[i:i + 1])
        self.assertEqual(self.out, self.messages)
        self.assertEqual(self.framer.messages, len(self.messages))

    def test_gzip_members(self) -> None:
        """heplify with payload_zip over TCP: gzip members back to back, among plain
        messages, cut anywhere."""
        zipped = gzip_frame(self.messages[0]) + self.messages[1] + \
            gzip_frame(self.messages[2] + self.messages[3]) + gzip_frame(self.messages[4])
        for step in (1, 7, 100, len(zipped)):
            out: list[bytes] = []
            framer = HepStreamFramer(out.append)
            for i in range(0, len(zipped), step):
                framer.feed(zipped[i:i + step])
            self.assertEqual(out, self.messages)
            self.assertEqual(framer.buffered, 0)

    def test_garbage_disconnects(self) -> None:
        """Messages before the garbage are delivered; then the stream is dead."""
        with self.assertRaises(HepError) as e:
            self.framer.feed(self.messages[0] + b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(e.exception.reason, "bad_magic")
        self.assertEqual(self.out, self.messages[:1])
        with self.assertRaises(HepError):
            self.framer.feed(self.messages[1])
        self.assertEqual(self.out, self.messages[:1])

    def test_bad_lengths(self) -> None:
        with self.assertRaises(HepError) as e:
            self.framer.feed(b"HEP3\x00\x02" + self.stream)
        self.assertEqual(e.exception.reason, "bad_length")
        framer = HepStreamFramer(self.out.append)
        with self.assertRaises(HepError) as e:
            framer.feed(gzip.compress(b"HEP3\x00\x40short"))
        self.assertEqual(e.exception.reason, "bad_length")
        for bad in (gzip.compress(b"not hep at all"), gzip.compress(b"")):
            framer = HepStreamFramer(self.out.append)
            with self.assertRaises(HepError) as e:
                framer.feed(bad)
            self.assertEqual(e.exception.reason, "bad_magic")

    def test_memory_is_bounded(self) -> None:
        """A partial message holds at most its 64 KiB; a gzip member that does not end
        within max_buffer bytes, or inflates beyond max_payload, is an error."""
        big = hep3_message("10.0.0.1", 1, "10.0.0.2", 2, b"x" * 65000)
        self.framer.feed(big[:-1])
        self.assertEqual(self.framer.buffered, len(big) - 1)
        self.framer.feed(big[-1:])
        self.assertEqual((self.framer.buffered, self.out), (0, [big]))
        endless = gzip.compress(bytes(range(256)) * 2000)  # incompressible-ish, unfinished
        framer = HepStreamFramer(self.out.append, max_buffer=4096)
        with self.assertRaises(HepError) as e:
            for i in range(0, 8192, 512):
                framer.feed(endless[i:i + 512])
        self.assertEqual(e.exception.reason, "too_large")
        framer = HepStreamFramer(self.out.append)
        with self.assertRaises(HepError) as e:
            framer.feed(gzip.compress(b"\0" * 200000))
        self.assertEqual(e.exception.reason, "too_large")

    @given(st.lists(st.binary(max_size=80), max_size=8),
           st.lists(st.integers(1, 64), min_size=1, max_size=8))
    @settings(max_examples=1000, **SETTINGS)
    def test_any_stream(self, parts: list[bytes], cuts: list[int]) -> None:
        """Any bytes, cut anyhow, around valid messages: messages or a HepError."""
        stream = b"".join(p + (self.messages[i % 5] if i % 2 else b"")
                          for i, p in enumerate(parts))
        out: list[bytes] = []
        framer = HepStreamFramer(out.append)
        pos = 0
        try:
            for size in cuts * (len(stream) // sum(cuts) + 1):
                framer.feed(stream[pos:pos + size])
                pos += size
        except HepError as e:
            self.assertIn(e.reason, REASONS)
        for frame in out:
            self.assertEqual(frame[:4], b"HEP3")
