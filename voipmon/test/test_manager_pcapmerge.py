"""Merging a call's pcaps: time order, exact size known up front, bounded chunks."""

from __future__ import annotations

import os
import random
import struct
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from voipmon.manager import pcapmerge
from voipmon.manager.pcapmerge import PcapMergeError, plan_merge, read_input
from voipmon.test.common import require_tshark


def write_pcap(path: str, records: list[tuple[float, bytes]], linktype: int = 1,
               nano: bool = False, endian: str = "<", partial: bytes = b"") -> None:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    with open(path, "wb") as handle:
        handle.write(struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype))
        for ts, frame in records:
            sec = int(ts)
            frac = round((ts - sec) * (1e9 if nano else 1e6))
            handle.write(struct.pack(endian + "IIII", sec, frac, len(frame), len(frame)) + frame)
        handle.write(partial)


def udp_frame(payload: bytes) -> bytes:
    """An Ethernet/IPv4/UDP frame tshark can decode."""
    udp = struct.pack("!HHHH", 5060, 5060, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 2]))
    return b"\x00" * 12 + b"\x08\x00" + ip + udp


def read_records(data: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], 24
    while pos < len(data):
        sec, usec, caplen, _ = struct.unpack_from("<IIII", data, pos)
        out.append((sec, usec, data[pos + 16:pos + 16 + caplen]))
        pos += 16 + caplen
    return out


class MergeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def test_single_input_is_passed_through(self) -> None:
        write_pcap(self.path("a"), [(1.5, b"x" * 10), (2.0, b"y" * 3)])
        plan = plan_merge([self.path("a")])
        merged = b"".join(plan.chunks())
        with open(self.path("a"), "rb") as handle:
            self.assertEqual(merged, handle.read())
        self.assertEqual(plan.size, len(merged))

    def test_interleaves_by_time(self) -> None:
        write_pcap(self.path("sip"), [(10.000001, b"INVITE"), (12.5, b"BYE"), (13.0, b"200")])
        write_pcap(self.path("rtp"), [(10.5, b"r1"), (11.0, b"r2"), (12.5, b"r3")])
        plan = plan_merge([self.path("sip"), self.path("rtp")])
        merged = b"".join(plan.chunks(chunk_size=20))
        self.assertEqual(len(merged), plan.size)
        self.assertEqual([r[2] for r in read_records(merged)],
                         [b"INVITE", b"r1", b"r2", b"BYE", b"r3", b"200"])
        self.assertEqual(read_records(merged)[0][:2], (10, 1))

    def test_partial_trailing_record_is_left_out(self) -> None:
        partial = struct.pack("<IIII", 20, 0, 100, 100) + b"z" * 40
        write_pcap(self.path("sip"), [(1.0, b"a")], partial=partial)
        write_pcap(self.path("rtp"), [(2.0, b"b")])
        self.assertEqual(read_input(self.path("sip")).records, 1)
        plan = plan_merge([self.path("sip"), self.path("rtp")])
        merged = b"".join(plan.chunks())
        self.assertEqual(len(merged), plan.size)
        self.assertEqual([r[2] for r in read_records(merged)], [b"a", b"b"])

    def test_nanosecond_and_big_endian_inputs_are_converted(self) -> None:
        write_pcap(self.path("sip"), [(1.25, b"a"), (3.0, b"c")])
        write_pcap(self.path("rtp"), [(2.000002, b"b")], nano=True, endian=">")
        merged = b"".join(plan_merge([self.path("sip"), self.path("rtp")]).chunks())
        self.assertEqual(read_records(merged), [(1, 250000, b"a"), (2, 2, b"b"), (3, 0, b"c")])

    def test_refuses_what_it_cannot_merge(self) -> None:
        write_pcap(self.path("a"), [(1.0, b"a")], linktype=1)
        write_pcap(self.path("b"), [(1.0, b"a")], linktype=113)
        with open(self.path("c"), "wb") as handle:
            handle.write(b"not a pcap at all, not even close")
        exc = self.assertRaises(PcapMergeError, plan_merge, [self.path("a"), self.path("b")])
        self.assertIn("different link types", str(exc))
        exc = self.assertRaises(PcapMergeError, plan_merge, [self.path("c")])
        self.assertIn("not a classic pcap", str(exc))
        self.assertRaises(PcapMergeError, plan_merge, [])

    def test_tshark_reads_the_merge(self) -> None:
        tshark = require_tshark()
        write_pcap(self.path("sip"), [(1.0, udp_frame(b"INVITE sip:a@b SIP/2.0\r\n\r\n"))])
        write_pcap(self.path("rtp"), [(1.5, udp_frame(b"\x80" * 20)), (2.0, udp_frame(b"x"))])
        with open(self.path("out.pcap"), "wb") as handle:
            for chunk in plan_merge([self.path("sip"), self.path("rtp")]).chunks():
                handle.write(chunk)
        out = subprocess.run([tshark, "-r", self.path("out.pcap"), "-T", "fields",
                              "-e", "frame.time_epoch"], capture_output=True, text=True,
                             check=True).stdout.split()
        self.assertEqual([float(t) for t in out], [1.0, 1.5, 2.0])


