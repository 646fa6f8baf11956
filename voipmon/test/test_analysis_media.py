"""Tests for voipmon.analysis.media: which call a UDP flow belongs to.

Most attribution is covered through the engine in test_analysis_engine; here are the
endpoints several live calls announce at once (one SIPp UAS echoing every call from one
port, a media server or SBC reusing a port): a flow goes to the call that announced both
its ends, else to the latest announcement of its destination, else of its source.
"""

from __future__ import annotations

import re
import struct

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.engine import Engine
from voipmon.packet.readers import CaptureReader
from voipmon.records.cdr import Cdr
from voipmon.test.callsupport import Harness, packed, rtcp_rr, rtcp_sr, rtp, sdp, sip_message
from voipmon.test.common import data_path, shared_path
from voipmon.test.test_tshark_reference import parse_reference

SHARED = ("10.0.0.2", 6000)          # the callee's media, announced by every call
CALLERS = [("10.0.0.1", 40000 + 4 * k) for k in range(4)]
SSRC = 0xDEE0EE8F                    # SIPp replays one pcap: every call has this SSRC
SAMPLE = "sipp_uac_pcap_3overlapping_calls_one_rtp_echo_port_lo.pcap"

Key = tuple[str, int, str, int]


def invite(callid: str, media: tuple[str, int], cseq: int = 1) -> bytes:
    return sip_message("INVITE sip:bob@example.com SIP/2.0", callid, f"{cseq} INVITE", "ft",
                       "tt" if cseq > 1 else "", body=sdp(*media))


def ok(callid: str, cseq: str = "1 INVITE", media: tuple[str, int] | None = None) -> bytes:
    return sip_message("SIP/2.0 200 OK", callid, cseq, "ft", "tt",
                       body=sdp(*media) if media else "")


class Media:
    """An engine and a timeline of packets fed in time order (calls run concurrently)."""

    def __init__(self, **options: object) -> None:
        self.h = Harness(**options)
        self.events: list[tuple[float, int, tuple, tuple, bytes]] = []
        self.sent: dict[Key, int] = {}

    def call(self, callid: str, t: float, caller: tuple[str, int],
             callee: tuple[str, int] = SHARED, cseq: int = 1) -> None:
        self.sip(t, invite(callid, caller, cseq), to_callee=True)
        self.sip(t + 0.01, ok(callid, f"{cseq} INVITE", callee), to_callee=False)

    def bye(self, callid: str, t: float) -> None:
        self.sip(t, sip_message("BYE sip:bob@10.0.0.2 SIP/2.0", callid, "9 BYE", "ft", "tt"),
                 to_callee=True)
        self.sip(t + 0.01, ok(callid, "9 BYE"), to_callee=False)

    def sip(self, t: float, message: bytes, to_callee: bool) -> None:
        ends = (Harness.CALLER, Harness.CALLEE) if to_callee else (Harness.CALLEE,
                                                                   Harness.CALLER)
        self.events.append((t, len(self.events), *ends, message))

    def stream(self, t0: float, src: tuple[str, int], dst: tuple[str, int], count: int,
               ssrc: int = SSRC, seq0: int = 0) -> None:
        for i in range(count):
            self.events.append((t0 + 0.02 * i, len(self.events), src, dst,
                                rtp(seq0 + i, 160 * (seq0 + i), ssrc)))
        key = (*src, *dst)
        self.sent[key] = self.sent.get(key, 0) + count

    def echo(self, t0: float, caller: tuple[str, int], count: int,
             callee: tuple[str, int] = SHARED, seq0: int = 0) -> None:
        """RTP both ways, as SIPp's uac_pcap against a UAS with -rtp_echo."""
        self.stream(t0, caller, callee, count, seq0=seq0)
        self.stream(t0 + 0.001, callee, caller, count, seq0=seq0)

    def run(self, until: float | None = None, check: bool = False) -> None:
        self.events.sort()
        rest = []
        for event in self.events:
            if until is not None and event[0] >= until:
                rest.append(event)
                continue
            t, _, src, dst, payload = event
            self.h.udp(t, src, dst, payload)
            if check:
                assert_consistent(self.h.engine)
        self.events = rest
        if until is not None:
            self.h.engine.advance(until)

    def finish(self) -> dict[str, Cdr]:
        self.run()
        self.h.engine.finish()
        self.assert_no_errors()
        return {cdr.callid: cdr for cdr in self.h.cdrs}

    def assert_no_errors(self) -> None:
        assert self.h.engine.stats.errors == 0


