"""Quality over time as an SVG chart: one lane per stream, marks across the lanes.

Plain SVG written here from the timeline (``voipmon.analysis.timeline``), no chart library
anywhere: the page puts it under the SIP ladder, and the same file opens in any browser.
Its look is the page's ``quality.css``: the page styles the chart with it (and drops the
chart's own ``<style>``, which the page's content security policy would refuse), and the
same rules inside the SVG make a saved file look the same.

Each lane shows, on the call's time axis (seconds since the first INVITE, as the ladder and
the audio): packets per interval with the lost ones stacked in red, max and mean jitter,
and the MOS of the adaptive jitter buffer (f1 and f2 in the tooltip). Marks (ringing,
answer, hold, DTMF, BYE ...) are drawn once above the lanes with a line through them. A
long call is binned to the chart's width: packets and losses add up, jitter takes the max,
MOS the worst.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any
from xml.sax.saxutils import escape

WIDTH = 960
LEFT = 96
RIGHT = 16
MARKS = 44
LANE = 184
AXIS = 26
ROWS = (("packets", 44), ("jitter", 44), ("mos", 44))
_CSS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "quality.css")


@functools.lru_cache(maxsize=1)
def chart_style() -> str:
    """The chart's rules (``svg.quality ...``) of the page's ``quality.css``: one copy, so
    the chart in the page and a saved chart look alike."""
    with open(_CSS, encoding="utf-8") as handle:
        return "".join(line for line in handle if line.startswith("svg.quality"))


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _bins(n: int, width: float) -> int:
    return max(1, min(n, int(width // 2)))


def _binned(stream: dict[str, Any], intervals: int, bins: int) -> dict[str, list]:
    """The stream's series over ``intervals``, folded into ``bins`` columns."""
    out: dict[str, list] = {k: [None] * bins for k in
                            ("packets", "lost", "jitter_max", "jitter_mean", "mos")}
    offset = stream.get("offset", 0)
    for i, packets in enumerate(stream.get("packets", [])):
        b = min(bins - 1, (offset + i) * bins // max(intervals, 1))
        out["packets"][b] = (out["packets"][b] or 0) + packets
        out["lost"][b] = (out["lost"][b] or 0) + stream["lost"][i]
        for key, pick in (("jitter_max", max), ("jitter_mean", max), ("mos", min)):
            value = stream["mos_adapt"][i] if key == "mos" else stream[key][i]
            if value is not None:
                out[key][b] = value if out[key][b] is None else pick(out[key][b], value)
    return out


def _polyline(values: list, x0: float, step: float, y: Any, cls: str) -> str:
    parts, run = [], []
    for i, value in enumerate(values):
        if value is None:
            if run:
                parts.append(run)
            run = []
            continue
        run.append(f"{x0 + (i + 0.5) * step:.1f},{y(value):.1f}")
    if run:
        parts.append(run)
    return "".join(f'<polyline class="{cls}" points="{" ".join(p)}"/>' for p in parts
                   if len(p) > 1) + "".join(
        f'<circle class="{cls}" cx="{p[0].split(",")[0]}" cy="{p[0].split(",")[1]}" r="1.5"/>'
        for p in parts if len(p) == 1)


def _ticks(duration: float) -> float:
    """A round step giving at most about 10 time ticks."""
    raw = max(duration, 1e-3) / 10
    power = 10 ** math.floor(math.log10(raw))
    return next(power * m for m in (1, 2, 5, 10) if power * m >= raw)


def quality_svg(timeline: dict[str, Any], width: int = WIDTH) -> str:
    """The chart of ``timeline`` (a ``QualityObserver.timeline`` result) as SVG text."""
    streams = timeline.get("streams", [])
    interval = float(timeline.get("interval", 1.0))
    intervals = max(int(timeline.get("intervals", 1)),
                    *(s.get("offset", 0) + len(s.get("packets", [])) for s in streams), 1)
    duration = intervals * interval
    plot = width - LEFT - RIGHT
    bins = _bins(intervals, plot)
    step = plot / bins
    height = MARKS + max(1, len(streams)) * LANE + AXIS

    def x(seconds: float) -> float:
        return LEFT + plot * min(max(seconds, 0.0), duration) / duration

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="quality" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="Quality over time, one lane per RTP stream">',
           f"<style>{chart_style()}</style>",
           f'<text x="{LEFT}" y="14" class="muted">{escape(str(timeline.get("callid", "")))}'
           f' · interval {_num(interval)} s · MOS window '
           f'{_num(float(timeline.get("mos_window", 0)))} s</text>']
    bottom = MARKS + max(1, len(streams)) * LANE
    if not streams:
        out.append(f'<text x="{LEFT}" y="{MARKS + LANE // 2}" class="muted">No RTP stream in '
                   "this call.</text>")
    for lane, stream in enumerate(streams):
        out.append(_lane(stream, MARKS + lane * LANE, plot, step, intervals, bins))
    marks: list[str] = []   # drawn over the lanes
    for n, mark in enumerate(timeline.get("marks", [])):
        mx = x(mark["t"])
        ty = MARKS - 4 - 13 * (n % 2)           # labels on two rows, so neighbours show
        label = mark.get("label", mark["kind"])
        marks.append(f'<g class="mark {escape(mark["kind"])}"><title>{escape(label)} at '
                   f'+{mark["t"]:.3f} s ({escape(mark.get("side", ""))})</title>'
                   f'<line x1="{mx:.1f}" y1="{ty - 9}" x2="{mx:.1f}" y2="{bottom}"/>'
                   f'<text x="{mx + 2:.1f}" y="{ty}">'
                   f'{escape(mark.get("digit") or label.split(" ")[0][:10])}</text></g>')
    out.extend(marks)
    tick = _ticks(duration)
    for k in range(int(duration / tick) + 1):
        tx = x(k * tick)
        out.append(f'<line class="grid" x1="{tx:.1f}" y1="{bottom}" x2="{tx:.1f}" '
                   f'y2="{bottom + 4}"/><text class="axis" x="{tx:.1f}" y="{bottom + 16}" '
                   f'text-anchor="middle">{_num(k * tick)} s</text>')
    out.append("</svg>")
    return "".join(out)


