"""Tests for voipmon.analysis.timeline and marks: quality over time as the CDR sees it.

The invariant, on every public capture and the SIPp ones: per stream, the intervals'
packets sum to the CDR's received, their losses to its lost, the largest interval max
jitter is its maxjitter, the jitter buffers' bursts of all intervals are the histograms
that scored the CDR, and a MOS window as long as the call gives the CDR's MOS.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from typing import Any

import numpy as np
from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis import mos
from voipmon.analysis.engine import Engine
from voipmon.analysis.replay import CallNotFound, replay
from voipmon.analysis.timeline import MODELS, QualityObserver, quality_timeline, settle_negative
from voipmon.manager.pcapmerge import plan_merge
from voipmon.packet.readers import CaptureReader
from voipmon.packet.writers import pcap_global_header, pcap_record
from voipmon.spool.writer import SpoolWriter
from voipmon.test.callsupport import rtp, sdp, sip_message, udp_frame
from voipmon.test.common import DATA, GENERATED_PCAPS, public_pcaps, shared_path

A, B = ("10.0.0.1", 5060), ("10.0.0.2", 5060)
AM, BM = ("10.0.0.1", 40000), ("10.0.0.2", 50000)
T0 = 1_700_000_000.0


def all_captures() -> list[tuple[str, tuple[int, ...]]]:
    shared_path("pcaps", "generated")
    paths = public_pcaps() + sorted(
        os.path.join(folder, name) for folder in (GENERATED_PCAPS, DATA)
        for name in os.listdir(folder) if name.endswith(".pcap"))
    return [(p, (5060, 6060) if "tcp_fragmented" in p else (5060,)) for p in paths]


class Recording(QualityObserver):
    """Keeps each stream's analyzer, to compare with what the CDR was scored from."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.analyzers: dict[tuple, Any] = {}

    def stream_started(self, flow: Any, ssrc: int, analyzer: Any) -> None:
        super().stream_started(flow, ssrc, analyzer)
        self.analyzers[(flow.key, ssrc)] = (flow, analyzer)


class InvariantTests(SynchronousTestCase):
    def test_intervals_add_up_to_the_cdr(self) -> None:
        streams = 0
        for path, ports in all_captures():
            observer = Recording(mos_window=1e9)
            cdrs = replay(path, observer, sip_ports=ports)
            self.assertEqual([c.to_json() for c in cdrs],
                             [c.to_json() for c in replay(path, None, sip_ports=ports)],
                             f"{path}: the observer changed a CDR")
            for cdr in cdrs:
                timeline = observer.timeline(cdr)
                for stream, rtpstream in zip(timeline["streams"], cdr.rtp, strict=True):
                    streams += 1
                    where = f"{os.path.basename(path)} {cdr.callid} {stream['ssrc']}"
                    self.assertEqual(sum(stream["packets"]), rtpstream.received, where)
                    self.assertEqual(sum(stream["lost"]), rtpstream.lost, where)
                    self.assertTrue(all(n >= 0 for n in stream["lost"]), where)
                    jitter = [j for j in stream["jitter_max"] if j is not None]
                    self.assertEqual(round(max(jitter, default=0.0), 3),
                                     round(rtpstream.maxjitter, 3), where)
                    if cdr.connect_time is not None or rtpstream.received >= 100:
                        for model in MODELS:
                            self.assertEqual(stream[f"mos_{model}"][-1],
                                             getattr(rtpstream, f"mos_{model}"), where)
            for _flow, analyzer in observer.analyzers.values():
                timeline = analyzer.observer
                for k, jb in enumerate(analyzer.jb):
                    lost, bursts = mos.loss_counts(jb.hist)
                    self.assertEqual(int(timeline.jb_lost[k].sum()), lost, path)
                    self.assertEqual(int(timeline.jb_bursts[k].sum()), bursts, path)
        self.assertGreater(streams, 60)

    def test_the_calls_own_pcap_gives_the_same_timeline(self) -> None:
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root)
        for name in ("heplify__rtp_rtcp_sip_ipv4_udp.pcap", "sipnab__SIP_DTMF2.cap",
                     "sipnab__Asterisk_ZFONE_XLITE.pcap", "sngrep__aaa.pcap"):
            path = shared_path("pcaps", "public", name)
            spool = os.path.join(root, name)
            cdrs: list = []
            engine = Engine(id_sensor=1, on_cdr=cdrs.append, spool=SpoolWriter(spool))
            with CaptureReader(path) as reader:
                engine.feed_all(reader)
            engine.finish()
            observer = QualityObserver()
            originals = {c.sensor_cdr_uid: c for c in replay(path, observer)}
            for cdr in cdrs:
                merged = b"".join(plan_merge(
                    [os.path.join(spool, p) for p in (cdr.sip_pcap, cdr.rtp_pcap) if p]
                ).chunks())
                again = quality_timeline(io.BytesIO(merged), cdr.sensor_cdr_uid)
                self.assertEqual(again, observer.timeline(originals[cdr.sensor_cdr_uid]))

    def test_sides_are_the_settled_directions(self) -> None:
        # sipnab__SIP_DTMF2: the flow out of the caller's announced port comes first and
        # looks like the caller's, until the reverse one shows where the caller is
        # (test_analysis_media.DirectionTests); the timeline reports the settled sides
        path = shared_path("pcaps", "public", "sipnab__SIP_DTMF2.cap")
        observer = QualityObserver()
        (cdr,) = [c for c in replay(path, observer) if c.rtp]
        timeline = observer.timeline(cdr)
        self.assertEqual({(s["saddr"], s["side"]) for s in timeline["streams"]},
                         {("192.168.105.172", "caller"), ("192.168.105.110", "callee")})
        dtmf = [m for m in timeline["marks"] if m["kind"] == "dtmf"]
        self.assertEqual("".join(m["digit"] for m in dtmf), "6789123")
        self.assertEqual({m["side"] for m in dtmf}, {"caller"})

    def test_a_pcap_of_several_calls_needs_the_uid(self) -> None:
        path = shared_path("pcaps", "public", "sipnab__sip-rtp-g711.pcap")
        with self.assertRaises(CallNotFound):
            quality_timeline(path)
        with self.assertRaises(CallNotFound):
            quality_timeline(path, "0" * 32)


