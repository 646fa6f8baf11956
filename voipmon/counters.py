"""Counters: one way for every component to say what it has counted.

A component that counts provides ``ICounters``: ``counters()`` returns a new flat dict of
numbers, the component's counters (totals since it started: frames, CDRs, errors ...) and
gauges (what it holds now: queue depth, calls in progress ...), read at the moment of the
call. It is cheap (no I/O but a kernel counter, nothing that blocks), so the metrics
registry (``voipmon.metrics``: ``CountersSource(component.counters, TABLE)``) can read
every component at each scrape, and ``sniffer_stat``, the CLI's ``--stats`` and the logs
are made from the same numbers.

A key is a name (``frames``, ``queue_depth``) or a dotted path: a family of counters told
apart by one label (``undecodable.tcp_short``: the decoder's frames undecodable for the
reason ``tcp_short``, which a metrics table binds as ``undecodable.*``), or the counters of
a part under its prefix (an engine's ``decoder.frames``). Label values are identifiers
(reasons, kinds, methods): a dot in one would read as a deeper path. Status that is not a
number (a name, the last error) is not a counter: it stays an attribute.

Hot paths keep their counters as plain attributes of a ``Counts`` holder (``stats.cdrs +=
1``) and copy them out in ``counters()``. ``nested`` turns the flat form into nested
objects for people to read.
"""

from __future__ import annotations

from collections.abc import Mapping

from zope.interface import Interface

Number = int | float
Counters = dict[str, Number]


class ICounters(Interface):
    """A component that counts."""

    def counters():
        """A snapshot of the component's counters and gauges: a new flat ``dict`` of key
        (see ``voipmon.counters``) to ``int`` or ``float``."""


class Counts:
    """A holder of integer counters that a hot path increments in place (``stats.cdrs +=
    1``: an attribute of a plain object is the cheapest counter there is); ``counters()``
    is a snapshot of them. Subclasses set their counters to 0 in ``__init__``."""

    def counters(self) -> Counters:
        return dict(vars(self))


def family(name: str, counts: Mapping[object, Number]) -> Counters:
    """A family of counters by one label (a ``Counter`` of reasons ...) as flat keys:
    ``name.value``, in the order given."""
    return {f"{name}.{value}": count for value, count in counts.items()}


def prefixed(prefix: str, counters: Mapping[str, Number]) -> Counters:
    """The counters of a part, their keys under ``prefix.`` (``decoder.frames``)."""
    return {f"{prefix}.{name}": value for name, value in counters.items()}


def nested(counters: Mapping[str, Number]) -> dict[str, object]:
    """The flat counters as nested objects for people: ``decoder.frames`` under
    ``decoder``, ``undecodable.x`` as ``undecodable: {x: n}``."""
    out: dict[str, object] = {}
    for key, value in counters.items():
        *parts, last = key.split(".")
        place = out
        for part in parts:
            place = place.setdefault(part, {})   # type: ignore[assignment]
        place[last] = value
    return out


__all__ = ["Counters", "Counts", "ICounters", "family", "nested", "prefixed"]
