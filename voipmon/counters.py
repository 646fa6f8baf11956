"""Counters: one way for every component to say what it has counted.

A component that counts provides ``ICounters``: ``counters()`` returns a new flat dict of
numbers, the component's counters (totals since it started: frames, CDRs, errors ...) and
gauges (what it holds now: queue depth, calls in progress ...), read at the moment of the
call. It is cheap (no I/O but a kernel counter, nothing that blocks), so the metrics
collectors can read every component at each scrape, and ``sniffer_stat``, the STATS a
sensor sends, the CLI's ``--stats`` and the logs are made from the same numbers.

A key is a name (``frames``, ``queue_depth``) or, for one of a family of counters told apart
by a label, the name and the label in the Prometheus text form made by ``key``:
``undecodable{reason="tcp_short"}``. Any text can be a label's value (an interface named
``eth0.100``, a sensor's name). A component that holds others with counters of their own
writes theirs under a prefix (``prefixed``: an engine's ``decoder.frames``). Status that is
not a number (a name, the last error) is not a counter: it stays an attribute.

``nested`` turns the flat form back into nested objects (``{"decoder": {"undecodable":
{"tcp_short": 3}}}``) for people to read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from zope.interface import Interface

Number = int | float
Counters = dict[str, Number]


class ICounters(Interface):
    """A component that counts."""

    def counters():
        """A snapshot of the component's counters and gauges: a new flat ``dict`` of key
        (see ``voipmon.counters``) to ``int`` or ``float``."""


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)", re.S)


class Counts:
    """A holder of integer counters that a hot path increments in place (``stats.cdrs +=
    1``: an attribute of a plain object is the cheapest counter there is); ``counters()``
    is a snapshot of them. Subclasses set their counters to 0 in ``__init__``."""

    def counters(self) -> Counters:
        return dict(vars(self))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescaped(match: re.Match[str]) -> str:
    return "\n" if match[1] == "n" else match[1]


def key(name: str, **labels: object) -> str:
    """The key of one counter of the family ``name``: ``name{label="value",...}``."""
    inner = ",".join(f'{label}="{_escape(str(value))}"' for label, value in labels.items())
    return f"{name}{{{inner}}}"


def family(name: str, label: str, counts: Mapping[str, Number]) -> Counters:
    """The keys of a family of counters by one label (``Counter`` of reasons...)."""
    return {key(name, **{label: value}): count for value, count in counts.items()}


def prefixed(prefix: str, counters: Mapping[str, Number]) -> Counters:
    """The counters of a part, their keys under ``prefix.`` (``decoder.frames``)."""
    return {f"{prefix}.{name}": value for name, value in counters.items()}


def split(text: str) -> tuple[str, dict[str, str]]:
    """A key's name and its labels: the inverse of ``key``."""
    name, brace, rest = text.partition("{")
    return name, {label: _UNESCAPE.sub(_unescaped, value)
                  for label, value in _LABEL.findall(rest)} if brace else {}


def nested(counters: Mapping[str, Number]) -> dict[str, object]:
    """The flat counters as nested objects for people: ``decoder.frames`` under
    ``decoder``, ``undecodable{reason="x"}`` as ``undecodable: {x: n}`` (labels in order)."""
    out: dict[str, object] = {}
    for text, value in counters.items():
        name, labels = split(text)
        *parts, last = name.split(".")
        place = out
        for part in parts:
            place = place.setdefault(part, {})   # type: ignore[assignment]
        if not labels:
            place[last] = value
            continue
        *outer, inner = labels.values()
        place = place.setdefault(last, {})       # type: ignore[assignment]
        for label in outer:
            place = place.setdefault(label, {})  # type: ignore[assignment]
        place[inner] = value
    return out


__all__ = ["Counters", "Counts", "ICounters", "family", "key", "nested", "prefixed", "split"]
