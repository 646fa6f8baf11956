"""Tests for voipmon.analysis.mos: jitter-buffer simulations and the E-model."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.mos import (
    AdaptiveJitterBuffer,
    Chunk,
    FixedJitterBuffer,
    best_mos,
    burst_ratio,
    mos_score,
    r_factor,
    r_to_mos,
)


def frames(n: int, ptime: float = 20.0, transit: float = 30.0):
    """Arrival and media times (ms) and sequence numbers of an ideal stream."""
    media = np.arange(n) * ptime
    return media + transit, media, np.arange(n, dtype=np.int64) + 500


def lost(buffer) -> int:
    hist = buffer.loss_histogram()
    return int((np.arange(len(hist)) * hist).sum())


class EModelTests(SynchronousTestCase):
    def test_voipmonitor_g711_formula(self) -> None:
        # R = 93.2062077233 - 95 * (Ppl / (Ppl / BurstR + 17.2647)), Ppl in %
        self.assertAlmostEqual(r_factor(0.02, 1.0), 93.2062077233 - 95 * 2 / (2 + 17.2647))
        self.assertAlmostEqual(r_factor(0.05, 2.0), 93.2062077233 - 95 * 5 / (2.5 + 17.2647))
        r = 80.0
        self.assertAlmostEqual(r_to_mos(r), 2.06405 + 0.031738 * r - 0.000356641 * r * r
                               + 2.93143e-6 * r ** 3)
        self.assertEqual(r_to_mos(200.0), 4.5)
        self.assertEqual(r_to_mos(-50.0), 1.0)

    def test_burst_ratio(self) -> None:
        self.assertEqual(burst_ratio(np.array([0, 4]), 100), (0.0, 0.0))  # < 5 lost
        hist = np.zeros(129, dtype=np.int64)
        hist[1], hist[3] = 4, 2             # 10 frames lost in 6 bursts
        lossr, burstr = burst_ratio(hist, 100)
        self.assertAlmostEqual(lossr, 0.10)
        self.assertAlmostEqual(burstr, (10 / 6) * (1 - 0.10))
        hist = np.zeros(129, dtype=np.int64)
        hist[1] = 6                          # random single losses: ratio at least 1
        self.assertEqual(burst_ratio(hist, 1000)[1], 1.0)

    def test_scores(self) -> None:
        clean = np.zeros(129, dtype=np.int64)
        self.assertEqual(mos_score(clean, 1000, 0, True), 4.5)
        self.assertEqual(mos_score(clean, 1000, 18, True), round(best_mos(18), 2))
        self.assertLess(best_mos(18), 4.0)  # G.729's own impairment (Ie 11)
        heavy = np.zeros(129, dtype=np.int64)
        heavy[10] = 60                       # 600 of 1000 lost
        self.assertEqual(mos_score(heavy, 1000, 0, True), 1.0)
        some = np.zeros(129, dtype=np.int64)
        some[1] = 30                         # 3 % random loss
        g711 = mos_score(some, 1000, 8, True)
        g729 = mos_score(some, 1000, 18, True)
        self.assertTrue(1.0 < g729 < g711 < 4.5, (g711, g729))
        # an unanswered call with few packets scores as clean, as VoIPmonitor does
        self.assertEqual(mos_score(heavy, 50, 0, False), 4.5)


class FixedBufferTests(SynchronousTestCase):
    def test_clean_stream_loses_nothing(self) -> None:
        jb = FixedJitterBuffer(50.0, 100.0)
        jb.feed(*frames(500))
        self.assertEqual(lost(jb), 0)
        self.assertEqual(jb.played, 500)

    def test_network_loss_counts_as_bursts(self) -> None:
        arrival, media, seq = frames(300)
        keep = np.ones(300, dtype=bool)
        keep[[10, 50, 51, 52]] = False
        jb = FixedJitterBuffer(50.0, 100.0)
        jb.feed(arrival[keep], media[keep], seq[keep])
        hist = jb.loss_histogram()
        self.assertEqual((hist[1], hist[3]), (1, 1))

    def test_late_reordered_frame_is_lost(self) -> None:
        arrival, media, seq = frames(100)
        order = np.arange(100)
        arrival[40] += 70.0           # frame 40 arrives 70 ms late, after its slot
        order = np.argsort(arrival, kind="stable")
        jb = FixedJitterBuffer(50.0, 100.0)
        jb.feed(arrival[order], media[order], seq[order])
        self.assertEqual(lost(jb), 1)
        big = FixedJitterBuffer(200.0, 200.0)
        big.feed(arrival[order], media[order], seq[order])
        self.assertEqual(lost(big), 0)  # 200 ms of buffer absorbs it

    def test_late_run_into_empty_buffer_moves_the_anchor(self) -> None:
        # Asterisk's fixed buffer: a late frame finding the buffer empty re-anchors it,
        # after which the same lateness no longer loses frames
        arrival, media, seq = frames(400)
        arrival[100:104] += 80.0       # four late in a row: the buffer runs dry
        arrival[300] += 80.0           # later, one late frame alone
        order = np.argsort(arrival, kind="stable")
        jb = FixedJitterBuffer(50.0, 100.0)
        jb.feed(arrival[order], media[order], seq[order])
        self.assertEqual(jb.anchor, 110.0)
        self.assertEqual(jb.played, 400)

    def test_delay_step_resynchronises(self) -> None:
        arrival, media, seq = frames(200)
        arrival[100:] += 80.0         # every packet from 100 on is 80 ms later
        jb = FixedJitterBuffer(50.0, 100.0)
        jb.feed(arrival, media, seq)
        self.assertEqual(lost(jb), 2)  # the slots that fell due before the buffer re-anchored
        self.assertEqual(jb.played, 200)

    def test_timestamp_jump_does_not_lose(self) -> None:
        arrival, media, seq = frames(200)
        media[100:] += 5000.0         # the sender's clock jumps forward 5 s
        jb = FixedJitterBuffer(50.0, 100.0)
        jb.feed(arrival, media, seq)
        self.assertEqual(lost(jb), 0)

    def test_chunks_equal_one_pass(self) -> None:
        rng = np.random.default_rng(3)
        arrival, media, seq = frames(2000)
        arrival = arrival + np.abs(rng.normal(0, 25.0, 2000))
        order = np.argsort(arrival, kind="stable")
        arrival, media, seq = arrival[order], media[order], seq[order]
        one, many = FixedJitterBuffer(50.0, 100.0), FixedJitterBuffer(50.0, 100.0)
        one.feed(arrival, media, seq)
        for part in np.array_split(np.arange(2000), 7):
            many.feed(arrival[part], media[part], seq[part])
        self.assertTrue((one.loss_histogram() == many.loss_histogram()).all())
        self.assertGreater(lost(one), 0)


class AdaptiveBufferTests(SynchronousTestCase):
    def test_adapts_to_jitter(self) -> None:
        arrival, media, seq = frames(3000)
        arrival[5::10] += 80.0         # one packet in ten is 80 ms late
        order = np.argsort(arrival, kind="stable")
        adaptive = AdaptiveJitterBuffer(500.0)
        fixed50 = FixedJitterBuffer(50.0, 100.0)
        fixed200 = FixedJitterBuffer(200.0, 200.0)
        for jb in (adaptive, fixed50, fixed200):
            jb.feed(arrival[order], media[order], seq[order])
        self.assertEqual(lost(fixed50), 300)              # the late ones miss 50 ms
        self.assertEqual(lost(fixed200), 0)
        self.assertLess(lost(adaptive), 20)               # only while it learns

    def test_clean_stream(self) -> None:
        jb = AdaptiveJitterBuffer(500.0)
        arrival, media, seq = frames(1000)
        for part in np.array_split(np.arange(1000), 3):
            jb.feed(arrival[part], media[part], seq[part])
        self.assertEqual(lost(jb), 0)


class ShortcutTests(SynchronousTestCase):
    """The shortcuts for the usual chunk (every frame played, sequence numbers stepping by
    one; an open window without a gap) leave a buffer exactly as the array path does."""

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 150), st.booleans()),
                    min_size=1, max_size=8))
    def test_count_shortcut_equals_array_path(self, chunks: list[tuple[int, int, bool]]) -> None:
        fast, slow = FixedJitterBuffer(50.0, 100.0), FixedJitterBuffer(50.0, 100.0)
        seen: list[tuple[np.ndarray, np.ndarray]] = []
        fast.observer = lambda ends, lengths: seen.append((ends, lengths))
        slow.observer = lambda ends, lengths: seen.append((ends, lengths))
        nxt = 1000
        for gap, n, hole in chunks:
            seq = np.arange(nxt + gap, nxt + gap + n, dtype=np.int64)
            if hole and n > 2:
                seq = np.delete(seq, n // 2)   # not contiguous: the array path
            nxt = int(seq[-1]) + 1
            contiguous = bool((np.diff(seq) == 1).all())
            fast._count(seq, None, {}, None, contiguous)
            slow._count(seq, np.ones(len(seq), dtype=bool), {}, None)
            self.assertEqual((fast.done, fast.run, fast.played), (slow.done, slow.run, slow.played))
            np.testing.assert_array_equal(fast.open, slow.open)
            np.testing.assert_array_equal(fast.hist, slow.hist)
        if len(slow.open):   # loss_histogram without its shortcut
            slow._settle(int(slow.open[-1]))
        if slow.run:
            slow._burst(slow.run, slow.done)
            slow.run = 0
        np.testing.assert_array_equal(fast.loss_histogram(), slow.hist)
        self.assertEqual((fast.done, len(fast.open)), (slow.done, len(slow.open)))

    def test_chunk_median_is_numpy_median(self) -> None:
        rng = np.random.default_rng(7)
        for n in range(2, 40):
            media = np.cumsum(rng.choice([0.0, 10.0, 20.0, 20.0, 30.0, -5.0], size=n))
            steps = np.diff(media)
            steps = steps[steps > 0]
            chunk = Chunk(media + 1.0, media, np.arange(n))
            self.assertEqual(chunk.ptime, float(np.median(steps)) if len(steps) else None)
