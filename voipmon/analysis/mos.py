"""MOS from simulated jitter buffers and the simplified E-model (VoIPmonitor's method).

A phone does not hear network jitter directly: its jitter buffer turns late packets into
lost ones. Like VoIPmonitor, we replay each stream's arrival times through three
simulated receivers and score what each would have played:

- ``f1``: fixed 50 ms buffer, resynchronising at 100 ms;
- ``f2``: fixed 200 ms buffer, resynchronising at 200 ms;
- ``adapt``: adaptive buffer of up to 500 ms.

The fixed buffer follows Asterisk's fixedjitterbuf (which VoIPmonitor embeds): frames play
at their RTP time plus a fixed delay, anchored on the first frame. A frame arriving after
its playout time is lost, the same as one never received. When a late frame finds the
buffer empty (a delay step larger than the buffer) the buffer re-anchors on it, and the
slots that fell due meanwhile count as lost. A frame more than size + resync ahead of its
slot re-anchors at once after a timestamp jump, otherwise it and its followers are
dropped until the buffer has drained (Asterisk's behaviour).

The adaptive buffer follows Asterisk's jitterbuf in spirit: its playout delay is the 97th
percentile of the last 500 frame delays plus 40 ms, at most 500 ms above the smallest
delay, re-estimated every 100 frames (two seconds of 20 ms audio).

Both are simulated with numpy over whole arrays (loops run per resynchronisation, not per
packet), in chunks with carried state, so long calls cost bounded memory.

Each buffer yields a histogram of loss bursts (consecutive frames not played). From it,
VoIPmonitor's ``burstr_calculate`` gives the loss ratio Ppl and burst ratio BurstR, and the
simplified E-model (ITU-T G.107 with the packet-loss term of G.113) gives R and MOS:

    R = 93.2062 - Ie - (95 - Ie) * Ppl% / (Ppl%/BurstR + Bpl)
    MOS = 2.06405 + 0.031738 R - 0.000356641 R^2 + 2.93143e-6 R^3, clamped to 1..4.5

With G.711 (Ie 0, Bpl 17.2647) this is exactly VoIPmonitor's ``calculate_mos_g711``, and
like VoIPmonitor fewer than 5 lost frames score 4.5 and a loss above 50 % scores 1.
Where we do better: other codecs use their own equipment impairment Ie and loss
robustness Bpl from ITU-T G.113 Appendix I (G.729: 11/19.0, G.723.1: 15/16.1, GSM-EFR:
5/10.0), and their loss-free score is the E-model value for that Ie (a clean G.729 call
scores 3.89, not 4.5). Codecs without published values use G.711's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

#: Longest loss burst tracked; longer ones count here (VoIPmonitor keeps 128 too).
MAX_BURST = 128
#: (Ie, Bpl) per static payload type.
CODEC_IMPAIRMENT: dict[int, tuple[float, float]] = {
    0: (0.0, 17.2647),    # PCMU (VoIPmonitor's G.711 figure)
    8: (0.0, 17.2647),    # PCMA
    18: (11.0, 19.0),     # G.729(A)
    4: (15.0, 16.1),      # G.723.1
    3: (5.0, 10.0),       # GSM (EFR values; FR has none published)
}
G711 = (0.0, 17.2647)


def r_factor(ppl: float, burstr: float, ie: float = 0.0, bpl: float = 17.2647) -> float:
    """E-model R for loss ratio ``ppl`` (0..1) and burst ratio ``burstr``."""
    if ppl <= 0 or burstr <= 0:
        return 93.2062077233 - ie
    p = ppl * 100.0
    return 93.2062077233 - ie - (95.0 - ie) * (p / (p / burstr + bpl))


def r_to_mos(r: float) -> float:
    """VoIPmonitor's R-to-MOS curve, clamped to 1..4.5."""
    score = 2.06405 + 0.031738 * r - 0.000356641 * r * r + 2.93143e-6 * r * r * r
    return min(4.5, max(1.0, score))


def best_mos(pt: int) -> float:
    """The score of a loss-free stream of payload type ``pt``."""
    ie, _ = CODEC_IMPAIRMENT.get(pt, G711)
    return 4.5 if ie == 0 else r_to_mos(93.2062077233 - ie)


def loss_counts(hist: np.ndarray) -> tuple[int, int]:
    """(lost frames, loss bursts) of a burst histogram (``hist[i]``: bursts of ``i``)."""
    counts = np.asarray(hist, dtype=np.int64)
    if not counts[1:].any():
        return 0, 0
    lost = int((np.arange(len(counts)) * counts).sum())
    return lost, int(counts[1:].sum())