def streams(cdr: Cdr) -> dict[Key, int]:
    """A call's streams: 4-tuple -> packets (each 4-tuple once: never split)."""
    out: dict[Key, int] = {}
    for s in cdr.rtp:
        key = (s.saddr, s.sport, s.daddr, s.dport)
        assert key not in out, f"{cdr.callid}: {key} reported twice"
        out[key] = s.received
    return out


def between(caller: tuple[str, int], callee: tuple[str, int] = SHARED) -> set[Key]:
    return {(*caller, *callee), (*callee, *caller)}


class SharedEndpointTests(SynchronousTestCase):
    def assertOwnStreams(self, m: Media, cdrs: dict[str, Cdr],
                         expected: dict[str, set[Key]]) -> None:
        """Each call has exactly the 4-tuples given, each with every packet sent on it."""
        self.assertEqual(set(cdrs), set(expected))
        for callid, keys in expected.items():
            self.assertEqual(streams(cdrs[callid]), {k: m.sent[k] for k in keys}, callid)

    def test_two_calls_one_callee_endpoint(self) -> None:
        m = Media()
        m.call("A", 1.0, CALLERS[0])
        m.echo(1.1, CALLERS[0], 200)
        m.call("B", 2.0, CALLERS[1])      # while A's RTP flows to the same endpoint
        m.echo(2.1, CALLERS[1], 150)
        m.bye("A", 6.0)
        m.bye("B", 6.5)
        cdrs = m.finish()
        self.assertOwnStreams(m, cdrs, {"A": between(CALLERS[0]), "B": between(CALLERS[1])})
        for cdr in cdrs.values():  # the caller's stream is "a", the echo "b"
            a, b = cdr.rtp[cdr.a_index], cdr.rtp[cdr.b_index]
            self.assertEqual(((a.daddr, a.dport), (b.saddr, b.sport)), (SHARED, SHARED))

    def test_three_calls_with_rtcp(self) -> None:
        m = Media()
        rtcp_ends = {}
        for k, callid in enumerate("ABC"):
            m.call(callid, 1.0 + k, CALLERS[k])
            m.echo(1.1 + k, CALLERS[k], 250)
            mine, theirs = (CALLERS[k][0], CALLERS[k][1] + 1), (SHARED[0], SHARED[1] + 1)
            rtcp_ends[callid] = (mine, theirs)
            for i in range(k + 1):  # A sends one SR, B two, C three
                m.events.append((3.5 + k + i * 0.1, len(m.events), mine, theirs,
                                 rtcp_sr(SSRC, 3900000000.0 + i)))
            m.events.append((3.55 + k, len(m.events), theirs, mine,
                             rtcp_rr(0x5EC0, ((SSRC, 0, 0, 5, 8, 0, 0),))))
        for k, callid in enumerate("ABC"):
            m.bye(callid, 9.0 + k)
        cdrs = m.finish()
        self.assertOwnStreams(m, cdrs, {c: between(CALLERS[k]) for k, c in enumerate("ABC")})
        self.assertEqual({c: cdrs[c].extra["rtcp_packets"] for c in "ABC"},
                         {"A": 2, "B": 3, "C": 4})

    def test_reinvite_moves_one_call(self) -> None:
        m = Media()
        for k, callid in enumerate("ABC"):
            m.call(callid, 1.0 + 0.1 * k, CALLERS[k])
            m.echo(1.5 + 0.1 * k, CALLERS[k], 400)
        # at 3 s A's caller moves to a new port; the UAS answers from the shared one again,
        # which makes A its latest announcement: B's and C's flows must stay theirs
        moved = (CALLERS[0][0], 41000)
        m.call("A", 3.0, moved, cseq=2)
        m.echo(3.1, moved, 300, seq0=1000)
        # at 5 s B's callee side moves off the shared endpoint
        own = ("10.0.0.2", 7000)
        m.call("B", 5.0, CALLERS[1], own, cseq=3)
        m.echo(5.1, CALLERS[1], 100, callee=own, seq0=5000)
        for k, callid in enumerate("ABC"):
            m.bye(callid, 12.0 + k)
        cdrs = m.finish()
        self.assertOwnStreams(m, cdrs, {
            "A": between(CALLERS[0]) | between(moved),
            "B": between(CALLERS[1]) | between(CALLERS[1], own),
            "C": between(CALLERS[2])})

    def test_a_call_ends_while_another_continues(self) -> None:
        m = Media()
        m.call("A", 1.0, CALLERS[0])
        m.call("B", 1.5, CALLERS[1])
        m.echo(2.0, CALLERS[0], 1000)     # 20 s of A
        m.echo(2.0, CALLERS[1], 100)      # 2 s of B
        m.bye("B", 5.0)
        m.run(until=15.0)                 # B's linger is over: it is closed and reported
        self.assertEqual([cdr.callid for cdr in m.h.cdrs], ["B"])
        media = m.h.engine.media
        shared = packed(SHARED[0]) + struct.pack("!H", SHARED[1])
        self.assertEqual((media.claims, media.endpoints[shared].call.callid), ({}, "A"))
        m.bye("A", 23.0)
        cdrs = m.finish()
        self.assertOwnStreams(m, cdrs, {"A": between(CALLERS[0]), "B": between(CALLERS[1])})
        self.assertEqual(m.h.engine.stats.rtp_flows, 4)   # A's flows were never retired

    def test_rtp_before_the_answer_moves_when_it_comes(self) -> None:
        # a media server offering one port for every call; the callee of B sends RTP
        # before its 200 OK is seen: it goes to the latest offer, A, until then
        m = Media()
        server, callee_b = ("10.0.0.1", 30000), ("10.0.0.3", 50000)
        m.sip(1.0, invite("B", server), to_callee=True)
        m.call("A", 1.1, server, ("10.0.0.4", 50000))
        m.stream(1.5, callee_b, server, 10)
        m.sip(2.0, ok("B", media=callee_b), to_callee=False)
        m.stream(2.1, callee_b, server, 40, seq0=10)
        cdrs = m.finish()
        key = (*callee_b, *server)
        self.assertEqual((streams(cdrs["A"]), streams(cdrs["B"])), ({key: 10}, {key: 40}))

    def test_fallbacks_when_no_call_announced_both_ends(self) -> None:
        m = Media()
        m.call("A", 1.0, CALLERS[0])
        m.call("B", 1.5, CALLERS[1])
        nat = ("192.0.2.9", 3333)          # in no SDP: the latest announcement of SHARED
        m.stream(2.0, nat, SHARED, 20)
        m.stream(2.0, SHARED, ("192.0.2.9", 4444), 30)  # to nowhere announced: its source's
        m.echo(2.0, CALLERS[0], 25)
        cdrs = m.finish()
        self.assertOwnStreams(m, cdrs, {
            "A": between(CALLERS[0]),
            "B": {(*nat, *SHARED), (*SHARED, "192.0.2.9", 4444)}})

    def test_packets_of_a_shared_endpoint_take_the_fast_path(self) -> None:
        m = Media()
        for k, callid in enumerate("ABC"):
            m.call(callid, 1.0 + k, CALLERS[k])
            m.echo(1.1 + k, CALLERS[k], 3)
        m.run()
        stats = m.h.engine.stats
        before = (stats.datagrams, stats.slow_frames)
        m.echo(5.0, CALLERS[0], 50, seq0=3)
        m.run()
        self.assertEqual((stats.datagrams, stats.slow_frames), before)

    def test_a_claim_looks_at_its_own_flows_only(self) -> None:
        """A new call on an endpoint 60 calls share looks at a few flows, not at theirs."""
        m = Media()
        callers = [(f"10.1.0.{k + 1}", 40000) for k in range(61)]
        for k, caller in enumerate(callers):
            m.call(f"c{k}", 1.0 + 0.02 * k, caller)
            m.echo(1.012 + 0.02 * k, caller, 2)
        m.run(until=2.2)  # c60 comes at 2.2 s
        media = m.h.engine.media
        self.assertEqual(len(media.claims[packed(SHARED[0]) + struct.pack("!H", SHARED[1])]),
                         60)
        looked: list[bytes] = []
        real = media._reconsider

        def spy(key: bytes) -> None:
            looked.append(key)
            real(key)

        self.patch(media, "_reconsider", spy)
        m.run()
        self.assertLessEqual(len(looked), 4)
        self.assertOwnStreams(m, m.finish(), {f"c{k}": between(c) for k, c in enumerate(callers)})

    def test_memory_is_freed(self) -> None:
        m = Media()
        t = 1.0
        for k in range(12):   # calls overlapping in threes, each ending 2 s after it starts
            callid = f"c{k}"
            m.call(callid, t, CALLERS[k % 4])
            m.echo(t + 0.1, CALLERS[k % 4], 50)
            m.bye(callid, t + 2.0)
            t += 0.7
        m.run(until=t + 30.0)
        self.assertEqual(len(m.h.cdrs), 12)
        assert_empty(self, m.h.engine)

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(plan=st.lists(st.tuples(st.floats(0, 5), st.floats(0.01, 2), st.integers(1, 60),
                                   st.floats(0, 10), st.booleans()), min_size=1, max_size=4))
    def test_any_interleaving(self, plan: list[tuple[float, float, int, float, bool]]) -> None:
        """Calls whose callers use their own ports and whose callee is shared, started,
        answered, streaming and ending in any overlap: each gets exactly its own streams."""
        m = Media()
        for k, (start, answer, packets, after, bye) in enumerate(plan):
            callid = f"call-{k}"
            m.sip(start, invite(callid, CALLERS[k]), to_callee=True)
            m.sip(start + answer, ok(callid, media=SHARED), to_callee=False)
            m.echo(start + answer + 0.005, CALLERS[k], packets)
            if bye:
                m.bye(callid, start + answer + 0.02 * packets + after)
        m.run(check=True)
        cdrs = m.finish()
        self.assertOwnStreams(m, cdrs, {f"call-{k}": between(CALLERS[k])
                                        for k in range(len(plan))})
        assert_empty(self, m.h.engine)


