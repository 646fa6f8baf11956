"""Fuzzing the engine: random and mutated frames, SIP messages and SDP bodies.

Hypothesis drives four generators (raw frames on every link type; valid frames with bytes
replaced, cut or extended; SIP dialogs built from a grammar with hostile values; RTP/RTCP
around them with jumping clocks). Every example must go through without an exception
(the engine's internal guard counts one as ``stats.errors``: it must stay 0) and leave
no state behind after ``finish``; a long-lived engine fed every example in turn must
keep its tables under their bounds. 10,800 examples in all, derandomised so CI is
repeatable.
"""

from __future__ import annotations

import shutil
import struct
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.engine import Engine
from voipmon.spool.writer import SpoolWriter
from voipmon.test.callsupport import rtcp_rr, rtcp_sr, rtp, sdp, sip_message, udp_frame

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1", "2001:db8::2"]
MEDIA_PORTS = [5060, 40000, 40001, 50000, 50001, 30000, 30002]
METHODS = ["INVITE", "ACK", "BYE", "CANCEL", "PRACK", "UPDATE", "REGISTER", "OPTIONS",
           "SUBSCRIBE", "NOTIFY", "INFO", "REFER", "MESSAGE", "PUBLISH", "FOO"]
HEADERS = ["Call-ID", "i", "From", "f", "To", "t", "CSeq", "Via", "v", "Contact", "m",
           "Content-Type", "c", "Content-Length", "l", "User-Agent", "Server", "X-Junk"]

hostile_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
                       max_size=40)
token = st.sampled_from(["a", "alice", "bob", "", "../..", "x" * 300, "\x00", ";;", "<>",
                         "\r", "1", "tag=x"]) | hostile_text
ip_text = st.sampled_from(IPS + ["0.0.0.0", "999.1.1.1", "::", "[::1]", "host.example",
                                 "1.2.3"])
port = st.sampled_from(MEDIA_PORTS) | st.integers(0, 70000)


@st.composite
def sdp_body(draw: st.DrawFn) -> str:
    lines = ["v=0"]
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from("cmaaoz?"))
        if kind == "c":
            lines.append(f"c=IN {draw(st.sampled_from(['IP4', 'IP6', 'XX']))} "
                         f"{draw(ip_text)}")
        elif kind == "m":
            fmts = " ".join(str(draw(st.integers(-5, 300)))
                            for _ in range(draw(st.integers(0, 5))))
            lines.append(f"m={draw(st.sampled_from(['audio', 'video', 'image', 'x']))} "
                         f"{draw(port)}{draw(st.sampled_from(['', '/2']))} "
                         f"{draw(st.sampled_from(['RTP/AVP', 'RTP/SAVPF', 'udptl', '?']))}"
                         f" {fmts}")
        elif kind == "a":
            lines.append("a=" + draw(st.sampled_from([
                f"rtpmap:{draw(st.integers(-1, 200))} "
                f"{draw(st.sampled_from(['opus', 'telephone-event', 'PCMU', '']))}/"
                f"{draw(st.integers(-1, 10**7))}",
                f"rtcp:{draw(port)}", "rtcp-mux", f"ptime:{draw(st.integers(-5, 5000))}",
                "sendonly", "inactive", draw(token)])))
        elif kind == "o":
            lines.append(f"o=- 1 1 IN IP4 {draw(ip_text)}")
        else:
            lines.append(draw(token))
    return draw(st.sampled_from(["\r\n", "\n"])).join(lines)


@st.composite
def sip_bytes(draw: st.DrawFn, callids: tuple[str, ...]) -> bytes:
    if draw(st.booleans()):
        first = f"{draw(st.sampled_from(METHODS))} sip:{draw(token)}@{draw(ip_text)} SIP/2.0"
    else:
        first = f"SIP/2.0 {draw(st.integers(99, 700))} {draw(token)}"
    callid = draw(st.sampled_from(callids) | token)
    cseq_method = draw(st.sampled_from(METHODS))
    lines = [first, f"Call-ID: {callid}", f"From: <sip:{draw(token)}@x>;tag={draw(token)}",
             f"To: \"{draw(token)}\" <sip:{draw(token)}@y>;tag={draw(token)}",
             f"CSeq: {draw(st.integers(-1, 2**33))} {cseq_method}"]
    for _ in range(draw(st.integers(0, 4))):
        lines.append(f"{draw(st.sampled_from(HEADERS))}: {draw(token)}")
    lines = draw(st.permutations(lines[1:])) if draw(st.booleans()) else lines[1:]
    lines = [first, *lines]
    body = draw(sdp_body()) if draw(st.booleans()) else draw(token)
    if body:
        lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {draw(st.sampled_from([len(body), 0, 99999, -1]))}")
    raw = ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8", "surrogateescape")
    if draw(st.integers(0, 9)) == 0:
        raw = raw[:draw(st.integers(0, len(raw)))]
    return raw


