"""Tests for voipmon.spool.writer: buffered per-call pcaps with a bounded set of open files."""

from __future__ import annotations

import os
import tempfile

import dpkt
from twisted.trial.unittest import SynchronousTestCase

from voipmon.packet.readers import CaptureReader
from voipmon.spool.writer import FLUSH_FRAMES, SpoolWriter


def read(path: str) -> list[tuple[float, int, bytes]]:
    with CaptureReader(path) as reader:
        return list(reader)


class SpoolWriterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = tempfile.mkdtemp()
        self.writer = SpoolWriter(self.root, max_open=2)

    def tearDown(self) -> None:
        self.writer.close()

    def test_many_interleaved_files_with_few_handles(self) -> None:
        sinks = [self.writer.open(f"2024-01-01/00/00/RTP/call{i}.pcap") for i in range(7)]
        expected: dict[int, list[tuple[float, bytes]]] = {i: [] for i in range(7)}
        for n in range(3 * FLUSH_FRAMES):
            i = n % 7
            frame = bytes([i]) * (60 + n % 50)
            ts = 1700000000.0 + n * 0.02
            sinks[i].add(ts, frame, 1)
            expected[i].append((ts, frame))
            if n % 97 == 0:
                sinks[(i + 3) % 7].flush()
            self.assertLessEqual(len(self.writer._open), 2)
        for sink in sinks:
            sink.close()
        for i in range(7):
            got = read(os.path.join(self.root, f"2024-01-01/00/00/RTP/call{i}.pcap"))
            self.assertEqual([(round(t, 6), fr) for t, _, fr in got],
                             [(round(t, 6), fr) for t, fr in expected[i]])
            self.assertEqual({lt for _, lt, _ in got}, {1})
        self.assertEqual(self.writer.stats.files, 7)
        self.assertEqual(self.writer.stats.frames, 3 * FLUSH_FRAMES)

    def test_keeps_link_type_and_refuses_others(self) -> None:
        sink = self.writer.open("x/SIP/a.pcap")
        sink.add(1.5, b"\x45" + b"\x00" * 27, 101)
        sink.add(2.5, b"\x00" * 60, 1)
        sink.close()
        with open(os.path.join(self.root, "x/SIP/a.pcap"), "rb") as f:
            pcap = dpkt.pcap.Reader(f)
            self.assertEqual(pcap.datalink(), 101)
            self.assertEqual(len(list(pcap)), 1)
        self.assertEqual(self.writer.stats.linktype_mismatch, 1)

    def test_null_link_type_is_kept(self) -> None:
        # DLT_NULL is 0: a call captured on a BSD loopback must not come out as Ethernet
        sink = self.writer.open("x/RTP/null.pcap")
        frame = b"\x02\x00\x00\x00" + b"\x45" + b"\x00" * 27
        sink.add(1.5, frame, 0)
        sink.close()
        self.assertEqual(read(os.path.join(self.root, "x/RTP/null.pcap")), [(1.5, 0, frame)])
        again = self.writer.open("x/RTP/null.pcap")
        again.add(2.5, frame, 0)
        again.close()
        self.assertEqual(len(read(os.path.join(self.root, "x/RTP/null.pcap"))), 2)
        self.assertEqual(self.writer.stats.write_errors, 0)

    def test_header_only_keeps_original_length(self) -> None:
        sink = self.writer.open("h/RTP/b.pcap", header_only=True)
        sink.add(3.0, b"A" * 200, 1, caplen=54)
        sink.close()
        with open(os.path.join(self.root, "h/RTP/b.pcap"), "rb") as f:
            data = f.read()
        self.assertEqual(len(data), 24 + 16 + 54)
        self.assertEqual(data[24 + 8:24 + 16], (54).to_bytes(4, "little") +
                         (200).to_bytes(4, "little"))

    def test_append_continues_existing_file(self) -> None:
        first = self.writer.open("c/SIP/same.pcap")
        first.add(1.0, b"\x01" * 60, 1)
        first.close()
        again = SpoolWriter(self.root).open("c/SIP/same.pcap")
        again.add(2.0, b"\x02" * 60, 1)
        again.close()
        again.writer.close()
        self.assertEqual([fr[0] for _, _, fr in read(os.path.join(self.root,
                                                                  "c/SIP/same.pcap"))],
                         [1, 2])

    def test_write_error_is_counted_not_raised(self) -> None:
        with open(os.path.join(self.root, "blocker"), "wb"):
            pass
        sink = self.writer.open("blocker/SIP/x.pcap")
        sink.add(1.0, b"\x00" * 60, 1)
        sink.close()
        self.assertEqual(self.writer.stats.write_errors, 1)
        self.flushLoggedErrors()

    def test_path_outside_spool_is_refused(self) -> None:
        self.assertRaises(ValueError, self.writer.open, "../escape.pcap")
        self.assertRaises(ValueError, self.writer.open, "/tmp/abs.pcap")
