"""Every record type, by its KIND, and the one form a record takes in a queue and on the
channel.

A reader of the queue, the channel or the dead letters looks a record's type up here. A
new record type is added here (and to the store's writers) and nowhere else.

An *item* is a record as the sensor's durable queue, the central's queue and the channel's
record batches (CDRS messages) carry it: a CDR is its wire object as sensors have always
sent it (``{...}``), any other record ``["<kind>", {...}]``. So one batch carries records
of any kind in queue order, and a CDR-only sensor, central or queue of an older version
reads and writes the same bytes as before. ``item_bytes`` makes an item, ``from_item``
reads a decoded one back (checked, ValueError naming the kind and field).
"""

from __future__ import annotations

import json

from voipmon.records.alert import Alert
from voipmon.records.cdr import Cdr
from voipmon.records.codec import Record
from voipmon.records.interfaces import IRecordType
from voipmon.records.register import RegisterFailed, RegisterState, RegisterTimeInfo
from voipmon.records.sipmsg import InstantMessage, SipMsg

RECORD_TYPES: dict[str, IRecordType] = {
    kind.KIND: kind for kind in (Cdr, RegisterState, RegisterFailed, RegisterTimeInfo, SipMsg,
                                 InstantMessage, Alert)
}
_BARE = Cdr.KIND      # the kind whose items are its bare wire object


def record_type_of(kind: str) -> IRecordType:
    """The record type named ``kind``; ValueError for a kind this version does not know."""
    try:
        return RECORD_TYPES[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown record kind {kind!r:.40}")


def item_bytes(record: Record) -> bytes:
    """``record`` as a queue and batch item (compact ASCII JSON)."""
    kind = record.KIND
    if kind == _BARE:
        return record.to_wire()
    return b'["' + kind.encode("ascii") + b'",' + record.to_wire() + b"]"


def from_item(item: object) -> Record:
    """The record of a decoded item; ValueError naming what is wrong."""
    if isinstance(item, list):
        if len(item) != 2 or not isinstance(item[0], str) or item[0] == _BARE:
            raise ValueError("record item: expected [kind, {fields}]")
        return record_type_of(item[0]).from_wire(item[1])
    return Cdr.from_wire(item)


def from_item_bytes(data: bytes) -> Record:
    """The record of an item's bytes (a queue record); ValueError if it is none."""
    try:
        item = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"record item: not JSON ({exc})")
    return from_item(item)


def kind_of_item(item: object) -> str:
    """The kind an item says it is ("?" when it says nothing readable), for messages."""
    if isinstance(item, list):
        return item[0] if item and isinstance(item[0], str) else "?"
    return _BARE


__all__ = ["RECORD_TYPES", "from_item", "from_item_bytes", "item_bytes", "kind_of_item",
           "record_type_of"]
