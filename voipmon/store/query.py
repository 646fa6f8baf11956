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

The dashboard links each figure to the calls it counts through these filters (their
classes are defined once in ``voipmon.store.figures``): ``answered=yes|no``,
``ner=effective|ineffective`` (ITU-T E.411 network effectiveness), ``has_mos=yes|no``,
``loss_from=&loss_to=`` (the call's loss, the larger side's, in percent: from inclusive, to
exclusive, to 0.001 %) and ``jitter_from=&jitter_to=`` (the larger side's mean jitter in
ms, to 0.1 ms, the same way). A call without media has neither loss nor jitter: any loss
or jitter bound leaves it out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from voipmon.records.times import parse_iso_ms
from voipmon.store import figures
from voipmon.store.fields import U32, datetime_text, epoch_ms, exact_text
from voipmon.store.schema import TABLES

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000_000
MAX_DELETE = 10_000

_ARGS = ("limit", "offset", "caller", "called", "callid", "id_sensor", "from", "to",
         "mos_below", "answered", "ner", "has_mos", "loss_from", "loss_to", "jitter_from",
         "jitter_to")
_YES_NO = {"yes": True, "1": True, "true": True, "no": False, "0": False, "false": False}
_NER = ("effective", "ineffective")
# (argument, attribute, stored column, stored units per unit of the argument)
_RANGES = (("loss_from", "loss_from", "packet_loss_perc_mult1000", figures.LOSS_SCALE),
           ("loss_to", "loss_to", "packet_loss_perc_mult1000", figures.LOSS_SCALE),
           ("jitter_from", "jitter_from", "jitter_mult10", figures.JITTER_SCALE),
           ("jitter_to", "jitter_to", "jitter_mult10", figures.JITTER_SCALE))
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
    answered: bool | None = None
    ner: str | None = None           # "effective" or "ineffective"
    has_mos: bool | None = None
    loss_from: int | None = None     # packet_loss_perc_mult1000 >= loss_from
    loss_to: int | None = None       # packet_loss_perc_mult1000 < loss_to
    jitter_from: int | None = None   # jitter_mult10 >= jitter_from
    jitter_to: int | None = None     # jitter_mult10 < jitter_to

    def __post_init__(self) -> None:
        _check_int("limit", self.limit, 1, MAX_LIMIT)
        _check_int("offset", self.offset, 0, MAX_OFFSET)
        if self.id_sensor is not None:
            _check_int("id_sensor", self.id_sensor, 0, 65535)
        for name in ("answered", "has_mos"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"{name} = {getattr(self, name)!r}: allowed: yes or no")
        if self.ner is not None and self.ner not in _NER:
            raise ValueError(f"ner = {self.ner!r}: allowed: {' or '.join(_NER)}")
        for _arg, attr, _column, _scale in _RANGES:
            if getattr(self, attr) is not None:
                _check_int(attr, getattr(self, attr), 0, U32)
        if self.mos_below is not None and not (0.0 < self.mos_below <= 5.0):
            raise ValueError(f"mos_below = {self.mos_below!r}: allowed: a number 0..5")

    @classmethod
    def from_args(cls, args: Mapping[Any, Any]) -> CdrQuery:
        """From HTTP arguments (str or bytes keys, a value or a list of values: last wins)."""
        values = http_args(args, _ARGS, exact="callid")
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
        for name in ("answered", "has_mos"):
            if values.get(name):
                fields[name] = _parse_yes_no(name, values[name])
        if values.get("ner"):
            fields["ner"] = values["ner"].lower()
        for name, attr, _column, scale in _RANGES:
            if values.get(name):
                fields[attr] = parse_scaled(name, values[name], scale)
        return cls(**fields)

    @property
    def mos_limit_mult10(self) -> int | None:
        """``mos_min_mult10 < this`` means MOS below mos_below (MOS is stored to 0.1)."""
        if self.mos_below is None:
            return None
        return math.ceil(round(self.mos_below * 10, 6))


