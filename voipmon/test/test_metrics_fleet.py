"""voipmon.metrics.fleet: the central's sensors, their last figures, up and staleness,
restarts, reconnects and failover between two centrals, health; on task.Clock."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from voipmon.metrics import bindings
from voipmon.metrics.catalog import Scope
from voipmon.metrics.collectors import central_registry
from voipmon.metrics.fleet import Fleet, Outcome, State
from voipmon.metrics.snapshot import Figures, SnapshotError
from voipmon.metrics.sources import CountersSource, MetricsRegistry, SnapshotTaker
from voipmon.test.metrics_fakes import FakeSensor

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def exposed(fleet: Fleet, sources: MetricsRegistry | None = None) -> Series:
    """Every sample of the central's /metrics, by name and labels."""
    text = generate_latest(central_registry(
        fleet, sources or MetricsRegistry(Scope.CENTRAL), process=False)).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for metric in text_string_to_metric_families(text) for sample in metric.samples}


def value(series: Series, name: str, id_sensor: int, **labels: str) -> float | None:
    for (sample, sample_labels), number in series.items():
        found = dict(sample_labels)
        if sample == name and found.pop("id_sensor", None) == str(id_sensor):
            found.pop("name_sensor", None)
            if found == labels:
                return number
    return None


class FleetTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.fleet = Fleet(self.clock, stale_after=30)
        self.sensor = FakeSensor(4, self.clock)

    def step(self, seconds: float = 5, calls: int = 2) -> None:
        self.clock.advance(seconds)
        self.sensor.advance(seconds, calls)

    def test_up_and_staleness(self) -> None:
        fleet = self.fleet
        self.assertFalse(fleet.up(4))
        fleet.connected(4, "site-4")
        self.assertTrue(fleet.up(4))
        self.clock.advance(30)
        self.assertTrue(fleet.up(4))
        self.clock.advance(1)
        self.assertFalse(fleet.up(4), "connected but silent for longer than stale_after")
        fleet.heard(4)                          # a ping: alive, even without figures
        self.assertTrue(fleet.up(4))
        self.clock.advance(31)
        self.sensor.push(fleet)                 # a snapshot: alive too
        self.assertTrue(fleet.up(4))
        fleet.disconnected(4)
        self.assertFalse(fleet.up(4))
        fleet.heard(4)                          # nothing revives a closed session
        self.assertFalse(fleet.up(4))
        self.assertEqual(fleet.connected_count(), 0)

    def test_offline_keeps_series(self) -> None:
        """Every contract series stays, with voipmon_sensor_up 0, once it goes."""
        self.fleet.connected(4, "site-4")
        self.step()
        self.sensor.push(self.fleet)
        before = exposed(self.fleet)
        self.assertEqual(value(before, "voipmon_sensor_up", 4), 1)
        self.fleet.disconnected(4)
        self.clock.advance(3600)
        after = exposed(self.fleet)
        self.assertEqual(value(after, "voipmon_sensor_up", 4), 0)
        for name in ("voipmon_sensor_packets_total", "voipmon_sensor_dropped_packets_total",
                     "voipmon_calls_active", "voipmon_sensor_queue_records"):
            self.assertIsNotNone(value(after, name, 4), name)
            self.assertEqual(value(after, name, 4), value(before, name, 4), name)
        self.assertEqual(value(after, "voipmon_sensor_last_seen_timestamp_seconds", 4),
                         1_700_000_005)

    def test_reconnect_counts_nothing_twice(self) -> None:
        """Figures are the sensor's own counters, never added up across connections."""
        fleet = self.fleet
        fleet.connected(4, "site-4")
        self.step()
        self.sensor.push(fleet)
        first = self.sensor.capture["packets"]
        fleet.disconnected(4)
        self.step()
        fleet.connected(4, "site-4")
        self.sensor.push(fleet)
        second = self.sensor.capture["packets"]
        self.assertGreater(second, first)
        self.assertEqual(value(exposed(fleet), "voipmon_sensor_packets_total", 4), second)
        self.assertEqual(fleet.outcomes[Outcome.ACCEPTED], 2)

    def test_restart_is_a_reset(self) -> None:
        fleet = self.fleet
        fleet.connected(4, "site-4")
        self.step()
        self.sensor.push(fleet)
        fleet.disconnected(4)
        self.clock.advance(60)
        restarted = FakeSensor(4, self.clock)          # a new process: counts from 0
        restarted.taker.instance = "ff" * 16
        restarted.taker.started = self.clock.seconds()
        restarted.advance(1, calls=0)
        fleet.connected(4, "site-4")
        restarted.push(fleet)
        series = exposed(fleet)
        self.assertEqual(fleet.outcomes[Outcome.RESTART], 1)
        self.assertEqual(value(series, "voipmon_sensor_packets_total", 4),
                         restarted.capture["packets"])
        self.assertLess(restarted.capture["packets"], self.sensor.capture["packets"])
        self.assertEqual(value(series, "voipmon_sensor_start_time_seconds", 4),
                         self.clock.seconds())
        self.assertIsNone(fleet.sensors[4].previous, "no rate across a restart")

    def test_old_snapshots_ignored(self) -> None:
        """A repeated or older seq, or a late snapshot of a replaced process, is ignored:
        a counter never goes backwards within a process."""
        fleet, taker = self.fleet, self.sensor.taker
        fleet.connected(4)
        self.step()
        early = taker.take()
        self.step()
        late = taker.take()
        self.assertEqual(fleet.accept(4, late), Outcome.ACCEPTED)
        self.assertEqual(fleet.accept(4, early), Outcome.OLD)
        self.assertEqual(fleet.accept(4, late), Outcome.OLD)
        restarted = SnapshotTaker(self.sensor.registry, 4, self.clock).take()
        self.assertEqual(fleet.accept(4, restarted), Outcome.RESTART)
        self.step()
        self.assertEqual(fleet.accept(4, taker.take()), Outcome.OLD,
                         "the replaced process's closing connection")
        self.assertIs(fleet.sensors[4].snapshot, restarted)

    def test_invalid_snapshots(self) -> None:
        fleet = self.fleet
        fleet.connected(4)
        with self.assertRaisesRegex(SnapshotError, "sensor 4 on the connection of sensor 5"):
            fleet.accept(5, self.sensor.taker.take())
        with self.assertRaisesRegex(SnapshotError, "version"):
            fleet.received(4, {"packets": 5})
        self.assertEqual(fleet.outcomes[Outcome.INVALID], 2)
        self.assertIsNone(fleet.sensors[4].snapshot)
        series = exposed(fleet)
        self.assertEqual(series[("voipmon_central_snapshots_total",
                                 (("result", "invalid"),))], 2)

    def test_failover_between_two_centrals(self) -> None:
        """Two centrals sharing one database: each exposes the sensor's own figures only
        while it holds it or saw it last; the other says which central holds it, with up
        0 and its own figures about it (the CDRs it stored), so a sum over both centrals
        counts the sensor's counters once and the CDRs each stored."""
        a, b = self.fleet, Fleet(self.clock)
        stored = {"a": {4: 10}, "b": {4: 0}}
        sources = {name: MetricsRegistry(Scope.CENTRAL) for name in stored}
        for name, registry in sources.items():
            registry.add(CountersSource(lambda n=name: {"stored": stored[n][4]},
                                        bindings.STORED_FOR_SENSOR, sensor=4))
        a.connected(4, "site-4")
        self.step()
        self.sensor.push(a)
        a.disconnected(4)                   # central a dies for the sensor: it fails over
        b.connected(4, "site-4")
        self.step()
        self.sensor.push(b)
        stored["b"][4] = 6
        table = [{"id_sensor": 4, "central": "central-b", "connected": True}]
        on_a, on_b = exposed(a, sources["a"]), exposed(b, sources["b"])
        self.assertEqual(value(on_a, "voipmon_sensor_up", 4), 0)
        self.assertEqual(value(on_b, "voipmon_sensor_up", 4), 1)
        # Before a reads the table, both expose the sensor's counters: a sum counts twice.
        self.assertIsNotNone(value(on_a, "voipmon_sensor_packets_total", 4))
        a.holders(table, "central-a", self.clock.seconds())
        b.holders(table, "central-b", self.clock.seconds())
        on_a, on_b = exposed(a, sources["a"]), exposed(b, sources["b"])
        self.assertEqual(value(on_a, "voipmon_sensor_up", 4), 0)
        self.assertEqual(value(on_a, "voipmon_sensor_held_by_info", 4, central="central-b"), 1)
        self.assertIsNone(value(on_b, "voipmon_sensor_held_by_info", 4, central="central-b"))
        for name in ("voipmon_sensor_packets_total", "voipmon_calls_active",
                     "voipmon_sensor_start_time_seconds", "voipmon_sensor_queue_records"):
            self.assertIsNone(value(on_a, name, 4), name)
            self.assertIsNotNone(value(on_b, name, 4), name)
        packets = [value(on, "voipmon_sensor_packets_total", 4) or 0 for on in (on_a, on_b)]
        self.assertEqual(sum(packets), self.sensor.capture["packets"])
        self.assertEqual([value(on, "voipmon_cdrs_stored_total", 4) for on in (on_a, on_b)],
                         [10, 6])           # each central's own: they add up
        self.assertEqual(on_a[("voipmon_central_sensors_connected", ())], 0)
        # Failing back: a exposes it again, with the sensor's own (monotonic) count.
        b.disconnected(4)
        a.connected(4, "site-4")
        self.step()
        self.sensor.push(a)
        table = [{"id_sensor": 4, "central": "central-a", "connected": True}]
        b.holders(table, "central-b", self.clock.seconds())
        on_a, on_b = exposed(a), exposed(b)
        self.assertEqual(value(on_a, "voipmon_sensor_packets_total", 4),
                         self.sensor.capture["packets"])
        self.assertIsNone(value(on_a, "voipmon_sensor_held_by_info", 4, central="central-b"))
        self.assertIsNone(value(on_b, "voipmon_sensor_packets_total", 4))
        self.assertEqual(value(on_b, "voipmon_sensor_held_by_info", 4, central="central-a"), 1)
        b.held_elsewhere(7, "central-a")    # never seen here: nothing to hide
        b.holders([{"id_sensor": 7, "central": "central-a"}], "central-b", self.clock.seconds())
        self.assertNotIn(7, b.sensors)

    def test_holders_from_a_read_older_than_a_change_here(self) -> None:
        """The table read before the sensor came or went here says nothing of it now; a
        sensor the table says this central registered last is shown here again."""
        fleet = self.fleet
        fleet.connected(4)
        asked = self.clock.seconds()
        self.clock.advance(1)
        fleet.disconnected(4)
        fleet.holders([{"id_sensor": 4, "central": "central-b"}], "central-a", asked)
        self.assertIsNone(fleet.sensors[4].elsewhere)
        fleet.holders([{"id_sensor": 4, "central": "central-b"}], "central-a",
                      self.clock.seconds())
        self.assertEqual(fleet.sensors[4].elsewhere, "central-b")
        self.assertEqual([s.id_sensor for s in fleet.shown()], [])
        fleet.holders([{"id_sensor": 4, "central": "central-a"}], "central-a",
                      self.clock.seconds())
        self.assertIsNone(fleet.sensors[4].elsewhere)
        self.assertEqual([s.id_sensor for s in fleet.shown()], [4])

    def test_held_elsewhere_while_connected_here(self) -> None:
        """The shared table lags: a sensor connected here is ours, whatever it says."""
        self.fleet.connected(4)
        self.fleet.held_elsewhere(4, "central-b")
        self.fleet.holders([{"id_sensor": 4, "central": "central-b"}], "central-a",
                           self.clock.seconds() + 1)
        self.assertIsNone(self.fleet.sensors[4].elsewhere)
        self.assertIsNotNone(value(exposed(self.fleet), "voipmon_sensor_up", 4))

    def test_rename_and_forget(self) -> None:
        self.fleet.connected(4, "old name")
        self.fleet.rename(4, "new name")
        self.assertIn(("voipmon_sensor_up", (("id_sensor", "4"), ("name_sensor", "new name"))),
                      exposed(self.fleet))
        self.fleet.forget(4)
        self.assertIsNone(value(exposed(self.fleet), "voipmon_sensor_up", 4))


class HealthTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.fleet = Fleet(self.clock, lag_records=100)

    def sensor(self, id_sensor: int, mode: str = "local") -> FakeSensor:
        sensor = FakeSensor(id_sensor, self.clock, mode=mode)
        self.fleet.connected(id_sensor, f"site-{id_sensor}")
        return sensor

    def test_states(self) -> None:
        ok, dropping, lagging = self.sensor(1), self.sensor(2), self.sensor(5)
        for _ in range(2):
            self.clock.advance(5)
            for sensor in (ok, dropping, lagging):
                sensor.advance(5, calls=3)
                if sensor is dropping:
                    sensor.capture["dropped"] += 50
                if sensor is lagging:
                    sensor.uplink["queue_depth"] = 150
                sensor.push(self.fleet)
        health = {n: self.fleet.health(n) for n in (1, 2, 5)}
        self.assertEqual({n: h.state for n, h in health.items()},
                         {1: State.OK, 2: State.DROPPING, 5: State.LAGGING})
        self.assertEqual(health[1].packets_per_second, 1037)
        self.assertEqual(health[1].drops_per_second, 0)
        self.assertEqual(health[2].drops_per_second, 10)
        self.assertEqual(health[1].calls_active, ok.engine["active_calls"])
        self.assertEqual(health[5].queue_records, 150)
        self.assertAlmostEqual(health[1].clock_skew_seconds or 0, -0.012)
        self.assertEqual(health[1].last_seen, self.clock.seconds())
        self.fleet.disconnected(1)
        offline = self.fleet.health(1)
        self.assertEqual((offline.state, offline.online), (State.OFFLINE, False))
        data: dict[str, Any] = offline.to_json()
        self.assertEqual((data["state"], data["name"]), ("offline", "site-1"))

    def test_rates_need_two_snapshots(self) -> None:
        sensor = self.sensor(1)
        self.clock.advance(5)
        sensor.advance(5, calls=1)
        sensor.push(self.fleet)
        health = self.fleet.health(1)
        self.assertIsNone(health.packets_per_second)
        self.assertEqual(health.state, State.OK)
        self.assertIsNone(self.fleet.health(1).drops_per_second)

    def test_mirroring_sensor_figures_from_the_central(self) -> None:
        """A mirroring sensor's calls and queue are the central's: they take precedence."""
        sensor = self.sensor(3, mode="mirror")
        self.clock.advance(5)
        sensor.advance(5, calls=1)
        sensor.push(self.fleet)
        about = Figures()
        about.gauge("voipmon_calls_active", 7)
        about.gauge("voipmon_sensor_queue_records", 250)
        health = self.fleet.health(3, about)
        self.assertEqual((health.calls_active, health.queue_records, health.state),
                         (7, 250, State.LAGGING))
        self.assertIsNone(self.fleet.health(3).calls_active)

    def test_rtt_from_the_central(self) -> None:
        """The ping round trip is in a sensor's health (and /api/sensors): the one the
        sensor reports until the central's own ping of it came back, then the central's."""
        sensor = self.sensor(4)
        self.clock.advance(5)
        sensor.advance(5, calls=1)
        sensor.push(self.fleet)
        self.assertEqual(self.fleet.health(4).rtt_seconds, sensor.channel["rtt"])
        about = Figures()
        about.gauge("voipmon_channel_rtt_seconds", 0.0125)
        health = self.fleet.health(4, about)
        self.assertEqual(health.rtt_seconds, 0.0125)
        self.assertEqual(health.to_json()["rtt_seconds"], 0.0125)
