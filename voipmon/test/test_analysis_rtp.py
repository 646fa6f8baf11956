"""Tests for voipmon.analysis.rtp: vectorised stream statistics, checked per packet."""

from __future__ import annotations

import itertools

import numpy as np
from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.rtp import CHUNK, PayloadMap, RtpFlow, StreamAnalyzer, codec_name
from voipmon.test.callsupport import rtp


def wireshark_jitter(t, seq, ts, pt, marker, rates):
    """Wireshark 4.0's rtppacket_analyse, one packet at a time (the reference).

    Returns (max jitter, mean jitter) in ms. ``rates`` maps payload type to clock rate,
    0 meaning "not analysed" (telephone-event, unknown)."""
    jitter = max_j = mean_j = 0.0
    total = 0
    first_ts = time_ref = last_nominal = None
    prev_pt = None
    for i in range(len(t)):
        cur = t[i] * 1000.0
        if i == 0:
            first_ts, time_ref, last_nominal, prev_pt = ts[0], cur, 0.0, pt[0]
            total = 1
            continue
        rel = (ts[i] - first_ts) % (1 << 32)
        in_time = rel < (1 << 31)
        per_ms = rates.get(pt[i], 0) // 1000
        cur_j = 0.0
        if in_time and per_ms:
            nominal = rel / per_ms
            diff = abs(cur - (time_ref + nominal - last_nominal))
            cur_j = jitter = (15 * jitter + diff) / 16
            last_nominal = nominal
        cn = pt[i] in (13, 19)
        follow_cn = prev_pt in (13, 19)
        prev_pt = pt[i]
        if not marker[i] and not cn and in_time and not follow_cn and per_ms:
            max_j = max(max_j, jitter)
            mean_j = (mean_j * (total - 1) + cur_j) / total
        if in_time:
            time_ref = cur
        total += 1
    return max_j, mean_j


def random_stream(rng: np.random.Generator, n: int):
    t = 100.0 + np.arange(n) * 0.02 + np.abs(rng.normal(0, 0.004, n))
    seq = (np.arange(n) + int(rng.integers(0, 65536))) % 65536
    ts = (np.arange(n) * 160 + int(rng.integers(0, 1 << 32))) % (1 << 32)
    pt = np.zeros(n, dtype=np.int64)
    marker = rng.random(n) < 0.02
    events = rng.random(n) < 0.05
    pt[events] = 101
    pt[rng.random(n) < 0.03] = 13
    backwards = rng.random(n) < 0.02
    ts[backwards] = (ts[backwards] - 800) % (1 << 32)
    swap = np.flatnonzero(rng.random(n - 1) < 0.01)
    for i in swap:  # a little reordering
        t[i], t[i + 1] = t[i + 1], t[i]
        seq[i], seq[i + 1] = seq[i + 1], seq[i]
        ts[i], ts[i + 1] = ts[i + 1], ts[i]
    order = np.argsort(t, kind="stable")
    return (t[order], seq[order].astype(np.uint16), ts[order].astype(np.uint32), pt[order],
            marker[order])


def feed(analyzer: StreamAnalyzer, arrays, chunks: int = 1) -> None:
    n = len(arrays[0])
    bounds = np.linspace(0, n, chunks + 1).astype(int)
    for a, b in itertools.pairwise(bounds):
        analyzer.feed(*(x[a:b] for x in arrays))


