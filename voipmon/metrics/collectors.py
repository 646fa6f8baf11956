"""prometheus_client collectors that render voipmon's figures, and the registries that
/metrics serves.

- ``FleetCollector``: the central's exposition. Per sensor the central knows: the
  sensor's last snapshot (none for a sensor another central holds: ``Fleet.holders``),
  with the central's own figures about it replacing the sensor's family by family (for a
  mirroring sensor: its calls and queue on the central), plus ``voipmon_sensor_up``, last
  seen, start time and info (and ``voipmon_sensor_held_by_info`` for one held elsewhere),
  all labelled ``id_sensor`` and ``name_sensor``; then the central's own figures.
- ``SensorCollector``: a sensor's own /metrics (a sensor used without a central): its
  figures now, with the same names and labels.

Collection runs on the thread that calls ``generate_latest`` (the reactor's, through
``voipmon.metrics.resource``); nothing here is thread-safe, nor needs to be.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from zope.interface import implementer

import voipmon
from voipmon.metrics.catalog import FAMILIES, Family, Kind, Scope
from voipmon.metrics.fleet import Fleet, SensorState
from voipmon.metrics.snapshot import Figures, Histogram, Snapshot
from voipmon.metrics.sources import Collection, IMetricsSource, MetricsRegistry, SnapshotTaker

Row = tuple[tuple[str, ...], Figures]
PER_SENSOR = frozenset({Scope.SENSOR, Scope.FLEET})
OWN = frozenset({Scope.CENTRAL, Scope.PROCESS})


def render(rows: list[Row], scopes: frozenset[Scope]) -> Iterator[Metric]:
    """One metric family per catalog family of ``scopes`` that has a series in ``rows``
    (each row: the scope's label values, and figures), in catalog order."""
    for item in FAMILIES:
        if item.scope not in scopes:
            continue
        metric = None
        for base, figures in rows:
            values = figures.series.get(item.name)
            if not values:
                continue
            if metric is None:
                metric = _metric(item)
            for key, value in values.items():
                labels = [*base, *key]
                if isinstance(value, Histogram):
                    metric.add_metric(labels, [(floatToGoString(le), count) for le, count
                                               in value.cumulative()], value.sum)
                else:
                    metric.add_metric(labels, value)
        if metric is not None:
            yield metric


def _metric(item: Family) -> CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily:
    labels = list(item.label_names)
    if item.kind is Kind.COUNTER:
        return CounterMetricFamily(item.name, item.help, labels=labels)
    if item.kind is Kind.GAUGE:
        return GaugeMetricFamily(item.name, item.help, labels=labels)
    return HistogramMetricFamily(item.name, item.help, labels=labels)


def sensor_view(snapshot: Snapshot | None, about: Figures | None = None) -> Figures:
    """A sensor's figures as exposed: its snapshot's (start time and info included),
    families of ``about`` (the central's own figures about it) replacing its own."""
    figures = Figures(PER_SENSOR)
    if snapshot is not None:
        figures.gauge("voipmon_sensor_start_time_seconds", snapshot.started)
        if snapshot.version or snapshot.mode:
            figures.gauge("voipmon_sensor_info", 1, version=snapshot.version or "unknown",
                          mode=snapshot.mode or "unknown")
        figures = snapshot.figures.replaced_by(figures)
    return figures.replaced_by(about) if about is not None else figures


def build_figures() -> Figures:
    figures = Figures(frozenset({Scope.PROCESS}))
    figures.gauge("voipmon_build_info", 1, version=voipmon.__version__)
    return figures


class FleetCollector(Collector):
    """The central's /metrics: its fleet and its own sources (see the module docstring).
    The fleet's own figures (sensors connected, snapshots received) are read here: do not
    add the fleet to ``sources`` as well."""

    def __init__(self, fleet: Fleet, sources: MetricsRegistry) -> None:
        self.fleet = fleet
        self.sources = sources

    def rows(self) -> tuple[list[Row], Collection]:
        collection = self.sources.collect()
        self.fleet.collect_metrics(collection)
        rows: list[Row] = []
        known: dict[int, SensorState] = self.fleet.sensors
        for id_sensor in sorted(set(known) | set(collection.sensors)):
            state = known.get(id_sensor)
            elsewhere = state.elsewhere if state is not None else None
            # held by another central: its own figures are exposed there, not here
            snapshot = state.snapshot if state is not None and elsewhere is None else None
            figures = sensor_view(snapshot, collection.sensors.get(id_sensor))
            if state is not None:
                own = Figures(frozenset({Scope.FLEET}))
                own.gauge("voipmon_sensor_up", int(self.fleet.up(id_sensor)))
                if state.last_heard is not None:
                    own.gauge("voipmon_sensor_last_seen_timestamp_seconds", state.last_heard)
                if elsewhere is not None:
                    own.gauge("voipmon_sensor_held_by_info", 1, central=elsewhere[:64])
                figures = figures.replaced_by(own)
            rows.append(((str(id_sensor), state.name if state else ""), figures))
        return rows, collection

    def collect(self) -> Iterator[Metric]:
        rows, collection = self.rows()
        yield from render(rows, PER_SENSOR)
        yield from render([((), collection.own), ((), build_figures())], OWN)

    def describe(self) -> Iterable[Metric]:
        return ()


class SensorCollector(Collector):
    """A sensor's own /metrics: its figures now, labelled with its id and name."""

    def __init__(self, taker: SnapshotTaker, name: str = "") -> None:
        self.taker = taker
        self.name = name

    def collect(self) -> Iterator[Metric]:
        snapshot = self.taker.peek()
        row = ((str(snapshot.id_sensor), self.name), sensor_view(snapshot))
        yield from render([row], PER_SENSOR)
        yield from render([((), build_figures())], OWN)

    def describe(self) -> Iterable[Metric]:
        return ()


@implementer(IMetricsSource)
class ProcessSource:
    """A sensor's CPU time and resident memory (prometheus_client's process collector,
    read at collection time), for its snapshot; nothing where /proc is absent."""

    def __init__(self) -> None:
        self._process = ProcessCollector(registry=None)

    def __repr__(self) -> str:
        return "<ProcessSource>"

    def collect_metrics(self, into: Collection) -> None:
        wanted = {"process_cpu_seconds_total": "voipmon_sensor_process_cpu_seconds_total",
                  "process_resident_memory_bytes":
                      "voipmon_sensor_process_resident_memory_bytes"}
        for metric in self._process.collect():
            for sample in metric.samples:
                name = wanted.get(sample.name)
                if name == "voipmon_sensor_process_cpu_seconds_total":
                    into.own.counter(name, sample.value)
                elif name is not None:
                    into.own.gauge(name, sample.value)


def add_process_collectors(registry: CollectorRegistry) -> None:
    """Python's default process, platform and garbage-collector collectors."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


def _registry(collector: Collector, process: bool) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    if process:
        add_process_collectors(registry)
    return registry


def central_registry(fleet: Fleet, sources: MetricsRegistry, *,
                     process: bool = True) -> CollectorRegistry:
    """What the central's /metrics serves."""
    return _registry(FleetCollector(fleet, sources), process)


def sensor_registry(taker: SnapshotTaker, name: str = "", *,
                    process: bool = True) -> CollectorRegistry:
    """What a sensor's own /metrics serves."""
    return _registry(SensorCollector(taker, name), process)


__all__ = ["FleetCollector", "ProcessSource", "SensorCollector", "add_process_collectors",
           "central_registry", "render", "sensor_registry", "sensor_view"]