def call_frames(rtp_a: list[tuple[float, int]], extra: list[tuple[float, tuple, tuple, bytes]]
                = (), events: list[tuple[float, int, int, bool]] = ()) -> bytes:
    """A call: INVITE at T0, 180 at +0.5, 200 at +1, ACK, caller RTP ``(time, seq)`` with
    timestamps 160 * seq, ``extra`` SIP frames, telephone-events ``(time, seq, digit,
    end)`` at one timestamp per digit, BYE 0.2 s after the last packet."""
    offer = sdp(AM[0], AM[1], (0, 101), {101: ("telephone-event", 8000)})
    answer = sdp(BM[0], BM[1], (0, 101), {101: ("telephone-event", 8000)})
    cid = "timeline@test"
    frames = [
        (T0, A, B, sip_message("INVITE sip:bob@example.com SIP/2.0", cid, "1 INVITE", "ft",
                               body=offer)),
        (T0 + 0.5, B, A, sip_message("SIP/2.0 180 Ringing", cid, "1 INVITE", "ft", "tt")),
        (T0 + 1.0, B, A, sip_message("SIP/2.0 200 OK", cid, "1 INVITE", "ft", "tt",
                                     body=answer)),
        (T0 + 1.001, A, B, sip_message("ACK sip:bob@x SIP/2.0", cid, "1 ACK", "ft", "tt")),
        *extra,
    ]
    for t, seq in rtp_a:
        frames.append((t, AM, BM, rtp(seq, 160 * seq, 0xAAAA)))
    for t, seq, digit, end in events:
        body = bytes([digit, 0x8A if end else 0x0A]) + (800).to_bytes(2, "big")
        frames.append((t, AM, BM, rtp(seq, 160 * 1000 + digit, 0xAAAA, 101, not end, body)))
    last = max(t for t, *_ in frames)
    frames.append((last + 0.2, A, B, sip_message("BYE sip:bob@x SIP/2.0", cid, "2 BYE", "ft",
                                                 "tt")))
    frames.sort(key=lambda f: f[0])
    return pcap_global_header(1) + b"".join(
        pcap_record(t, udp_frame(s[0], s[1], d[0], d[1], m)) for t, s, d, m in frames)


