"""RTP streams: compact per-packet storage on the hot path, vectorised analysis off it.

The hot path appends the 12-byte RTP header and the capture time of every packet of a
flow (one 4-tuple) to two compact buffers: no objects, no arithmetic per packet. Every few
thousand packets, and when the stream or call closes, ``RtpFlow.drain`` parses them with
numpy, splits them by SSRC and feeds each ``StreamAnalyzer``, which keeps only counters
and a little carried state, so memory per stream stays bounded however long the call.

Statistics follow Wireshark's ``rtppacket_analyse`` (ui/tap-rtp-analysis.c) so our figures
can be checked against ``tshark -z rtp,streams``:

- jitter: D = |arrival - (arrival of the last in-order packet + RTP timestamp delta /
  clock rate)| and J += (D - J)/16 (RFC 3550 6.4.1), on the payload type's clock rate;
  telephone-event and payload types without a known rate do not update it;
- max jitter over "regular" packets (not the first, no marker, not comfort noise or the
  packet after it, timestamp not going backwards); mean jitter is Wireshark's running mean
  over those packets (it divides by all packets seen, a quirk kept for comparability);
- lost = expected - distinct sequence numbers received (RFC 3550 A.3 with sequence
  wrap). Duplicates are counted apart, so DTMF end packets repeated with one sequence
  number do not make the loss negative as they do in Wireshark.

VoIPmonitor's extras: the loss-burst histogram sl1..sl10 (a gap of n packets counts in
sl[n], n >= 10 in sl10), the delay histogram d50..d300 (|D| of voice packets in ms) and
the jitter-buffer MOS (see ``mos``).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from voipmon.analysis import mos
from voipmon.analysis.sdp import STATIC_PT

#: One stored packet: the first 12 bytes of the RTP header, as received.
RECORD = np.dtype([("b0", "u1"), ("b1", "u1"), ("seq", ">u2"), ("ts", ">u4"),
                   ("ssrc", ">u4")])
#: Drain a flow's buffers into its analyzers once they hold this many packets.
CHUNK = 4096
#: Recent sequence numbers kept per stream to recognise duplicates across chunks.
DUP_WINDOW = 2048
#: Payload types of comfort noise (RFC 3389, and the old 19).
CN_TYPES = (13, 19)
#: Delay histogram edges, ms (VoIPmonitor d50, d70, d90, d120, d150, d200, d300).
DELAY_EDGES = (50.0, 70.0, 90.0, 120.0, 150.0, 200.0, 300.0)
_DELAY_EDGES = np.array(DELAY_EDGES)

# Wireshark's clock rates for static payload types (tap-rtp-analysis.c clock_map).
_STATIC_RATES = {
    0: 8000, 1: 8000, 2: 8000, 3: 8000, 4: 8000, 5: 8000, 6: 16000, 7: 8000, 8: 8000,
    9: 8000, 10: 44100, 11: 44100, 12: 8000, 13: 8000, 14: 90000, 15: 8000, 16: 11025,
    17: 22050, 18: 8000, 19: 8000, 25: 90000, 26: 90000, 28: 90000, 31: 90000,
    32: 90000, 33: 90000, 34: 90000,
}
# Wireshark's clock rates of dynamic payloads by encoding name (mimetype_and_clock_map).
_NAME_RATES = {
    "amr": 8000, "amr-wb": 16000, "bmpeg": 90000, "bt656": 90000, "dv": 90000,
    "evrc": 8000, "evrc0": 8000, "evrc1": 8000, "evrcb": 8000, "evrcb0": 8000,
    "evrcb1": 8000, "evrcwb": 16000, "evrcwb0": 16000, "evrcwb1": 16000, "evs": 16000,
    "g7221": 16000, "g726-16": 8000, "g726-24": 8000, "g726-32": 8000, "g726-40": 8000,
    "g729d": 8000, "g729e": 8000, "gsm-efr": 8000, "h263-1998": 90000, "h263-2000": 90000,
    "h264": 90000, "mp1s": 90000, "mp2p": 90000, "mp4v-es": 90000, "mpa-robust": 90000,
    "opus": 48000, "pointer": 90000, "raw": 90000, "red": 1000, "smv": 8000, "smv0": 8000,
    "t140": 1000, "telephone-event": 8000,
}


_STATIC_RATE_TABLE = np.zeros(128, dtype=np.float64)
for _pt, _rate in _STATIC_RATES.items():
    _STATIC_RATE_TABLE[_pt] = _rate


def is_event(name: str) -> bool:
    return name.lower().startswith("telephone-event")


class PayloadMap:
    """What one SDP says about payload types: clock rates (as Wireshark uses them) and
    which types are telephone-events.

    Static types use the RFC 3551 rate whatever the SDP says. Dynamic ones use the
    ``a=rtpmap`` rate, else the rate registered for the encoding name; telephone-event and
    unknown dynamic types get rate 0 (not analysed). Types 35..95 with an ``a=rtpmap``
    (unassigned, seen from some gateways) use it too, where Wireshark leaves them out.
    """

    __slots__ = ("events", "rates", "rtpmap")

    def __init__(self, rtpmap: dict[int, tuple[str, int]] | None = None):
        self.rtpmap = dict(rtpmap or {})
        self.rates = _STATIC_RATE_TABLE.copy()
        self.events = np.zeros(128, dtype=bool)
        for pt, (name, rate) in self.rtpmap.items():
            if not 0 <= pt < 128 or (pt < 96 and pt in _STATIC_RATES):
                continue
            if is_event(name):
                self.events[pt] = True
                self.rates[pt] = 0.0
                continue
            self.rates[pt] = rate or _name_rate(name)

    def name(self, pt: int) -> str:
        return codec_name(pt, self.rtpmap)


def _name_rate(name: str) -> int:
    lowered = name.lower()
    # Wireshark matches the longest registered name that prefixes the encoding name
    for known in sorted(_NAME_RATES, key=len, reverse=True):
        if lowered.startswith(known):
            return _NAME_RATES[known]
    return 0


def codec_name(pt: int, rtpmap: dict[int, tuple[str, int]]) -> str:
    """``NAME/rate`` of a payload type, from the SDP or the static table; ``PT<n>`` if unknown."""
    known = rtpmap.get(pt) if pt >= 35 or pt not in STATIC_PT else None
    if known is None:
        known = STATIC_PT.get(pt)
    if known is None:
        return f"PT{pt}"
    name, rate = known
    return f"{name}/{rate}" if rate else name


@dataclass
class StreamResult:
    """Final figures of one stream (what goes into ``RtpStream``)."""

    received: int
    lost: int
    duplicates: int
    reordered: int
    avgjitter: float
    maxjitter: float
    payload: int
    payloads: tuple[int, ...]
    sl: tuple[int, ...]
    delay: tuple[int, ...]
    firsttime: float
    lasttime: float
    mos_f1: float
    mos_f2: float
    mos_adapt: float


def _unwrap(values: np.ndarray, last_raw: int, last_ext: int, bits: int) -> np.ndarray:
    """Extend ``bits``-bit counters: each step is taken as the nearest signed difference."""
    v = values.astype(np.int64)
    prev = np.empty_like(v)
    prev[0] = last_raw
    prev[1:] = v[:-1]
    half = 1 << (bits - 1)
    step = (v - prev + half) % (1 << bits) - half
    return last_ext + step.cumsum()


_A = 15.0 / 16.0
_BLOCK = 256
_APOW = _A ** np.arange(1, _BLOCK + 1)
_AINV = _A ** -np.arange(1, _BLOCK + 1)


def _is_cn(pt: np.ndarray) -> np.ndarray:
    return (pt == CN_TYPES[0]) | (pt == CN_TYPES[1])


def jitter_filter(d: np.ndarray, j0: float) -> np.ndarray:
    """J_k = (15 J_{k-1} + D_k) / 16 for every element of ``d``, starting from ``j0``."""
    n = len(d)
    if n == 0:
        return np.zeros(0)
    pad = (-n) % _BLOCK
    x = np.concatenate([d, np.zeros(pad)]).reshape(-1, _BLOCK) / 16.0
    local = _APOW * (x * _AINV).cumsum(axis=1)
    carry = np.empty(local.shape[0])
    a_block = _A ** _BLOCK
    j = j0
    for b in range(local.shape[0]):
        carry[b] = j
        j = a_block * j + local[b, -1]
    out = local + _APOW * carry[:, None]
    return out.reshape(-1)[:n]


class StreamAnalyzer:
    """Counters and carried state of one RTP stream (one SSRC on one 4-tuple).

    ``feed`` takes the stream's packets a chunk at a time, in arrival order; everything
    that spans chunks (references for jitter, the running mean, recent sequence numbers,
    the jitter-buffer simulations) is carried in a few scalars.
    """

    __slots__ = ("delay", "dups", "events", "ext_max", "ext_min", "first_t", "first_ts",
                 "j", "jb", "last_nominal", "last_t", "max_j", "mean_j", "n", "observer",
                 "prev_pt", "pt_counts", "rates", "recent", "reordered", "seq_ext", "seq_raw",
                 "sl", "t_ref", "ts_ext", "ts_raw", "voice_ext", "voice_t")

    def __init__(self, pmap: PayloadMap):
        #: Optional ``IStreamObserver`` (voipmon.analysis.observe): sees every chunk with
        #: the per-packet figures computed here (quality over time). None costs nothing.
        self.observer: Any = None
        self.rates = pmap.rates
        self.events = pmap.events
        self.n = 0
        self.first_t = 0.0
        self.last_t = 0.0
        self.pt_counts = np.zeros(128, dtype=np.int64)
        self.sl = np.zeros(11, dtype=np.int64)
        self.delay = np.zeros(len(DELAY_EDGES), dtype=np.int64)
        self.dups = 0
        self.reordered = 0
        self.j = 0.0
        self.max_j = 0.0
        self.mean_j = 0.0
        self.jb = (mos.FixedJitterBuffer(50.0, 100.0), mos.FixedJitterBuffer(200.0, 200.0),
                   mos.AdaptiveJitterBuffer(500.0))

    def set_payload_map(self, pmap: PayloadMap) -> None:
        """A re-INVITE changed the payload map: packets from now on use the new one."""
        self.rates = pmap.rates
        self.events = pmap.events

    def feed(self, t: np.ndarray, seq: np.ndarray, ts: np.ndarray, pt: np.ndarray,
             marker: np.ndarray) -> None:
        """Analyse the next packets of this stream (arrays in arrival order, t in s)."""
        if len(t) == 0:
            return
        first = self.n == 0
        if first:
            self.first_t = float(t[0])
            self.first_ts = int(ts[0])
            self.seq_raw = self.seq_ext = int(seq[0])
            self.ext_max = int(seq[0]) - 1
            self.ext_min = int(seq[0])
            self.recent = np.zeros(0, dtype=np.int64)
            self.ts_raw = self.ts_ext = int(ts[0])
            self.t_ref = 0.0
            self.last_nominal = 0.0
            self.prev_pt = int(pt[0])
            self.voice_ext: int | None = None
            self.voice_t = 0.0
        ms = (t - self.first_t) * 1000.0
        self.pt_counts += np.bincount(pt, minlength=128)[:128]
        ext_seq, fresh = self._sequence(seq, first)
        jit, rated, counted = self._jitter(ms, ts, pt, marker, first)
        ext_ts = _unwrap(ts, self.ts_raw, self.ts_ext, 32)
        self.ts_raw = int(ts[-1])
        self.ts_ext = int(ext_ts[-1])
        if self.observer is not None:
            self.observer.packets(t, ext_seq, fresh, ext_ts, pt, marker, jit, rated, counted)
        self._feed_jitter_buffers(ms, ext_ts, ext_seq, pt, fresh)
        self.n += len(t)
        self.last_t = float(t[-1])

    def _sequence(self, seq: np.ndarray, first: bool) -> tuple[np.ndarray, np.ndarray]:
        """Duplicates, reordering and loss bursts; returns extended seqs and "not a dup"."""
        ext = _unwrap(seq, self.seq_raw, self.seq_ext, 16)
        self.seq_raw = int(seq[-1])
        self.seq_ext = int(ext[-1])
        steps = ext[1:] - ext[:-1]
        if ext[0] > self.ext_max and (steps > 0).all():
            # the usual case: in order, no duplicates; gaps are the losses
            gaps = steps - 1
            if not first and ext[0] > self.ext_max + 1:
                gaps = np.concatenate(([ext[0] - self.ext_max - 1], gaps))
            gaps = gaps[gaps > 0]
            if len(gaps):
                self.sl += np.bincount(np.minimum(gaps, 10), minlength=11)[:11]
            self.ext_max = int(ext[-1])
            self.ext_min = min(self.ext_min, int(ext[0]))
            floor = self.ext_max - DUP_WINDOW
            self.recent = np.concatenate((self.recent[self.recent > floor], ext[ext > floor]))
            return ext, np.ones(len(ext), dtype=bool)
        _, first_idx = np.unique(ext, return_index=True)
        dup = np.ones(len(ext), dtype=bool)
        dup[first_idx] = False
        if len(self.recent):
            dup |= np.isin(ext, self.recent)
        prevmax = np.maximum.accumulate(np.concatenate(([self.ext_max], ext[:-1])))
        fresh = ~dup
        self.dups += int(dup.sum())
        self.reordered += int((fresh & (ext < prevmax)).sum())
        gaps = ext[fresh] - prevmax[fresh] - 1
        gaps = gaps[gaps > 0]
        if len(gaps):
            self.sl += np.bincount(np.minimum(gaps, 10), minlength=11)[:11]
        self.ext_max = max(self.ext_max, int(ext.max()))
        self.ext_min = min(self.ext_min, int(ext.min()))
        merged = np.union1d(self.recent, ext)
        self.recent = merged[merged > self.ext_max - DUP_WINDOW]
        return ext, fresh

    def _jitter(self, ms: np.ndarray, ts: np.ndarray, pt: np.ndarray, marker: np.ndarray,
                first: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Wireshark 4.0's jitter, max and mean jitter, and VoIPmonitor's delay histogram.

        Returns the jitter after each rated packet, which packets are rated, and which of
        the rated ones count for max and mean jitter."""
        m = len(ms)
        rel = (ts.astype(np.int64) - self.first_ts) % (1 << 32)
        in_time = rel < (1 << 31)
        # Wireshark divides by clock_rate / 1000 in integer arithmetic (44100 -> 44)
        per_ms = (self.rates[pt] // 1000.0)
        rated = in_time & (per_ms > 0)
        if first:
            rated[0] = False
        nominal = np.where(rated, rel / np.where(rated, per_ms, 1.0), 0.0)
        index = np.arange(m)
        # every packet in time and rated (the first of a stream is never rated; its
        # nominal time, 0, is then the reference's): the packet before is the reference
        simple = bool(rated[1:].all()) and (first or bool(rated[0]))
        if simple:
            t_ref = np.concatenate(([self.t_ref], ms[:-1]))
            nom_ref = np.concatenate(([self.last_nominal], nominal[:-1]))
        else:
            # arrival of the last in-time packet before each packet (any payload type)
            last_in = np.maximum.accumulate(
                np.concatenate(([-1], np.where(in_time, index, -1)[:-1])))
            t_ref = np.where(last_in >= 0, ms[np.maximum(last_in, 0)], self.t_ref)
            # nominal time of the last rated in-time packet before it
            last_rated = np.maximum.accumulate(
                np.concatenate(([-1], np.where(rated, index, -1)[:-1])))
            nom_ref = np.where(last_rated >= 0, nominal[np.maximum(last_rated, 0)],
                               self.last_nominal)
        d = np.abs(ms - (t_ref + nominal - nom_ref))
        if not simple or first:
            d = d[rated]
        jit = jitter_filter(d, self.j)
        prev_pt = np.concatenate(([self.prev_pt], pt[:-1]))
        regular = ~marker & ~_is_cn(pt) & ~_is_cn(prev_pt)
        if not simple:
            regular &= in_time
        if first:
            regular[0] = False
        counted = regular[rated]
        jc = jit[counted]
        if len(jc):
            self.max_j = max(self.max_j, float(jc.max()))
            # mean = (mean * (N - 1) + J) / N, N = packets of the stream before this one
            k = (index + self.n)[rated][counted].astype(np.float64)
            factor = np.log(np.maximum(k - 1.0, 1.0) / k)
            if k[0] <= 1:
                self.mean_j = 0.0
                factor[0] = 0.0
            s = factor.cumsum()
            self.mean_j = self.mean_j * float(np.exp(s[-1])) + \
                float((jc / k * np.exp(s[-1] - s)).sum())
            buckets = _DELAY_EDGES.searchsorted(d[counted], side="right")
            self.delay += np.bincount(buckets, minlength=len(DELAY_EDGES) + 1)[1:]
        if len(jit):
            self.j = float(jit[-1])
        if simple:
            self.t_ref = float(ms[-1])
            if rated[-1]:
                self.last_nominal = float(nominal[-1])
        else:
            if in_time.any():
                self.t_ref = float(ms[in_time.nonzero()[0][-1]])
            if rated.any():
                self.last_nominal = float(nominal[rated.nonzero()[0][-1]])
        self.prev_pt = int(pt[-1])
        return jit, rated, counted

    def _feed_jitter_buffers(self, ms: np.ndarray, ext_ts: np.ndarray, ext_seq: np.ndarray,
                             pt: np.ndarray, fresh: np.ndarray) -> None:
        rate = self.rates[pt]
        voice = fresh & (rate > 0) & ~_is_cn(pt)
        other = ext_seq[fresh & ~voice]
        if not voice.any():
            for jb in self.jb:
                jb.feed(ms[:0], ms[:0], ext_seq[:0], other)
            return
        v_ts = ext_ts[voice]
        start = v_ts[0] if self.voice_ext is None else self.voice_ext
        since = np.concatenate(([start], v_ts))
        steps = (since[1:] - since[:-1]) / rate[voice] * 1000.0
        media = self.voice_t + steps.cumsum()
        self.voice_ext = int(v_ts[-1])
        self.voice_t = float(media[-1])
        arrival = ms[voice]
        seqs = ext_seq[voice]
        chunk = mos.Chunk(arrival, media, seqs)
        for jb in self.jb:
            jb.feed(arrival, media, seqs, other, chunk)

    def result(self, connected: bool, codec_pt: int | None = None) -> StreamResult:
        """The stream's figures; ``connected`` says the call was answered (MOS rule)."""
        received = self.n
        expected = self.ext_max - self.ext_min + 1 if received else 0
        lost = max(0, expected - (received - self.dups))
        present = tuple(int(p) for p in self.pt_counts.nonzero()[0])
        payload = self.main_payload()
        pt = payload if codec_pt is None else codec_pt
        scores = tuple(mos.mos_score(jb.loss_histogram(), received, pt, connected)
                       for jb in self.jb)
        return StreamResult(
            received=received, lost=lost, duplicates=self.dups, reordered=self.reordered,
            avgjitter=self.mean_j, maxjitter=self.max_j, payload=payload, payloads=present,
            sl=tuple(int(x) for x in self.sl[1:]), delay=tuple(int(x) for x in self.delay),
            firsttime=self.first_t, lasttime=self.last_t,
            mos_f1=scores[0], mos_f2=scores[1], mos_adapt=scores[2])

    def main_payload(self) -> int:
        """The most used payload type, preferring media over comfort noise and events."""
        media = self.pt_counts.copy()
        media[list(CN_TYPES)] = 0
        media[self.events] = 0
        return int(np.argmax(media if media.any() else self.pt_counts))


class RtpFlow:
    """The packets of one UDP 4-tuple that carries RTP, and the streams found in it.

    ``rec`` and ``times`` are appended to directly by the engine's hot path, and so are
    the frame buffers of ``pcap1`` (the call's RTP pcap when its link type is Ethernet).
    ``owner`` is the call (None for an orphan flow), ``direction`` "a" (caller to
    callee), "b" or "", ``pmap`` the payload map of the SDP that announced the endpoint.
    ``counts`` (the engine's stats, if given) has ``rtp_packets`` raised by each drain.
    """

    __slots__ = ("counts", "direction", "dport", "dst", "key", "last_seen", "observer", "owner",
                 "pcap", "pcap1", "pmap", "rec", "sport", "src", "streams", "tied", "times")

    def __init__(self, key: bytes, src: bytes, sport: int, dst: bytes, dport: int,
                 owner: object, direction: str, pmap: PayloadMap, tied: bool = True):
        self.key = key
        self.src, self.sport, self.dst, self.dport = src, sport, dst, dport
        self.owner = owner
        self.direction = direction
        self.pmap = pmap
        self.rec = bytearray()
        self.times = array("d")
        self.streams: dict[int, StreamAnalyzer] = {}
        self.tied = tied
        self.pcap = None
        self.pcap1 = None
        self.last_seen = 0.0
        #: Optional ``IFlowObserver`` (voipmon.analysis.observe), told of each new stream.
        self.observer: Any = None
        #: Optional counters with ``rtp_packets`` (the engine's): one addition per drain.
        self.counts: Any = None

    def last_time(self) -> float:
        return self.times[-1] if self.times else self.last_seen

    def pending(self) -> int:
        return len(self.times)

    def set_payload_map(self, pmap: PayloadMap) -> None:
        """New SDP for this endpoint: analyse what came before with the old map."""
        self.drain()
        if self.observer is not None:
            self.observer.payload_map_changed(self, pmap)
        self.pmap = pmap
        for stream in self.streams.values():
            stream.set_payload_map(pmap)

    def drain(self, max_streams: int = 64) -> int:
        """Analyse the buffered packets; returns how many were valid RTP."""
        n = min(len(self.times), len(self.rec) // 12)
        if n == 0:
            return 0
        self.last_seen = self.times[-1]
        records = np.frombuffer(self.rec, dtype=RECORD, count=n)  # the buffer is replaced below
        times = np.frombuffer(self.times, dtype=np.float64).copy()
        self.rec = bytearray()
        self.times = array("d")
        b1 = records["b1"]
        pt = (b1 & 0x7F).astype(np.int64)
        valid = ((records["b0"] & 0xC0) == 0x80) & ~((pt >= 72) & (pt <= 76))
        if not valid.all():
            records, times, pt = records[valid], times[valid], pt[valid]
        if len(records) == 0:
            return 0
        if self.counts is not None:
            self.counts.rtp_packets += len(records)
        ssrc = records["ssrc"]
        marker = (records["b1"] & 0x80) != 0
        first = int(ssrc[0])
        if (ssrc == first).all():
            groups = [(first, slice(None))]
        else:
            groups = [(int(s), ssrc == s) for s in np.unique(ssrc)]
        for value, sel in groups:
            stream = self.streams.get(value)
            if stream is None:
                if len(self.streams) >= max_streams:
                    continue
                stream = self.streams[value] = StreamAnalyzer(self.pmap)
                if self.observer is not None:
                    self.observer.stream_started(self, value, stream)
            stream.feed(times[sel], records["seq"][sel], records["ts"][sel], pt[sel],
                        marker[sel])
        return len(records)
