"""voipmon.central.metrics.HolderWatch: several centrals sharing one database learn from
the sensors table which of them holds a sensor, so that only that one exposes the
sensor's own figures (``Fleet.holders``). Its timing on task.Clock with the FakeStore; the
same reads on real databases (SQLite and MariaDB), two centrals' stores on one database."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from voipmon.central.metrics import HOLDERS_INTERVAL, CentralMetrics, HolderWatch
from voipmon.metrics import bindings
from voipmon.metrics.sources import CountersSource
from voipmon.test.fakes import FakeStore
from voipmon.test.metrics_fakes import FakeSensor
from voipmon.test.prometheus_support import promtool
from voipmon.test.test_store import MySQLBackend, SQLiteBackend, SqlStores


class ClockTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.metrics = CentralMetrics(self.clock)
        self.mine, self.other = FakeStore(self.clock, "central-a"), FakeStore(self.clock,
                                                                              "central-b")
        self.other.sensors = self.mine.sensors              # one sensors table
        self.watch = self.metrics.holder_watch(self.mine, "central-a")
        self.watch.startService()
        self.addCleanup(self.stopped)

    def stopped(self) -> None:
        self.watch.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def reads(self) -> int:
        return self.mine.calls.count("list_sensors")

    def test_reads_only_while_a_sensor_is_away(self) -> None:
        fleet = self.metrics.fleet
        self.mine.upsert_sensor({"id_sensor": 4})
        fleet.connected(4)
        self.clock.advance(HOLDERS_INTERVAL * 3)
        self.assertEqual(self.reads(), 0)
        fleet.disconnected(4)
        self.mine.mark_sensor_offline(4, self.clock.seconds())
        self.clock.advance(HOLDERS_INTERVAL)
        self.assertEqual(self.reads(), 1)
        self.assertIsNone(fleet.sensors[4].elsewhere)       # this central saw it last
        self.other.upsert_sensor({"id_sensor": 4})          # it registers with central-b
        self.clock.advance(HOLDERS_INTERVAL)
        self.assertEqual(fleet.sensors[4].elsewhere, "central-b")
        fleet.connected(4)                                  # and comes back
        self.assertIsNone(fleet.sensors[4].elsewhere)
        self.clock.advance(HOLDERS_INTERVAL)
        self.assertEqual(self.reads(), 2)

    def test_database_away_is_tried_again(self) -> None:
        fleet = self.metrics.fleet
        fleet.connected(4)
        fleet.disconnected(4)
        self.other.upsert_sensor({"id_sensor": 4})
        self.mine.down = True
        self.clock.advance(HOLDERS_INTERVAL)
        self.assertEqual(self.reads(), 1)
        self.assertIsNone(fleet.sensors[4].elsewhere)
        self.assertTrue(self.watch._loop.running)
        self.mine.down = False
        self.clock.advance(HOLDERS_INTERVAL)
        self.assertEqual(fleet.sensors[4].elsewhere, "central-b")

    def test_a_slow_read_is_not_overtaken(self) -> None:
        """The loop waits for a read before the next; a read older than a change here is
        not applied to that sensor."""
        fleet = self.metrics.fleet
        fleet.connected(4)
        fleet.disconnected(4)
        self.other.upsert_sensor({"id_sensor": 4})
        slow: defer.Deferred[Any] = defer.Deferred()
        rows, asked = self.mine.list_sensors, []
        self.mine.list_sensors = lambda: asked.append(1) or slow  # type: ignore[method-assign]
        self.clock.advance(HOLDERS_INTERVAL)
        self.clock.advance(HOLDERS_INTERVAL * 3)
        self.assertEqual(len(asked), 1)
        fleet.connected(4)
        fleet.disconnected(4)                               # came and went meanwhile
        rows().chainDeferred(slow)
        self.assertIsNone(fleet.sensors[4].elsewhere)
        self.mine.list_sensors = rows                       # type: ignore[method-assign]
        self.clock.advance(HOLDERS_INTERVAL)
        self.assertEqual(fleet.sensors[4].elsewhere, "central-b")


class ExpositionTests(unittest.SynchronousTestCase):
    def test_promtool_finds_the_exposition_clean(self) -> None:
        """A central with one sensor held here and one held elsewhere: /metrics passes
        ``promtool check metrics``, the second with up 0, held_by and its stored CDRs."""
        clock = Clock()
        clock.advance(1_700_000_000)
        metrics = CentralMetrics(clock)
        for id_sensor in (4, 5):
            sensor = FakeSensor(id_sensor, clock)
            metrics.fleet.connected(id_sensor, f"site-{id_sensor}")
            clock.advance(5)
            sensor.advance(5, 3)
            sensor.push(metrics.fleet)
        metrics.registry.add(CountersSource(lambda: {"stored": 9}, bindings.STORED_FOR_SENSOR,
                                            sensor=5))
        metrics.fleet.disconnected(5)
        clock.advance(1)
        metrics.fleet.holders([{"id_sensor": 5, "central": "central-b:60024"}],
                              "central-a:60024", clock.seconds())
        body = generate_latest(metrics.prometheus(process=False))
        self.assertIn(b'voipmon_sensor_held_by_info{central="central-b:60024",id_sensor="5",'
                      b'name_sensor="site-5"} 1.0', body)
        self.assertIn(b'voipmon_cdrs_stored_total{id_sensor="5",name_sensor="site-5"} 9.0',
                      body)
        self.assertNotIn(b'voipmon_sensor_packets_total{id_sensor="5"', body)
        self.assertIn(b'voipmon_sensor_packets_total{id_sensor="4"', body)
        result = promtool("check", "metrics", stdin=body)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))


class SharedDatabaseContract(SqlStores):
    """Two centrals' stores on one database; the watch of the first reads what the
    second registered."""

    def setUp(self) -> None:
        self.backend_setup()  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_the_other_central_registered_it(self) -> Any:
        mine = yield self.make_store("central-a:60024")
        other = yield self.make_store("central-b:60024")
        metrics = CentralMetrics(Clock())
        watch = HolderWatch(metrics.fleet, mine, "central-a:60024", metrics.clock)
        yield mine.upsert_sensor({"id_sensor": 4, "name": "edge"})
        metrics.fleet.connected(4, "edge")
        metrics.fleet.disconnected(4)
        yield mine.mark_sensor_offline(4, 1_700_000_000.0)
        metrics.clock.advance(1)
        yield watch.check()
        self.assertIsNone(metrics.fleet.sensors[4].elsewhere)
        yield other.upsert_sensor({"id_sensor": 4, "name": "edge"})
        metrics.clock.advance(1)
        yield watch.check()
        self.assertEqual(metrics.fleet.sensors[4].elsewhere, "central-b:60024")
        self.assertEqual(metrics.fleet.shown(), [])


class SQLiteSharedTests(SQLiteBackend, SharedDatabaseContract, unittest.TestCase):
    pass


class MySQLSharedTests(MySQLBackend, SharedDatabaseContract, unittest.TestCase):
    pass