POOL = [SHARED, (SHARED[0], 6001), CALLERS[0], CALLERS[1], ("10.0.0.3", 40000),
        ("192.0.2.9", 3333)]
#: (what, call, endpoint, other endpoint, n, seconds): each kind of step uses what it needs
step = st.tuples(st.sampled_from(["offer", "answer"] * 3 + ["rtp"] * 3 + ["bye", "wait"]),
                 st.integers(0, 3), st.sampled_from(POOL), st.sampled_from(POOL),
                 st.integers(0, 5), st.floats(0, 8))


class SharedEndpointChaosTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None, derandomize=True, database=None)
    @given(steps=st.lists(step, min_size=10, max_size=40))
    def test_claims_stay_consistent(self, steps: list[tuple]) -> None:
        """Four calls announcing endpoints of a small pool (so they share, re-announce,
        move, reuse and leave them, with RTCP ports and T.38 among them) and RTP between
        any two: the tables agree after every packet and are empty at the end."""
        m = Media()
        t = 1.0
        cseqs = [0] * 4
        for kind, k, ep, other, n, wait in steps:
            t += 0.01
            if kind in ("offer", "answer"):
                body = sdp(ep[0], ep[1], (), kind="image", proto="udptl") if n == 0 \
                    else sdp(*ep)
                if kind == "offer":
                    cseqs[k] += 1
                    m.sip(t, sip_message("INVITE sip:bob@example.com SIP/2.0", f"k{k}",
                                         f"{cseqs[k]} INVITE", "ft", body=body), True)
                else:
                    m.sip(t, sip_message("SIP/2.0 200 OK", f"k{k}", f"{cseqs[k]} INVITE",
                                         "ft", "tt", body=body), False)
            elif kind == "rtp":
                m.stream(t, ep, other, n + 1)
                t += 0.02 * (n + 1)
            elif kind == "bye":
                m.bye(f"k{k}", t)
            else:
                t += wait
            m.run(check=True)
        m.finish()
        assert_empty(self, m.h.engine)


