"""Tests for voipmon.central.dbretention (cleandatabase): on a Clock with the FakeStore,
assembled in a central, and once against a real SQLite store."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from voipmon.central.dbretention import DAY, DatabaseRetention
from voipmon.config import load_central_config
from voipmon.store import testing
from voipmon.store.interfaces import StoreUnavailable
from voipmon.store.query import CdrQuery
from voipmon.store.sqlstore import SqlStore
from voipmon.test.fakes import FakeStore
from voipmon.test.test_central_service import CentralCase

NOW = testing.BASE_TIME + 100 * DAY


def aged(n: int, days: float) -> Any:
    """CDR number ``n`` that started ``days`` before NOW."""
    return testing.make_cdr(n, calldate=NOW - days * DAY, callend=NOW - days * DAY + 30)


class HeldStore(FakeStore):
    """delete_cdrs_before waits in ``held`` until the test fires it."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.held_deletes: list[tuple[defer.Deferred, float, int]] = []

    def delete_cdrs_before(self, cutoff: float, limit: int = 1000) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.held_deletes.append((d, cutoff, limit))
        return d


class RetentionLoopTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = FakeStore(self.clock)
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def lines(self, word: str) -> list[str]:
        return [formatEvent(e) for e in self.observer if word in formatEvent(e)]

    def stored(self) -> list[str]:
        rows = self.successResultOf(self.store.list_cdrs(CdrQuery(limit=1000)))
        return sorted(r["callid"] for r in rows)

    def stop(self, retention: DatabaseRetention) -> None:
        self.successResultOf(defer.maybeDeferred(retention.stopService))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_waits_for_the_store_then_deletes_in_chunks_every_hour(self) -> None:
        old = [aged(n, 40 + n / 10) for n in range(25)]
        young = [aged(100 + n, 29.99) for n in range(3)]
        self.successResultOf(self.store.store_cdrs(old + young))
        retention = DatabaseRetention(self.store, 30, self.clock, chunk=10)
        retention.startService()
        self.assertNotIn("delete_cdrs_before", self.store.calls)   # the store is not up yet
        retention.ready()
        self.assertEqual(self.store.calls.count("delete_cdrs_before"), 3)   # 10 + 10 + 5
        self.assertEqual(self.stored(), sorted(c.callid for c in young))
        self.assertEqual(retention.deleted, 25)
        (line,) = self.lines("database retention deleted")
        self.assertIn("deleted 25 calls from before 2024-01-23T22:13:20.000Z "
                      "(cleandatabase = 30)", line)
        # an hour later the young calls are 30 days and a bit old: the next pass takes them
        self.clock.advance(3600)
        self.assertEqual(self.store.calls.count("delete_cdrs_before"), 4)
        self.assertEqual(self.stored(), [])
        self.stop(retention)

    def test_ready_before_start(self) -> None:
        self.successResultOf(self.store.store_cdrs([aged(1, 3)]))
        retention = DatabaseRetention(self.store, 2, self.clock)
        retention.ready()
        self.assertNotIn("delete_cdrs_before", self.store.calls)
        retention.startService()
        self.assertEqual(self.stored(), [])
        self.stop(retention)

    def test_zero_days_keeps_everything(self) -> None:
        self.successResultOf(self.store.store_cdrs([aged(1, 3000)]))
        retention = DatabaseRetention(self.store, 0, self.clock)
        retention.startService()
        retention.ready()
        self.clock.advance(10 * 3600)
        self.assertNotIn("delete_cdrs_before", self.store.calls)
        self.assertEqual(len(self.stored()), 1)
        self.stop(retention)

    def test_database_down_is_logged_and_retried_next_hour(self) -> None:
        self.successResultOf(self.store.store_cdrs([aged(1, 9)]))
        self.store.down = True
        retention = DatabaseRetention(self.store, 7, self.clock)
        retention.startService()
        retention.ready()
        self.assertEqual(retention.errors, 1)
        (line,) = self.lines("could not delete")
        self.assertIn("database retention: could not delete calls before "
                      "2024-02-15T22:13:20.000Z (cleandatabase = 7): FakeStore: database is "
                      "down (test); trying again in 3600 s", line)
        self.store.down = False
        self.clock.advance(3600)
        self.assertEqual(self.stored(), [])
        self.assertEqual((retention.errors, retention.deleted), (1, 1))
        self.stop(retention)
        self.assertEqual(self.flushLoggedErrors(StoreUnavailable), [])

    def test_stop_waits_for_the_chunk_in_progress_and_starts_no_other(self) -> None:
        store = HeldStore(self.clock)
        retention = DatabaseRetention(store, 1, self.clock, chunk=10)
        retention.startService()
        retention.ready()
        (d, cutoff, limit), = store.held_deletes
        self.assertEqual((cutoff, limit), (NOW - DAY, 10))
        stopped = retention.stopService()
        self.assertNoResult(stopped)
        d.callback(10)      # a full chunk: more may be left, but the service is stopping
        self.successResultOf(stopped)
        self.assertEqual(len(store.held_deletes), 1)
        self.assertEqual(retention.deleted, 10)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AssembledTests(CentralCase):
    def test_a_central_cleans_once_its_store_is_up(self) -> None:
        self.settings = load_central_config("c.conf", text=(
            f"server_bind = 127.0.0.1\nserver_password = pw\nspooldir = {self.base}\n"
            "http_port = 0\ncleandatabase = 10\n"))
        now = self.clock.seconds()
        old = testing.make_cdr(1, calldate=now - 11 * DAY, callend=now - 11 * DAY + 5)
        new = testing.make_cdr(2, calldate=now - 9 * DAY, callend=now - 9 * DAY + 5)
        self.successResultOf(self.store.store_cdrs([old, new]))
        self.store.down = True
        central = self.make_central()
        self.assertIn(DatabaseRetention.name, [child.name for child in central])
        central.startService()
        self.assertNotIn("delete_cdrs_before", self.store.calls)
        self.store.down = False
        self.clock.advance(5)      # the store service's retry: the store is up
        rows = self.successResultOf(self.store.list_cdrs({}))
        self.assertEqual([r["callid"] for r in rows], [new.callid])
        self.successResultOf(central.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_off_by_default(self) -> None:
        self.assertEqual(self.settings.store.cleandatabase, 0)
        names = [child.name for child in self.make_central()]
        self.assertNotIn(DatabaseRetention.name, names)


class SqliteRetentionTests(unittest.TestCase):
    """The same loop against a real SQLite store (its calls run in pool threads)."""

    @defer.inlineCallbacks
    def test_deletes_old_calls_with_their_streams(self) -> Any:
        path = os.path.join(os.path.abspath(self.mktemp()), "cdr.sqlite")
        store = SqlStore(testing.sqlite_dialect(path), reactor)
        self.addCleanup(store.close)
        yield store.start()
        yield store.store_cdrs([aged(n, 5 + n) for n in range(7)])
        clock = Clock()
        clock.advance(NOW)
        retention = DatabaseRetention(store, 8, clock, chunk=2)
        retention.startService()
        retention.ready()
        yield retention._pass
        rows = yield store.list_cdrs(CdrQuery(limit=100))
        # 5..11 days old, cleandatabase = 8: those of 9, 10 and 11 days go
        self.assertEqual(sorted(r["callid"] for r in rows),
                         sorted(aged(n, 0).callid for n in range(4)))
        self.assertEqual(retention.deleted, 3)
        conn = testing.sqlite_dialect(path).connect()
        try:
            (streams,), = conn.execute("SELECT COUNT(*) FROM cdr_rtp").fetchall()
        finally:
            conn.close()
        self.assertEqual(streams, 8)
        yield retention.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
