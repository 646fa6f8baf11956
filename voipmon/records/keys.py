"""Stable record keys: the same packets give the same key, on the sensor and on the central.

Every record carries ``uid``, unique per sensor, so the store can insert it idempotently
on (id_sensor, uid) however many times the queue delivers it. The key is a hash of what
identifies the record (never a counter or the wall clock), so replaying a capture,
restarting a sensor or analysing mirrored packets on the central gives the same key.
"""

from __future__ import annotations

import hashlib


def stable_uid(kind: str, *parts: object) -> str:
    """A 32-hex-digit key of ``kind`` and ``parts`` (floats are taken to the microsecond)."""
    text = kind
    for part in parts:   # length-prefixed: no two lists of parts give the same text
        value = str(round(part * 1_000_000)) if part.__class__ is float else str(part)
        text += f"\x00{len(value)}:{value}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]
