"""HEP type 5 RTCP JSON back to binary RTCP (voipmon.packet.rtcpjson), read by the engine's
own RTCP parser (voipmon.analysis.rtcp)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.rtcp import ReportBlock, RtcpTracker, is_rtcp, parse_rtcp
from voipmon.packet.hep import HepError
from voipmon.packet.rtcpjson import rtcp_from_json
from voipmon.test.callsupport import ntp_mid, rtcp_rr, rtcp_sr
from voipmon.test.hepsupport import rtcp_json
from voipmon.test.test_packet_hep import SETTINGS

NTP = 3912345678.25  # an NTP time in 2023


def convert(doc: object) -> bytes:
    return rtcp_from_json(json.dumps(doc).encode())


class RoundTripTests(SynchronousTestCase):
    def test_sender_report_as_heplify_sends_it(self) -> None:
        """Binary SR -> heplify's JSON -> binary: the same packet, byte for byte."""
        sr = rtcp_sr(0x11223344, NTP, ((0xAABBCCDD, 25, 300, 70000, 480, 0x12345678, 65536),
                                       (0x01020304, 0, -2, 5, 0, 0, 0)))
        self.assertEqual(rtcp_from_json(rtcp_json(sr)), sr)

    def test_receiver_report(self) -> None:
        rr = rtcp_rr(0x55667788, ((0x11223344, 255, 0x7FFFFF, 1, 2, 3, 4),))
        self.assertEqual(rtcp_from_json(rtcp_json(rr)), rr)

    def test_compound_packets_as_heplify_folds_them(self) -> None:
        """SR + RR + SDES arrives as one object of type 202 with the blocks of both: it
        becomes one SR with them all. An SDES alone becomes an empty RR."""
        sdes = bytes.fromhex("81ca0002") + b"\x11\x22\x33\x44" + b"\x01\x02ab"
        sr = rtcp_sr(0x11223344, NTP)
        rr = rtcp_rr(0x11223344, ((0x99, 1, 2, 3, 4, 5, 6),))
        self.assertEqual(json.loads(rtcp_json(sr + rr + sdes))["type"], 202)
        self.assertEqual(rtcp_from_json(rtcp_json(sr + rr + sdes)),
                         rtcp_sr(0x11223344, NTP, ((0x99, 1, 2, 3, 4, 5, 6),)))
        self.assertEqual(rtcp_from_json(rtcp_json(sdes)), rtcp_rr(0, ()))
        self.assertEqual(json.loads(rtcp_json(sr + rr))["type"], 201)
        self.assertEqual(rtcp_from_json(rtcp_json(sr + rr)),
                         rtcp_sr(0x11223344, NTP, ((0x99, 1, 2, 3, 4, 5, 6),)))

    def test_the_engine_reads_it(self) -> None:
        """Fraction lost, jitter and round trip come out as for the original packets."""
        sr = rtcp_sr(0xA, NTP, ((0xB, 64, 10, 1000, 800, 0, 0),))
        rr = rtcp_rr(0xB, ((0xA, 128, 20, 2000, 1600, ntp_mid(NTP), 6553),))
        original, rebuilt = RtcpTracker(), RtcpTracker()
        for ts, packet in ((100.0, sr), (100.3, rr)):
            original.feed(ts, packet)
            rebuilt.feed(ts, rtcp_from_json(rtcp_json(packet)))
        for ssrc in (0xA, 0xB):
            self.assertEqual(rebuilt.summary(ssrc, 8000), original.summary(ssrc, 8000))
        self.assertIsNotNone(rebuilt.summary(0xA, 8000).rtt)  # type: ignore[union-attr]


class LenientTests(SynchronousTestCase):
    def test_strings_floats_and_key_case(self) -> None:
        """Forks send numbers as strings (rtpengine's lsr and NTP words), floats, and
        camel-cased keys (gap_Duration); report_count may disagree with the blocks."""
        doc = {"SSRC": "287454020", "type": "200", "report_count": 5,
               "sender_information": {"ntp_timestamp_sec": str(int(NTP)),
                                      "ntp_timestamp_usec": " 1073741824 ",
                                      "rtp_timestamp": 1.0e3, "Packets": "10",
                                      "octets": "0x640"},
               "report_blocks": [{"source_ssrc": 11, "fraction_lost": "64",
                                  "packets_lost": -1, "highest_seq_no": "70000",
                                  "ia_jitter": 480.9, "lsr": "305419896", "dlsr": None}],
               "report_blocks_xr": {"gap_Duration": 3, "type": 7}}
        packet = convert(doc)
        self.assertTrue(is_rtcp(packet))
        [report] = parse_rtcp(packet)
        self.assertEqual((report.sender, report.is_sr, report.ntp_mid),
                         (0x11223344, True, ntp_mid(NTP)))
        self.assertEqual(report.blocks, (ReportBlock(11, 0.25, -1, 70000, 480, 305419896,
                                                     0.0),))
        self.assertEqual(packet[16:28], bytes.fromhex("000003e80000000a00000640"))

    def test_unix_time_pair_is_converted(self) -> None:
        """A sender that wrote Unix seconds and microseconds gets NTP words."""
        doc = {"ssrc": 1, "type": 200, "sender_information": {
            "ntp_timestamp_sec": 1700000000, "ntp_timestamp_usec": 500000}}
        [report] = parse_rtcp(convert(doc))
        self.assertEqual(report.ntp_mid, ntp_mid(1700000000 + 2208988800 + 0.5))

    def test_single_block_object_and_missing_type(self) -> None:
        doc = {"ssrc": 7, "report_blocks": {"source_ssrc": 8, "fraction_lost": 1}}
        [report] = parse_rtcp(convert(doc))
        self.assertEqual((report.is_sr, [b.ssrc for b in report.blocks]), (False, [8]))
        doc = {"ssrc": 7, "type": 203, "sender_information": {"ntp_timestamp_sec": 1}}
        self.assertTrue(parse_rtcp(convert(doc))[0].is_sr)
        doc = {"ssrc": 7, "sender_information": {}}
        self.assertEqual(convert(doc), rtcp_rr(7, ()))

    def test_at_most_31_blocks(self) -> None:
        doc = {"ssrc": 1, "type": 201, "report_blocks": [{"source_ssrc": i}
                                                         for i in range(40)]}
        [report] = parse_rtcp(convert(doc))
        self.assertEqual(len(report.blocks), 31)

    def test_unusable(self) -> None:
        for payload in (b"", b"not json", b"[1, 2]", b'"x"', b"\xff\xfe{", b"[" * 100000,
                        b"{}", b'{"type": 201, "x": 1}', b'{"report_blocks": 3}'):
            with self.subTest(payload=payload[:20]):
                with self.assertRaises(HepError) as e:
                    rtcp_from_json(payload)
                self.assertEqual(e.exception.reason, "bad_rtcp_json")

    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                        | st.text(max_size=12),
                        lambda kids: st.lists(kids, max_size=4)
                        | st.dictionaries(st.sampled_from(
                            ["ssrc", "type", "report_blocks", "sender_information",
                             "source_ssrc", "fraction_lost", "packets_lost", "lsr", "dlsr",
                             "ntp_timestamp_sec", "x"]), kids, max_size=6),
                        max_leaves=30))
    @settings(max_examples=2000, **SETTINGS)
    def test_any_json(self, doc: object) -> None:
        try:
            packet = rtcp_from_json(json.dumps(doc).encode())
        except HepError as e:
            self.assertEqual(e.reason, "bad_rtcp_json")
        else:
            self.assertTrue(is_rtcp(packet))
            self.assertEqual(len(parse_rtcp(packet)), 1)
