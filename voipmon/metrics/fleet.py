"""The central's view of its sensors' figures: the last snapshot of each, whether it is up,
and its health. Pure: the clock is injected, nothing here does I/O.

Rules:
- A sensor that has connected since the central started stays in the fleet: offline, it
  keeps its last figures and ``up`` is 0 (until ``forget``).
- ``up`` is 1 while the sensor is connected and was heard (connected, a snapshot, or any
  message the session reports with ``heard``) within ``stale_after`` seconds.
- Figures are the sensor's own counters, as they are: never added up across snapshots,
  connections or centrals, so a reconnect or a failover cannot count anything twice.
  Counters are monotonic within one sensor process (``instance``); a snapshot of a new
  instance is a restart, and its counters start from 0, which Prometheus reads as a reset.
- A snapshot of the current instance with a seq not above the last one, or of an instance
  already replaced by a newer one (a late message of a closed connection), is old and
  ignored: a counter never goes backwards within an instance.
- Several centrals may share one database (a sensor's server_destination lists them). A
  sensor another central holds now, or saw last (``holders``, from the shared sensors
  table: the central that last registered it), is ``elsewhere``: this central exposes
  none of the sensor's own figures for it (its snapshot), only ``voipmon_sensor_up`` 0,
  ``voipmon_sensor_held_by_info`` naming that central and its own figures about it (the
  CDRs it stored, what its engine did for a mirroring sensor), which add up across
  centrals. So each sensor's own counters are exposed by one central, and a sum over
  centrals counts nothing twice. Connected here again, it is shown here again.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from voipmon.metrics.snapshot import Figures, Snapshot, SnapshotError
from voipmon.metrics.sources import Collection, IMetricsSource

RETIRED_KEPT = 8


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"
    RESTART = "restart"
    OLD = "old"
    INVALID = "invalid"


# The sensor's own measure of its clock skew (the network delay cancelled out), else the
# central's (at the handshake, the one-way delay included).
SKEW_FAMILIES = ("voipmon_sensor_clock_skew_seconds", "voipmon_channel_clock_skew_seconds")


def _first(figures: Figures, names: tuple[str, ...]) -> float | None:
    for name in names:
        value = figures.total(name)
        if value is not None:
            return value
    return None


class State(enum.StrEnum):
    OK = "ok"
    DROPPING = "dropping"
    LAGGING = "lagging"
    OFFLINE = "offline"


@dataclass
class SensorState:
    """What the central knows of one sensor."""

    id_sensor: int
    name: str = ""
    connected: bool = False
    connected_at: float | None = None
    changed_at: float | None = None         # when it last connected here or went away
    last_heard: float | None = None
    snapshot: Snapshot | None = None
    previous: Snapshot | None = None        # the one before, of the same instance
    elsewhere: str | None = None            # the central that holds it now, if not us
    retired: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Health:
    """One sensor's line on the web page's sensors view."""

    id_sensor: int
    name: str
    state: State
    online: bool
    last_seen: float | None
    packets_per_second: float | None
    drops_per_second: float | None
    calls_active: float | None
    queue_records: float | None
    clock_skew_seconds: float | None
    rtt_seconds: float | None = None    # the central's last ping of it, there and back

    def to_json(self) -> dict[str, Any]:
        return {"id_sensor": self.id_sensor, "name": self.name, "state": str(self.state),
                "online": self.online, "last_seen": self.last_seen,
                "packets_per_second": self.packets_per_second,
                "drops_per_second": self.drops_per_second, "calls_active": self.calls_active,
                "queue_records": self.queue_records,
                "clock_skew_seconds": self.clock_skew_seconds, "rtt_seconds": self.rtt_seconds}


DROP_FAMILIES = ("voipmon_sensor_dropped_packets_total", "voipmon_mirror_dropped_packets_total")


@implementer(IMetricsSource)
class Fleet:
    """The sensors of one central (see the module docstring)."""

    def __init__(self, clock: IReactorTime, *, stale_after: float = 30.0,
                 lag_records: int = 1000) -> None:
        self.clock = clock
        self.stale_after = stale_after
        self.lag_records = lag_records
        self.sensors: dict[int, SensorState] = {}
        self.outcomes: Counter[str] = Counter()

    def _state(self, id_sensor: int) -> SensorState:
        state = self.sensors.get(id_sensor)
        if state is None:
            state = self.sensors[id_sensor] = SensorState(id_sensor)
        return state

    # -- what the sessions report ---------------------------------------------------------

    def connected(self, id_sensor: int, name: str = "") -> None:
        state = self._state(id_sensor)
        now = self.clock.seconds()
        state.connected, state.connected_at, state.last_heard = True, now, now
        state.changed_at = now
        state.elsewhere = None
        if name:
            state.name = name

    def disconnected(self, id_sensor: int) -> None:
        state = self.sensors.get(id_sensor)
        if state is not None:
            state.connected = False
            state.changed_at = self.clock.seconds()

    def heard(self, id_sensor: int) -> None:
        """Any message from the sensor: it is alive, whether or not it sent figures."""
        state = self.sensors.get(id_sensor)
        if state is not None and state.connected:
            state.last_heard = self.clock.seconds()

    def rename(self, id_sensor: int, name: str) -> None:
        self._state(id_sensor).name = name

    def held_elsewhere(self, id_sensor: int, central: str) -> None:
        """Another central holds the sensor now: stop exposing it here (unless it is
        connected here, which is newer news)."""
        state = self.sensors.get(id_sensor)
        if state is not None and not state.connected:
            state.elsewhere = central

    def holders(self, rows: Iterable[Mapping[str, Any]], own: str, asked: float) -> None:
        """The shared sensors table as read at ``asked`` (rows with ``id_sensor`` and
        ``central``: the central that last registered the sensor): each sensor that is not
        connected here and has not come or gone here since is held by that central, or by
        none but this one when it names this one (``own``)."""
        for row in rows:
            state = self.sensors.get(row.get("id_sensor"))  # type: ignore[arg-type]
            if state is None or state.connected or (state.changed_at or 0.0) > asked:
                continue
            central = row.get("central")
            if not isinstance(central, str) or not central or central == own:
                state.elsewhere = None
            else:
                state.elsewhere = central

    def forget(self, id_sensor: int) -> None:
        self.sensors.pop(id_sensor, None)

    def received(self, id_sensor: int, body: Any) -> Outcome:
        """A STATS body from sensor ``id_sensor``'s connection: parsed and taken in.
        SnapshotError (counted as invalid) if it is malformed."""
        try:
            snapshot = Snapshot.parse(body)
        except SnapshotError:
            self.outcomes[Outcome.INVALID] += 1
            raise
        return self.accept(id_sensor, snapshot)

    def accept(self, id_sensor: int, snapshot: Snapshot) -> Outcome:
        if snapshot.id_sensor != id_sensor:
            self.outcomes[Outcome.INVALID] += 1
            raise SnapshotError(f"a snapshot of sensor {snapshot.id_sensor} on the "
                                f"connection of sensor {id_sensor}")
        state = self._state(id_sensor)
        last = state.snapshot
        if last is None:
            outcome = Outcome.ACCEPTED
        elif snapshot.instance == last.instance:
            outcome = Outcome.ACCEPTED if snapshot.seq > last.seq else Outcome.OLD
        else:
            outcome = Outcome.OLD if snapshot.instance in state.retired else Outcome.RESTART
        self.outcomes[outcome] += 1
        if outcome is Outcome.OLD:
            return outcome
        if outcome is Outcome.RESTART and last is not None:
            state.retired = [*state.retired, last.instance][-RETIRED_KEPT:]
            state.previous = None
        else:
            state.previous = last
        state.snapshot = snapshot
        state.last_heard = self.clock.seconds()
        state.elsewhere = None
        return outcome

    # -- what the views read -----------------------------------------------------------------

    def up(self, id_sensor: int) -> bool:
        state = self.sensors.get(id_sensor)
        return bool(state is not None and state.connected and state.last_heard is not None
                    and self.clock.seconds() - state.last_heard <= self.stale_after)

    def shown(self) -> list[SensorState]:
        """The sensors this central exposes: held here, or seen here last. By id."""
        return [state for _, state in sorted(self.sensors.items()) if state.elsewhere is None]

    def connected_count(self) -> int:
        return sum(1 for state in self.sensors.values() if state.connected)

    def collect_metrics(self, into: Collection) -> None:
        into.own.gauge("voipmon_central_sensors_connected", self.connected_count())
        for outcome in Outcome:
            into.own.counter("voipmon_central_snapshots_total", self.outcomes[outcome],
                             result=str(outcome))

    def health(self, id_sensor: int, about: Figures | None = None) -> Health:
        """The sensor's health; ``about``: the central's own figures about it (for a
        mirroring sensor: its calls and queue on the central), which take precedence."""
        state = self.sensors[id_sensor]
        figures = state.snapshot.figures if state.snapshot is not None else Figures()
        if about is not None:
            figures = figures.replaced_by(about)
        online = self.up(id_sensor)
        packets = self._rate(state, ("voipmon_sensor_packets_total",))
        drops = self._rate(state, DROP_FAMILIES)
        queue = figures.total("voipmon_sensor_queue_records")
        if not online:
            status = State.OFFLINE
        elif drops:
            status = State.DROPPING
        elif queue is not None and queue >= self.lag_records:
            status = State.LAGGING
        else:
            status = State.OK
        return Health(id_sensor=id_sensor, name=state.name, state=status, online=online,
                      last_seen=state.last_heard, packets_per_second=packets,
                      drops_per_second=drops,
                      calls_active=figures.total("voipmon_calls_active"),
                      queue_records=queue,
                      clock_skew_seconds=_first(figures, SKEW_FAMILIES),
                      rtt_seconds=figures.total("voipmon_channel_rtt_seconds"))

    @staticmethod
    def _rate(state: SensorState, names: tuple[str, ...]) -> float | None:
        """Per second between the last two snapshots of the same process, by its clock."""
        now, before = state.snapshot, state.previous
        if now is None or before is None or now.time <= before.time:
            return None
        present = [name for name in names if now.figures.total(name) is not None]
        if not present:
            return None
        delta = sum((now.figures.total(name) or 0) - (before.figures.total(name) or 0)
                    for name in present)
        return max(delta, 0) / (now.time - before.time)


__all__ = ["Fleet", "Health", "Outcome", "SensorState", "State"]
