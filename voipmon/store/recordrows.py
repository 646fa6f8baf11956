"""The rows of the records that are not CDRs (registrations, SIP messages, alerts): one
column map per record kind, read both ways.

Each table of ``voipmon.store.schema.RECORD_TABLES`` is described once here, column by
column: which record field fills it and how (``ip``: packed address, ``dt``: datetime(3)
text, ``text``: fitted to the column, ``int``/``float``/``bool``, ``lookup:<table>``: the
id of the text in a lookup table). The writer (``voipmon.store.recordwrite``) encodes rows
with it, and the readers (``voipmon.store.recordread``) turn rows back into JSON objects
keyed by the record's own field names (times as ISO 8601, addresses as text, lookups as
their text), so the API shows what the engine emitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from voipmon.records.times import iso_ms
from voipmon.store.fields import (
    U8,
    U16,
    U32,
    datetime_text,
    epoch,
    ip_bytes,
    ip_text,
    lookup_text,
    real,
    text,
    unsigned,
)
from voipmon.store.schema import RECORD_TABLES, Table

#: lookup kind -> (table, text column, longest text)
LOOKUPS = {"response": ("cdr_sip_response", "lastSIPresponse", 255),
           "ua": ("cdr_ua", "ua", 512), "contenttype": ("contenttype", "contenttype", 255)}
_MAX = {"u8": U8, "u16": U16, "u32": U32}


@dataclass(frozen=True)
class Col:
    """One column: its name, the record field it holds and how (see the module doc)."""

    column: str
    field: str
    how: str


def _spec(table: Table, renames: dict[str, tuple[str, str]]) -> tuple[Col, ...]:
    """Every column but ID and the key: named as the field unless ``renames`` says
    ``column -> (field, how)``; ``how`` from the column's type otherwise."""
    cols = []
    for column in table.columns:
        if column.name in ("ID", "id_sensor", "uid"):
            continue
        if column.name in renames:
            field, how = renames[column.name]
        else:
            kind = column.type.partition(":")[0]
            how = {"ip": "ip", "datetime": "dt", "double": "float", "bool": "bool",
                   "text": "text", "ascii": "text", "longtext": "text", "enum": "text"}.get(
                       kind, "int")
            field = column.name
        cols.append(Col(column.name, field, how))
    return tuple(cols)


_REGISTER = {"ua_id": ("ua", "lookup:ua")}
SPECS: dict[str, tuple[Col, ...]] = {
    "register_state": _spec(RECORD_TABLES["register_state"], _REGISTER),
    "register_failed": _spec(RECORD_TABLES["register_failed"], _REGISTER),
    "register_time_info": _spec(RECORD_TABLES["register_time_info"], {}),
    "sip_msg": _spec(RECORD_TABLES["sip_msg"], {
        "ua_src_id": ("ua_src", "lookup:ua"), "ua_dst_id": ("ua_dst", "lookup:ua"),
        "request_id_content_type": ("request_content_type", "lookup:contenttype"),
        "response_id_content_type": ("response_content_type", "lookup:contenttype"),
        "response_id": ("response_reason", "lookup:response")}),
    "message": _spec(RECORD_TABLES["message"], {
        "lastSIPresponse_id": ("lastSIPresponse", "lookup:response"),
        "a_ua_id": ("a_ua", "lookup:ua"), "b_ua_id": ("b_ua", "lookup:ua"),
        "id_contenttype": ("content_type", "lookup:contenttype")}),
    "alert": _spec(RECORD_TABLES["alert"], {}),
}
#: Kinds whose records are re-emitted with a growing ``revision`` (the row is updated).
REVISED = frozenset({"register_failed", "alert"})


def columns(kind: str) -> tuple[str, ...]:
    """The columns an INSERT of ``kind`` names (the key first)."""
    return ("id_sensor", "uid", *(c.column for c in SPECS[kind]))


def lookups(kind: str, record: Any) -> list[tuple[str, str]]:
    """(lookup kind, text) of every lookup column of ``record``."""
    out = []
    for col in SPECS[kind]:
        if col.how.startswith("lookup:"):
            lookup = col.how[7:]
            value = lookup_text(getattr(record, col.field), LOOKUPS[lookup][2])
            if value is not None:
                out.append((lookup, value))
    return out


def _limit(kind: str, column: str) -> int:
    length = RECORD_TABLES[kind].column(column).length
    return length if length is not None else 16 << 20


def encode(kind: str, record: Any, ids: Callable[[str, str | None], int | None]
           ) -> tuple[Any, ...]:
    """The row of ``record`` (``columns(kind)`` order); ``ids(lookup, text)`` gives the id
    of a lookup text."""
    table = RECORD_TABLES[kind]
    row: list[Any] = [record.id_sensor, record.uid]
    for col in SPECS[kind]:
        value = getattr(record, col.field)
        how = col.how
        if how == "ip":
            row.append(ip_bytes(value))
        elif how == "dt":
            row.append(None if value is None else datetime_text(float(value)))
        elif how == "text":
            row.append(text(value, _limit(kind, col.column)))
        elif how == "float":
            row.append(real(value))
        elif how == "bool":
            row.append(None if value is None else int(bool(value)))
        elif how.startswith("lookup:"):
            lookup = how[7:]
            row.append(ids(lookup, lookup_text(value, LOOKUPS[lookup][2])))
        else:
            kind_name = table.column(col.column).type.partition(":")[0]
            row.append(unsigned(value, _MAX.get(kind_name, U32)))
    return tuple(row)


def decode(kind: str, row: tuple[Any, ...], texts: dict[str, dict[int, str]]
           ) -> dict[str, Any]:
    """The JSON object of a row read as ``("ID", *columns(kind))``; ``texts[lookup][id]``
    the lookup texts."""
    out: dict[str, Any] = {"id": row[0], "id_sensor": row[1], "uid": row[2]}
    for col, value in zip(SPECS[kind], row[3:], strict=True):
        how = col.how
        if how == "ip":
            value = ip_text(value) if value is not None else ""
        elif how == "dt":
            value = iso_ms(epoch(value)) if value is not None else None
        elif how == "bool":
            value = None if value is None else bool(value)
        elif how == "float":
            value = None if value is None else float(value)
        elif how.startswith("lookup:"):
            value = texts.get(how[7:], {}).get(value, "") if value is not None else ""
        out[col.field] = value
    return out


__all__ = ["LOOKUPS", "REVISED", "SPECS", "Col", "columns", "decode", "encode", "lookups"]
