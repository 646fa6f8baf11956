"""Figures and snapshots: what a component reports, and what a sensor pushes.

``Histogram`` is a histogram kept as plain ints (a bucket count per bound and a sum), for a
component to observe into without any call into prometheus_client.

``Figures`` holds the current values of catalog families, each series keyed by its label
values, checked against the catalog as they are written (type, labels, bounded values).
Values written twice for one series add up, so several parts may count into one series.

``Snapshot`` is a sensor's figures with a header: what the sensor pushes to the central in
its STATS message every few seconds, and what the central keeps per sensor. Its JSON form,
version 1 (``SNAPSHOT_VERSION``)::

    {"v": 1, "id_sensor": 3, "instance": "5f0c...", "seq": 42,
     "started": 1700000000.0, "time": 1700000210.5, "version": "0.1.0", "mode": "local",
     "counters":   {"voipmon_sensor_packets_total": 123456,
                    "voipmon_sip_requests_total": {"INVITE": 40, "BYE": 38},
                    "voipmon_sip_responses_total": {"INVITE": {"1xx": 80, "2xx": 40}}},
     "gauges":     {"voipmon_calls_active": 2, "voipmon_sensor_queue_records": 0},
     "histograms": {"voipmon_call_mos": {"le": [1.0, 1.5, ...], "counts": [0, 0, ..., 3],
                                         "sum": 170.2}}}

- ``instance`` names the sensor's process (random, new at each start); ``seq`` counts its
  snapshots from 1; ``started`` and ``time`` are the sensor's clock (epoch seconds) at its
  start and when the snapshot was taken. Counters are monotonic within one instance; a new
  instance is a restart, and its counters start from 0 (what Prometheus calls a reset).
- Each family sits under its type; its series are nested by label values in the catalog's
  label order (a family without labels is just its value). A histogram carries its bounds
  (``le``), a count per bound plus one for +Inf (not cumulative), and the sum.
- A family the reader does not know (a newer sensor) is ignored and named in
  ``Snapshot.ignored``; anything else malformed refuses the whole snapshot (SnapshotError).
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from voipmon.metrics.catalog import BY_NAME, Family, Kind, Scope
from voipmon.protocols.wire import is_number

SNAPSHOT_VERSION = 1
MAX_SERIES_PER_FAMILY = 256
MAX_SERIES = 4096
MAX_BUCKETS = 64
MAX_LABEL_VALUE = 64
MAX_COUNT = 2**63 - 1
MAX_EPOCH = 253402300799.0          # 9999-12-31, as the hello's time
_SECTIONS = {Kind.COUNTER: "counters", Kind.GAUGE: "gauges", Kind.HISTOGRAM: "histograms"}

Labels = tuple[str, ...]


class SnapshotError(ValueError):
    """A snapshot (or a figure) that does not fit the catalog; the message says why."""


class Histogram:
    """Observations counted into buckets, as plain ints. ``counts[i]`` is the number of
    values <= ``bounds[i]`` and above the bound before; the last count is above every bound."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        if not self.bounds or list(self.bounds) != sorted(set(self.bounds)) or not all(
                math.isfinite(b) for b in self.bounds):
            raise SnapshotError(f"histogram bounds must be finite and increase: {bounds!r}")
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    @classmethod
    def of(cls, item: Family) -> Histogram:
        """An empty histogram with the catalog's bounds for ``item``."""
        return cls(item.buckets)

    def observe(self, value: float) -> None:
        if not math.isfinite(value):            # NaN or an infinity: not a measurement
            return
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(le, count of values <= le) per bound and for +Inf, as Prometheus exposes them."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out

    def add(self, other: Histogram) -> None:
        if other.bounds != self.bounds:
            raise SnapshotError(f"histograms with different bounds: {self.bounds} and "
                                f"{other.bounds}")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum

    def copy(self) -> Histogram:
        new = Histogram.__new__(Histogram)
        new.bounds, new.counts, new.sum = self.bounds, list(self.counts), self.sum
        return new

    def to_json(self) -> dict[str, Any]:
        return {"le": list(self.bounds), "counts": list(self.counts), "sum": self.sum}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Histogram:
        if not isinstance(data, dict) or set(data) != {"le", "counts", "sum"}:
            raise SnapshotError(f"{where}: a histogram is {{le, counts, sum}}")
        bounds, counts, total = data["le"], data["counts"], data["sum"]
        if not isinstance(bounds, list) or not 0 < len(bounds) <= MAX_BUCKETS or not all(
                is_number(b, -MAX_EPOCH, MAX_EPOCH) for b in bounds):
            raise SnapshotError(f"{where}: le must be 1..{MAX_BUCKETS} finite numbers")
        if not isinstance(counts, list) or len(counts) != len(bounds) + 1 or not all(
                is_number(c, 0, MAX_COUNT, integer=True) for c in counts):
            raise SnapshotError(f"{where}: counts must be {len(bounds) + 1} counts (one per "
                                "bound and one for +Inf)")
        if not is_number(total, -1e300, 1e300):
            raise SnapshotError(f"{where}: sum must be a finite number")
        histogram = cls(bounds)
        histogram.counts, histogram.sum = list(counts), float(total)
        return histogram