def rtp_bytes(draw: st.DrawFn) -> bytes:
    b0 = draw(st.sampled_from([0x80, 0x80, 0x90, 0xA0, 0x00, 0xC0]))
    b1 = draw(st.sampled_from([0, 8, 18, 96, 101, 13, 0x80 | 8, 200, 201, 72])) & 0xFF
    header = struct.pack("!BBHII", b0, b1, draw(st.integers(0, 65535)),
                         draw(st.integers(0, 2**32 - 1)),
                         draw(st.sampled_from([1, 2, 0xDEADBEEF])))
    return header + b"\x00" * draw(st.sampled_from([0, 1, 160]))


@st.composite
def event(draw: st.DrawFn) -> tuple[str, tuple, tuple, bytes]:
    kind = draw(st.sampled_from(["sip", "sip", "rtp", "rtp", "rtcp", "junk"]))
    v6 = draw(st.integers(0, 4)) == 0
    src = (IPS[3 + draw(st.integers(0, 1))] if v6 else IPS[draw(st.integers(0, 2))],
           draw(st.sampled_from(MEDIA_PORTS)))
    dst = (IPS[3 + draw(st.integers(0, 1))] if v6 else IPS[draw(st.integers(0, 2))],
           draw(st.sampled_from(MEDIA_PORTS)))
    if kind == "sip":
        src, dst = (src[0], 5060), (dst[0], 5060)
        payload = draw(sip_bytes(("c1", "c2", "c3")))
    elif kind == "rtp":
        payload = rtp_bytes(draw)
    elif kind == "rtcp":
        payload = draw(st.sampled_from([
            rtcp_sr(1, 3900000000.5, ((2, 10, 1, 5, 8, 0, 0),)),
            rtcp_rr(2, ((1, 0, -1, 5, 8, 0xFFFF, 1),)),
            rtcp_sr(1, 1.0)[:10]]))
    else:
        payload = draw(st.binary(max_size=64))
    return kind, src, dst, payload


@st.composite
def scenario(draw: st.DrawFn) -> list[tuple[tuple, float]]:
    """A plausible call (offer, answer, media, RTCP, re-INVITE, ending), then perturbed:
    messages dropped, swapped, repeated, mutated, and random events mixed in."""
    callid = draw(st.sampled_from(["c1", "c2"]) | token)
    am = (IPS[0], draw(st.sampled_from([40000, 30000])))
    bm = (IPS[1], 50000)
    sa, sb = (IPS[0], 5060), (IPS[1], 5060)
    rtpmap = draw(st.sampled_from([{}, {101: ("telephone-event", 8000)}, {96: ("opus", 48000)},
                                   {96: ("opus", 0), 97: ("", 0)}]))
    pts = tuple(rtpmap) or (0,)
    extra = tuple(draw(st.lists(st.sampled_from(["a=rtcp-mux", "a=sendonly", "a=rtcp:1"]),
                                max_size=2)))

    def msg(first: str, cseq: str, to_tag: str = "", body: str = "") -> bytes:
        return sip_message(first, callid, cseq, "ft", to_tag, body=body)

    steps: list[tuple[tuple, float]] = [
        (("sip", sa, sb, msg("INVITE sip:b@x SIP/2.0", "1 INVITE",
                             body=sdp(*am, pts, rtpmap, extra))), 0.0),
        (("sip", sb, sa, msg("SIP/2.0 180 Ringing", "1 INVITE", "tt")), 0.1),
        (("sip", sb, sa, msg(f"SIP/2.0 {draw(st.sampled_from([200, 200, 486, 183]))} X",
                             "1 INVITE", "tt", sdp(*bm, pts, rtpmap, extra))), 0.5),
        (("sip", sa, sb, msg("ACK sip:b@x SIP/2.0", "1 ACK", "tt")), 0.01)]
    seq, ts = draw(st.integers(0, 65535)), draw(st.integers(0, 2**32 - 1))
    for i in range(draw(st.integers(0, 40))):
        src, dst = (am, bm) if i % 2 else (bm, am)
        pt = draw(st.sampled_from(pts + (13,)))
        steps.append((("rtp", src, dst, rtp(seq + i // 2, ts + 160 * (i // 2), 7 + i % 2, pt,
                                            marker=draw(st.integers(0, 20)) == 0)),
                      draw(st.floats(0, 0.06))))
    if draw(st.booleans()):
        steps.append((("rtcp", (am[0], am[1] + 1), (bm[0], bm[1] + 1),
                       rtcp_sr(7, 3900000000.0, ((8, 3, 1, 5, 80, 0, 0),))), 0.01))
    if draw(st.booleans()):
        reinvite = sdp(*bm, (96,), {96: ("opus", 48000)}) if draw(st.booleans()) else \
            sdp(bm[0], bm[1], (), kind="image", proto="udptl")
        steps.append((("sip", sb, sa, sip_message("INVITE sip:a@x SIP/2.0", callid, "9 INVITE",
                                                  "tt", "ft", body=reinvite)), 0.2))
    ending = draw(st.sampled_from(["BYE", "CANCEL", "none"]))
    if ending != "none":
        steps.append((("sip", sa, sb, msg(f"{ending} sip:b@x SIP/2.0", f"2 {ending}", "tt")),
                       0.1))
        steps.append((("sip", sb, sa, msg("SIP/2.0 200 OK", f"2 {ending}", "tt")), 0.01))
    for _ in range(draw(st.integers(0, 3))):   # drop, swap, repeat
        if not steps:
            break
        i = draw(st.integers(0, len(steps) - 1))
        action = draw(st.sampled_from(["drop", "swap", "repeat"]))
        if action == "drop":
            del steps[i]
        elif action == "swap" and i + 1 < len(steps):
            steps[i], steps[i + 1] = steps[i + 1], steps[i]
        else:
            steps.insert(i, steps[i])
    for _ in range(draw(st.integers(0, 3))):
        steps.insert(draw(st.integers(0, len(steps))),
                     (draw(event()), draw(st.floats(-50, 400, allow_nan=False))))
    return steps


