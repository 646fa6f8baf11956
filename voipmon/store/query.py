"""The CDR list query of the HTTP API: parsing its arguments, and its meaning.

``CdrQuery.from_args`` turns ``GET /api/cdrs?limit=&offset=&caller=&called=&callid=&id_sensor=
&from=&to=&mos_below=`` into a validated value (ValueError naming the argument and what is
allowed). ``where_sql`` renders it for either dialect; ``matches`` is the same filter in
Python (the FakeStore uses it), so both agree by construction of the tests.

``caller``/``called``/``callid`` match exactly, case-insensitively; ``*`` (or ``%``) is a
wildcard, so ``0049*`` is a prefix search that still uses the index. ``callid`` is the SIP
Call-ID (``cdr_next.callid``): what a PBX log or a customer's ticket usually quotes. It is
taken byte for byte (``?callid=a%FF`` is the Call-ID of the bytes ``a`` and 0xFF; only the
blanks the SIP parser strips are stripped): a Call-ID that holds bytes that are not UTF-8,
or more than the column's 1024 characters, matches exactly those bytes (``callid_raw``),
and in a wildcard search such a byte stands for any byte that was not UTF-8 (U+FFFD in the
text column). ``*`` and ``%`` may be part of a Call-ID too: the search for a Call-ID as it
is always finds that call, with those that match it as a pattern.
``from`` is inclusive, ``to`` exclusive, both on ``calldate``, as ISO 8601 (UTC unless an
offset is given) or epoch seconds. ``mos_below=X`` keeps calls whose lowest MOS (either
side, any model, stored to 0.1) is below X.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from voipmon.analysis.cdr import parse_iso_ms
from voipmon.store.fields import datetime_text, epoch_ms, exact_text
from voipmon.store.schema import TABLES

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000_000
MAX_DELETE = 10_000

_ARGS = ("limit", "offset", "caller", "called", "callid", "id_sensor", "from", "to",
         "mos_below")
_TEXT_FILTERS = (("caller", "c"), ("called", "c"), ("callid", "n"))
_CALLID_LEN = TABLES["cdr_next"].column("callid").length or 0
_SIP_BLANKS = " \t\r\n\x0b\x0c"   # what the SIP parser strips around a header's value


@dataclass(frozen=True)
class CdrQuery:
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    caller: str | None = None
    called: str | None = None
    callid: str | None = None
    id_sensor: int | None = None
    start: float | None = None       # "from": calldate >= start (epoch seconds)
    end: float | None = None         # "to": calldate < end
    mos_below: float | None = None

    def __post_init__(self) -> None:
        _check_int("limit", self.limit, 1, MAX_LIMIT)
        _check_int("offset", self.offset, 0, MAX_OFFSET)
        if self.id_sensor is not None:
            _check_int("id_sensor", self.id_sensor, 0, 65535)
        if self.mos_below is not None and not (0.0 < self.mos_below <= 5.0):
            raise ValueError(f"mos_below = {self.mos_below!r}: allowed: a number 0..5")

    @classmethod
    def from_args(cls, args: Mapping[Any, Any]) -> CdrQuery:
        """From HTTP arguments (str or bytes keys, a value or a list of values: last wins)."""
        values: dict[str, str] = {}
        for key, value in args.items():
            name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            if isinstance(value, list | tuple):
                if not value:
                    continue
                value = value[-1]
            if isinstance(value, bytes):
                # A Call-ID is matched byte for byte; other texts never keep such bytes.
                value = value.decode("utf-8", "surrogateescape" if name == "callid"
                                     else "replace")
            if name not in _ARGS:
                raise ValueError(f"unknown argument {name!r}; allowed: {', '.join(_ARGS)}")
            values[name] = str(value).strip(_SIP_BLANKS if name == "callid" else None)
        fields: dict[str, Any] = {}
        for name in ("limit", "offset", "id_sensor"):
            if values.get(name):
                fields[name] = _parse_int(name, values[name])
        for name, _table in _TEXT_FILTERS:
            if values.get(name):
                fields[name] = values[name]
        for name, attr in (("from", "start"), ("to", "end")):
            if values.get(name):
                fields[attr] = parse_time(name, values[name])
        if values.get("mos_below"):
            try:
                fields["mos_below"] = float(values["mos_below"])
            except ValueError:
                raise ValueError(f"mos_below = {values['mos_below']!r}: allowed: a number 0..5")
        return cls(**fields)

    @property
    def mos_limit_mult10(self) -> int | None:
        """``mos_min_mult10 < this`` means MOS below mos_below (MOS is stored to 0.1)."""
        if self.mos_below is None:
            return None
        return math.ceil(round(self.mos_below * 10, 6))


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} = {value!r}: allowed: an integer {lo}..{hi}")


def _parse_int(name: str, text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,10}", text):
        raise ValueError(f"{name} = {text!r}: allowed: a whole number")
    return int(text)


def parse_time(name: str, text: str) -> float:
    """ISO 8601 (UTC unless it says otherwise) or epoch seconds, to epoch seconds."""
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        return float(text)
    try:
        value = parse_iso_ms(text.replace(" ", "T", 1) if "T" not in text else text)
    except ValueError:
        value = None
    if value is None:
        raise ValueError(f"{name} = {text!r}: allowed: ISO 8601 like 2024-05-01T12:00:00Z "
                         "or epoch seconds")
    return value


def like_pattern(value: str) -> str | None:
    """A LIKE pattern (escape character '!') if ``value`` has a wildcard, else None."""
    if "*" not in value and "%" not in value:
        return None
    escaped = value.replace("!", "!!").replace("_", "!_")
    return escaped.replace("*", "%")


def _like_regex(value: str) -> re.Pattern[str]:
    parts = re.split(r"[*%]", value)
    return re.compile("^" + ".*".join(re.escape(p) for p in parts) + "$", re.S | re.I)


def callid_filter(value: str) -> tuple[str, bytes | None, str]:
    """A ``callid`` filter as Call-IDs are stored: (the ``cdr_next.callid`` text of the
    Call-ID ``value``, its ``callid_raw`` (None: NULL), and ``value`` as readable text,
    uncut, for a wildcard search, which matches that pattern or the Call-ID exactly)."""
    shown, raw = exact_text(value, _CALLID_LEN)
    return shown or "", raw, exact_text(value, len(value))[0] or ""


def where_sql(query: CdrQuery, placeholder: str, datetime_text: Any) -> tuple[str, list[Any]]:
    """``WHERE ...`` (or "") on ``cdr c`` joined with ``cdr_next n``, and its parameters."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, table in _TEXT_FILTERS:
        value = getattr(query, column)
        if value is None:
            continue
        if column == "callid":
            clauses.append(_callid_sql(value, placeholder, params))
            continue
        pattern = like_pattern(value)
        if pattern is None:
            clauses.append(f"{table}.`{column}` = {placeholder}")
            params.append(value)
        else:
            clauses.append(f"{table}.`{column}` LIKE {placeholder} ESCAPE '!'")
            params.append(pattern)
    if query.id_sensor is not None:
        clauses.append(f"c.`id_sensor` = {placeholder}")
        params.append(query.id_sensor)
    if query.start is not None:
        clauses.append(f"c.`calldate` >= {placeholder}")
        params.append(datetime_text(query.start))
    if query.end is not None:
        clauses.append(f"c.`calldate` < {placeholder}")
        params.append(datetime_text(query.end))
    if query.mos_limit_mult10 is not None:
        clauses.append(f"c.`mos_min_mult10` < {placeholder}")
        params.append(query.mos_limit_mult10)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _callid_sql(value: str, placeholder: str, params: list[Any]) -> str:
    shown, raw, readable = callid_filter(value)
    pattern = like_pattern(readable)
    exact = f"n.`callid` = {placeholder} AND n.`callid_raw` " + (
        "IS NULL" if raw is None else f"= {placeholder}")
    if pattern is None:
        params.extend([shown] if raw is None else [shown, raw])
        return exact
    like = f"n.`callid` LIKE {placeholder} ESCAPE '!'"
    if raw is None:
        params.append(pattern)   # the pattern matches the Call-ID itself, too
        return like
    params.extend([pattern, shown, raw])
    return f"({like} OR {exact})"