def _label_value(value: Any, where: str) -> str:
    if (not isinstance(value, str) or not 0 < len(value) <= MAX_LABEL_VALUE
            or not value.isprintable()):
        raise SnapshotError(f"{where}: a label value is 1..{MAX_LABEL_VALUE} printable "
                            f"characters, not {value!r:.80}")
    return value


class Figures:
    """Current values of catalog families of the given scopes (see the module docstring)."""

    def __init__(self, scopes: frozenset[Scope] = frozenset({Scope.SENSOR})) -> None:
        self.scopes = scopes
        self.series: dict[str, dict[Labels, float | Histogram]] = {}
        self._count = 0
        self._frozen = False

    def counter(self, name: str, value: float, **labels: str) -> None:
        self._put(name, Kind.COUNTER, labels, value)

    def gauge(self, name: str, value: float, **labels: str) -> None:
        self._put(name, Kind.GAUGE, labels, value)

    def histogram(self, name: str, histogram: Histogram, **labels: str) -> None:
        self._put(name, Kind.HISTOGRAM, labels, histogram)

    def _family(self, name: str, kind: Kind) -> Family:
        item = BY_NAME.get(name)
        if item is None:
            raise SnapshotError(f"{name!r} is not a voipmon metric")
        if item.kind is not kind:
            raise SnapshotError(f"{name} is a {item.kind}, not a {kind}")
        if item.scope not in self.scopes:
            raise SnapshotError(f"{name} is a {item.scope} metric; these figures hold "
                                f"{', '.join(sorted(self.scopes))} metrics")
        return item

    def _put(self, name: str, kind: Kind, labels: Mapping[str, str],
             value: float | Histogram) -> None:
        item = self._family(name, kind)
        if set(labels) != set(item.labels):
            raise SnapshotError(f"{name} has the labels ({', '.join(item.labels)}), "
                                f"not ({', '.join(sorted(labels))})")
        key = tuple(_label_value(labels[label], name) for label in item.labels)
        self._store(item, key, value)

    def _store(self, item: Family, key: Labels, value: float | Histogram) -> None:
        if self._frozen:
            raise SnapshotError("merged figures share their series: they are read-only")
        if isinstance(value, Histogram):
            if item.kind is not Kind.HISTOGRAM:
                raise SnapshotError(f"{item.name} is a {item.kind}, not a histogram")
        elif not is_number(value, 0 if item.kind is Kind.COUNTER else -1e300, 1e300):
            raise SnapshotError(f"{item.name}: {value!r:.40} is not a "
                                f"{'count' if item.kind is Kind.COUNTER else 'finite number'}")
        family_series = self.series.setdefault(item.name, {})
        old = family_series.get(key)
        if old is None:
            if len(family_series) >= MAX_SERIES_PER_FAMILY or self._count >= MAX_SERIES:
                raise SnapshotError(f"{item.name}: too many series (at most "
                                    f"{MAX_SERIES_PER_FAMILY} a family, {MAX_SERIES} in all)")
            family_series[key] = value.copy() if isinstance(value, Histogram) else value
            self._count += 1
        elif isinstance(old, Histogram) and isinstance(value, Histogram):
            old.add(value)
        elif not isinstance(old, Histogram) and not isinstance(value, Histogram):
            family_series[key] = old + value

    # -- reading -----------------------------------------------------------------------

    def get(self, name: str, **labels: str) -> float | Histogram | None:
        """One series' value, or None if it has none."""
        item = BY_NAME[name]
        key = tuple(labels.get(label, "") for label in item.labels)
        return self.series.get(name, {}).get(key)

    def total(self, name: str) -> float | None:
        """The sum of a counter's or gauge's series (None if it has none)."""
        values = self.series.get(name)
        if not values:
            return None
        return sum(v for v in values.values() if not isinstance(v, Histogram))

    def names(self) -> Iterator[str]:
        return iter(self.series)

    def __len__(self) -> int:
        return self._count

    def replaced_by(self, other: Figures) -> Figures:
        """These figures with every family ``other`` has taken from ``other`` instead
        (per family, never mixing the series of two origins). Read-only: it shares the
        series of both."""
        merged = Figures(self.scopes | other.scopes)
        merged.series = {**self.series, **other.series}
        merged._count = sum(len(v) for v in merged.series.values())
        merged._frozen = True
        return merged

    # -- JSON --------------------------------------------------------------------------

    def to_json(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS.values()}
        for name, values in self.series.items():
            item = BY_NAME[name]
            section = out[_SECTIONS[item.kind]]
            for key, value in values.items():
                leaf = value.to_json() if isinstance(value, Histogram) else value
                if not key:
                    section[name] = leaf
                    continue
                node = section.setdefault(name, {})
                for part in key[:-1]:
                    node = node.setdefault(part, {})
                node[key[-1]] = leaf
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> tuple[Figures, tuple[str, ...]]:
        """Sensor figures from a snapshot's sections; the names it did not know."""
        figures = cls()
        ignored: list[str] = []
        for kind, section_name in _SECTIONS.items():
            section = data.get(section_name, {})
            if not isinstance(section, dict):
                raise SnapshotError(f"{section_name} must be an object")
            for name, node in section.items():
                item = BY_NAME.get(name)
                if item is None:
                    ignored.append(str(name)[:MAX_LABEL_VALUE])
                    continue
                if item.kind is not kind or item.scope is not Scope.SENSOR:
                    raise SnapshotError(f"{name} is a {item.scope} {item.kind}: it has no "
                                        f"place in a snapshot's {section_name}")
                for key, leaf in _leaves(node, len(item.labels), name):
                    value = Histogram.from_json(leaf, name) if kind is Kind.HISTOGRAM else leaf
                    figures._store(item, key, value)
        return figures, tuple(ignored)


