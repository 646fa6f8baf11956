"""Record times: UTC epoch seconds (float) in memory, ISO 8601 with milliseconds in JSON
for people and tools (the API, the CLI, the design's JSON record)."""

from __future__ import annotations

from datetime import UTC, datetime

#: ``YYYY-MM-DDTHH:MM:SS`` of the seconds lately formatted (records come in time order,
#: several times of one record in one second); emptied when full.
_SECONDS: dict[int, str] = {}


def iso_ms(ts: float | None) -> str | None:
    """Epoch seconds to ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC)."""
    if ts is None:
        return None
    ms = round(ts * 1000)
    second = ms // 1000
    text = _SECONDS.get(second)
    if text is None:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        if len(_SECONDS) >= 1024:
            _SECONDS.clear()
        _SECONDS[second] = text
    return f"{text}.{ms % 1000:03d}Z"


def parse_iso_ms(text: str | None) -> float | None:
    """Inverse of :func:`iso_ms`; accepts a trailing ``Z`` or an explicit offset."""
    if text is None:
        return None
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000) / 1000


__all__ = ["iso_ms", "parse_iso_ms"]
