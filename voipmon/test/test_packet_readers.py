"""Tests for voipmon.packet.readers and voipmon.packet.writers."""

from __future__ import annotations

import gzip
import io
import os
import struct

import dpkt
from twisted.trial.unittest import SynchronousTestCase

from voipmon.packet.readers import CaptureFormatError, CaptureReader, batches, read_capture
from voipmon.test.common import shared_path

PCAPS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "pcaps")
PUBLIC = os.path.join(PCAPS, "public")

FRAMES = [(1700000000.123456, b"\x01" * 60), (1700000001.000001, b"\x02" * 1514),
          (1700000002.5, b"\x03")]


def pcap_bytes(frames, order="<", nano=False, linktype=1, snaplen=65535):
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for ts, data in frames:
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nano else 1e6))
        out.append(struct.pack(order + "IIII", sec, frac, len(data), len(data)) + data)
    return b"".join(out)


def _opt(order, code, value):
    pad = (-len(value)) % 4
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * pad


def _block(order, btype, body):
    n = 12 + len(body)
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def shb(order):
    return _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(order, linktype, tsresol=None, tsoffset=None, snaplen=0):
    opts = b""
    if tsresol is not None:
        opts += _opt(order, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += _opt(order, 14, struct.pack(order + "q", tsoffset))
    if opts:
        opts += _opt(order, 0, b"")
    return _block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts)


def epb(order, iface, ticks, data):
    pad = b"\0" * ((-len(data)) % 4)
    body = struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data),
                       len(data)) + data + pad
    return _block(order, 6, body)


def spb(order, data, origlen=None):
    pad = b"\0" * ((-len(data)) % 4)
    return _block(order, 3, struct.pack(order + "I", origlen or len(data)) + data + pad)


def old_pb(order, iface, ticks, data):
    pad = b"\0" * ((-len(data)) % 4)
    body = struct.pack(order + "HHIIII", iface, 0, ticks >> 32, ticks & 0xFFFFFFFF,
                       len(data), len(data)) + data + pad
    return _block(order, 2, body)


def dpkt_written(writer_class) -> bytes:
    """FRAMES as dpkt's pcap or pcapng writer writes them."""
    buf = io.BytesIO()
    w = writer_class(buf, linktype=1)
    for ts, data in FRAMES:
        w.writepkt(data, ts=ts)
    return buf.getvalue()


def read_all(data: bytes, name="mem"):
    reader = CaptureReader(io.BytesIO(data), name=name)
    return reader, list(reader)