def _leaves(node: Any, depth: int, where: str, key: Labels = ()) -> Iterator[
        tuple[Labels, Any]]:
    if depth == 0:
        yield key, node
        return
    if not isinstance(node, dict):
        raise SnapshotError(f"{where}: series must be nested by label value")
    for value, child in node.items():
        yield from _leaves(child, depth - 1, where, (*key, _label_value(value, where)))


@dataclass(frozen=True)
class Snapshot:
    """A sensor's figures at one moment, with who, which process and when."""

    id_sensor: int
    instance: str
    seq: int
    started: float
    time: float
    figures: Figures = field(compare=False)
    version: str = ""
    mode: str = ""
    ignored: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"v": SNAPSHOT_VERSION, "id_sensor": self.id_sensor, "instance": self.instance,
                "seq": self.seq, "started": self.started, "time": self.time,
                "version": self.version, "mode": self.mode, **self.figures.to_json()}

    @classmethod
    def parse(cls, data: Any) -> Snapshot:
        """A snapshot from its JSON form (a STATS body), checked; SnapshotError if not."""
        if not isinstance(data, dict):
            raise SnapshotError("a snapshot is a JSON object")
        if data.get("v") != SNAPSHOT_VERSION or isinstance(data.get("v"), bool):
            raise SnapshotError(f"snapshot version {data.get('v')!r:.20} is not supported "
                                f"(this central reads version {SNAPSHOT_VERSION})")
        checks = (("id_sensor", 0, 65535, True), ("seq", 0, MAX_COUNT, True),
                  ("started", 0, MAX_EPOCH, False), ("time", 0, MAX_EPOCH, False))
        for name, low, high, integer in checks:
            if not is_number(data.get(name), low, high, integer):
                raise SnapshotError(f"snapshot: bad or missing {name!r} ("
                                    f"{'an integer' if integer else 'a number'} from {low} "
                                    f"to {high:g})")
        instance = _label_value(data.get("instance"), "snapshot instance")
        version = data.get("version", "")
        mode = data.get("mode", "")
        for name, text in (("version", version), ("mode", mode)):
            if text != "":
                _label_value(text, f"snapshot {name}")
        figures, ignored = Figures.from_json(data)
        return cls(id_sensor=data["id_sensor"], instance=instance, seq=data["seq"],
                   started=float(data["started"]), time=float(data["time"]), figures=figures,
                   version=version, mode=mode, ignored=ignored)


def new_instance() -> str:
    """A name for this process: random, 128 bits, hexadecimal."""
    return os.urandom(16).hex()


__all__ = ["SNAPSHOT_VERSION", "Figures", "Histogram", "Snapshot", "SnapshotError",
           "new_instance"]
