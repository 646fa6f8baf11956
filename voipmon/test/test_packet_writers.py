"""Tests for voipmon.packet.writers: what it packs reads back, with our reader and dpkt's."""

from __future__ import annotations

import io
import struct

import dpkt
from twisted.trial.unittest import SynchronousTestCase

from voipmon.packet.writers import pcap_global_header, pcap_record, pcap_record_header
from voipmon.test.test_packet_readers import FRAMES, read_all


class WriterTests(SynchronousTestCase):
    def test_round_trip(self):
        data = pcap_global_header(113, 65535) + b"".join(pcap_record(ts, f) for ts, f in FRAMES)
        reader, got = read_all(data)
        self.assertEqual(reader.linktypes, [113])
        self.assertEqual(reader.snaplen, 65535)
        self.assertEqual([f for _, _, f in got], [f for _, f in FRAMES])
        self.assertEqual([round(t, 6) for t, _, _ in got], [t for t, _ in FRAMES])
        dp = list(dpkt.pcap.Reader(io.BytesIO(data)))
        self.assertEqual([bytes(f) for _, f in dp], [f for _, f in FRAMES])

    def test_record_header_rounding(self):
        hdr = pcap_record_header(1.9999999, 10, 20)
        self.assertEqual(struct.unpack("<IIII", hdr), (2, 0, 10, 20))
