"""Stable record keys: the same packets give the same key, on the sensor and on the central.

Every record carries a key unique per sensor (``uid``; a CDR's ``sensor_cdr_uid``), so
the store can insert it idempotently on (id_sensor, key) however many times the queue
delivers it. The key is a hash of what identifies the record (never a counter or the wall
clock), so replaying a capture, restarting a sensor or analysing mirrored packets on the
central gives the same key.
"""

from __future__ import annotations

import hashlib


def callid_bytes(callid: str) -> bytes:
    """The exact bytes of a Call-ID (or any header text) as it came off the wire.

    The SIP parser keeps a Call-ID's bytes that are not UTF-8 as lone surrogates
    U+DC80..U+DCFF (PEP 383 ``surrogateescape``); this turns them back into those bytes.
    Valid text never holds a surrogate, so the mapping is exact and unambiguous. A
    surrogate no parser here produces (one that did not come from a byte) is written
    as its UTF-8-style bytes rather than refused: a value never makes this raise.
    """
    try:
        return callid.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return callid.encode("utf-8", "surrogatepass")


def make_cdr_uid(callid: str, first_packet_ts: float) -> str:
    """Deterministic per-sensor id of a call (``Cdr.sensor_cdr_uid``): same packets, same
    uid."""
    key = callid_bytes(f"{callid}\x00{round(first_packet_ts * 1_000_000)}")
    return hashlib.sha256(key).hexdigest()[:32]


def stable_uid(kind: str, *parts: object) -> str:
    """A 32-hex-digit key of ``kind`` and ``parts`` (floats are taken to the microsecond)."""
    text = kind
    for part in parts:   # length-prefixed: no two lists of parts give the same text
        value = str(round(part * 1_000_000)) if part.__class__ is float else str(part)
        text += f"\x00{len(value)}:{value}"
    return hashlib.sha256(callid_bytes(text)).hexdigest()[:32]


__all__ = ["callid_bytes", "make_cdr_uid", "stable_uid"]
