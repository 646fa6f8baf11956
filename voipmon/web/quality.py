"""``GET /api/cdrs/<id>/quality``: a call's quality over time, from its pcap.

The JSON is ``voipmon.analysis.timeline``'s (per stream and interval: packets, lost, max
and mean jitter, MOS; marks for SIP events and DTMF), computed by ``CallMedia`` from the
call's pcap and cached. ``?interval=`` is the interval in seconds (default 1),
``?mos_window=`` the seconds a MOS is scored over (default 10), ``?format=svg`` the chart
(``quality_svg``) instead of the JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

from twisted.internet import defer

from voipmon.analysis.replay import CallNotFound, replay, select_call
from voipmon.analysis.timeline import DEFAULT_INTERVAL, DEFAULT_MOS_WINDOW, QualityObserver
from voipmon.web.api import ApiError, write_json
from voipmon.web.callmedia import CallMedia, sip_ports
from voipmon.web.quality_svg import quality_svg

MIN_INTERVAL = 0.01
MAX_INTERVALS = 100_000       # intervals per stream a request may ask for


def _seconds(request: Any, name: str, default: float, low: float, high: float) -> float:
    raw = request.args.get(name.encode(), [b""])[-1].decode("utf-8", "replace").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be seconds (a number), not {raw!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low:g} and {high:g} seconds, not {raw}")
    return value


def quality_file(source: str, out: str, cdr: dict[str, Any], interval: float,
                 mos_window: float) -> None:
    """Replay the call's pcap ``source`` and write its timeline as JSON to ``out``."""
    observer = QualityObserver(interval, mos_window)
    cdrs = replay(source, observer, sip_ports=sip_ports(cdr))
    try:
        replayed = select_call(cdrs, cdr.get("sensor_cdr_uid"))
    except CallNotFound as exc:
        raise ApiError(404, f"call {cdr.get('id')}: its pcap does not hold it ({exc})")
    timeline = observer.timeline(replayed)
    timeline["id"] = cdr.get("id")
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(timeline, handle, sort_keys=True)


class QualityView:
    """The quality resource of one call (``ApiResource`` hands it the stored CDR)."""

    def __init__(self, media: CallMedia) -> None:
        self.media = media

    @defer.inlineCallbacks
    def render(self, request: Any, cdr: dict[str, Any]) -> Any:
        interval = _seconds(request, "interval", DEFAULT_INTERVAL, MIN_INTERVAL, 3600.0)
        mos_window = _seconds(request, "mos_window", DEFAULT_MOS_WINDOW, MIN_INTERVAL,
                              86400.0)
        fmt = request.args.get(b"format", [b"json"])[-1]
        if fmt not in (b"json", b"svg"):
            raise ApiError(400, "format must be json or svg")
        duration = float(cdr.get("duration") or 0.0)
        if duration / interval > MAX_INTERVALS:
            raise ApiError(400, f"interval {interval:g} s gives more than {MAX_INTERVALS} "
                                f"intervals over this {duration:.0f} s call; take a longer one")
        path = yield self.media.compute(
            cdr, f"quality-{interval:g}-{mos_window:g}.json",
            lambda source, out: quality_file(source, out, cdr, interval, mos_window))
        with open(path, encoding="utf-8") as handle:
            timeline = json.load(handle)
        if fmt == b"json":
            write_json(request, 200, timeline)
            return
        body = quality_svg(timeline).encode("utf-8")
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"image/svg+xml; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()