def build(kind_src_dst_payload: tuple, vlan: int | None = None) -> bytes:
    _, src, dst, payload = kind_src_dst_payload
    return udp_frame(src[0], src[1], dst[0], dst[1], payload, vlan)


def assert_clean(test: SynchronousTestCase, engine: Engine) -> None:
    test.assertEqual(engine.stats.errors, 0)
    media = engine.media
    for table in (engine._calls, media.flows, media.endpoints, media.claims, media.via,
                  media.weak, media.orphan_eps, media.rtcp_flows, media.orphans):
        test.assertEqual(len(table), 0)


class FuzzEngineTests(SynchronousTestCase):
    def engine(self, **options: object) -> Engine:
        self.cdrs = 0

        def count(_: object) -> None:
            self.cdrs += 1

        return Engine(id_sensor=1, on_cdr=count, on_orphan=count,
                      **options)  # type: ignore[arg-type]

    @settings(max_examples=3000, **SETTINGS)
    @given(frames=st.lists(st.tuples(st.sampled_from([0, 1, 1, 1, 101, 113, 276, 12345]),
                                     st.binary(max_size=120)), max_size=8),
           t0=st.floats(-1e10, 1e10, allow_nan=False))
    def test_random_frames(self, frames: list[tuple[int, bytes]], t0: float) -> None:
        engine = self.engine()
        for i, (linktype, frame) in enumerate(frames):
            engine.feed(t0 + i, linktype, frame)
        engine.finish()
        assert_clean(self, engine)

    @settings(max_examples=3000, **SETTINGS)
    @given(base=st.lists(event(), min_size=1, max_size=6),
           edits=st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=6),
           cut=st.integers(0, 700), tail=st.binary(max_size=8), vlan=st.booleans())
    def test_mutated_frames(self, base: list, edits: list[tuple[int, int]], cut: int,
                            tail: bytes, vlan: bool) -> None:
        engine = self.engine()
        for i, item in enumerate(base):
            frame = bytearray(build(item, 7 if vlan else None))
            for pos, value in edits:
                if pos < len(frame):
                    frame[pos] = value
            engine.feed(100.0 + i * 0.01, 1, bytes(frame[:cut]) + tail
                        if i % 2 else bytes(frame))
        engine.finish()
        assert_clean(self, engine)

    @settings(max_examples=3000, **SETTINGS)
    @given(events=scenario(), spool=st.booleans(),
           savertp=st.sampled_from(["yes", "header", "no"]))
    def test_dialogs_and_media(self, events: list, spool: bool, savertp: str) -> None:
        spooldir = tempfile.mkdtemp() if spool else None
        try:
            engine = self.engine(spool=SpoolWriter(spooldir) if spooldir else None,
                                 savertp=savertp, rtptimeout=60.0, absolute_timeout=500.0,
                                 max_orphan_flows=3)
            t = 1000.0
            for item, step in events:
                t += step
                engine.feed(t, 1, build(item))
                self.assertLessEqual(len(engine.media.orphans), 3)
            engine.finish()
            assert_clean(self, engine)
        finally:
            if spooldir:
                shutil.rmtree(spooldir)

    _long = None

    @settings(max_examples=1800, **SETTINGS)
    @given(events=st.lists(st.tuples(event(), st.floats(0, 30, allow_nan=False)),
                           min_size=1, max_size=10))
    def test_long_lived_engine_stays_bounded(self, events: list) -> None:
        if FuzzEngineTests._long is None:
            FuzzEngineTests._long = (self.engine(max_calls=50, max_orphan_flows=20,
                                                 rtptimeout=120.0), [2e9])
        engine, clock = FuzzEngineTests._long
        for item, step in events:
            clock[0] += step
            engine.feed(clock[0], 1, build(item))
        self.assertEqual(engine.stats.errors, 0)
        self.assertLessEqual(len(engine._calls), 50)
        self.assertLessEqual(len(engine.media.orphans), 20)
        media = engine.media
        self.assertLessEqual(len(media.skip), 65536 + 64)
        live_flows = len(media.flows) + len(media.rtcp_flows)
        self.assertLessEqual(len(media.orphan_eps), 2 * len(media.orphans))
        self.assertLessEqual(len(media.via), live_flows)
        self.assertLessEqual(len(media.weak), live_flows)
        self.assertLessEqual(len(media.claims), len(media.endpoints))
