"""Quality over time: each stream's packets, loss, jitter and MOS per interval, with marks.

Computed from a call's capture by the engine that made its CDR, as an observer of the
same computation (``voipmon.analysis.observe``), so the intervals add up to the CDR:

- **packets**: the packets the stream's analyzer took in the interval (by capture time);
  they sum to the CDR's ``received``.
- **lost**: the CDR's loss is ``max(0, expected - distinct)`` over the extended sequence
  numbers (``rtp.StreamAnalyzer``). The same quantity is followed packet by packet, and an
  interval gets what it added. A late packet that fills a gap counted earlier takes the
  loss back from the interval that counted it (not from its own), so no interval is
  negative and the intervals sum to the CDR's ``lost``.
- **jitter**: the analyzer's RFC 3550 jitter after each packet (Wireshark's, in ms); an
  interval's max and mean are over the packets that count for the CDR's max jitter, so
  the largest interval max is the CDR's ``maxjitter``.
- **MOS**: VoIPmonitor scores an interval from its jitter buffers' loss since the previous
  interval. Each simulated buffer (``mos``: f1, f2, adaptive) reports every loss burst as
  it counts it, with the sequence number where it ends; a burst belongs to the interval in
  which the stream's sequence numbers reached it. The score of an interval is the E-model
  of ``mos.mos_from_counts`` over the ``mos_window`` seconds ending with it (10 s as
  VoIPmonitor's by default; a window of one interval gives the per-interval score). The
  bursts of all intervals are exactly the buffer's histogram that scored the CDR.

Marks (``voipmon.analysis.marks``) place SIP events and DTMF on the same time axis:
seconds since the call's first INVITE, which is also where the call's audio starts.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from voipmon.analysis import mos
from voipmon.analysis.calls import Call, ip_text
from voipmon.analysis.marks import CallMarks
from voipmon.analysis.replay import Source, replay, select_call
from voipmon.analysis.rtp import PayloadMap, RtpFlow, StreamAnalyzer
from voipmon.records.cdr import Cdr, RtpStream
from voipmon.records.keys import make_cdr_uid
from voipmon.records.times import iso_ms

DEFAULT_INTERVAL = 1.0
DEFAULT_MOS_WINDOW = 10.0
MODELS = ("f1", "f2", "adapt")      # the order of StreamAnalyzer.jb
_LOWEST = np.iinfo(np.int64).min


class StreamTimeline:
    """Per-interval figures of one stream (an ``IStreamObserver``), interval 0 at ``t0``."""

    def __init__(self, t0: float, interval: float):
        self.t0 = t0
        self.interval = interval
        self.first = -1                 # first and last interval with a packet
        self.last = -1
        size = 64
        self.count = np.zeros(size, dtype=np.int64)
        self.lost = np.zeros(size, dtype=np.int64)
        self.jcount = np.zeros(size, dtype=np.int64)
        self.jmax = np.zeros(size)
        self.jsum = np.zeros(size)
        self.bound = np.full(size, _LOWEST, dtype=np.int64)  # highest seq by the interval
        self.jb_lost = np.zeros((len(MODELS), size), dtype=np.int64)
        self.jb_bursts = np.zeros((len(MODELS), size), dtype=np.int64)
        self.ext_max = _LOWEST
        self.ext_min = -_LOWEST - 1
        self.distinct = 0
        self.running = 0               # the CDR's loss formula after the latest packet

    def _grow(self, size: int) -> None:
        have = len(self.count)
        if size <= have:
            return
        new = max(size, have * 2)
        for name in ("count", "lost", "jcount", "jmax", "jsum"):
            old = getattr(self, name)
            setattr(self, name, np.concatenate((old, np.zeros(new - have, old.dtype))))
        self.bound = np.concatenate((self.bound, np.full(new - have, _LOWEST, np.int64)))
        for name in ("jb_lost", "jb_bursts"):
            old = getattr(self, name)
            setattr(self, name, np.concatenate(
                (old, np.zeros((len(MODELS), new - have), np.int64)), axis=1))

    def packets_in(self, t: np.ndarray, ext_seq: np.ndarray, fresh: np.ndarray,
                   jitter: np.ndarray, rated: np.ndarray, counted: np.ndarray) -> None:
        """One analysed chunk (see ``IStreamObserver.packets``)."""
        idx = np.maximum(((t - self.t0) / self.interval).astype(np.int64), 0)
        top = int(idx.max()) + 1
        self._grow(top)
        low = int(idx.min())
        self.first = low if self.first < 0 else min(self.first, low)
        self.last = max(self.last, top - 1)
        np.add.at(self.count, idx, 1)
        # the CDR's loss after each packet: expected (highest - lowest + 1) - distinct
        highest = np.maximum(np.maximum.accumulate(ext_seq), self.ext_max)
        lowest = np.minimum(np.minimum.accumulate(ext_seq), self.ext_min)
        distinct = self.distinct + np.cumsum(fresh)
        running = np.maximum(highest - lowest + 1 - distinct, 0)
        delta = np.diff(running, prepend=self.running)
        np.maximum.at(self.bound, idx, highest)
        back = delta < 0
        if back.any():
            # a late packet fills a gap: the interval where the sequence passed it
            # counted that loss, so it takes it back (not the late packet's interval)
            n = self.last + 1
            bounds = np.maximum.accumulate(self.bound[:n])
            where = idx.copy()
            where[back] = np.minimum(np.searchsorted(bounds, ext_seq[back], side="right"),
                                     idx[back])
            np.add.at(self.lost, where, delta)
        else:
            np.add.at(self.lost, idx, delta)
        self.ext_max, self.ext_min = int(highest[-1]), int(lowest[-1])
        self.distinct, self.running = int(distinct[-1]), int(running[-1])
        if counted.any():
            where = idx[rated][counted]
            values = jitter[counted]
            np.maximum.at(self.jmax, where, values)
            np.add.at(self.jsum, where, values)
            np.add.at(self.jcount, where, 1)

    def packets(self, t: np.ndarray, ext_seq: np.ndarray, fresh: np.ndarray,
                ext_ts: np.ndarray, pt: np.ndarray, marker: np.ndarray, jitter: np.ndarray,
                rated: np.ndarray, counted: np.ndarray) -> None:
        self.packets_in(t, ext_seq, fresh, jitter, rated, counted)

    def bursts(self, model: int, ends: np.ndarray, lengths: np.ndarray) -> None:
        """Loss bursts of jitter buffer ``model``, each ending at sequence ``ends[i]``."""
        n = self.last + 1
        if n <= 0:
            return
        bounds = np.maximum.accumulate(self.bound[:n])
        where = np.clip(np.searchsorted(bounds, ends, side="left"), max(self.first, 0), n - 1)
        np.add.at(self.jb_lost[model], where, np.minimum(lengths, mos.MAX_BURST))
        np.add.at(self.jb_bursts[model], where, 1)

    def result(self, pt: int, mos_window: float) -> dict[str, Any]:
        """The JSON-able series, from the first interval with a packet to the last."""
        if self.first < 0:
            return {"offset": 0, "packets": [], "lost": [], "jitter_max": [],
                    "jitter_mean": [], **{f"mos_{m}": [] for m in MODELS}}
        lo, hi = self.first, self.last + 1
        packets = self.count[lo:hi]
        jcount = self.jcount[lo:hi]
        has = jcount > 0
        mean = np.divide(self.jsum[lo:hi], np.maximum(jcount, 1))
        out: dict[str, Any] = {
            "offset": lo,
            "packets": packets.tolist(),
            "lost": settle_negative(self.lost[lo:hi]).tolist(),
            "jitter_max": _with_gaps(np.round(self.jmax[lo:hi], 3), has),
            "jitter_mean": _with_gaps(np.round(mean, 3), has),
        }
        width = max(1, round(mos_window / self.interval))
        score = functools.lru_cache(maxsize=4096)(
            functools.partial(_score, pt=pt))
        present = packets > 0
        for k, model in enumerate(MODELS):
            lost = _window_sums(self.jb_lost[k][:hi], width)[lo:]
            bursts = _window_sums(self.jb_bursts[k][:hi], width)[lo:]
            received = _window_sums(self.count[:hi], width)[lo:]
            out[f"mos_{model}"] = [
                score(int(a), int(b), int(c)) if here else None
                for a, b, c, here in zip(lost, bursts, received, present, strict=True)]
        return out


def _score(lost: int, bursts: int, received: int, pt: int) -> float:
    return mos.mos_from_counts(lost, bursts, received, pt, True)


def _window_sums(values: np.ndarray, width: int) -> np.ndarray:
    """Sum over the ``width`` values ending at each position."""
    total = np.cumsum(values)
    out = total.copy()
    out[width:] -= total[:-width]
    return out


def _with_gaps(values: np.ndarray, present: np.ndarray) -> list[float | None]:
    return [float(v) if p else None for v, p in zip(values, present, strict=True)]


def settle_negative(deltas: np.ndarray) -> np.ndarray:
    """Move negative counts back onto the latest earlier positive ones (same total)."""
    if (deltas >= 0).all():
        return deltas.copy()
    out = deltas.copy()
    stack: list[int] = []
    for i, value in enumerate(out.tolist()):
        if value > 0:
            stack.append(i)
        elif value < 0:
            need = -value
            out[i] = 0
            while need and stack:
                j = stack[-1]
                take = min(need, int(out[j]))
                out[j] -= take
                need -= take
                if out[j] == 0:
                    stack.pop()
    return out


class _CallState:
    """What the observer collects for one call."""

    def __init__(self, call: Call, interval: float):
        self.t0 = call.first_ts
        self.marks = CallMarks(call)
        self.streams: dict[tuple[str, int, str, int, int], StreamTimeline] = {}
        self.flows: dict[tuple[str, int, str, int, int], RtpFlow] = {}  # for their side
        self.interval = interval


class QualityObserver:
    """Collects quality over time for every call of a replay (an ``IAnalysisObserver``
    and ``IFlowObserver``)."""

    def __init__(self, interval: float = DEFAULT_INTERVAL,
                 mos_window: float = DEFAULT_MOS_WINDOW):
        if not interval > 0 or not mos_window > 0:
            raise ValueError("interval and mos_window must be positive seconds")
        self.interval = float(interval)
        self.mos_window = float(mos_window)
        self._calls: dict[str, _CallState] = {}

    def _state(self, call: Call) -> _CallState:
        uid = make_cdr_uid(call.callid, call.first_ts)
        state = self._calls.get(uid)
        if state is None:
            state = self._calls[uid] = _CallState(call, self.interval)
        return state

    # -- IAnalysisObserver -------------------------------------------------------------

    def sip_message(self, call: Call, datagram: Any, msg: Any, side: str) -> None:
        self._state(call).marks.sip(datagram.ts, msg, side)

    def flow_started(self, call: Call, flow: RtpFlow, linktype: int) -> None:
        state = self._state(call)
        flow.observer = self
        state.marks.watch_dtmf(flow)

    # -- IFlowObserver -----------------------------------------------------------------

    def stream_started(self, flow: RtpFlow, ssrc: int, analyzer: StreamAnalyzer) -> None:
        state = self._state(flow.owner)  # type: ignore[arg-type]
        timeline = StreamTimeline(state.t0, self.interval)
        analyzer.observer = timeline
        for k, jb in enumerate(analyzer.jb):
            jb.observer = functools.partial(timeline.bursts, k)
        key = (ip_text(flow.src), flow.sport, ip_text(flow.dst), flow.dport, ssrc)
        state.streams[key] = timeline
        state.flows[key] = flow     # its side is read at the end (media._pair may settle it)

    def payload_map_changed(self, flow: RtpFlow, pmap: PayloadMap) -> None:
        self._state(flow.owner).marks.watch_dtmf(flow, pmap)  # type: ignore[arg-type]

    # -- results -----------------------------------------------------------------------

    def timeline(self, cdr: Cdr) -> dict[str, Any]:
        """The quality over time of the call of ``cdr`` (a CDR of this replay)."""
        state = self._calls.get(cdr.sensor_cdr_uid)
        if state is None:
            raise KeyError(f"no call {cdr.sensor_cdr_uid} in this replay")
        state.marks.close()
        streams = []
        for index, stream in enumerate(cdr.rtp):
            timeline = state.streams.get(_key(stream))
            series = timeline.result(stream.payload, self.mos_window) if timeline else \
                StreamTimeline(state.t0, self.interval).result(0, self.mos_window)
            streams.append({
                "index": index, "ssrc": f"0x{stream.ssrc:08x}", "saddr": stream.saddr,
                "sport": stream.sport, "daddr": stream.daddr, "dport": stream.dport,
                "side": _side(state.flows.get(_key(stream))), "codec": stream.codec,
                "cdr": {"received": stream.received, "lost": stream.lost,
                        "maxjitter": stream.maxjitter, "mos_f1": stream.mos_f1,
                        "mos_f2": stream.mos_f2, "mos_adapt": stream.mos_adapt},
                **series})
        duration = max(0.0, cdr.callend - cdr.calldate)
        return {
            "callid": cdr.callid, "sensor_cdr_uid": cdr.sensor_cdr_uid,
            "start": cdr.calldate, "start_iso": iso_ms(cdr.calldate),
            "duration": round(duration, 6), "interval": self.interval,
            "intervals": max(1, math.ceil(duration / self.interval - 1e-9)),
            "mos_window": self.mos_window, "streams": streams,
            "marks": state.marks.result(state.t0, streams),
        }

    def discard(self, cdr: Cdr) -> None:
        """Forget the call of ``cdr`` (a replay of many calls keeps memory bounded)."""
        self._calls.pop(cdr.sensor_cdr_uid, None)


def _side(flow: RtpFlow | None) -> str:
    return "" if flow is None else {"a": "caller", "b": "callee"}.get(flow.direction, "")


def _key(stream: RtpStream) -> tuple[str, int, str, int, int]:
    return (stream.saddr, stream.sport, stream.daddr, stream.dport, stream.ssrc)


def quality_timeline(source: Source, cdr_uid: str | None = None, *,
                     interval: float = DEFAULT_INTERVAL,
                     mos_window: float = DEFAULT_MOS_WINDOW,
                     sip_ports: tuple[int, ...] = (5060,)) -> dict[str, Any]:
    """Quality over time of the call in ``source`` (one call's pcap; ``cdr_uid`` picks
    one when it holds several). Raises ``replay.CallNotFound``."""
    observer = QualityObserver(interval, mos_window)
    cdr = select_call(replay(source, observer, sip_ports=sip_ports), cdr_uid)
    return observer.timeline(cdr)
