"""Fitting Python values to columns, and reading them back: pure, fast helpers.

Every helper returns something the column takes under MySQL's strict mode and SQLite alike
(int in range, finite float, str cut to length and encodable, bytes) or None, so no value
can make a batch fail forever. The common case (a value that already fits) costs one type
check; the conversions are for what the analysis should never produce.
"""

from __future__ import annotations

import hashlib
import math
import socket
import time
from calendar import timegm
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from voipmon.records.keys import callid_bytes

U8, U16, U32 = 0xFF, 0xFFFF, 0xFFFFFFFF
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
MAX_EPOCH = 253402300799.999      # 9999-12-31 23:59:59.999, MySQL's datetime limit
MAX_DEC3 = 999999.999             # decimal(9,3)
UID_LEN = 64

_isfinite = math.isfinite


def text(value: Any, limit: int) -> str | None:
    """A string the database will take: cut to ``limit`` characters, valid UTF-8."""
    if type(value) is str and value.isascii():
        return value[:limit]
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    value = value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> '?'
    return value[:limit]


def exact_text(value: Any, limit: int) -> tuple[str | None, bytes | None]:
    """An identifier for a text column that must lose nothing (the Call-ID): the text
    column's value and, only when that cannot hold ``value`` exactly, its exact bytes.

    The text is ``value`` as valid UTF-8, each byte that was not UTF-8 (a lone surrogate
    in memory, see ``voipmon.records.keys.callid_bytes``) shown as U+FFFD, cut to
    ``limit`` characters: readable, indexed and searchable. The bytes (for a ``blob``
    column beside it) are None for the usual value, which the text holds exactly.
    """
    if type(value) is str and len(value) <= limit and value.isascii():
        return value, None
    if value is None:
        return None, None
    if not isinstance(value, str):
        value = str(value)
    raw = callid_bytes(value)
    shown = raw.decode("utf-8", "replace")[:limit]
    return shown, None if shown == value else raw


def exact_value(shown: Any, raw: Any) -> str:
    """What ``exact_text`` stored, read back: the same string, the same bytes."""
    if raw is not None:
        return bytes(raw).decode("utf-8", "surrogateescape")
    return shown or ""


def ascii_text(value: Any, limit: int) -> str | None:
    """A string for an ASCII column: other characters become '?'."""
    if value is None:
        return None
    return str(value).encode("ascii", "replace").decode("ascii")[:limit]


def lookup_text(value: Any, limit: int) -> str | None:
    """A lookup-table key (user agent, response text): fitted, no trailing blanks, or None."""
    fitted = text(value, limit)
    if fitted is None:
        return None
    return fitted.rstrip() or None


def uid(value: Any) -> str:
    """The idempotency key as stored: printable ASCII up to 64 characters, else a hash of it
    (deterministic, so a replay still finds the same key)."""
    if (type(value) is str and 0 < len(value) <= UID_LEN and value.isascii()
            and value.isprintable() and " " not in value):
        return value
    raw = str(value).encode("utf-8", "surrogateescape")
    return "h:" + hashlib.sha256(raw).hexdigest()[:40]


def clamp(value: Any, lo: int, hi: int) -> int | None:
    """An int within [lo, hi], or None for None and what is not a number."""
    if type(value) is int and lo <= value <= hi:
        return value
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return lo if number < lo else hi if number > hi else number


def unsigned(value: Any, hi: int) -> int | None:
    return clamp(value, 0, hi)


def ints(values: tuple[Any, ...], lo: int, hi: int) -> tuple[Any, ...]:
    """``values`` as ints within [lo, hi] (None kept); one C-level check when they are."""
    if values:
        try:
            if lo <= min(values) and max(values) <= hi and set(map(type, values)) == {int}:
                return values
        except TypeError:
            pass  # a None, or something that does not compare
    return tuple(clamp(v, lo, hi) for v in values)