def burst_ratio(hist: np.ndarray, received: int) -> tuple[float, float]:
    """VoIPmonitor's ``burstr_calculate``: (loss ratio, burst ratio) from a burst histogram.

    ``hist[i]`` counts bursts of ``i`` consecutive lost frames. Fewer than 5 lost frames
    give (0, 0), which scores as loss-free.
    """
    return ratios(*loss_counts(hist), received)


def ratios(lost: int, bursts: int, received: int) -> tuple[float, float]:
    """``burst_ratio`` from the histogram's two sums: lost frames and bursts."""
    if lost < 5 or received <= 0:
        return 0.0, 0.0
    lossr = lost / received
    burstr = 0.0
    if bursts > 0:
        denominator = 1.0 - lossr
        burstr = (lost / bursts) * denominator
        burstr = -burstr if burstr < 0 else max(burstr, 1.0)
    return lossr, burstr


def mos_score(hist: np.ndarray, received: int, pt: int, connected: bool) -> float:
    """MOS of one stream from its jitter-buffer loss histogram (rounded to 0.01)."""
    return mos_from_counts(*loss_counts(hist), received, pt, connected)


def mos_from_counts(lost: int, bursts: int, received: int, pt: int, connected: bool) -> float:
    """``mos_score`` from the histogram's sums (what a quality interval keeps)."""
    if not connected and received < 100:
        return round(best_mos(pt), 2)
    lossr, burstr = ratios(lost, bursts, received)
    if lossr == 0 or burstr == 0:
        return round(best_mos(pt), 2)
    if lossr > 0.5:
        return 1.0
    ie, bpl = CODEC_IMPAIRMENT.get(pt, G711)
    return round(r_to_mos(r_factor(lossr, burstr, ie, bpl)), 2)


def _first_event(e: np.ndarray, d: np.ndarray, start: int, hi: float, lo: float) -> int:
    """First index >= start with e > hi or d < lo, or -1; windows grow geometrically."""
    n = len(e)
    width = 64
    while start < n:
        stop = min(n, start + width)
        hit = ((e[start:stop] > hi) | (d[start:stop] < lo)).nonzero()[0]
        if len(hit):
            return start + int(hit[0])
        start = stop
        width = min(width * 4, 1 << 16)
    return -1