class RunMergeTests(SynchronousTestCase):
    """The merge of inputs of one format copies runs of records, reading blocks: the same
    bytes as the record-by-record merge, whatever the block and chunk sizes and however
    the inputs interleave (records out of order within an input, records larger than a
    block, a partial record at an input's end)."""

    def test_runs_are_the_record_by_record_merge(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        rng = random.Random(15)
        for trial in range(40):
            paths = []
            for n in range(rng.randint(2, 4)):
                records, t = [], rng.uniform(0, 5)
                rtp = rng.random() < 0.5     # mostly records of one length, in runs
                for _ in range(rng.randint(0, 400 if rtp else 120)):
                    t += rng.choice((0.0, 0.001, 0.02, 0.5, -0.3 if rng.random() < 0.05
                                     else 0.01))
                    size = 214 if rtp and rng.random() < 0.9 else rng.choice(
                        (0, 1, 60, 214, 700, 3000))
                    frame = bytes(rng.randrange(256) for _ in range(size % 97))
                    records.append((max(t, 0.0), frame * (size // 97 + 1)))
                path = os.path.join(directory, f"{trial}-{n}")
                write_pcap(path, records, partial=b"\x01\x02" if rng.random() < 0.3 else b"")
                paths.append(path)
            plan = plan_merge(paths)
            header = bytearray(plan.inputs[0].header)
            struct.pack_into("<I", header, 16, max(i.snaplen for i in plan.inputs))
            want = b"".join(pcapmerge._merge_records(plan.inputs, bytes(header), 4096))
            self.assertEqual(len(want), plan.size)
            for block, chunk in ((1 << 20, 65536), (256, 100), (40, 1), (5000, 700)):
                self.patch(pcapmerge, "BLOCK", block)
                pieces = list(plan.chunks(chunk))
                self.assertEqual(b"".join(pieces), want, (trial, block, chunk))
                self.assertTrue(all(pieces), "no empty chunk")

    def test_the_scan_reads_blocks(self) -> None:
        """The scan finds every complete record across block edges, and stops before a
        partial one."""
        path = os.path.join(self.mktemp())
        frames = [(1.0 + i / 50, bytes([i % 256]) * (i * 37 % 1500)) for i in range(500)]
        write_pcap(path, frames, partial=struct.pack("<IIII", 9, 0, 100, 100) + b"abcd")
        whole = os.path.getsize(path) - 20
        for block in (1 << 20, 64, 17):
            self.patch(pcapmerge, "BLOCK", block)
            found = read_input(path)
            self.assertEqual((found.end, found.records), (whole, 500), block)

    def test_runs_of_one_length_are_found_at_once(self) -> None:
        """RTP of one codec: records of one length in runs, broken by others (SIP, a
        second codec, a short frame), big-endian too: the scan agrees with a walk of
        every header, whatever the block size, and stops before a partial record."""
        rng = random.Random(5)
        directory = self.mktemp()
        os.makedirs(directory)
        for trial in range(30):
            frames, t = [], 1.0
            for _ in range(rng.randint(0, 3000)):
                t += 0.02
                size = 214 if rng.random() < 0.9 else rng.choice((60, 214, 1500, 0))
                frames.append((t, bytes(size)))
            endian = rng.choice("<>")
            path = os.path.join(directory, str(trial))
            tail = rng.choice((b"", struct.pack(endian + "IIII", 9, 0, 214, 214) + b"ab",
                               b"\x00" * 7))
            write_pcap(path, frames, endian=endian, partial=tail)
            with open(path, "rb") as handle:
                data = handle.read()
            pos, count = 24, 0   # the plain walk
            while pos + 16 <= len(data):
                caplen = struct.unpack_from(endian + "I", data, pos + 8)[0]
                if pos + 16 + caplen > len(data):
                    break
                pos, count = pos + 16 + caplen, count + 1
            self.assertEqual(count, len(frames))
            for block in (1 << 20, 1000, 230):
                self.patch(pcapmerge, "BLOCK", block)
                found = read_input(path)
                self.assertEqual((found.end, found.records), (pos, count), (trial, block))
