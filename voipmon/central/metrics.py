"""The central's metrics: its fleet of sensors and its own figures, one registry.

``CentralMetrics`` is built by the tap and handed to the parts that report:

- the sessions (voipmon.central.sessions) tell it when a sensor connects, is heard, sends
  STATS (its snapshot goes to the ``Fleet``) and goes away;
- the mirroring engines are made through ``analyzers(factory)``: each CDR a mirroring
  sensor's engine makes is counted in that sensor's ``CallOutcomes``, and its engine's
  counters are read through ``Carried`` (a new engine after a restart keeps them
  monotonic), so for a mirroring sensor the calls, CDRs and SIP counts are the central's;
- ``bind`` registers the central queue, the store's measures (new CDRs per sensor, batch
  commit times, database failures), the channels' skew and round-trip time per sensor;
- the web site registers its responses by status code (voipmon.web.site);
- ``holder_watch`` is the service that reads the sensors table several centrals share,
  so that a sensor another central holds is exposed there, not here (``Fleet.holders``).

``prometheus()`` is the CollectorRegistry /metrics serves (voipmon.metrics.collectors);
``health()`` is the sensors' health for the web page, from the same figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from voipmon.metrics import bindings
from voipmon.metrics.calls import CallOutcomes
from voipmon.metrics.catalog import Scope
from voipmon.metrics.collectors import central_registry
from voipmon.metrics.fleet import Fleet, Health
from voipmon.metrics.sources import (
    Carried,
    Collection,
    CountersSource,
    HistogramSource,
    IMetricsSource,
    MetricsRegistry,
    SnapshotError,
)
from voipmon.protocols.failover import describe_failure

log = Logger()

ENGINE_LEVELS = ("active_calls", "active_flows", "orphan_flows_active")
ENGINE_TABLE = {**bindings.ENGINE,
                **{f"decoder.{key}": target for key, target in bindings.DECODER.items()}}


@implementer(IMetricsSource)
class MirroredSensor:
    """What the central does for one mirroring sensor: its engine (across restarts), the
    calls it ended, its CDRs waiting in the central's queue."""

    def __init__(self, id_sensor: int, waiting: Callable[[int], int]) -> None:
        self.id_sensor = id_sensor
        self.waiting = waiting
        self.outcomes = CallOutcomes(sensor=id_sensor)
        self.engine = Carried(gauges=ENGINE_LEVELS)
        self._engine = CountersSource(self.engine.counters, ENGINE_TABLE, sensor=id_sensor,
                                      name=f"engine of sensor {id_sensor}")

    def __repr__(self) -> str:
        return f"<MirroredSensor {self.id_sensor}>"

    def collect_metrics(self, into: Collection) -> None:
        figures = into.sensor(self.id_sensor)
        self._engine.collect_metrics(into)
        if figures.get("voipmon_calls_active") is None:     # no engine yet: no calls
            figures.gauge("voipmon_calls_active", 0)
        self.outcomes.collect_metrics(into)
        figures.gauge("voipmon_sensor_queue_records", self.waiting(self.id_sensor))


@implementer(IMetricsSource)
class PerSensor:
    """Per sensor: the CDRs this central committed for it, and its channel's clock skew
    (the sensor's clock minus the central's, measured at the handshake) and round-trip."""

    def __init__(self, fleet: Fleet, stored: Callable[[], dict[int, int]],
                 channels: Callable[[], Iterable[Any]]) -> None:
        self.fleet = fleet
        self.stored = stored
        self.channels = channels

    def __repr__(self) -> str:
        return "<PerSensor>"

    def collect_metrics(self, into: Collection) -> None:
        stored = self.stored()
        for id_sensor in set(self.fleet.sensors) | set(stored):
            into.sensor(id_sensor).counter("voipmon_cdrs_stored_total",
                                           stored.get(id_sensor, 0))
        for channel in self.channels():
            hello = channel.hello
            if hello is None or hello.id_sensor not in self.fleet.sensors:
                continue
            figures = into.sensor(hello.id_sensor)
            skew = channel.handshake.skew
            if skew is not None:
                figures.gauge("voipmon_channel_clock_skew_seconds", -skew)
            if channel.rtt is not None:
                figures.gauge("voipmon_channel_rtt_seconds", channel.rtt)


HOLDERS_INTERVAL = 5.0


class HolderWatch(service.Service):
    """Which central holds the sensors this one does not (several centrals sharing one
    database): the shared sensors table read every ``interval`` seconds while a sensor of
    the fleet is not connected here, its rows given to ``Fleet.holders``. A failed read
    (the database away) is tried again at the next tick."""

    def __init__(self, fleet: Fleet, store: Any, central_id: str, clock: IReactorTime,
                 interval: float = HOLDERS_INTERVAL) -> None:
        self.fleet = fleet
        self.store = store
        self.central_id = central_id
        self.clock = clock
        self.interval = interval
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        if self._loop.running:
            self._loop.stop()
        super().stopService()

    def check(self) -> Deferred | None:
        """Read the table if a sensor of the fleet is away (the loop waits for it)."""
        if all(state.connected for state in self.fleet.sensors.values()):
            return None
        asked = self.clock.seconds()
        d = self.store.list_sensors()
        d.addCallback(self.fleet.holders, self.central_id, asked)
        d.addErrback(lambda f: log.debug("the sensors table was not read: {e}",
                                         e=describe_failure(f)))
        return d


