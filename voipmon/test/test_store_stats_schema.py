"""The dashboard's per-minute table (schema version 5) on SQLite and the real MariaDB: a
version-4 database holding calls is migrated and its calls counted by the backfill; after
batches, replays and retention the table equals a fresh count of the cdr table by the
backfill's SQL (the writer's Python counting and the SQL agree); the statistics are one
range read of its primary key."""

from __future__ import annotations

import os
import random
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from voipmon.store import testing
from voipmon.store.dialect import q
from voipmon.store.migrate import current_version, migrate
from voipmon.store.rollup import COUNTERS, KEY, backfill_sql
from voipmon.store.rows import CDR_COLUMNS, encode
from voipmon.store.schema import SCHEMA_VERSION
from voipmon.store.stats import StatsQuery, stats_sql
from voipmon.test.test_store import MySQLBackend, SQLiteBackend
from voipmon.test.test_store_stats import (
    DAY,
    SqlRows,
    iso,
    random_calls,
    reference,
    without_queries,
)


class StatsSchemaTests(SqlRows):
    def setUp(self) -> None:
        self.backend_setup()

    def connect(self) -> Any:
        self.ensure_database()
        conn = self.make_dialect().connect()
        self.addCleanup(conn.close)
        return conn

    @defer.inlineCallbacks
    def assert_figures(self, store: Any, start: int, end: int, step: int) -> Any:
        answer = yield store.cdr_stats({"from": iso(start), "to": iso(end), "step": str(step)})
        expected, _lists = reference(self.stored_rows(), start, end, step, None, 3.1)
        self.assertEqual(without_queries(answer), expected)
        return answer

    @defer.inlineCallbacks
    def test_a_v4_database_with_calls_is_migrated(self) -> Any:
        conn = self.connect()
        dialect = self.make_dialect()
        self.assertEqual(migrate(dialect, conn, DAY, target=4), (0, 4))
        cur = conn.cursor()
        self.assertFalse(dialect.has_table(cur, "cdr_minute"))
        start, end = DAY, DAY + 2 * 3600
        old = random_calls(random.Random(4), 120, start, end, 600)
        dialect.insert(cur, "cdr", CDR_COLUMNS,
                       [encode(c, None, None, None, "sensor")[0] for c in old])
        conn.commit()

        store = yield self.make_store()
        conn.commit()   # a fresh snapshot
        cur = conn.cursor()
        self.assertEqual(current_version(dialect, cur), SCHEMA_VERSION)
        self.assertTrue(dialect.has_table(cur, "cdr_minute"))
        before = yield self.assert_figures(store, start, end, 600)
        self.assertGreater(before["totals"]["calls"], 50)
        # calls stored after the migration join them
        yield store.store_cdrs(random_calls(random.Random(5), 80, start, end, 600, first=1000))
        after = yield self.assert_figures(store, start, end, 600)
        self.assertGreater(after["totals"]["calls"], before["totals"]["calls"])

    @defer.inlineCallbacks
    def test_the_table_equals_a_fresh_count_after_writes_and_retention(self) -> Any:
        store = yield self.make_store()
        cdrs = random_calls(random.Random(11), 300, DAY, DAY + 7200, 600, sensors=4)
        yield store.store_cdrs(cdrs[:200])
        yield store.store_cdrs(cdrs[100:])          # half replayed
        yield store.delete_cdrs_before(DAY + 1800.25, limit=45)
        names = ", ".join(f"`{n}`" for n in (*KEY, *COUNTERS))
        kept = self.query(f"SELECT {names} FROM `cdr_minute` ORDER BY `minute`, `id_sensor`")
        counted = backfill_sql(self.make_dialect()).split(" SELECT ", 1)[1]
        fresh = self.query(f"SELECT * FROM (SELECT {counted}) f ORDER BY 1, 2")
        self.assertGreater(len(kept), 20)
        self.assertEqual([tuple(map(int, r)) for r in kept], [tuple(map(int, r)) for r in fresh])

    @defer.inlineCallbacks
    def test_the_statistics_read_a_range_of_the_primary_key(self) -> Any:
        store = yield self.make_store()
        yield store.store_cdrs(random_calls(random.Random(7), 300, DAY, DAY + 86400, 3600))
        conn = self.connect()
        for query in (StatsQuery(DAY, DAY + 86400, 3600),
                      StatsQuery(DAY, DAY + 86400, 300, id_sensor=2)):
            self.assert_primary_range(conn, stats_sql(query))

    def assert_primary_range(self, conn: Any, sql: str) -> None:
        raise NotImplementedError


class SQLiteStatsSchemaTests(SQLiteBackend, StatsSchemaTests, unittest.TestCase):
    def ensure_database(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)

    def assert_primary_range(self, conn: Any, sql: str) -> None:
        plan = " | ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        # the primary key of a rowid table is an index of its own
        self.assertRegex(plan, r"^SEARCH cdr_minute USING (PRIMARY KEY|INDEX "
                               r"sqlite_autoindex_cdr_minute_1) \(minute>\? AND minute<\?\)")


class MySQLStatsSchemaTests(MySQLBackend, StatsSchemaTests, unittest.TestCase):
    def ensure_database(self) -> None:
        testing.mysql_admin_execute((f"CREATE DATABASE IF NOT EXISTS {q(self.database)}", None))

    def assert_primary_range(self, conn: Any, sql: str) -> None:
        cur = conn.cursor()
        cur.execute(f"EXPLAIN {sql}")
        names = [d[0] for d in cur.description]
        (row,) = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        self.assertEqual((row["table"], row["type"], row["key"]),
                         ("cdr_minute", "range", "PRIMARY"), row)