class IntervalTests(SynchronousTestCase):
    def test_loss_reordering_and_duplicates(self) -> None:
        # 50 packets a second from T0 + 2; seq 65500 on, so the sequence wraps
        base = 65500
        packets = [(T0 + 2.005 + i * 0.02, (base + i) % 65536) for i in range(250)]
        lost = {60, 61, 62, 130}                        # at 3.2 s and 4.6 s
        late = 97                                       # sent at 3.945 s, arrives at 4.03 s
        send = [p for i, p in enumerate(packets) if i not in lost and i != late]
        send.append((T0 + 4.03, packets[late][1]))
        send.append((T0 + 5.5, packets[200][1]))        # a duplicate
        timeline = quality_timeline(io.BytesIO(call_frames(sorted(send))), interval=1.0)
        [stream] = timeline["streams"]
        self.assertEqual(stream["offset"], 2)
        self.assertEqual(stream["packets"], [50, 46, 50, 51, 50])
        # the late packet's gap, counted in second 3, is taken back from second 3 when it
        # comes in second 4; the loss of second 4 stays there
        self.assertEqual(stream["lost"], [0, 3, 1, 0, 0])
        self.assertEqual(stream["cdr"]["lost"], 4)
        self.assertEqual(stream["cdr"]["received"], 247)
        self.assertEqual(timeline["intervals"], 8)     # BYE at 7.185 s

    def test_mos_falls_where_the_loss_is(self) -> None:
        packets = [(T0 + 2 + i * 0.02, i) for i in range(1000)]       # 20 s
        dropped = set(range(500, 550, 3))                             # at 12..13 s
        send = [p for i, p in enumerate(packets) if i not in dropped]
        for window in (1.0, 5.0):
            timeline = quality_timeline(io.BytesIO(call_frames(send)), mos_window=window)
            [stream] = timeline["streams"]
            scores = dict(enumerate(stream["mos_f1"], stream["offset"]))
            self.assertLess(scores[12], 4.0)
            self.assertEqual(scores[5], 4.5)
            after = 12 + int(window)
            self.assertLess(scores[after - 1], 4.5)
            self.assertEqual(scores[after + 1], 4.5)

    def test_settle_negative(self) -> None:
        self.assertEqual(settle_negative(np.array([2, 0, -1, 3, -2, -1])).tolist(),
                         [1, 0, 0, 0, 0, 0])
        self.assertEqual(settle_negative(np.array([1, 2, 3])).tolist(), [1, 2, 3])


class MarkTests(SynchronousTestCase):
    def test_sip_events_and_dtmf(self) -> None:
        cid = "timeline@test"
        hold = sdp(AM[0], AM[1], (0,), extra=("a=sendonly",))
        resume = sdp(AM[0], AM[1], (0,))
        info = sip_message("INFO sip:bob@x SIP/2.0", cid, "5 INFO", "ft", "tt",
                           body="Signal=7\r\nDuration=160\r\n",
                           headers=("Content-Type: application/dtmf-relay",))
        info = info.replace(b"Content-Type: application/sdp\r\n", b"")
        extra = [
            (T0 + 4.0, A, B, sip_message("INVITE sip:bob@x SIP/2.0", cid, "3 INVITE", "ft",
                                         "tt", body=hold)),
            (T0 + 4.0005, A, B, sip_message("INVITE sip:bob@x SIP/2.0", cid, "3 INVITE",
                                            "ft", "tt", body=hold)),   # retransmission
            (T0 + 6.0, A, B, sip_message("INVITE sip:bob@x SIP/2.0", cid, "4 INVITE", "ft",
                                         "tt", body=resume)),
            (T0 + 7.0, A, B, info),
        ]
        events = [(T0 + 3.0 + k * 0.02, 200 + k, 5, k == 2) for k in range(3)] + \
                 [(T0 + 3.5 + k * 0.02, 210 + k, 11, k == 1) for k in range(2)]
        packets = [(T0 + 2 + i * 0.02, i) for i in range(300)]
        timeline = quality_timeline(io.BytesIO(call_frames(packets, extra, events)))
        marks = [(m["kind"], m["t"], m.get("digit")) for m in timeline["marks"]]
        self.assertEqual(marks, [
            ("invite", 0.0, None), ("ringing", 0.5, None), ("answer", 1.0, None),
            ("dtmf", 3.0, "5"), ("dtmf", 3.5, "#"), ("reinvite", 4.0, None),
            ("hold", 4.0, None), ("reinvite", 6.0, None), ("resume", 6.0, None),
            ("dtmf", 7.0, "7"), ("bye", 8.18, None)])
        rtp_dtmf = [m for m in timeline["marks"] if m["kind"] == "dtmf" and "stream" in m]
        self.assertEqual([(m["stream"], m["side"], m["duration"]) for m in rtp_dtmf],
                         [(0, "caller", 0.1), (0, "caller", 0.1)])