def assert_consistent(engine: Engine) -> None:
    """The claims agree with the calls, and every flow is indexed where it should be."""
    media = engine.media
    for epkey, claims in media.claims.items():
        assert len(claims) >= 2 and media.endpoints[epkey] is list(claims.values())[-1]
        assert all(e.call.callid == callid and epkey in e.call.endpoints
                   for callid, e in claims.items())
    for call in engine._calls.values():
        for epkey in call.endpoints:
            latest = media.endpoints[epkey]
            assert latest.call is call or media.claims[epkey][call.callid].call is call
    live = [*media.endpoints.values(), *(e for c in media.claims.values() for e in c.values())]
    claimed = {id(e) for e in live}
    assert all(media.via[key] is e for e in live for key in e.keys)
    for key, flow in media.flows.items():
        ends = {flow.dst + struct.pack("!H", flow.dport), flow.src + struct.pack("!H", flow.sport)}
        indexed = {epkey for epkey, keys in media.orphan_eps.items() if key in keys}
        if flow.owner is None:
            assert indexed == ends and key not in media.via
        else:
            assert flow.owner.flows[key] is flow and not indexed
            assert media.via[key].call is flow.owner and key in media.via[key].keys
            assert id(media.via[key]) in claimed
    for key, call in media.rtcp_flows.items():
        assert media.via[key].call is call and id(media.via[key]) in claimed
    assert set(media.via) == {k for k, f in media.flows.items() if f.tied} | set(media.rtcp_flows)
    assert all(keys <= media.via.keys() for keys in media.weak.values())


