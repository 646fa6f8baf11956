"""The dashboard's schema step (version 5) on SQLite and the real MariaDB: a version-4
database holding calls is migrated, its calls counted by the virtual calldate_minute, and
the statistics' queries read the index cdr_stats in its order (no temporary table, no
sort; on MariaDB the index alone, no table rows)."""

from __future__ import annotations

import os
import random
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from voipmon.store import testing
from voipmon.store.dialect import q
from voipmon.store.migrate import current_version, migrate
from voipmon.store.rows import CDR_COLUMNS, encode
from voipmon.store.schema import SCHEMA_VERSION
from voipmon.store.sqlstore import SqlStore
from voipmon.store.stats import StatsQuery, distribution_sql, series_sql
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
    def start_store(self) -> Any:
        store = SqlStore(self.make_dialect(), reactor, central_id="central-a")
        self.addCleanup(store.close)
        yield store.start()
        return store

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
        self.assertFalse(dialect.has_column(cur, "cdr", "calldate_minute"))
        start, end = DAY, DAY + 2 * 3600
        old = random_calls(random.Random(4), 120, start, end, 600)
        dialect.insert(cur, "cdr", CDR_COLUMNS,
                       [encode(c, None, None, None, "sensor")[0] for c in old])
        conn.commit()

        store = yield self.start_store()
        conn.commit()   # a fresh snapshot
        cur = conn.cursor()
        self.assertEqual(current_version(dialect, cur), SCHEMA_VERSION)
        self.assertTrue(dialect.has_column(cur, "cdr", "calldate_minute"))
        self.assertTrue(dialect.has_index(cur, "cdr", "cdr_stats"))
        before = yield self.assert_figures(store, start, end, 600)
        self.assertGreater(before["totals"]["calls"], 50)
        # calls stored after the migration join them
        yield store.store_cdrs(random_calls(random.Random(5), 80, start, end, 600, first=1000))
        after = yield self.assert_figures(store, start, end, 600)
        self.assertGreater(after["totals"]["calls"], before["totals"]["calls"])

    @defer.inlineCallbacks
    def test_the_queries_read_the_covering_index_in_order(self) -> Any:
        store = yield self.start_store()
        yield store.store_cdrs(random_calls(random.Random(7), 300, DAY, DAY + 86400, 3600))
        conn = self.connect()
        for query in (StatsQuery(DAY, DAY + 86400, 3600),
                      StatsQuery(DAY, DAY + 86400, 300, id_sensor=2)):
            self.assertTrue(query.by_minute)
            hint = self.make_dialect().index_hint("cdr_stats")
            for sql in (series_sql(query, hint), distribution_sql(query, hint)):
                self.assert_covered(conn, sql)

    def assert_covered(self, conn: Any, sql: str) -> None:
        raise NotImplementedError


class SQLiteStatsSchemaTests(SQLiteBackend, StatsSchemaTests, unittest.TestCase):
    def ensure_database(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)

    def assert_covered(self, conn: Any, sql: str) -> None:
        # SQLite (3.40) never counts an index holding a virtual column as covering: it
        # reads the rows too, in the index's order (the order they were written in)
        plan = " | ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        self.assertRegex(plan, r"^SEARCH cdr USING (COVERING )?INDEX cdr_stats "
                               r"\(calldate_minute>\? AND calldate_minute<\?\)$")


class MySQLStatsSchemaTests(MySQLBackend, StatsSchemaTests, unittest.TestCase):
    def ensure_database(self) -> None:
        testing.mysql_admin_execute((f"CREATE DATABASE IF NOT EXISTS {q(self.database)}", None))

    def assert_covered(self, conn: Any, sql: str) -> None:
        cur = conn.cursor()
        cur.execute(f"EXPLAIN {sql}")
        names = [d[0] for d in cur.description]
        (row,) = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        self.assertEqual(row["key"], "cdr_stats", row)
        self.assertIn("Using index", row["Extra"], row)
        self.assertNotIn("Using temporary", row["Extra"], row)
        self.assertNotIn("filesort", row["Extra"], row)