class PcapTests(SynchronousTestCase):
    def check(self, order, nano):
        reader, got = read_all(pcap_bytes(FRAMES, order, nano, linktype=113))
        self.assertEqual(reader.format, "pcap")
        self.assertEqual(reader.linktypes, [113])
        self.assertEqual([(lt, f) for _, lt, f in got], [(113, f) for _, f in FRAMES])
        for (ts, _, _), (want, _) in zip(got, FRAMES, strict=True):
            self.assertAlmostEqual(ts, want, places=6)
        self.assertEqual(reader.truncated, 0)
        self.assertEqual(reader.frames, 3)

    def test_little_endian_microseconds(self):
        self.check("<", False)

    def test_big_endian_microseconds(self):
        self.check(">", False)

    def test_little_endian_nanoseconds(self):
        self.check("<", True)

    def test_big_endian_nanoseconds(self):
        self.check(">", True)

    def test_nanosecond_precision_kept(self):
        data = pcap_bytes([(1.0, b"x")], nano=True)[:-1]
        data = data[:24] + struct.pack("<IIII", 5, 123456789, 1, 1) + b"x"
        _, got = read_all(data)
        self.assertAlmostEqual(got[0][0], 5.123456789, places=9)

    def test_dpkt_written_file(self):
        _, got = read_all(dpkt_written(dpkt.pcap.Writer))
        self.assertEqual([f for _, _, f in got], [f for _, f in FRAMES])

    def test_large_file_crosses_chunks(self):
        frames = [(1000.0 + i, bytes([i % 256]) * (700 + i % 900)) for i in range(3000)]
        _, got = read_all(pcap_bytes(frames))
        self.assertEqual(len(got), 3000)
        self.assertEqual([f for _, _, f in got], [f for _, f in frames])

    def test_batches(self):
        # what the engine's fast path and the decoder's feed_all take: one batch per buffer
        frames = [(1000.0 + i / 8, bytes([i % 256]) * (700 + i % 900)) for i in range(3000)]
        for order, nano in (("<", False), (">", True)):
            data = pcap_bytes(frames, order, nano)[:-10]  # the last record cut short
            reader = CaptureReader(io.BytesIO(data), name="w.pcap")
            got = []
            counted = []
            for batch in reader.batches():
                counted.append(reader.frames)  # those of the batches before
                got.extend(batch)
            self.assertGreater(len(counted), 2)
            self.assertEqual(counted[:2], [0, counted[1]])
            self.assertGreater(counted[1], 0)
            self.assertEqual(counted, sorted(counted))
            self.assertEqual(list(reader.batches()), [])  # only once
            self.assertEqual(got, list(CaptureReader(io.BytesIO(data))))
            self.assertEqual(len(got), 2999)
            self.assertEqual((reader.frames, reader.truncated), (2999, 1))
            self.assertEqual(reader.bytes_read, len(data) - (16 + len(frames[-1][1]) - 10))
            self.assertEqual(list(reader), [])  # consumed
        started = CaptureReader(io.BytesIO(pcap_bytes(frames)))
        next(iter(started))
        self.assertEqual(list(started.batches()), [])
        # anything but a reader is one batch, as it is
        records = [(1.0, 1, b"x")]
        self.assertEqual([list(b) for b in batches(records)], [records])

    def test_truncated_last_record(self):
        data = pcap_bytes(FRAMES)[:-5]
        reader, got = read_all(data, name="cut.pcap")
        self.assertEqual(len(got), 2)
        self.assertEqual(reader.truncated, 1)
        self.assertIn("cut.pcap", reader.notes[0])
        self.assertIn("truncated", reader.notes[0])

    def test_truncated_record_header(self):
        data = pcap_bytes(FRAMES[:1]) + b"\x00" * 7
        reader, got = read_all(data)
        self.assertEqual(len(got), 1)
        self.assertEqual(reader.truncated, 1)

    def test_empty_capture(self):
        reader, got = read_all(pcap_bytes([]))
        self.assertEqual(got, [])
        self.assertEqual(reader.truncated, 0)

    def test_absurd_record_length(self):
        data = pcap_bytes(FRAMES[:1]) + struct.pack("<IIII", 1, 0, 0x7FFFFFFF, 10) + b"xx"
        reader = CaptureReader(io.BytesIO(data), name="bad.pcap")
        e = self.assertRaises(CaptureFormatError, list, reader)
        self.assertEqual(e.offset, 24 + 16 + 60)
        self.assertIn("bad.pcap", str(e))
        self.assertIsInstance(e, ValueError)

    def test_not_a_capture(self):
        e = self.assertRaises(CaptureFormatError, CaptureReader,
                              io.BytesIO(b"hello world, not a pcap"), "x.txt")
        self.assertIn("x.txt", str(e))
        self.assertIn("offset 0", str(e))

    def test_too_short(self):
        self.assertRaises(CaptureFormatError, CaptureReader, io.BytesIO(b"\xd4\xc3"), "s")

    def test_kuznetzov_modified_pcap(self):
        head = struct.pack("<IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)
        rec = struct.pack("<IIII", 7, 500000, 3, 3) + b"\0" * 8 + b"abc"
        _, got = read_all(head + rec + rec)
        self.assertEqual(got, [(7.5, 1, b"abc")] * 2)

    def test_gzip_file_and_stream(self):
        data = pcap_bytes(FRAMES)
        path = self.mktemp() + ".pcap.gz"
        with gzip.open(path, "wb") as f:
            f.write(data)
        with CaptureReader(path) as reader:
            self.assertEqual([f for _, _, f in reader], [f for _, f in FRAMES])
            self.assertTrue(reader.compressed)
        reader, got = read_all(gzip.compress(data))
        self.assertEqual(len(got), 3)

    def test_truncated_gzip(self):
        frames = [(1000.0 + i, bytes([i % 256]) * 1000) for i in range(300)]
        data = gzip.compress(pcap_bytes(frames), compresslevel=1)
        reader, got = read_all(data[:len(data) // 2])
        self.assertGreater(len(got), 50)
        self.assertLess(len(got), 300)
        self.assertEqual([f for _, _, f in got], [f for _, f in frames[:len(got)]])
        self.assertGreaterEqual(reader.truncated, 1)
        self.assertIn("ends early", " ".join(reader.notes))

    def test_gzip_on_unseekable_stream(self):
        class Pipe(io.RawIOBase):
            def __init__(self, data):
                self.data = io.BytesIO(data)

            def readinto(self, b):
                chunk = self.data.read(len(b))
                b[:len(chunk)] = chunk
                return len(chunk)

            def readable(self):
                return True

        e = self.assertRaises(CaptureFormatError, CaptureReader,
                              io.BufferedReader(Pipe(gzip.compress(pcap_bytes(FRAMES)))), "p")
        self.assertIn("decompress it first", str(e))

    def test_path_and_close(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(pcap_bytes(FRAMES))
        self.assertEqual(len(list(read_capture(path))), 3)
        with CaptureReader(path) as reader:
            self.assertEqual(reader.name, path)
        self.assertTrue(reader._file.closed)


class PcapngTests(SynchronousTestCase):
    def build(self, order):
        return b"".join([
            shb(order),
            idb(order, 1),                                  # default microseconds
            idb(order, 113, tsresol=9),                     # nanoseconds
            idb(order, 101, tsresol=0x80 | 10, tsoffset=100),  # 2^-10 s, offset
            epb(order, 0, 1700000000123456, b"eth-frame"),
            _block(order, 5, struct.pack(order + "III", 0, 0, 0)),  # ISB: skipped
            epb(order, 1, 1700000000123456789, b"sll"),
            epb(order, 2, 1024 * 5 + 512, b"raw-ip"),
            spb(order, b"simple"),  # no timestamp: takes the previous packet's
            old_pb(order, 1, 2 * 10**9, b"old"),
        ])

    def check(self, order):
        reader, got = read_all(self.build(order))
        self.assertEqual(reader.format, "pcapng")
        self.assertEqual(reader.linktypes, [1, 113, 101])
        self.assertEqual([(lt, f) for _, lt, f in got], [
            (1, b"eth-frame"), (113, b"sll"), (101, b"raw-ip"), (1, b"simple"),
            (113, b"old")])
        ts = [t for t, _, _ in got]
        self.assertAlmostEqual(ts[0], 1700000000.123456, places=6)
        self.assertAlmostEqual(ts[1], 1700000000.123456789, places=6)
        self.assertEqual(ts[2], 105.5)
        self.assertEqual(ts[3], 105.5)
        self.assertEqual(ts[4], 2.0)

    def test_little_endian(self):
        self.check("<")
        reader = CaptureReader(io.BytesIO(self.build("<")))
        whole = list(reader.batches())  # one batch: the records as iteration gives them
        self.assertEqual(len(whole), 1)
        self.assertEqual(list(whole[0]), read_all(self.build("<"))[1])

    def test_big_endian(self):
        self.check(">")

    def test_two_sections_reset_interfaces(self):
        data = self.build("<") + shb(">") + idb(">", 229) + epb(">", 0, 7000000, b"v6")
        reader, got = read_all(data)
        self.assertEqual(got[-1], (7.0, 229, b"v6"))
        self.assertEqual(reader.linktypes, [1, 113, 101, 229])

    def test_dpkt_written_file(self):
        _, got = read_all(dpkt_written(dpkt.pcapng.Writer))
        self.assertEqual([f for _, _, f in got], [f for _, f in FRAMES])
        self.assertAlmostEqual(got[0][0], FRAMES[0][0], places=6)

    def test_truncated_last_block(self):
        data = self.build("<")[:-7]
        reader, got = read_all(data)
        self.assertEqual(len(got), 4)
        self.assertEqual(reader.truncated, 1)

    def test_bad_block_length(self):
        data = shb("<") + idb("<", 1) + struct.pack("<II", 6, 13) + b"\0" * 20
        e = self.assertRaises(CaptureFormatError, list, CaptureReader(io.BytesIO(data), "n"))
        self.assertEqual(e.offset, len(shb("<") + idb("<", 1)))

    def test_unknown_interface(self):
        data = shb("<") + idb("<", 1) + epb("<", 3, 0, b"x")
        self.assertRaises(CaptureFormatError, list, CaptureReader(io.BytesIO(data), "n"))

    def test_bad_byte_order_magic(self):
        data = _block("<", 0x0A0D0D0A, struct.pack("<IHHq", 0x11223344, 1, 0, -1))
        self.assertRaises(CaptureFormatError, list, CaptureReader(io.BytesIO(data), "n"))


class PublicCaptureTests(SynchronousTestCase):
    """Every public capture reads to the same frames as dpkt's reader gives."""

    def test_public_captures_match_dpkt(self):
        if not os.path.isdir(PUBLIC):
            shared_path("pcaps", "public")  # skips, or fails in CI
        names = sorted(n for n in os.listdir(PUBLIC)
                       if n.endswith((".pcap", ".pcapng", ".cap")))
        self.assertGreater(len(names), 30)
        for name in names:
            path = os.path.join(PUBLIC, name)
            ours = list(read_capture(path))
            with open(path, "rb") as f:
                cls = dpkt.pcapng.Reader if name.endswith(".pcapng") else dpkt.pcap.Reader
                theirs = [(ts, bytes(buf)) for ts, buf in cls(f)]
            self.assertEqual(len(ours), len(theirs), name)
            self.assertEqual([f for _, _, f in ours], [f for _, f in theirs], name)
            for (a, _, _), (b, _) in zip(ours, theirs, strict=True):
                self.assertAlmostEqual(a, float(b), places=5, msg=name)