def http_args(args: Mapping[Any, Any], allowed: tuple[str, ...], exact: str = ""
              ) -> dict[str, str]:
    """HTTP arguments as {name: text}: str or bytes keys, a value or a list of values (the
    last wins), blanks around it stripped; ValueError naming one not ``allowed``. Bytes
    that are not UTF-8 become U+FFFD, except in the argument ``exact`` (the Call-ID, matched
    byte for byte: kept as surrogates, only the blanks the SIP parser strips stripped)."""
    values: dict[str, str] = {}
    for key, value in args.items():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if isinstance(value, list | tuple):
            if not value:
                continue
            value = value[-1]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "surrogateescape" if name == exact else "replace")
        if name not in allowed:
            raise ValueError(f"unknown argument {name!r}; allowed: {', '.join(allowed)}")
        values[name] = str(value).strip(_SIP_BLANKS if name == exact else None)
    return values


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} = {value!r}: allowed: an integer {lo}..{hi}")


def _parse_yes_no(name: str, text: str) -> bool:
    try:
        return _YES_NO[text.lower()]
    except KeyError:
        raise ValueError(f"{name} = {text!r}: allowed: yes or no")


def parse_scaled(name: str, text: str, scale: int) -> int:
    """A non-negative decimal number as a whole number of 1/scale units (exactly)."""
    digits = len(str(scale)) - 1
    try:
        value = Decimal(text) * scale
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or value < 0 or value != value.to_integral_value() \
            or value > U32:
        raise ValueError(f"{name} = {text!r}: allowed: a number from 0 with at most "
                         f"{digits} decimal{'s' if digits != 1 else ''}")
    return int(value)


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


def range_terms(clauses: list[str], params: list[Any], when: str, start: float | None,
                end: float | None, id_sensor: int | None, sensor: str, placeholder: str,
                datetime_text: Any) -> None:
    """The terms every list of the API shares: ``from`` (inclusive) and ``to`` (exclusive)
    on the time column ``when``, and ``id_sensor`` on the column ``sensor``; appended to
    ``clauses`` and ``params``."""
    if id_sensor is not None:
        clauses.append(f"{sensor} = {placeholder}")
        params.append(id_sensor)
    if start is not None:
        clauses.append(f"{when} >= {placeholder}")
        params.append(datetime_text(start))
    if end is not None:
        clauses.append(f"{when} < {placeholder}")
        params.append(datetime_text(end))


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
    range_terms(clauses, params, "c.`calldate`", query.start, query.end, query.id_sensor,
                "c.`id_sensor`", placeholder, datetime_text)
    if query.mos_limit_mult10 is not None:
        clauses.append(f"c.`mos_min_mult10` < {placeholder}")
        params.append(query.mos_limit_mult10)
    clauses.extend(_outcome_sql(query))
    for _name, attr, column, _scale in _RANGES:
        value = getattr(query, attr)
        if value is not None:
            clauses.append(f"c.`{column}` {'>=' if attr.endswith('_from') else '<'} "
                           f"{placeholder}")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _outcome_sql(query: CdrQuery) -> list[str]:
    clauses = []
    if query.answered is not None:
        answered = figures.answered_sql("c.")
        clauses.append(answered if query.answered else figures.negated_sql(answered, "c."))
    if query.ner is not None:
        effective = figures.effective_sql("c.")
        clauses.append(effective if query.ner == "effective"
                       else figures.negated_sql(effective, "c."))
    if query.has_mos is not None:
        clauses.append(f"c.`mos_min_mult10` IS {'NOT ' if query.has_mos else ''}NULL")
    return clauses


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
    code = row.get("lastSIPresponseNum")
    if query.answered is not None and figures.is_answered(code) != query.answered:
        return False
    if query.ner is not None and figures.is_effective(code) != (query.ner == "effective"):
        return False
    if query.has_mos is not None and (row.get("mos_min_mult10") is not None) != query.has_mos:
        return False
    for _name, attr, column, _scale in _RANGES:
        bound, value = getattr(query, attr), row.get(column)
        if bound is not None and (value is None or (
                value < bound if attr.endswith("_from") else value >= bound)):
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
