"""Tests for voipmon.analysis.engine: frames in, CDRs and per-call pcaps out."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from voipmon.packet.readers import CaptureReader
from voipmon.records import cdr as cdrmod
from voipmon.records.keys import make_cdr_uid
from voipmon.spool.writer import SpoolWriter
from voipmon.test.callsupport import Harness, rtcp_rr, rtcp_sr, rtp, sdp, sip_message

A, B = Harness.CALLER, Harness.CALLEE
AM, BM = ("10.0.0.1", 40000), ("10.0.0.2", 50000)


def invite(callid: str, body: str = "", cseq: int = 1, compact: bool = False) -> bytes:
    return sip_message("INVITE sip:bob@example.com SIP/2.0", callid, f"{cseq} INVITE", "ft",
                       body=body, compact=compact)


def reply(first: str, callid: str, cseq: str = "1 INVITE", to_tag: str = "tt",
          body: str = "") -> bytes:
    return sip_message(first, callid, cseq, "ft", to_tag, body=body)


class BasicCallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.spooldir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.spooldir)
        self.h = Harness(spool=SpoolWriter(self.spooldir))

    def test_complete_call(self) -> None:
        end = self.h.basic_call("call-1@test", t=1700000000.0)
        self.assertEqual(self.h.cdrs, [])          # lingering for late packets
        self.h.engine.advance(end + 4.0)
        self.assertEqual(self.h.cdrs, [])
        self.h.engine.advance(end + 5.0)
        (cdr,) = self.h.cdrs
        self.assertEqual(cdr.callid, "call-1@test")
        self.assertEqual(cdr.sensor_cdr_uid, make_cdr_uid("call-1@test", 1700000000.0))
        self.assertEqual((cdr.caller, cdr.called, cdr.callername), ("alice", "bob", "Alice"))
        self.assertEqual((cdr.sipcallerip, cdr.sipcallerport), A)
        self.assertEqual((cdr.sipcalledip, cdr.sipcalledport), B)
        self.assertEqual((cdr.lastSIPresponseNum, cdr.lastSIPresponse), (200, "200 OK"))
        self.assertEqual(cdr.bye, cdrmod.BYE_CONFIRMED)
        self.assertEqual(cdr.whohanged, "caller")
        self.assertEqual((cdr.a_ua, cdr.b_ua), ("CallerUA/1", "CalleeUA/2"))
        self.assertEqual(cdr.calldate, 1700000000.0)
        self.assertAlmostEqual(cdr.connect_time, 1700000002.0)
        self.assertAlmostEqual(cdr.callend, end)
        self.assertAlmostEqual(cdr.duration, end - 1700000000.0)
        self.assertAlmostEqual(cdr.connect_duration, end - 1700000002.0)
        self.assertEqual(len(cdr.rtp), 2)
        a, b = cdr.side("a"), cdr.side("b")
        assert a is not None and b is not None
        self.assertEqual((a.saddr, a.sport, a.daddr, a.dport, a.ssrc), (*AM, *BM, 0x1111))
        self.assertEqual((b.saddr, b.sport, b.ssrc), (*BM, 0x2222))
        for s in (a, b):
            self.assertEqual((s.received, s.lost, s.payload, s.codec), (100, 0, 0, "PCMU/8000"))
            self.assertTrue(s.tied_to_sip)
            self.assertEqual(s.mos_f1, 4.5)
        # the pcaps hold the call's SIP (7 messages) and RTP (200 packets)
        self.assertEqual(cdr.fbasename, "call-1@test")
        self.assertEqual(cdr.sip_pcap, "2023-11-14/22/13/SIP/call-1@test.pcap")
        self.assertEqual(cdr.rtp_pcap, "2023-11-14/22/13/RTP/call-1@test.pcap")
        sip = list(CaptureReader(os.path.join(self.spooldir, cdr.sip_pcap)))
        rtp_frames = list(CaptureReader(os.path.join(self.spooldir, cdr.rtp_pcap)))
        self.assertEqual((len(sip), len(rtp_frames)), (7, 200))
        self.assertEqual({lt for _, lt, _ in sip + rtp_frames}, {1})
        json = cdr.to_json()
        self.assertEqual(json["a_received"], 100)
        self.assertEqual(json["calldate"], "2023-11-14T22:13:20.000Z")

    def test_end_of_input_closes_without_bye(self) -> None:
        self.h.basic_call("nobye@test", bye=False)
        self.h.engine.finish()
        (cdr,) = self.h.cdrs
        self.assertEqual(cdr.bye, cdrmod.BYE_ANSWERED_NO_BYE)
        self.assertEqual(self.h.engine.active_calls(), [])

    def test_memory_is_freed(self) -> None:
        t = 1000.0
        for i in range(20):
            t = self.h.basic_call(f"many-{i}@test", t=t, packets=10) + 10.0
            self.h.engine.advance(t)
        self.assertEqual(len(self.h.cdrs), 20)
        engine = self.h.engine
        media = engine.media
        for table in (engine._calls, media.flows, media.endpoints, media.claims, media.via,
                      media.weak, media.orphan_eps, media.rtcp_flows, media.orphans):
            self.assertEqual(len(table), 0)


class SipCountTests(SynchronousTestCase):
    def test_requests_and_responses_by_bounded_labels(self) -> None:
        """SIP counted by method (a method outside the known set is 'other') and responses
        by the method they answer and their class, as voipmon_sip_*_total label them."""
        h = Harness()
        h.to_callee(1.0, invite("c1@x"))
        h.to_caller(1.1, reply("SIP/2.0 100 Trying", "c1@x"))
        h.to_caller(1.2, reply("SIP/2.0 183 Session Progress", "c1@x"))
        h.to_caller(1.3, reply("SIP/2.0 486 Busy Here", "c1@x"))
        for n, method in enumerate(("OPTIONS", "FROBNICATE", "X-ODD", "OPTIONS")):
            h.to_callee(2.0 + n, sip_message(f"{method} sip:bob@example.com SIP/2.0",
                                             f"o{n}@x", f"1 {method}", "ft"))
            h.to_caller(2.5 + n, reply("SIP/2.0 200 OK", f"o{n}@x", f"1 {method}"))
        engine = h.engine
        self.assertEqual(engine.sip_requests, {"INVITE": 1, "OPTIONS": 2, "other": 2})
        self.assertEqual(engine.sip_responses, {"INVITE.1xx": 2, "INVITE.4xx": 1,
                                                "OPTIONS.2xx": 2, "other.2xx": 2})
        counters = engine.counters()
        self.assertEqual(counters["sip_responses.other.2xx"], 2)
        self.assertEqual(counters["sip_requests.other"], 2)


class SignallingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def test_register_options_subscribe_make_no_cdr(self) -> None:
        for method in ("REGISTER", "OPTIONS", "SUBSCRIBE", "NOTIFY", "MESSAGE", "PUBLISH"):
            self.h.to_callee(1.0, sip_message(f"{method} sip:x SIP/2.0", f"{method}@t",
                                              f"1 {method}", "f"))
            self.h.to_caller(1.1, reply("SIP/2.0 200 OK", f"{method}@t", f"1 {method}"))
        self.h.engine.finish()
        self.assertEqual(self.h.cdrs, [])

    def test_register_sharing_a_call_id(self) -> None:
        self.h.to_callee(1.0, sip_message("REGISTER sip:x SIP/2.0", "shared", "1 REGISTER", "f"))
        self.h.to_caller(1.1, reply("SIP/2.0 200 OK", "shared", "1 REGISTER"))
        self.h.to_callee(2.0, invite("shared", cseq=2))
        self.h.to_caller(2.1, reply("SIP/2.0 486 Busy Here", "shared", "2 INVITE"))
        self.h.to_callee(2.2, sip_message("REGISTER sip:x SIP/2.0", "shared", "3 REGISTER", "f"))
        self.h.to_caller(2.3, reply("SIP/2.0 200 OK", "shared", "3 REGISTER"))
        self.h.engine.finish()
        (cdr,) = self.h.cdrs
        self.assertEqual((cdr.lastSIPresponseNum, cdr.bye), (486, cdrmod.BYE_NOT_ANSWERED))
        self.assertEqual(cdr.lastSIPresponse, "486 Busy Here")

    def test_cancel(self) -> None:
        self.h.to_callee(1.0, invite("c1"))
        self.h.to_caller(1.1, reply("SIP/2.0 180 Ringing", "c1"))
        self.h.to_callee(3.0, sip_message("CANCEL sip:bob@example.com SIP/2.0", "c1",
                                          "1 CANCEL", "ft"))
        self.h.to_caller(3.1, reply("SIP/2.0 200 OK", "c1", "1 CANCEL"))
        self.h.to_caller(3.2, reply("SIP/2.0 487 Request Terminated", "c1"))
        self.h.to_callee(3.3, sip_message("ACK sip:bob@example.com SIP/2.0", "c1", "1 ACK",
                                          "ft", "tt"))
        self.h.engine.advance(8.0)
        self.assertEqual(self.h.cdrs, [])
        self.h.engine.advance(8.3)
        (cdr,) = self.h.cdrs
        self.assertEqual((cdr.lastSIPresponseNum, cdr.bye), (487, 0))
        self.assertEqual(cdr.connect_duration, 0.0)

    def test_auth_challenge_then_answer_is_one_call(self) -> None:
        self.h.to_callee(1.0, invite("auth"))
        self.h.to_caller(1.1, reply("SIP/2.0 407 Proxy Authentication Required", "auth"))
        self.h.to_callee(1.2, sip_message("ACK sip:b SIP/2.0", "auth", "1 ACK", "ft", "tt"))
        self.h.to_callee(1.5, invite("auth", cseq=2))
        self.h.to_caller(1.6, reply("SIP/2.0 100 Trying", "auth", "2 INVITE", to_tag=""))
        self.h.engine.advance(7.0)  # the 407's linger is over, but the new INVITE revived it
        self.assertEqual(self.h.cdrs, [])
        self.h.to_caller(9.0, reply("SIP/2.0 200 OK", "auth", "2 INVITE"))
        self.h.engine.finish()
        (cdr,) = self.h.cdrs
        self.assertEqual((cdr.lastSIPresponseNum, cdr.bye), (200, cdrmod.BYE_ANSWERED_NO_BYE))

    def test_failure_then_late_retransmission_is_not_a_new_call(self) -> None:
        self.h.to_callee(1.0, invite("f1"))
        self.h.to_caller(1.1, reply("SIP/2.0 603 Decline", "f1"))
        self.h.engine.advance(7.0)
        self.assertEqual(len(self.h.cdrs), 1)
        self.h.to_callee(8.0, invite("f1"))      # the same INVITE again
        self.h.engine.finish()
        self.assertEqual(len(self.h.cdrs), 1)

    def test_forks(self) -> None:
        self.h.to_callee(1.0, invite("fork"))
        self.h.udp(1.1, ("10.0.0.3", 5060), A, reply("SIP/2.0 180 Ringing", "fork", to_tag="x1"))
        self.h.udp(1.2, ("10.0.0.4", 5060), A, reply("SIP/2.0 180 Ringing", "fork", to_tag="x2"))
        self.h.udp(2.0, ("10.0.0.4", 5060), A, reply("SIP/2.0 200 OK", "fork", to_tag="x2"))
        self.h.udp(2.1, ("10.0.0.3", 5060), A, reply("SIP/2.0 487 Request Terminated", "fork",
                                                      to_tag="x1"))
        self.h.engine.finish()
        (cdr,) = self.h.cdrs
        self.assertEqual((cdr.lastSIPresponseNum, cdr.bye), (200, 1))
        branches = {b["to_tag"]: b for b in cdr.extra["branches"]}
        self.assertEqual(branches["x1"]["lastSIPresponseNum"], 487)
        self.assertTrue(branches["x2"]["answered"])
        self.assertEqual(branches["x2"]["ip"], "10.0.0.4")

    def test_compact_headers(self) -> None:
        self.h.to_callee(1.0, invite("compact@x", sdp(*AM), compact=True))
        self.h.to_caller(1.1, sip_message("SIP/2.0 200 OK", "compact@x", "1 INVITE", "ft", "tt",
                                          body=sdp(*BM), compact=True))
        self.h.stream(1.2, AM, BM, 5, 10)
        self.h.engine.finish()
        (cdr,) = self.h.cdrs
        self.assertEqual((cdr.callid, cdr.lastSIPresponseNum, cdr.caller), ("compact@x", 200,
                                                                            "alice"))
        self.assertEqual(cdr.rtp[0].received, 10)

    def test_proxy_hop_moves_the_called_side(self) -> None:
        proxy = ("10.0.0.9", 5060)
        self.h.udp(1.0, A, proxy, invite("hop"))
        self.h.udp(1.01, proxy, B, invite("hop"))
        self.h.udp(1.5, B, proxy, reply("SIP/2.0 486 Busy Here", "hop"))
        self.h.udp(1.51, proxy, A, reply("SIP/2.0 486 Busy Here", "hop"))
        self.h.engine.finish()
        (cdr,) = self.h.cdrs
        self.assertEqual((cdr.sipcallerip, cdr.sipcalledip), ("10.0.0.1", "10.0.0.2"))
        self.assertEqual(cdr.extra["proxies"], ["10.0.0.9"])

    def test_sip_on_other_ports(self) -> None:
        self.h.udp(1.0, ("10.0.0.1", 5080), ("10.0.0.2", 5082), invite("heur"))
        self.h.engine.finish()
        self.assertEqual([c.callid for c in self.h.cdrs], ["heur"])
        off = Harness(sip_heuristic=False)
        off.udp(1.0, ("10.0.0.1", 5080), ("10.0.0.2", 5082), invite("heur"))
        off.engine.finish()
        self.assertEqual(off.cdrs, [])
        configured = Harness(sip_heuristic=False, sip_ports=(5080,))
        configured.udp(1.0, ("10.0.0.1", 5080), ("10.0.0.2", 5082), invite("heur"))
        configured.engine.finish()
        self.assertEqual(len(configured.cdrs), 1)

    def test_one_way_capture(self) -> None:
        self.h.to_callee(1.0, invite("oneway"))
        self.h.engine.finish()
        self.assertEqual(self.h.cdrs[0].bye, cdrmod.BYE_ONE_WAY)

    def test_calls_are_capped(self) -> None:
        h = Harness(max_calls=3)
        for i in range(5):
            h.to_callee(1.0 + i, invite(f"cap{i}"))
        self.assertEqual(h.engine.stats.calls_refused, 2)
        h.engine.finish()
        self.assertEqual(len(h.cdrs), 3)

    def test_active_calls(self) -> None:
        self.h.to_callee(1.0, invite("live", sdp(*AM)))
        self.h.to_caller(1.5, reply("SIP/2.0 180 Ringing", "live"))
        (info,) = self.h.engine.active_calls()
        self.assertEqual((info["callid"], info["state"], info["caller"], info["called"]),
                         ("live", "ringing", "alice", "bob"))
        self.h.to_caller(2.0, reply("SIP/2.0 200 OK", "live", body=sdp(*BM)))
        self.h.stream(2.1, AM, BM, 9, 5)
        (info,) = self.h.engine.active_calls()
        self.assertEqual((info["state"], info["streams"]), ("answered", 1))


class MediaTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def answered(self, callid: str = "m", offer: str = "", answer: str = "",
                 t: float = 1.0) -> None:
        self.h.to_callee(t, invite(callid, offer or sdp(*AM)))
        self.h.to_caller(t + 0.5, reply("SIP/2.0 200 OK", callid, body=answer or sdp(*BM)))

    def test_reinvite_changes_codec(self) -> None:
        self.answered()
        self.h.stream(2.0, AM, BM, 0xA1, 50, pt=0)
        opus = {96: ("opus", 48000)}
        self.h.to_callee(4.0, sip_message("INVITE sip:bob@10.0.0.2 SIP/2.0", "m", "2 INVITE",
                                          "ft", "tt", body=sdp(*AM, (96,), opus)))
        self.h.to_caller(4.1, reply("SIP/2.0 200 OK", "m", "2 INVITE",
                                    body=sdp(*BM, (96,), opus)))
        # 20 ms of opus is 960 ticks of its 48 kHz clock; a wrong clock would be jitter
        self.h.stream(4.2, AM, BM, 0xA2, 50, pt=96, step=960)
        self.h.engine.finish()
        (cdr,) = self.h.cdrs
        streams = {s.ssrc: s for s in cdr.rtp}
        self.assertEqual(streams[0xA1].codec, "PCMU/8000")
        self.assertEqual(streams[0xA2].codec, "opus/48000")
        self.assertEqual(streams[0xA2].received, 50)
        self.assertLess(streams[0xA2].maxjitter, 0.01)

    def test_stream_keyed_by_direction_and_ssrc(self) -> None:
        self.answered()
        self.h.stream(2.0, AM, BM, 0x77, 30)
        self.h.stream(2.0, BM, AM, 0x77, 20)   # an echo with the same SSRC
        self.h.engine.finish()
        (cdr,) = self.h.cdrs
        self.assertEqual(sorted((s.saddr, s.received) for s in cdr.rtp),
                         [("10.0.0.1", 30), ("10.0.0.2", 20)])

    def test_slow_path_equals_fast_path(self) -> None:
        # untagged and single-tagged frames take the engine's fast path; QinQ the decoder
        results = []
        for vlan in (None, 42, (7, 42)):
            h = Harness()
            h.to_callee(1.0, invite("v", sdp(*AM)))
            h.to_caller(1.5, reply("SIP/2.0 200 OK", "v", body=sdp(*BM)))
            for i in range(300):
                if i % 17 != 3:
                    h.udp(2.0 + i * 0.02 + (i % 5) * 0.003, AM, BM,
                          rtp(60000 + i, i * 160, 0xF00D), vlan=vlan)
            h.engine.finish()
            (s,) = h.cdrs[0].rtp
            results.append((s.received, s.lost, s.maxjitter, s.avgjitter, s.sl, s.mos_f1))
        self.assertEqual(results[0], results[1])
        self.assertEqual(results[0], results[2])
        self.assertEqual(results[0][:2], (282, 18))

    def test_rtcp_port_and_mux(self) -> None:
        self.answered(offer=sdp(*AM), answer=sdp(*BM, extra=("a=rtcp-mux",)))
        self.h.stream(2.0, AM, BM, 0xA, 20)
        ntp = 3900000000.0
        self.h.udp(2.5, ("10.0.0.1", 40001), ("10.0.0.2", 50001), rtcp_sr(0xA, ntp))
        self.h.udp(2.6, BM, AM, rtcp_rr(0xB, ((0xA, 64, 1, 20, 80, 0, 0),)))  # muxed
        self.h.engine.finish()
        (cdr,) = self.h.cdrs
        (s,) = cdr.rtp
        self.assertEqual(s.rtcp_reports, 1)
        self.assertEqual(s.rtcp_fraclost, 25.0)
        self.assertEqual(s.rtcp_jitter, 10.0)
        self.assertEqual(cdr.extra["rtcp_packets"], 2)
        self.assertEqual(s.received, 20)     # the muxed RTCP is not counted as RTP

    def test_t38_reinvite_stops_rtp(self) -> None:
        self.answered()
        self.h.stream(2.0, AM, BM, 0xA, 20)
        t38 = sdp(BM[0], BM[1], (), kind="image", proto="udptl").replace(" udptl ", " udptl t38")
        self.h.to_caller(3.0, sip_message("INVITE sip:alice@10.0.0.1 SIP/2.0", "m", "1 INVITE",
                                          "tt", "ft", body=t38, caller="bob", called="alice"))
        self.h.stream(4.0, AM, BM, 0xA, 20, seq0=1020, ts0=3200)
        self.h.engine.finish()
        (s,) = self.h.cdrs[0].rtp
        self.assertEqual(s.received, 20)

    def test_endpoint_taken_over_by_a_later_call(self) -> None:
        self.answered("first")
        self.h.stream(2.0, AM, BM, 0xA, 10)
        self.answered("second", t=3.0)
        self.h.stream(4.0, AM, BM, 0xB, 10)
        self.h.engine.finish()
        by_call = {c.callid: [s.ssrc for s in c.rtp] for c in self.h.cdrs}
        self.assertEqual(by_call, {"first": [0xA], "second": [0xB]})

    def test_orphans(self) -> None:
        self.h.stream(1.0, ("10.9.9.9", 30000), ("10.9.9.8", 30002), 0x99, 50)
        self.h.stream(1.0, ("10.9.9.9", 30004), ("10.9.9.8", 30006), 0x98, 3)  # too short
        self.h.udp(1.0, ("10.9.9.9", 30010), ("10.9.9.8", 53), rtp(1, 1, 1))  # DNS port
        self.h.engine.finish()
        self.assertEqual(self.h.cdrs, [])
        (orphan,) = self.h.orphans
        self.assertEqual((orphan.ssrc, orphan.received, orphan.tied_to_sip), (0x99, 50, False))

    def test_orphans_are_bounded(self) -> None:
        h = Harness(max_orphan_flows=5)
        for i in range(20):
            h.stream(1.0, ("10.9.9.9", 20000 + 2 * i), ("10.9.9.8", 30000), i, 12)
        self.assertEqual(len(h.engine.media.orphans), 5)
        self.assertEqual(h.engine.stats.orphan_flows_refused, 15)
        h.engine.advance(1000.0)         # orphans time out with rtptimeout
        self.assertEqual(len(h.engine.media.orphans), 0)
        self.assertEqual(len(h.orphans), 5)

    def test_rtp_before_sdp_stays_orphan_then_is_tied(self) -> None:
        self.h.stream(0.5, AM, BM, 0xC, 15)
        self.answered(t=1.0)
        self.h.stream(2.0, AM, BM, 0xC, 10, seq0=1015)
        self.h.engine.finish()
        self.assertEqual(self.h.orphans[0].received, 15)
        self.assertEqual(self.h.cdrs[0].rtp[0].received, 10)

    def test_ipv6_media(self) -> None:
        a6, b6 = ("2001:db8::1", 40000), ("2001:db8::2", 50000)
        self.h.udp(1.0, ("2001:db8::1", 5060), ("2001:db8::2", 5060), invite("v6", sdp(*a6)))
        self.h.udp(1.5, ("2001:db8::2", 5060), ("2001:db8::1", 5060),
                   reply("SIP/2.0 200 OK", "v6", body=sdp(*b6)))
        self.h.stream(2.0, a6, b6, 0x6, 25)
        self.h.engine.finish()
        (cdr,) = self.h.cdrs
        self.assertEqual((cdr.sipcallerip, cdr.rtp[0].saddr, cdr.rtp[0].received),
                         ("2001:db8::1", "2001:db8::1", 25))


class TimeoutTests(SynchronousTestCase):
    def call(self, h: Harness, callid: str, media: bool = True, answer: bool = True) -> None:
        h.to_callee(1.0, invite(callid, sdp(*AM)))
        if answer:
            h.to_caller(1.5, reply("SIP/2.0 200 OK", callid, body=sdp(*BM)))
        if media:
            h.stream(2.0, AM, BM, 1, 50)

    def test_rtp_timeout(self) -> None:
        h = Harness(rtptimeout=30.0)
        self.call(h, "rtp-to")
        h.engine.advance(32.0)
        self.assertEqual(h.cdrs, [])
        h.engine.advance(33.1)
        self.assertEqual(h.cdrs[0].bye, cdrmod.BYE_RTP_TIMEOUT)

    def test_sip_without_rtp_timeout(self) -> None:
        h = Harness(sipwithoutrtptimeout=60.0)
        self.call(h, "sip-to", media=False)
        h.engine.advance(61.0)
        self.assertEqual(h.cdrs, [])
        h.engine.advance(61.6)
        self.assertEqual(h.cdrs[0].bye, cdrmod.BYE_SIP_WITHOUT_RTP_TIMEOUT)

    def test_absolute_timeout(self) -> None:
        h = Harness(absolute_timeout=100.0, rtptimeout=1000.0)
        self.call(h, "abs-to")
        t = 3.0
        while t < 99.0:                  # media keeps flowing: only the absolute limit hits
            t = h.stream(t, AM, BM, 1, 50, seq0=int(t * 50), ts0=int(t * 8000))
        self.assertEqual(h.cdrs, [])
        h.engine.advance(101.0)
        self.assertEqual(h.cdrs[0].bye, cdrmod.BYE_ABSOLUTE_TIMEOUT)

    def test_unanswered_bye_closes_after_wait(self) -> None:
        h = Harness()
        self.call(h, "bye-only")
        h.to_callee(5.0, sip_message("BYE sip:b SIP/2.0", "bye-only", "2 BYE", "ft", "tt"))
        h.engine.advance(36.0)
        self.assertEqual(h.cdrs, [])
        h.engine.advance(37.1)
        self.assertEqual(h.cdrs[0].bye, cdrmod.BYE_SEEN)

    def test_clock_never_goes_back(self) -> None:
        h = Harness(rtptimeout=30.0)
        self.call(h, "clock")
        h.engine.advance(40.0)
        h.engine.advance(10.0)           # an older frame: no effect on what is closed
        self.assertEqual(len(h.cdrs), 1)


class RobustnessTests(SynchronousTestCase):
    def test_garbage_frames_never_raise(self) -> None:
        h = Harness()
        junk = [b"", b"\x00", b"\xff" * 13, b"\x08\x00E" * 30,
                bytes(range(256)), b"\x00" * 12 + b"\x08\x00\x45" + b"\x00" * 60]
        for i, frame in enumerate(junk):
            for linktype in (0, 1, 101, 113, 276, 9999):
                h.engine.feed(float(i), linktype, frame)
        h.udp(1.0, A, B, b"INVITE sip:x SIP/2.0\r\nCall-ID:\r\n\r\n")
        h.udp(1.0, A, B, b"SIP/2.0 200 OK\r\n\r\n")
        h.engine.finish()
        self.assertEqual((h.cdrs, h.engine.stats.errors), ([], 0))

    def test_failing_consumer_does_not_stop_the_engine(self) -> None:
        seen = []

        def consumer(cdr: cdrmod.Cdr) -> None:
            seen.append(cdr.callid)
            raise RuntimeError("store is down")

        h = Harness()
        h.engine._on_cdr = consumer
        h.to_callee(1.0, invite("x1"))
        h.to_callee(1.0, invite("x2"))
        h.engine.finish()
        self.assertEqual(sorted(seen), ["x1", "x2"])
        # each CDR its consumer could not take is a dead letter, counted and kept
        self.assertEqual(h.engine.stats.undelivered, 2)
        self.assertEqual(h.engine.dead_letters.count, 2)
        self.assertEqual(h.engine.stats.errors, 0)

    def test_hostile_call_id_stays_in_the_spool(self) -> None:
        spooldir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, spooldir)
        h = Harness(spool=SpoolWriter(spooldir))
        h.to_callee(1.0, invite("../../../../tmp/evil\x01"))
        h.engine.finish()
        (cdr,) = h.cdrs
        self.assertNotIn("/", cdr.fbasename)
        path = os.path.realpath(os.path.join(spooldir, cdr.sip_pcap))
        self.assertTrue(path.startswith(os.path.realpath(spooldir) + os.sep))
        self.assertTrue(os.path.exists(path))

    def test_savesip_and_savertp_options(self) -> None:
        spooldir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, spooldir)
        h = Harness(spool=SpoolWriter(spooldir), savesip=False, savertp="header")
        h.basic_call("opts", packets=10)
        h.engine.finish()
        (cdr,) = h.cdrs
        self.assertEqual(cdr.sip_pcap, "")
        frames = list(CaptureReader(os.path.join(spooldir, cdr.rtp_pcap)))
        self.assertEqual(len(frames), 20)
        self.assertTrue(all(len(f) == 54 for _, _, f in frames))  # headers only
        none = Harness(spool=SpoolWriter(spooldir), savertp="no")
        none.basic_call("opts2", packets=10)
        none.engine.finish()
        self.assertEqual(none.cdrs[0].rtp_pcap, "")
        self.assertRaises(ValueError, Harness, savertp="maybe")