def real(value: Any) -> float | None:
    """A finite float or None (NaN and infinities have no SQL form)."""
    if type(value) is float:
        return value if _isfinite(value) else None
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if _isfinite(number) else None


def mult10(value: Any, hi: int = U32) -> int | None:
    """VoIPmonitor's ``_mult10``: the value times ten, rounded, within [0, hi]."""
    number = real(value)
    if number is None:
        return None
    scaled = number * 10
    if not _isfinite(scaled):
        return hi if scaled > 0 else 0
    return clamp(round(scaled), 0, hi)


def dec3(value: Any) -> float | None:
    """Seconds with milliseconds for a decimal(9,3) column."""
    number = real(value)
    if number is None:
        return None
    return round(min(max(number, -MAX_DEC3), MAX_DEC3), 3)


def epoch_ms(value: Any) -> int | None:
    """Epoch seconds to whole milliseconds within the datetime range, or None."""
    number = real(value)
    if number is None:
        return None
    return round(min(max(number, 0.0), MAX_EPOCH) * 1000)


_DAYS: dict[int, str] = {}
_HOUR_MINUTES = [f" {h:02d}:{m:02d}:" for h in range(24) for m in range(60)]
_SECONDS = [f"{s:02d}." for s in range(60)]
_MILLIS = [f"{m:03d}" for m in range(1000)]


def ms_text(ms: int) -> str:
    """Whole milliseconds since the epoch (0..MAX_EPOCH) as ``YYYY-MM-DD HH:MM:SS.mmm``:
    the day from a cache, the rest from small tables (no formatting per call)."""
    seconds, millis = divmod(ms, 1000)
    day, rest = divmod(seconds, 86400)
    date = _DAYS.get(day)
    if date is None:
        if len(_DAYS) > 4096:
            _DAYS.clear()
        date = _DAYS[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
    return date + _HOUR_MINUTES[rest // 60] + _SECONDS[rest % 60] + _MILLIS[millis]


def datetime_text(value: Any) -> str | None:
    """Epoch seconds to ``YYYY-MM-DD HH:MM:SS.mmm`` (UTC), the form both back ends store."""
    if type(value) is float and 0.0 <= value <= MAX_EPOCH:
        return ms_text(round(value * 1000))
    ms = epoch_ms(value)
    if ms is None:
        return None
    return ms_text(ms)


def epoch(value: Any) -> float | None:
    """A stored datetime (a datetime from MySQL, a text from SQLite) to epoch seconds."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        ms = timegm(value.timetuple()) * 1000 + value.microsecond // 1000
        return ms / 1000
    return float(value)


_ADDRESSES: dict[str, bytes | None] = {}


def ip_bytes(address: Any) -> bytes | None:
    """Text address to INET6_ATON's layout (4 or 16 bytes); None if it is not an address."""
    packed = _ADDRESSES.get(address) if type(address) is str else None
    if packed is not None:
        return packed
    if not address or not isinstance(address, str):
        return None
    try:
        if ":" in address:
            packed = socket.inet_pton(socket.AF_INET6, address.partition("%")[0])
        else:
            packed = socket.inet_pton(socket.AF_INET, address)
    except (OSError, ValueError):
        return None
    if len(_ADDRESSES) > 8192:
        _ADDRESSES.clear()
    _ADDRESSES[address] = packed
    return packed


def ip_text(packed: bytes | None) -> str:
    if not packed:
        return ""
    packed = bytes(packed)
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    if len(packed) == 16:
        return socket.inet_ntop(socket.AF_INET6, packed)
    return ""


def int_list(values: Sequence[Any]) -> str:
    """A short list of counters as ``1,0,3`` (cdr_rtp.sl and .delay)."""
    fitted = ints(tuple(values), I64_MIN, I64_MAX)
    if None in fitted:
        fitted = tuple(0 if v is None else v for v in fitted)
    return ",".join(map(str, fitted))


def parse_int_list(value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    return tuple(int(item) for item in value.split(","))