def _lane(stream: dict[str, Any], top: int, plot: float, step: float, intervals: int,
          bins: int) -> str:
    data = _binned(stream, intervals, bins)
    cdr = stream.get("cdr", {})
    side = stream.get("side") or "stream"
    title = (f"{side} {stream['saddr']}:{stream['sport']} → {stream['daddr']}:"
             f"{stream['dport']} · {stream.get('codec', '')} · SSRC {stream['ssrc']}")
    summary = (f"received {cdr.get('received', 0)} · lost {cdr.get('lost', 0)} · max jitter "
               f"{cdr.get('maxjitter', 0):.1f} ms · MOS {cdr.get('mos_f1')}/"
               f"{cdr.get('mos_f2')}/{cdr.get('mos_adapt')}")
    out = [f'<g class="lane" data-stream="{int(stream.get("index", 0))}">',
           f"<title>{escape(title)}\n{escape(summary)}</title>",
           f'<text class="title" x="{LEFT}" y="{top + 14}">{escape(title)}</text>',
           f'<text class="muted" x="{LEFT}" y="{top + 28}">{escape(summary)}</text>']
    y0 = top + 36
    peak = max([p + lost for p, lost in zip(data["packets"], data["lost"], strict=True)
                if p is not None] or [1])
    jpeak = max([j for j in data["jitter_max"] if j is not None] or [1.0])
    jpeak = max(jpeak, 1.0)
    for name, rows in ROWS:
        out.append(f'<rect class="frame" x="{LEFT}" y="{y0}" width="{plot:.1f}" '
                   f'height="{rows}"/>')
        label, note = {"packets": ("packets", f"max {peak}"),
                       "jitter": ("jitter ms", f"max {jpeak:.1f}"),
                       "mos": ("MOS", "1 to 4.5")}[name]
        out.append(f'<text x="{LEFT - 6}" y="{y0 + rows / 2 + 4:.1f}" text-anchor="end">'
                   f'{label}</text><text class="muted" x="{LEFT - 6}" y="{y0 + rows - 2}" '
                   f'text-anchor="end">{note}</text>')
        if name == "packets":
            for i, (packets, lost) in enumerate(zip(data["packets"], data["lost"],
                                                    strict=True)):
                if packets is None:
                    continue
                h = rows * packets / peak
                lh = rows * lost / peak
                bx = LEFT + i * step
                out.append(f'<rect class="packets" x="{bx:.1f}" y="{y0 + rows - h:.1f}" '
                           f'width="{max(step - 0.5, 0.5):.1f}" height="{h:.1f}"/>')
                if lost:
                    out.append(f'<rect class="lost" x="{bx:.1f}" y="{y0 + rows - h - lh:.1f}"'
                               f' width="{max(step - 0.5, 0.5):.1f}" height="{max(lh, 1):.1f}">'
                               f"<title>{lost} lost</title></rect>")
        elif name == "jitter":
            def jy(v: float, y0: float = y0, rows: int = rows) -> float:
                return y0 + rows - rows * v / jpeak
            out.append(_polyline(data["jitter_mean"], LEFT, step, jy, "jmean"))
            out.append(_polyline(data["jitter_max"], LEFT, step, jy, "jmax"))
        else:
            def my(v: float, y0: float = y0, rows: int = rows) -> float:
                return y0 + rows - rows * (v - 1.0) / 3.5
            out.append(_polyline(data["mos"], LEFT, step, my, "mos"))
        y0 += rows + 4
    out.append("</g>")
    return "".join(out)


__all__ = ["quality_svg"]