class JitterTests(SynchronousTestCase):
    def test_matches_wireshark_per_packet(self) -> None:
        rng = np.random.default_rng(5)
        pmap = PayloadMap({101: ("telephone-event", 8000)})
        rates = {0: 8000, 13: 8000}
        for n in (2, 3, 50, 777, 3000):
            arrays = random_stream(rng, n)
            for chunks in (1, 7):
                analyzer = StreamAnalyzer(pmap)
                feed(analyzer, arrays, chunks)
                res = analyzer.result(True)
                max_j, mean_j = wireshark_jitter(*[x.tolist() for x in arrays], rates)
                self.assertAlmostEqual(res.maxjitter, max_j, places=9, msg=(n, chunks))
                self.assertAlmostEqual(res.avgjitter, mean_j, places=9, msg=(n, chunks))

    def test_constant_delay_has_no_jitter(self) -> None:
        n = 500
        analyzer = StreamAnalyzer(PayloadMap())
        analyzer.feed(5.0 + np.arange(n) * 0.02, np.arange(n, dtype=np.uint16),
                      (np.arange(n) * 160).astype(np.uint32), np.full(n, 8),
                      np.zeros(n, dtype=bool))
        res = analyzer.result(True)
        self.assertAlmostEqual(res.maxjitter, 0.0, places=6)
        self.assertEqual((res.received, res.lost, res.duplicates), (n, 0, 0))
        self.assertEqual(res.payload, 8)

    def test_clock_rates(self) -> None:
        pmap = PayloadMap({96: ("opus", 48000), 97: ("AMR-WB", 0), 101: ("telephone-event", 8000),
                           98: ("mystery", 0), 0: ("PCMU", 16000), 77: ("G7221", 16000)})
        self.assertEqual(pmap.rates[96], 48000)
        self.assertEqual(pmap.rates[97], 16000)      # name table, rtpmap without a rate
        self.assertEqual(pmap.rates[101], 0)         # events are not analysed
        self.assertTrue(pmap.events[101])
        self.assertEqual(pmap.rates[98], 0)          # unknown dynamic type
        self.assertEqual(pmap.rates[0], 8000)        # static types keep RFC 3551's rate
        self.assertEqual(pmap.rates[9], 8000)        # G.722's RTP clock is 8 kHz
        self.assertEqual(pmap.rates[77], 16000)      # unassigned type with an rtpmap
        self.assertEqual(codec_name(96, pmap.rtpmap), "opus/48000")
        self.assertEqual(codec_name(8, {}), "PCMA/8000")
        self.assertEqual(codec_name(120, {}), "PT120")

    def test_opus_uses_48k_clock(self) -> None:
        n = 200
        t = 1.0 + np.arange(n) * 0.02
        t[100:] += 0.010  # one 10 ms step in transit time
        analyzer = StreamAnalyzer(PayloadMap({96: ("opus", 48000)}))
        analyzer.feed(t, np.arange(n, dtype=np.uint16), (np.arange(n) * 960).astype(np.uint32),
                      np.full(n, 96), np.zeros(n, dtype=bool))
        # one 10 ms deviation: J jumps to 10/16 ms and decays
        self.assertAlmostEqual(analyzer.result(True).maxjitter, 10 / 16, places=6)

    def test_l16_uses_integer_division_as_wireshark(self) -> None:
        n = 3
        analyzer = StreamAnalyzer(PayloadMap())
        analyzer.feed(np.array([0.0, 0.02, 0.04]), np.arange(n, dtype=np.uint16),
                      np.array([0, 882, 1764], dtype=np.uint32), np.full(n, 11),
                      np.zeros(n, dtype=bool))
        max_j, _ = wireshark_jitter([0.0, 0.02, 0.04], [0, 1, 2], [0, 882, 1764], [11] * 3,
                                    [False] * 3, {11: 44100})
        self.assertAlmostEqual(analyzer.result(True).maxjitter, max_j, places=9)
        self.assertGreater(max_j, 0.0)  # 882 / 44 != 20 ms


class SequenceTests(SynchronousTestCase):
    def run_seqs(self, seqs: list[int], chunks: int = 1):
        n = len(seqs)
        analyzer = StreamAnalyzer(PayloadMap())
        arrays = (np.arange(n) * 0.02, np.array(seqs, dtype=np.uint16),
                  (np.arange(n) * 160).astype(np.uint32), np.zeros(n, dtype=np.int64),
                  np.zeros(n, dtype=bool))
        feed(analyzer, arrays, chunks)
        return analyzer.result(True)

    def test_wrap(self) -> None:
        seqs = [(65530 + i) % 65536 for i in range(20)]
        for chunks in (1, 3):
            res = self.run_seqs(seqs, chunks)
            self.assertEqual((res.received, res.lost, res.reordered), (20, 0, 0))

    def test_loss_bursts_across_wrap(self) -> None:
        seqs = [(65530 + i) % 65536 for i in range(40)]
        dropped = {3, 10, 11, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30}
        kept = [s for i, s in enumerate(seqs) if i not in dropped]
        for chunks in (1, 4):
            res = self.run_seqs(kept, chunks)
            self.assertEqual(res.lost, len(dropped))
            self.assertEqual(res.sl[0], 1)   # one single loss
            self.assertEqual(res.sl[1], 1)   # one burst of two
            self.assertEqual(res.sl[9], 1)   # one burst of >= 10
            self.assertEqual(sum(res.sl), 3)

    def test_duplicates_do_not_make_loss_negative(self) -> None:
        seqs = [1, 2, 3, 3, 3, 4, 5]
        res = self.run_seqs(seqs)
        self.assertEqual((res.received, res.lost, res.duplicates), (7, 0, 2))

    def test_duplicates_across_chunks(self) -> None:
        seqs = list(range(100)) + [50, 99]
        res = self.run_seqs(seqs, chunks=2)
        self.assertEqual((res.duplicates, res.lost), (2, 0))

    def test_reordered(self) -> None:
        res = self.run_seqs([1, 2, 4, 3, 5, 7, 6, 8])
        self.assertEqual((res.reordered, res.lost, res.duplicates), (2, 0, 0))
        self.assertEqual(sum(res.sl), 2)  # the gaps were seen before the late packets came

    def test_late_first_packet(self) -> None:
        res = self.run_seqs([10, 9, 11, 12])
        self.assertEqual((res.lost, res.reordered), (0, 1))