class CentralMetrics:
    """The central's fleet and its metrics registry (see the module docstring)."""

    def __init__(self, clock: IReactorTime, *, stale_after: float = 30.0) -> None:
        self.clock = clock
        self.fleet = Fleet(clock, stale_after=stale_after)
        self.registry = MetricsRegistry(Scope.CENTRAL)
        self.mirrored: dict[int, MirroredSensor] = {}
        self._waiting: Callable[[int], int] = lambda _id: 0
        self._refused: set[int] = set()

    # -- wiring ------------------------------------------------------------------------

    def bind(self, *, cdr_queue: Any, store: Any,
             channels: Callable[[], Iterable[Any]]) -> None:
        """The central queue (``counters``, ``waiting`` by sensor), the store (``counters``
        when it has pools, ``measures``) and the connected channels."""
        add = self.registry.add
        add(CountersSource(cdr_queue.counters, bindings.CENTRAL_QUEUE, name="central queue"))
        self._waiting = lambda id_sensor: cdr_queue.waiting.get(id_sensor, 0)
        measures = store.measures
        add(HistogramSource("voipmon_central_store_batch_seconds", measures.batch_seconds))
        add(PerSensor(self.fleet, lambda: measures.stored, channels))

    def holder_watch(self, store: Any, central_id: str) -> HolderWatch:
        """The service that learns from the shared sensors table which central holds the
        sensors this one (``central_id``, as its store writes it) does not."""
        watch = HolderWatch(self.fleet, store, central_id, self.clock)
        watch.setName("holders")
        return watch

    def bind_store_errors(self, counters: Callable[[], Any]) -> None:
        """The store's failures by kind (``SqlStore.counters``)."""
        self.registry.add(CountersSource(counters, bindings.STORE, name="store"))

    def bind_http(self, counters: Callable[[], Any]) -> None:
        """The web site's responses by status code (``responses.<code>``)."""
        self.registry.add(CountersSource(counters, bindings.HTTP, name="http"))

    def analyzers(self, factory: Callable[[Any, Callable[[Any], None]], Any]
                  ) -> Callable[[Any, Callable[[Any], None]], Any]:
        """A mirroring AnalyzerFactory whose engines are counted per sensor."""
        def make(hello: Any, on_cdr: Callable[[Any], None]) -> Any:
            sensor = self._mirrored(hello.id_sensor)
            engine = factory(hello, sensor.outcomes.wrap(on_cdr))
            sensor.engine.attach(engine.counters)
            return engine
        return make

    def _mirrored(self, id_sensor: int) -> MirroredSensor:
        sensor = self.mirrored.get(id_sensor)
        if sensor is None:
            sensor = self.mirrored[id_sensor] = MirroredSensor(
                id_sensor, lambda i: self._waiting(i))
            self.registry.add(sensor)
        return sensor

    # -- what the sessions report ----------------------------------------------------------

    def connected(self, id_sensor: int, name: str, mode: str) -> None:
        self.fleet.connected(id_sensor, name)
        if mode == "mirror":
            self._mirrored(id_sensor)

    def disconnected(self, id_sensor: int) -> None:
        self.fleet.disconnected(id_sensor)

    def heard(self, id_sensor: int) -> None:
        self.fleet.heard(id_sensor)

    def stats(self, id_sensor: int, body: Any) -> None:
        """A STATS body: its ``metrics`` snapshot, if it has one (an older sensor's has
        not). A malformed snapshot is refused whole and logged once per sensor."""
        snapshot = body.get("metrics") if isinstance(body, dict) else None
        if snapshot is None:
            return
        try:
            self.fleet.received(id_sensor, snapshot)
        except SnapshotError as exc:
            if id_sensor not in self._refused:
                self._refused.add(id_sensor)
                log.warn("sensor {id_sensor}: its metrics are refused: {error}",
                         id_sensor=id_sensor, error=str(exc))
        else:
            self._refused.discard(id_sensor)

    # -- views -----------------------------------------------------------------------------

    def prometheus(self, *, process: bool = True) -> CollectorRegistry:
        """What /metrics serves."""
        return central_registry(self.fleet, self.registry, process=process)

    def health(self) -> list[Health]:
        """Each sensor's health (the web page), the central's figures about it included."""
        collection = self.registry.collect()
        return [self.fleet.health(state.id_sensor, collection.sensors.get(state.id_sensor))
                for state in self.fleet.shown()]


__all__ = ["CentralMetrics", "HolderWatch", "MirroredSensor", "PerSensor"]
