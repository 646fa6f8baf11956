"""The metrics seam: components that report figures, and the registry that reads them.

A component keeps plain counters (ints on itself, nothing on its hot path) and is read
only when someone asks: a scrape of /metrics, the sensor's STATS push, sniffer_stat, the
web page. Every such view reads the same ``MetricsRegistry``, through ``IMetricsSource``:

- a component may provide ``IMetricsSource`` itself (``collect_metrics(into)`` writes its
  figures into a ``Collection``), or
- be bound by a table: ``CountersSource(component.counters, {"packets":
  "voipmon_sensor_packets_total", "undecodable.*": Bind("voipmon_sensor_undecoded_packets_total",
  each=("reason",))})`` reads its flat dict of numbers (nested dicts are read as dotted
  keys) and writes the families the table names. A ``*`` in a key fills a label.

On the central, a source may also write figures about one sensor (``into.sensor(id)``):
the CDRs it stored for it, or what its engine and queue do for a mirroring sensor.
``Carried`` keeps counters of a component that is replaced (a mirroring sensor's engine is
new at each connection) so that they stay monotonic for the central's life.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

import voipmon
from voipmon.metrics.catalog import BY_NAME, Kind, Scope
from voipmon.metrics.snapshot import Figures, Histogram, Snapshot, SnapshotError, new_instance

log = Logger()

Number = int | float


class Collection:
    """One reading of a registry's sources: the process's own figures (``own``) and, on
    the central, figures about each sensor (``sensor(id_sensor)``)."""

    def __init__(self, scopes: frozenset[Scope]) -> None:
        self.own = Figures(scopes)
        self.sensors: dict[int, Figures] = {}

    def sensor(self, id_sensor: int) -> Figures:
        figures = self.sensors.get(id_sensor)
        if figures is None:
            figures = self.sensors[id_sensor] = Figures()
        return figures


class IMetricsSource(Interface):
    """A component's figures, read at collection time from its plain counters."""

    def collect_metrics(into: Collection) -> None:
        """Write the current figures into ``into`` (``into.own``, or ``into.sensor(id)``
        for figures about one sensor). Called on the reactor thread; must not block."""


class MetricsRegistry:
    """The sources of one process. ``scope`` is what its own figures may hold: sensor
    metrics on a sensor, the central's own on the central."""

    def __init__(self, scope: Scope) -> None:
        self.scopes = frozenset({scope})
        self._sources: list[Any] = []
        self._failing: set[int] = set()
        self.errors = 0

    def add(self, source: Any) -> Any:
        if not IMetricsSource.providedBy(source):
            raise TypeError(f"{source!r} does not provide IMetricsSource")
        self._sources.append(source)
        return source

    def remove(self, source: Any) -> None:
        self._sources.remove(source)

    def collect(self) -> Collection:
        """Read every source now. A source that fails is logged (once until it works
        again) and counted; the others are still read."""
        into = Collection(self.scopes)
        for source in list(self._sources):
            try:
                source.collect_metrics(into)
            except Exception:
                self.errors += 1
                if id(source) not in self._failing:
                    self._failing.add(id(source))
                    log.failure("metrics source {source!r} failed", source=source)
            else:
                self._failing.discard(id(source))
        return into


class SnapshotTaker:
    """A sensor's snapshots of its registry: one process instance, numbered from 1."""

    def __init__(self, registry: MetricsRegistry, id_sensor: int, clock: IReactorTime, *,
                 mode: str = "local", version: str = voipmon.__version__,
                 instance: str | None = None) -> None:
        self.registry = registry
        self.id_sensor = id_sensor
        self.clock = clock
        self.mode = mode
        self.version = version
        self.instance = instance or new_instance()
        self.started = clock.seconds()
        self.seq = 0

    def take(self) -> Snapshot:
        """The next snapshot to push (its seq one more than the last)."""
        self.seq += 1
        return self.peek()

    def peek(self) -> Snapshot:
        """The figures now, under the last seq (a local scrape; nothing is pushed)."""
        return Snapshot(id_sensor=self.id_sensor, instance=self.instance, seq=self.seq,
                        started=self.started, time=self.clock.seconds(),
                        figures=self.registry.collect().own, version=self.version,
                        mode=self.mode)


# -- binding a component's flat counters by a table -----------------------------------


@dataclass(frozen=True)
class Bind:
    """Where one key (or pattern) of a component's counters goes: a family, its fixed
    label values, the labels the pattern's ``*`` parts fill (``each``, in order; a label
    named in ``maps`` goes through its function, e.g. catalog.method_label to keep it
    bounded), and a factor (``scale=0.001`` for milliseconds to seconds)."""

    family: str
    labels: Mapping[str, str] = field(default_factory=dict)
    each: tuple[str, ...] = ()
    scale: float = 1.0
    maps: Mapping[str, Callable[[str], str]] = field(default_factory=dict)