def assert_empty(test: SynchronousTestCase, engine: Engine) -> None:
    media = engine.media
    for table in (engine._calls, media.flows, media.rtcp_flows, media.endpoints,
                  media.claims, media.via, media.weak, media.orphan_eps, media.orphans):
        test.assertEqual(len(table), 0)


class DirectionTests(SynchronousTestCase):
    """Caller to callee ("a") or back ("b"): a flow found by its destination goes to the
    side that announced it; one found by its source alone comes from that side, unless
    the call has the reverse flow through the same unannounced far end in that direction
    already (both ends of the call on one host bridged to a third): then it is the other
    way, whichever of the two came first."""

    HOST = "10.0.0.5"                               # both of the call's media ends
    CALLER_EP, CALLEE_EP = (HOST, 4374), (HOST, 4376)
    FAR = ("10.0.0.9", 4376)                        # in no SDP

    def directions(self, flows: list[tuple[tuple[str, int], tuple[str, int]]]
                   ) -> dict[Key, str]:
        m = Media()
        m.call("H", 1.0, self.CALLER_EP, self.CALLEE_EP)
        for k, (src, dst) in enumerate(flows):
            m.stream(1.1 + 0.05 * k, src, dst, 60)
        m.bye("H", 4.0)
        cdr = m.finish()["H"]
        out = {}
        for i, s in enumerate(cdr.rtp):
            out[(s.saddr, s.sport, s.daddr, s.dport)] = \
                "a" if i == cdr.a_index else "b" if i == cdr.b_index else "?"
        return out

    def test_hairpin_through_a_third_host(self) -> None:
        out_of_caller, into_callee = (self.CALLER_EP, self.FAR), (self.FAR, self.CALLEE_EP)
        expected = {(*self.FAR, *self.CALLEE_EP): "a", (*self.CALLER_EP, *self.FAR): "b"}
        self.assertEqual(self.directions([out_of_caller, into_callee]), expected)
        self.assertEqual(self.directions([into_callee, out_of_caller]), expected)

    def test_nat_keeps_symmetric_rtp(self) -> None:
        # the caller behind NAT: its flows to and from the far end were already opposite
        self.assertEqual(self.directions([(self.FAR, self.CALLEE_EP),
                                          (self.CALLEE_EP, self.FAR)]),
                         {(*self.FAR, *self.CALLEE_EP): "a", (*self.CALLEE_EP, *self.FAR): "b"})
        self.assertEqual(self.directions([(self.CALLER_EP, self.FAR),
                                          (self.FAR, self.CALLER_EP)]),
                         {(*self.CALLER_EP, *self.FAR): "a", (*self.FAR, *self.CALLER_EP): "b"})

    def test_sip_dtmf2_capture(self) -> None:
        # a PBX (192.168.105.110) calls itself through a proxy; its caller leg announces
        # port 4374 (in the ACK), its callee leg 4376 (in the 200 OK), and the media goes
        # to and from a phone at .172 named in no SDP, whose stream carries the DTMF
        cdrs: list[Cdr] = []
        engine = Engine(id_sensor=1, on_cdr=cdrs.append)
        with CaptureReader(shared_path("pcaps", "public", "sipnab__SIP_DTMF2.cap")) as reader:
            engine.feed_all(reader)
        engine.finish()
        (cdr,) = [c for c in cdrs if c.rtp]
        a, b = cdr.rtp[cdr.a_index], cdr.rtp[cdr.b_index]
        self.assertEqual(((a.saddr, a.sport, a.daddr, a.dport), a.received),
                         (("192.168.105.172", 4376, "192.168.105.110", 4376), 666))
        self.assertEqual(((b.saddr, b.sport, b.daddr, b.dport), b.received),
                         (("192.168.105.110", 4374, "192.168.105.172", 4376), 665))


