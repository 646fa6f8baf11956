"""Tests for voipmon.analysis.rtcp: compound RTCP, report blocks and round-trip time."""

from __future__ import annotations

import os
import struct

from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.rtcp import RtcpTracker, is_rtcp, parse_rtcp
from voipmon.packet.decode import Decoder
from voipmon.packet.readers import CaptureReader
from voipmon.test.callsupport import ntp_mid, rtcp_rr, rtcp_sr
from voipmon.test.common import shared_path

SDES = struct.pack("!BBHI", 0x81, 202, 3, 0x1234) + b"\x01\x02ab\x00\x00\x00\x00"
SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))), "shared", "pcaps", "public")


class ParseTests(SynchronousTestCase):
    def test_compound_sr_sdes_rr(self) -> None:
        packet = rtcp_sr(0xAAAA, 3900000000.5, ((0xBBBB, 64, 12, 70000, 160, 0, 0),)) + \
            SDES + rtcp_rr(0xAAAA, ((0xCCCC, 0, -3, 5, 80, 0x1234, 65536),))
        self.assertTrue(is_rtcp(packet))
        sr, rr = parse_rtcp(packet)
        self.assertTrue(sr.is_sr)
        self.assertEqual(sr.sender, 0xAAAA)
        self.assertEqual(sr.ntp_mid, ntp_mid(3900000000.5))
        (block,) = sr.blocks
        self.assertEqual((block.ssrc, block.fraction_lost, block.cumulative_lost),
                         (0xBBBB, 0.25, 12))
        self.assertEqual((block.highest_seq, block.jitter), (70000, 160))
        self.assertFalse(rr.is_sr)
        self.assertEqual(rr.blocks[0].cumulative_lost, -3)
        self.assertEqual(rr.blocks[0].dlsr, 1.0)

    def test_garbage_and_truncation(self) -> None:
        self.assertEqual(parse_rtcp(b""), [])
        self.assertEqual(parse_rtcp(b"\x00" * 40), [])           # version 0
        sr = rtcp_sr(1, 10.0, ((2, 0, 0, 0, 0, 0, 0),))
        self.assertEqual(parse_rtcp(sr[:-4]), [])               # length beyond the data
        both = sr + b"\x80\xc9\xff\xff"                         # good SR, then a bad header
        self.assertEqual(len(parse_rtcp(both)), 1)
        lying = b"\x9f\xc9\x00\x01" + b"\x00" * 4                # claims 31 blocks, has none
        self.assertEqual(parse_rtcp(lying)[0].blocks, ())
        self.assertFalse(is_rtcp(b"\x80\x08" + b"\x00" * 10))   # RTP PCMA

    def test_real_compound_packets(self) -> None:
        path = os.path.join(SHARED, "ndpi__rtcp_multiple_pkts_in_the_same_datagram.pcap")
        if not os.path.exists(path):
            shared_path("pcaps", "public", os.path.basename(path))  # skips, or fails in CI
        datagrams = []
        decoder = Decoder(datagrams.append)
        with CaptureReader(path) as reader:
            decoder.feed_all(reader)
        self.assertEqual(len(datagrams), 5)
        for d in datagrams:
            self.assertTrue(is_rtcp(d.payload))
            self.assertGreaterEqual(len(parse_rtcp(d.payload)), 1)


class TrackerTests(SynchronousTestCase):
    def test_rtt_fraction_and_jitter(self) -> None:
        tracker = RtcpTracker()
        ntp = 3900000123.25
        tracker.feed(100.0, rtcp_sr(0xA, ntp))                 # A's SR seen at t=100
        # B reports on A 0.5 s later, having held the SR for 0.44 s: RTT 60 ms
        tracker.feed(100.5, rtcp_rr(0xB, ((0xA, 128, 3, 9, 160, ntp_mid(ntp),
                                           int(0.44 * 65536)),)))
        tracker.feed(105.5, rtcp_rr(0xB, ((0xA, 0, 3, 9, 320, 0, 0),)))
        summary = tracker.summary(0xA, 8000)
        assert summary is not None
        self.assertEqual(summary.reports, 2)
        self.assertAlmostEqual(summary.fraclost, 25.0)
        self.assertAlmostEqual(summary.maxfr, 50.0)
        self.assertAlmostEqual(summary.jitter, 30.0)            # (160 + 320) / 2 / 8
        self.assertAlmostEqual(summary.maxjitter, 40.0)
        assert summary.rtt is not None
        self.assertLess(abs(summary.rtt - 60.0), 0.1)  # DLSR has 1/65536 s resolution
        self.assertIsNone(tracker.summary(0xB, 8000))

    def test_unknown_lsr_gives_no_rtt(self) -> None:
        tracker = RtcpTracker()
        tracker.feed(1.0, rtcp_rr(0xB, ((0xA, 0, 0, 0, 0, 0xDEAD, 100),)))
        summary = tracker.summary(0xA, 8000)
        assert summary is not None
        self.assertIsNone(summary.rtt)

    def test_bounded(self) -> None:
        tracker = RtcpTracker()
        for i in range(500):
            tracker.feed(float(i), rtcp_sr(i, 1000.0 + i, ((i + 10000, 0, 0, 0, 0, 0, 0),)))
        self.assertLessEqual(len(tracker._sr), 64)
        self.assertLessEqual(len(tracker._sources), 64)