class DelayAndFlowTests(SynchronousTestCase):
    def test_delay_buckets(self) -> None:
        n = 20
        t = np.arange(n) * 0.02
        t[5:] += 0.060   # 60 ms late from packet 5 on: one |D| of 60
        t[12:] += 0.250  # then 250 more: one |D| of 250
        analyzer = StreamAnalyzer(PayloadMap())
        analyzer.feed(t, np.arange(n, dtype=np.uint16), (np.arange(n) * 160).astype(np.uint32),
                      np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool))
        self.assertEqual(analyzer.result(True).delay, (1, 0, 0, 0, 0, 1, 0))

    def test_comfort_noise_and_events_are_not_lost_frames(self) -> None:
        n = 600
        pt = np.zeros(n, dtype=np.int64)
        pt[100:110] = 13                  # comfort noise
        pt[300:320] = 101                 # a DTMF event
        ts = (np.arange(n) * 160).astype(np.int64)
        ts[300:320] = 300 * 160           # events keep their start timestamp
        analyzer = StreamAnalyzer(PayloadMap({101: ("telephone-event", 8000)}))
        analyzer.feed(np.arange(n) * 0.02, np.arange(n, dtype=np.uint16),
                      ts.astype(np.uint32), pt, np.zeros(n, dtype=bool))
        res = analyzer.result(True)
        self.assertEqual((res.lost, res.payload, res.payloads), (0, 0, (0, 13, 101)))
        self.assertEqual((res.mos_f1, res.mos_f2, res.mos_adapt), (4.5, 4.5, 4.5))

    def test_flow_splits_ssrcs_and_drops_non_rtp(self) -> None:
        flow = RtpFlow(b"k", b"\x01" * 4, 1, b"\x02" * 4, 2, None, "", PayloadMap())
        packets = [rtp(i, i * 160, 0xAAAA) for i in range(10)] + \
                  [rtp(i, i * 160, 0xBBBB, pt=8) for i in range(5)] + \
                  [b"\x10\x00" + b"\x00" * 10,                  # not version 2 (ZRTP, STUN)
                   b"\x81\xc8" + b"\x00" * 10]                  # RTCP SR (PT 200)
        for i, packet in enumerate(packets):
            flow.rec += packet[:12]
            flow.times.append(10.0 + i * 0.01)
        self.assertEqual(flow.drain(), 15)
        self.assertEqual(set(flow.streams), {0xAAAA, 0xBBBB})
        self.assertEqual(flow.streams[0xAAAA].result(True).received, 10)
        self.assertEqual(flow.streams[0xBBBB].result(True).payload, 8)
        self.assertEqual(flow.pending(), 0)
        self.assertEqual(flow.last_time(), 10.0 + 16 * 0.01)

    def test_long_stream_in_chunks_equals_one_pass(self) -> None:
        rng = np.random.default_rng(11)
        arrays = random_stream(rng, 3 * CHUNK + 17)
        pmap = PayloadMap({101: ("telephone-event", 8000)})
        one, many = StreamAnalyzer(pmap), StreamAnalyzer(pmap)
        feed(one, arrays, 1)
        feed(many, arrays, 9)
        a, b = one.result(True), many.result(True)
        self.assertEqual((a.received, a.lost, a.duplicates, a.reordered, a.sl, a.delay),
                         (b.received, b.lost, b.duplicates, b.reordered, b.sl, b.delay))
        self.assertAlmostEqual(a.maxjitter, b.maxjitter, places=9)
        self.assertAlmostEqual(a.avgjitter, b.avgjitter, places=9)
