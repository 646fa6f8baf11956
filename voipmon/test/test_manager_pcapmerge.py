"""Merging a call's pcaps: time order, exact size known up front, bounded chunks."""

from __future__ import annotations

import os
import struct
import subprocess

from twisted.trial.unittest import SynchronousTestCase

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