def _callid_matches(value: str, row: Mapping[str, Any]) -> bool:
    shown, raw, readable = callid_filter(value)
    stored = row.get("callid") or ""
    if stored.casefold() == shown.casefold() and row.get("callid_raw") == raw:
        return True
    return like_pattern(readable) is not None and _like_regex(readable).match(stored) is not None


def matches(query: CdrQuery, row: Mapping[str, Any], calldate_ms: int) -> bool:
    """``where_sql`` in Python, on a stored CDR (a dict of its ``cdr`` and ``cdr_next``
    columns)."""
    for column, _table in _TEXT_FILTERS:
        value = getattr(query, column)
        if value is None:
            continue
        if column == "callid":
            if not _callid_matches(value, row):
                return False
            continue
        stored = row.get(column) or ""
        if like_pattern(value) is None:
            if stored.casefold() != value.casefold():
                return False
        elif not _like_regex(value).match(stored):
            return False
    if query.id_sensor is not None and row.get("id_sensor") != query.id_sensor:
        return False
    if query.start is not None and calldate_ms < (epoch_ms(query.start) or 0):
        return False
    if query.end is not None and calldate_ms >= (epoch_ms(query.end) or 0):
        return False
    if query.mos_limit_mult10 is not None:
        mos = row.get("mos_min_mult10")
        if mos is None or mos >= query.mos_limit_mult10:
            return False
    return True


def delete_args(cutoff: Any, limit: Any) -> tuple[str, int]:
    """The checked arguments of ``IStore.delete_cdrs_before``: the cutoff as the stored
    calldate text (clamped to the column's range, as stored times are) and the limit."""
    stamp = None if isinstance(cutoff, bool) else datetime_text(cutoff)
    if stamp is None:
        raise ValueError(f"cutoff = {cutoff!r:.40}: allowed: epoch seconds")
    _check_int("limit", limit, 1, MAX_DELETE)
    return stamp, limit


def as_query(query: CdrQuery | Mapping[Any, Any] | None) -> CdrQuery:
    if query is None:
        return CdrQuery()
    if isinstance(query, CdrQuery):
        return query
    return CdrQuery.from_args(query)