def flatten(counters: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of a dict of numbers, nested dicts included."""
    for key, value in counters.items():
        if isinstance(value, Mapping):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _number(value: Any) -> Number | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    return None


@implementer(IMetricsSource)
class CountersSource:
    """A component's counters (``read()``: a dict of numbers) written as the ``table``
    says; figures about sensor ``sensor`` when given (the central's view of one sensor).
    A key the table does not name is not exposed; a named key that is absent or not a
    number writes nothing."""

    def __init__(self, read: Callable[[], Mapping[str, Any]],
                 table: Mapping[str, str | Bind], *, sensor: int | None = None,
                 name: str = "") -> None:
        self.read = read
        self.sensor = sensor
        self.name = name or getattr(read, "__qualname__", "counters")
        self.exact: dict[str, Bind] = {}
        self.patterns: list[tuple[tuple[str, ...], Bind]] = []
        for key, target in table.items():
            bind = Bind(target) if isinstance(target, str) else target
            parts = tuple(key.split("."))
            _check(key, parts.count("*"), bind)
            if "*" in parts:
                self.patterns.append((parts, bind))
            else:
                self.exact[key] = bind

    def __repr__(self) -> str:
        return f"<CountersSource {self.name}>"

    def collect_metrics(self, into: Collection) -> None:
        figures = into.own if self.sensor is None else into.sensor(self.sensor)
        for key, raw in flatten(self.read()):
            value = _number(raw)
            if value is None:
                continue
            bind = self.exact.get(key)
            if bind is not None:
                _write(figures, bind, value, ())
                continue
            parts = key.split(".")
            for pattern, bind in self.patterns:
                if len(pattern) == len(parts) and all(
                        p in ("*", k) for p, k in zip(pattern, parts, strict=True)):
                    _write(figures, bind, value, tuple(
                        k for p, k in zip(pattern, parts, strict=True) if p == "*"))
                    break


def _check(key: str, stars: int, bind: Bind) -> None:
    item = BY_NAME.get(bind.family)
    if item is None:
        raise ValueError(f"{key}: {bind.family!r} is not a voipmon metric")
    if item.kind is Kind.HISTOGRAM:
        raise ValueError(f"{key}: {bind.family} is a histogram; write it from a Histogram")
    if stars != len(bind.each):
        raise ValueError(f"{key}: {stars} '*' for the labels {bind.each}")
    if sorted((*bind.labels, *bind.each)) != sorted(item.labels):
        raise ValueError(f"{key}: {bind.family} has the labels {item.labels}")
    if not set(bind.maps) <= set(bind.each):
        raise ValueError(f"{key}: maps for labels the pattern does not fill")


def _write(figures: Figures, bind: Bind, value: Number, values: tuple[str, ...]) -> None:
    labels = dict(bind.labels)
    for label, text in zip(bind.each, values, strict=True):
        convert = bind.maps.get(label)
        labels[label] = convert(text) if convert is not None else text
    scaled = value * bind.scale if bind.scale != 1.0 else value
    if BY_NAME[bind.family].kind is Kind.COUNTER:
        figures.counter(bind.family, scaled, **labels)
    else:
        figures.gauge(bind.family, scaled, **labels)


# -- counters that outlive their component ------------------------------------------------


class Carried:
    """The counters of a component that is replaced over time, kept monotonic: a
    detached component's last counts are added to what the next one counts. Keys in
    ``gauges`` are levels, not counts: they come from the attached component only."""

    def __init__(self, gauges: Iterable[str] = ()) -> None:
        self.gauges = frozenset(gauges)
        self._base: dict[str, Number] = {}
        self._live: Callable[[], Mapping[str, Any]] | None = None

    def attach(self, read: Callable[[], Mapping[str, Any]]) -> None:
        if self._live is not None:
            self.detach()
        self._live = read

    def detach(self) -> None:
        """Keep the attached component's counts; call before dropping it."""
        if self._live is None:
            return
        for key, value in self._counts(self._live()):
            self._base[key] = self._base.get(key, 0) + value
        self._live = None

    def _counts(self, counters: Mapping[str, Any]) -> Iterator[tuple[str, Number]]:
        for key, raw in flatten(counters):
            value = _number(raw)
            if value is not None and key not in self.gauges:
                yield key, value

    def counters(self) -> dict[str, Number]:
        """Flat: every count so far, plus the attached component's levels."""
        out = dict(self._base)
        if self._live is not None:
            live = self._live()
            for key, value in self._counts(live):
                out[key] = out.get(key, 0) + value
            for key, raw in flatten(live):
                value = _number(raw)
                if key in self.gauges and value is not None:
                    out[key] = value
        return out


@implementer(IMetricsSource)
class HistogramSource:
    """One plain-int histogram as a source (e.g. the store's batch commit times); figures
    about sensor ``sensor`` when given."""

    def __init__(self, name: str, histogram: Histogram, *, sensor: int | None = None) -> None:
        item = BY_NAME.get(name)
        if item is None or item.kind is not Kind.HISTOGRAM:
            raise ValueError(f"{name} is not a voipmon histogram")
        self.name = name
        self.histogram = histogram
        self.sensor = sensor

    def __repr__(self) -> str:
        return f"<HistogramSource {self.name}>"

    def collect_metrics(self, into: Collection) -> None:
        figures = into.own if self.sensor is None else into.sensor(self.sensor)
        figures.histogram(self.name, self.histogram)


__all__ = ["Bind", "Carried", "Collection", "CountersSource", "HistogramSource",
           "IMetricsSource", "MetricsRegistry", "SnapshotError", "SnapshotTaker", "flatten"]
