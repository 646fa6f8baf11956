"""Capabilities: what each end of a channel can do, said in HELLO and ACCEPT. Pure.

The sensor lists its capabilities in HELLO, the central its own in ACCEPT, each as
``"capabilities": {name: level}`` (a positive integer; a capability that grows gets a
higher level). A feature is on when both listed it, at the lower of the two levels: the
agreed set is the same on both ends, computed from what each said, with no further round
trip. Names a side does not know are ignored, so a newer peer degrades politely instead of
being refused::

    HELLO  {..., "capabilities": {"requests": 1, "capture_clock": 1}}  ->
                          <-  ACCEPT {..., "capabilities": {"requests": 1}}
    agreed on both ends: {"requests": 1}

A frame type outside the base protocol (types 1..15) belongs to a capability
(``FRAME_CAPABILITY``), and the rule is: **never send a frame type whose capability was
not agreed.** A peer that breaks it gets a protocol error that names the type and what was
agreed (``check_frame``), and a frame type number the receiver does not know at all closes
the channel with a reason naming what the receiver speaks (``unknown_frame``): a correct
peer never sends one, since it was told. Features that need the other side degrade on the
sender's side instead: the central's requester answers "sensor N does not take requests"
for a sensor that did not list ``requests``.

``capture_clock`` was first offered as a top-level ``"capture_clock": true`` in ACCEPT;
``parse`` still reads it (``LEGACY_FLAGS``) and ``advertise(legacy=True)`` still writes it, so
peers of that version and of this one agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from voipmon.protocols.wire import MessageType, ProtocolError

#: Which capability each frame type beyond the base protocol needs (by type name, so a
#: type may be listed before its number exists in this version's MessageType).
FRAME_CAPABILITY: dict[str, str] = {
    "REQUEST": "requests", "ANSWER": "requests", "CREDIT": "requests", "CANCEL": "requests",
    "CLOCK": "capture_clock",
}
#: What this version can do; the channels offer it (the sensor in HELLO, the central in
#: ACCEPT). ``capture_clock``: the CLOCK message of live mirroring sensors.
SUPPORTED: dict[str, int] = {"requests": 1, "capture_clock": 1}
#: Capabilities once offered as top-level booleans of ACCEPT.
LEGACY_FLAGS = frozenset({"capture_clock"})
MAX_ENTRIES = 64
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class Capabilities:
    """An immutable set of capability levels (what one side offers, or what was agreed)."""

    __slots__ = ("_levels",)

    def __init__(self, levels: Mapping[str, int] | None = None) -> None:
        levels = dict(levels or {})
        for name, level in levels.items():
            if not _NAME.fullmatch(name) or not isinstance(level, int) or level < 1:
                raise ValueError(f"bad capability {name!r}: {level!r}")
        self._levels = levels

    def level(self, name: str) -> int:
        """The level of ``name``, 0 if absent."""
        return self._levels.get(name, 0)

    def __contains__(self, name: object) -> bool:
        return name in self._levels

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Capabilities) and other._levels == self._levels

    def __hash__(self) -> int:
        return hash(frozenset(self._levels.items()))

    def __repr__(self) -> str:
        return f"Capabilities({self._levels!r})"

    def negotiate(self, theirs: Capabilities) -> Capabilities:
        """What both sides can do, each at the lower level."""
        return Capabilities({name: min(level, theirs.level(name))
                             for name, level in self._levels.items() if name in theirs})

    def allows(self, kind: MessageType) -> bool:
        """Whether a frame of type ``kind`` may travel on a channel that agreed on these."""
        needed = FRAME_CAPABILITY.get(kind.name)
        return needed is None or needed in self._levels

    def describe(self) -> str:
        """For logs and errors: 'requests 1, capture_clock 1', or 'none'."""
        return ", ".join(f"{name} {level}" for name, level in sorted(self._levels.items())) \
            or "none"

    def to_json(self) -> dict[str, int]:
        return dict(self._levels)

    def advertise(self, legacy: bool = True) -> dict[str, Any]:
        """The fields to put in a HELLO or an ACCEPT body."""
        fields: dict[str, Any] = {"capabilities": self.to_json()}
        if legacy:
            fields.update({name: True for name in LEGACY_FLAGS if name in self._levels})
        return fields


def parse(body: Mapping[str, Any], message: str) -> Capabilities:
    """What a HELLO or ACCEPT ``body`` offers. Entries this version cannot read (a name or
    level of a later version) are left out, never refused; a ``capabilities`` that is not
    an object of at most MAX_ENTRIES entries is a ProtocolError. A peer that says nothing
    offers nothing (beyond the legacy flags it sets)."""
    value = body.get("capabilities", {})
    if not isinstance(value, dict) or len(value) > MAX_ENTRIES:
        raise ProtocolError(f"malformed {message} message: bad 'capabilities' (an object of "
                            f"at most {MAX_ENTRIES} names and levels)")
    levels = {name: level for name, level in value.items()
              if isinstance(name, str) and _NAME.fullmatch(name)
              and isinstance(level, int) and not isinstance(level, bool) and level >= 1}
    for name in LEGACY_FLAGS:
        if body.get(name) is True:
            levels.setdefault(name, 1)
    return Capabilities(levels)


def capability_of(kind: MessageType) -> str | None:
    """The capability frame type ``kind`` needs; None for the base protocol."""
    return FRAME_CAPABILITY.get(kind.name)


def check_frame(kind: MessageType, agreed: Capabilities) -> None:
    """ProtocolError if ``kind`` travels on a channel that did not agree on its capability."""
    if not agreed.allows(kind):
        raise ProtocolError(f"{kind.name} sent without the {capability_of(kind)!r} capability "
                            f"(agreed on this channel: {agreed.describe()})")


def unknown_frame(number: int, agreed: Capabilities | None) -> ProtocolError:
    """The error for a frame type number this side does not know, naming what it speaks."""
    spoken = "not agreed yet" if agreed is None else agreed.describe()
    return ProtocolError(f"unknown frame type {number}: a peer must send only the base "
                         f"protocol and agreed capabilities ({spoken})")