class Chunk:
    """What every jitter buffer derives from one chunk of frames (they all see the same
    frames), computed once: delays, their range, the packetisation time, whether the
    sequence numbers step by one."""

    __slots__ = ("contiguous", "d", "dmax", "dmin", "mmax", "ptime")

    def __init__(self, arrival: np.ndarray, media: np.ndarray, seq: np.ndarray) -> None:
        n = len(arrival)
        self.d = d = arrival - media
        self.ptime: float | None = None
        self.contiguous = False
        if n == 0:
            return
        steps = media[1:] - media[:-1]
        steps = np.sort(steps[steps > 0])
        m = len(steps)
        if m:  # np.median's value, without its overhead
            self.ptime = float(steps[m // 2]) if m % 2 else \
                (float(steps[m // 2 - 1]) + float(steps[m // 2])) / 2
        self.dmin, self.dmax = float(d.min()), float(d.max())
        self.mmax = float(media.max())
        self.contiguous = int(seq[-1]) - int(seq[0]) == n - 1 and \
            bool((seq[1:] > seq[:-1]).all())


class _Buffer:
    """Loss bookkeeping shared by both buffer kinds.

    Losses are counted in sequence space: a slot is lost when its frame was never played
    (not received, or received too late). A frame may still arrive out of order, so the
    last ``REORDER`` sequence numbers stay open until newer frames have come, or the end.
    Resynchronisations add their concealed slots as bursts of their own.
    """

    REORDER = 64

    def __init__(self) -> None:
        #: Optional ``observer(ends, lengths)``: told of every burst as it is counted, with
        #: the extended sequence number of its last lost slot (quality over time).
        self.observer: Callable[[np.ndarray, np.ndarray], None] | None = None
        self.hist = np.zeros(MAX_BURST + 1, dtype=np.int64)
        self.played = 0
        self.done: int | None = None       # every slot up to here is accounted for
        self.run = 0                       # lost slots running up to ``done``
        self.open = np.zeros(0, dtype=np.int64)  # played seqs above ``done``

    def loss_histogram(self) -> np.ndarray:
        """The burst histogram, counting every slot up to the newest played frame."""
        if len(self.open):
            last = int(self.open[-1])
            if not self.run and last - self.done == len(self.open):  # type: ignore[operator]
                self.done, self.open = last, self.open[:0]  # no gap: nothing to count
            else:
                self._settle(last)
        if self.run:
            self._burst(self.run, self.done)
            self.run = 0
        return self.hist

    def _burst(self, length: int, end: int | None) -> None:
        """One burst of ``length`` slots, the last of them sequence number ``end``."""
        self.hist[min(length, MAX_BURST)] += 1
        if self.observer is not None:
            self.observer(np.array([end or 0]), np.array([length]))

    def _count(self, seq: np.ndarray, played: np.ndarray | None, extra: dict[int, int],
               other: np.ndarray | None, contiguous: bool = False) -> None:
        """Account for a chunk's frames: ``played`` says which (None: all of them);
        ``contiguous`` that ``seq`` steps by one (then, with every frame played, nothing
        else to do and no gap before them, the slots are settled without array work)."""
        if played is None:
            if contiguous and not extra and (other is None or not len(other)) and \
                    not self.run and len(seq):
                first, last = int(seq[0]), int(seq[-1])
                done = self.done
                if done is None:
                    done = first - 1
                top = int(self.open[-1]) if len(self.open) else done
                if first == top + 1 and top - done == len(self.open):
                    # done+1 .. last all played: settle up to last - REORDER, no burst
                    self.played += len(seq)
                    done = max(done, last - self.REORDER)
                    self.done = done
                    self.open = np.arange(done + 1, last + 1, dtype=np.int64)
                    return
            played = np.ones(len(seq), dtype=bool)
        ps = seq[played]
        self.played += len(ps)
        if other is not None and len(other):
            ps = np.concatenate((ps, other))
        if len(ps) == 0:
            return
        for k, length in extra.items():
            self._burst(length, int(seq[k]) - 1)
        if self.done is None:
            self.done = int(ps.min()) - 1
        ps = ps[ps > self.done]
        if len(ps) and (not len(self.open) or ps[0] > self.open[-1]) and \
                bool((ps[1:] > ps[:-1]).all()):
            self.open = np.concatenate((self.open, ps))   # in order: already sorted
        else:
            self.open = np.union1d(self.open, ps)
        if len(self.open):
            self._settle(int(self.open[-1]) - self.REORDER)

    def _settle(self, upto: int) -> None:
        """Account for every slot from ``done`` + 1 to ``upto``."""
        assert self.done is not None
        if upto <= self.done:
            return
        cut = int(self.open.searchsorted(upto, side="right"))
        played = self.open[:cut]
        self.open = self.open[cut:]
        # lost slots between consecutive played ones, then the tail up to ``upto``
        edges = np.concatenate(([self.done], played))
        gaps = edges[1:] - edges[:-1] - 1
        tail = upto - (int(played[-1]) if len(played) else self.done)
        if len(gaps) == 0:
            self.run += tail
            self.done = upto
            return
        first = self.run + int(gaps[0])
        more = gaps[1:] > 0
        rest = gaps[1:][more]
        if first:
            self._burst(first, int(edges[1]) - 1)
        if len(rest):
            self.hist += np.bincount(np.minimum(rest, MAX_BURST),
                                     minlength=MAX_BURST + 1)[:MAX_BURST + 1]
            if self.observer is not None:
                self.observer(edges[2:][more] - 1, rest)
        self.run = tail
        self.done = upto


class FixedJitterBuffer(_Buffer):
    """A fixed playout delay of ``size`` ms that resynchronises beyond ``resync`` ms."""

    def __init__(self, size: float, resync: float):
        super().__init__()
        self.size = size
        self.resync = resync
        self.anchor: float | None = None
        self.tmax = -math.inf
        self.ptime = 20.0

    def feed(self, arrival: np.ndarray, media: np.ndarray, seq: np.ndarray,
             other: np.ndarray | None = None, chunk: Chunk | None = None) -> None:
        """Next frames, in arrival order: arrival and media (RTP) time in ms, sequence.

        ``other`` are the sequence numbers of packets that are not audio frames (comfort
        noise, DTMF events, unknown payloads): they take sequence numbers without being
        slots of the buffer, and must not count as lost. ``chunk``: the same frames'
        ``Chunk``, when the caller feeds several buffers."""
        n = len(arrival)
        if n == 0:
            self._count(seq, np.zeros(0, dtype=bool), {}, other)
            return
        if chunk is None:
            chunk = Chunk(arrival, media, seq)
        if chunk.ptime is not None:
            self.ptime = chunk.ptime
        d = chunk.d
        c0 = self.anchor if self.anchor is not None else float(d[0])
        if chunk.dmax <= c0 + self.size and chunk.dmin >= c0 - self.resync:
            # the usual case: every frame in time, none early enough to resynchronise
            self.anchor = c0
            self.tmax = max(self.tmax, chunk.mmax)
            self._count(seq, None, {}, other, chunk.contiguous)
            return
        p = max(self.ptime, 1.0)
        tmax_prev = np.maximum.accumulate(np.concatenate(([self.tmax], media[:-1])))
        empty_when = np.minimum(d, arrival - tmax_prev)
        played = np.zeros(n, dtype=bool)
        extra: dict[int, int] = {}
        start = 0
        if self.anchor is None:
            self.anchor = float(d[0])
            played[0] = True
            start = 1
        c, size, resync = self.anchor, self.size, self.resync
        while start < n:
            k = _first_event(empty_when, d, start, c + size, c - resync)
            stop = n if k < 0 else k
            played[start:stop] = d[start:stop] <= c + size
            if k < 0:
                break
            if empty_when[k] > c + size:
                # late into an empty buffer: the slots due meanwhile were concealed
                extra[k] = max(1, math.ceil((d[k] - c - size) / p))
                c = float(d[k])
                played[k] = True
                start = k + 1
            elif abs(media[k] - tmax_prev[k] - p) >= resync:
                c = float(d[k])  # timestamp jump: re-anchor at once
                played[k] = True
                start = k + 1
            else:
                # far too early without a jump: drop until the buffer has drained
                drained = tmax_prev[k] + c + size
                j = k + int(np.searchsorted(arrival[k:], drained, side="left"))
                if j >= n:
                    break
                c = float(d[j])
                played[j] = True
                start = j + 1
        self.anchor = c
        self.tmax = max(self.tmax, chunk.mmax)
        self._count(seq, played, extra, other)


class AdaptiveJitterBuffer(_Buffer):
    """Playout delay = P97 of recent delays + 40 ms, capped ``maximum`` ms above the minimum."""

    HISTORY = 500
    BLOCK = 100
    EXTRA = 40.0
    DROP = 0.03

    def __init__(self, maximum: float):
        super().__init__()
        self.maximum = maximum
        self.history = np.zeros(0)
        self.phase = 0
        self.offset: float | None = None

    def _target(self, window: np.ndarray) -> float:
        k = len(window) - 1 - int(len(window) * self.DROP)
        p97 = float(np.partition(window, k)[k])
        return min(p97 + self.EXTRA, float(window.min()) + self.maximum)

    def feed(self, arrival: np.ndarray, media: np.ndarray, seq: np.ndarray,
             other: np.ndarray | None = None, chunk: Chunk | None = None) -> None:
        """As ``FixedJitterBuffer.feed``."""
        n = len(arrival)
        if n == 0:
            self._count(seq, np.zeros(0, dtype=bool), {}, other)
            return
        d = chunk.d if chunk is not None else arrival - media
        h = len(self.history)
        all_d = np.concatenate([self.history, d])
        first = (-self.phase) % self.BLOCK if self.offset is not None else 0
        starts = np.arange(first, n, self.BLOCK)
        targets = np.empty(len(starts))
        full = (h + starts) >= self.HISTORY
        for i in np.flatnonzero(~full):
            s = int(starts[i])
            window = all_d[:h + s] if h + s else d[:1]
            targets[i] = self._target(window)
        if full.any():
            views = np.lib.stride_tricks.sliding_window_view(all_d, self.HISTORY)
            windows = views[h + starts[full] - self.HISTORY]
            k = self.HISTORY - 1 - int(self.HISTORY * self.DROP)
            p97 = np.partition(windows, k, axis=1)[:, k]
            targets[full] = np.minimum(p97 + self.EXTRA, windows.min(axis=1) + self.maximum)
        offsets = np.empty(n)
        if first > 0:
            offsets[:first] = self.offset
        for i, s in enumerate(starts):
            offsets[s:s + self.BLOCK] = targets[i]
        played = d <= offsets
        if self.done is None:
            played[0] = True
        self.history = all_d[-self.HISTORY:]
        self.phase = (self.phase + n) % self.BLOCK
        self.offset = float(offsets[-1])
        if played.all():
            self._count(seq, None, {}, other, chunk is not None and chunk.contiguous)
        else:
            self._count(seq, played, {}, other)
