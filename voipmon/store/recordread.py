"""Reading the records that are not CDRs: the query behind ``/api/registrations``,
``/api/register_failed``, ``/api/sip_messages``, ``/api/messages`` and ``/api/alerts``.

``RecordQuery`` is one query over the table of one record kind: a time range on the
table's time column (``from``/``to``), ``id_sensor``, an address (``ip``: either side),
exact column values (``user``, ``state``, ``method``, ``qualify``, ``kind``, ...), and the
paging of the calls list (``limit``, ``offset``; newest first). ``current=yes`` on
registrations keeps only each registration's latest row (its current state). The rows come
back as the record's fields (``voipmon.store.recordrows.decode``) plus ``id``; a
registration's ``state_name`` and a SIP message's ``method`` are added for people.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from voipmon.records.register import STATE_NAMES
from voipmon.records.sipmsg import METHOD_TYPES, TYPE_MESSAGE
from voipmon.store import recordrows
from voipmon.store.dialect import q
from voipmon.store.fields import datetime_text, ip_bytes
from voipmon.store.query import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_OFFSET,
    http_args,
    parse_time,
    range_terms,
)
from voipmon.store.schema import RECORD_TABLES

_STATES = {name.lower(): code for code, name in STATE_NAMES.items()}
_METHODS = {**{name.lower(): code for name, code in METHOD_TYPES.items()}}
_METHOD_NAMES = {code: name for name, code in METHOD_TYPES.items()}
_YES_NO = {"yes": 1, "1": 1, "true": 1, "no": 0, "0": 0, "false": 0}
_COMMON = ("limit", "offset", "from", "to", "id_sensor", "ip")
# per kind: its time column, its address columns, and {argument: column} of exact filters
KINDS: dict[str, tuple[str, tuple[str, ...], dict[str, str]]] = {
    "register_state": ("created_at", ("sipcallerip", "sipcalledip"),
                       {"user": "to_num", "state": "state", "domain": "to_domain"}),
    "register_failed": ("created_at", ("sipcallerip", "sipcalledip"),
                        {"user": "to_num", "response": "response", "domain": "to_domain"}),
    "register_time_info": ("created_at", ("sipcallerip", "sipcalledip"),
                           {"type": "type_info"}),
    "sip_msg": ("time", ("ip_src", "ip_dst"),
                {"method": "type", "qualify": "qualify_ok", "response": "response_number",
                 "user": "number_dst", "callid": "callid"}),
    "message": ("calldate", ("sipcallerip", "sipcalledip"),
                {"caller": "caller", "called": "called"}),
    "alert": ("created_at", ("sipcallerip", "sipcalledip"), {"kind": "kind"}),
}
#: What makes two register_state rows the same registration (``current=yes``).
_SAME_REGISTRATION = ("id_sensor", "to_num", "to_domain", "contact_num", "contact_domain",
                      "sipcallerip", "sipcallerport")


@dataclass(frozen=True)
class RecordQuery:
    kind: str
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    start: float | None = None
    end: float | None = None
    id_sensor: int | None = None
    ip: str | None = None
    equals: tuple[tuple[str, Any], ...] = ()
    current: bool = False

    @classmethod
    def from_args(cls, kind: str, args: Mapping[Any, Any]) -> RecordQuery:
        """From HTTP arguments; ValueError naming a bad one."""
        if kind not in KINDS:
            raise ValueError(f"no records of kind {kind!r}")
        _, _, exact = KINDS[kind]
        allowed = _COMMON + tuple(exact) + (("current",) if kind == "register_state" else ())
        values = http_args(args, allowed)
        fields: dict[str, Any] = {}
        for name, attr in (("limit", "limit"), ("offset", "offset"), ("id_sensor", "id_sensor")):
            if name in values:
                fields[attr] = _whole(name, values[name])
        if not 1 <= fields.get("limit", DEFAULT_LIMIT) <= MAX_LIMIT:
            raise ValueError(f"limit = {fields['limit']}: allowed: 1..{MAX_LIMIT}")
        if fields.get("offset", 0) > MAX_OFFSET:
            raise ValueError(f"offset = {fields['offset']}: allowed: 0..{MAX_OFFSET}")
        if "from" in values:
            fields["start"] = parse_time("from", values["from"])
        if "to" in values:
            fields["end"] = parse_time("to", values["to"])
        if values.get("ip"):
            if ip_bytes(values["ip"]) is None:
                raise ValueError(f"ip = {values['ip']!r}: allowed: an IPv4 or IPv6 address")
            fields["ip"] = values["ip"]
        if "current" in values:
            fields["current"] = bool(_choice("current", values["current"], _YES_NO))
        equals = []
        for name, column in exact.items():
            text = values.get(name)
            if not text:
                continue
            if column == "state":
                value: Any = _choice(name, text, _STATES) if not text.isdigit() else \
                    _whole(name, text)
            elif column == "type":
                value = _choice(name, text, _METHODS)
            elif column == "qualify_ok":
                value = _choice(name, text, _YES_NO)
            elif column in ("response", "response_number"):
                value = _whole(name, text)
            else:
                value = text
            equals.append((column, value))
        return cls(kind=kind, equals=tuple(equals), **fields)


def _whole(name: str, text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,10}", text):
        raise ValueError(f"{name} = {text!r}: allowed: a whole number")
    return int(text)


def _choice(name: str, text: str, choices: Mapping[str, int]) -> int:
    try:
        return choices[text.lower()]
    except KeyError:
        raise ValueError(f"{name} = {text!r}: allowed: {', '.join(choices)}")


def as_record_query(kind: str, query: RecordQuery | Mapping[Any, Any] | None) -> RecordQuery:
    if isinstance(query, RecordQuery):
        return query
    return RecordQuery.from_args(kind, query or {})


def select_sql(query: RecordQuery, ph: str) -> tuple[str, list[Any]]:
    """The SELECT of one page: ``("ID", *columns(kind))`` per row, newest first."""
    kind = query.kind
    table = RECORD_TABLES[kind].name
    when, ips, _ = KINDS[kind]
    names = ", ".join(f"r.{q(c)}" for c in ("ID", *recordrows.columns(kind)))
    terms: list[str] = []
    params: list[Any] = []
    range_terms(terms, params, f"r.{q(when)}", query.start, query.end, query.id_sensor,
                "r.`id_sensor`", ph, datetime_text)
    if query.ip is not None:
        terms.append("(" + " OR ".join(f"r.{q(c)} = {ph}" for c in ips) + ")")
        params += [ip_bytes(query.ip)] * len(ips)
    for column, value in query.equals:
        terms.append(f"r.{q(column)} = {ph}")
        params.append(value)
    if query.current and kind == "register_state":
        same = " AND ".join(f"n.{q(c)} = r.{q(c)}" for c in _SAME_REGISTRATION)
        terms.append(f"NOT EXISTS (SELECT 1 FROM {q(table)} n WHERE {same} AND "
                     f"(n.{q(when)} > r.{q(when)} OR (n.{q(when)} = r.{q(when)} AND "
                     f"n.`ID` > r.`ID`)))")
    where = f" WHERE {' AND '.join(terms)}" if terms else ""
    sql = (f"SELECT {names} FROM {q(table)} r{where} ORDER BY r.{q(when)} DESC, r.`ID` DESC "
           f"LIMIT {ph} OFFSET {ph}")
    return sql, [*params, query.limit, query.offset]


def lookup_ids(kind: str, rows: list[tuple[Any, ...]]) -> dict[str, set[int]]:
    """{lookup kind: ids} the rows refer to."""
    wanted: dict[str, set[int]] = {}
    for index, col in enumerate(recordrows.SPECS[kind], 3):
        if col.how.startswith("lookup:"):
            ids = wanted.setdefault(col.how[7:], set())
            ids.update(row[index] for row in rows if row[index] is not None)
    return {k: v for k, v in wanted.items() if v}


def read_page(cur: Any, dialect: Any, query: RecordQuery) -> list[dict[str, Any]]:
    """One page of ``query`` (in a pool thread, inside a transaction), as the API shows it."""
    sql, params = select_sql(query, dialect.placeholder)
    cur.execute(sql, tuple(params))
    rows = [tuple(row) for row in cur.fetchall()]
    texts: dict[str, dict[int, str]] = {}
    for lookup, ids in lookup_ids(query.kind, rows).items():
        table, column, _ = recordrows.LOOKUPS[lookup]
        found = texts[lookup] = {}
        wanted = sorted(ids)
        for at in range(0, len(wanted), 500):
            chunk = wanted[at:at + 500]
            cur.execute(f"SELECT `id`, {q(column)} FROM {q(table)} WHERE `id` IN "
                        f"({dialect.params(len(chunk))})", tuple(chunk))
            found.update((ident, value) for ident, value in cur.fetchall())
    return [present(query.kind, row, texts) for row in rows]


def present(kind: str, row: tuple[Any, ...], texts: dict[str, dict[int, str]]
            ) -> dict[str, Any]:
    """A row as the API shows it."""
    out = recordrows.decode(kind, row, texts)
    if kind == "register_state":
        out["state_name"] = STATE_NAMES.get(out["state"], str(out["state"]))
    elif kind == "sip_msg":
        out["method"] = _METHOD_NAMES.get(out["type"], str(out["type"]))
    elif kind == "message":
        out["type"] = TYPE_MESSAGE
    return out


__all__ = ["KINDS", "RecordQuery", "as_record_query", "lookup_ids", "present", "read_page",
           "select_sql"]
