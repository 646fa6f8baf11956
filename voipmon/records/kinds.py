"""Every record type, by its KIND: what a reader of the queue, the channel or the dead
letters looks a record's type up in. A new record type is added here (and to the store's
writers) and nowhere else."""

from __future__ import annotations

from voipmon.records.alert import Alert
from voipmon.records.cdr import Cdr
from voipmon.records.interfaces import IRecordType
from voipmon.records.register import RegisterFailed, RegisterState, RegisterTimeInfo
from voipmon.records.sipmsg import InstantMessage, SipMsg

RECORD_TYPES: dict[str, IRecordType] = {
    kind.KIND: kind for kind in (Cdr, RegisterState, RegisterFailed, RegisterTimeInfo, SipMsg,
                                 InstantMessage, Alert)
}


def record_type_of(kind: str) -> IRecordType:
    """The record type named ``kind``; ValueError for a kind this version does not know."""
    try:
        return RECORD_TYPES[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown record kind {kind!r:.40}")


__all__ = ["RECORD_TYPES", "record_type_of"]