class SippCaptureTests(SynchronousTestCase):
    """SIPp on loopback: three overlapping calls (``uac_pcap``, one a second) answered by
    one UAS with ``-rtp_echo`` whose SDP gives 127.0.0.1:6000 to every call."""

    def test_each_call_gets_its_own_streams(self) -> None:
        path = data_path(SAMPLE)
        callers = caller_media(path)
        self.assertEqual(len(callers), 3)
        reference, _ = parse_reference(path + ".tshark.txt")
        cdrs: list[Cdr] = []
        engine = Engine(id_sensor=1, on_cdr=cdrs.append)
        with CaptureReader(path) as reader:
            engine.feed_all(reader)
        engine.finish()
        self.assertEqual(sorted(cdr.callid for cdr in cdrs), sorted(callers))
        for cdr in cdrs:
            port = callers[cdr.callid]
            # tshark's streams to or from this call's caller port, with its packet counts
            theirs = {(r.key, r.packets) for r in reference if port in (r.key[1], r.key[3])}
            ours = {((s.saddr, s.sport, s.daddr, s.dport, s.ssrc), s.received)
                    for s in cdr.rtp}
            self.assertEqual(len(theirs), 4)   # G.711 and RFC 2833 DTMF, both ways
            self.assertEqual(ours, theirs, cdr.callid)
            self.assertEqual({(s.daddr, s.dport) for s in cdr.rtp if s.sport == port},
                             {("127.0.0.1", 6000)})
        # RTP analysed (voipmon_rtp_packets_total): every RTP packet tshark found
        self.assertEqual(engine.stats.rtp_packets, sum(r.packets for r in reference))
        self.assertEqual(engine.counters()["rtp_packets"], engine.stats.rtp_packets)


def caller_media(path: str) -> dict[str, int]:
    """Call-ID -> media port of its INVITE's SDP, read with dpkt (not our decoder)."""
    out: dict[str, int] = {}
    with open(path, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            udp = dpkt.ethernet.Ethernet(buf).data.data
            text = bytes(udp.data)
            if text.startswith(b"INVITE "):
                callid = re.search(rb"^Call-ID:\s*(\S+)", text, re.M | re.I)
                media = re.search(rb"^m=audio (\d+) ", text, re.M)
                if callid and media:
                    out[callid[1].decode()] = int(media[1])
    return out

