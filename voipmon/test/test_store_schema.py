"""Schema creation and migration (voipmon.store.schema, voipmon.store.migrate), on SQLite
and on the real MariaDB: an empty database gets every table, an older one is migrated
(v1 -> v2 with its data kept), an interrupted run resumes, and a database that is newer or
not ours is refused untouched. Also MySQL database creation and its refusals."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest

from voipmon.store import testing
from voipmon.store.dialect import q
from voipmon.store.interfaces import SchemaError, StoreUnavailable
from voipmon.store.migrate import apply, current_version, migrate
from voipmon.store.rows import CDR_COLUMNS, NEXT_COLUMNS, RTP_COLUMNS, cdr_json, encode, stored_form
from voipmon.store.schema import MIGRATIONS, SCHEMA_VERSION, TABLES, tables_at
from voipmon.store.sqlstore import SqlStore
from voipmon.test.test_store import MySQLBackend, SQLiteBackend

T0 = testing.BASE_TIME


class SchemaTests:
    def setUp(self) -> None:
        self.backend_setup()
        self.events: list[dict[str, Any]] = []

    def messages(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def connect(self) -> Any:
        self.ensure_database()
        conn = self.make_dialect().connect()
        self.addCleanup(conn.close)
        return conn

    @defer.inlineCallbacks
    def start_store(self, central_id: str = "central-a") -> Any:
        store = SqlStore(self.make_dialect(), reactor, central_id=central_id,
                         log=Logger(observer=self.events.append))
        self.addCleanup(store.close)
        yield store.start()
        return store

    def columns(self, conn: Any, table: str) -> set[str]:
        dialect = self.make_dialect()
        cur = conn.cursor()
        return {c.name for c in TABLES[table].columns if dialect.has_column(cur, table, c.name)}

    @defer.inlineCallbacks
    def test_empty_database_gets_the_whole_schema(self) -> Any:
        yield self.start_store()
        conn = self.connect()
        cur = conn.cursor()
        dialect = self.make_dialect()
        self.assertEqual(current_version(dialect, cur), SCHEMA_VERSION)
        for table in TABLES.values():
            self.assertTrue(dialect.has_table(cur, table.name), table.name)
            self.assertEqual(self.columns(conn, table.name), {c.name for c in table.columns})
            for index in table.indexes:
                self.assertTrue(dialect.has_index(cur, table.name, index.name), index.name)
        self.assertIn(f"Created the schema (version {SCHEMA_VERSION}) in "
                      f"{dialect.where}", self.messages())

    @defer.inlineCallbacks
    def test_v1_database_is_migrated_keeping_its_data(self) -> Any:
        conn = self.connect()
        dialect = self.make_dialect()
        self.assertEqual(migrate(dialect, conn, T0, target=1), (0, 1))
        self.assertNotIn("packets", self.columns(conn, "sensors"))
        self.assertFalse(dialect.has_index(conn.cursor(), "cdr_next", "cdr_next_callid"))
        # a v1 database in use: a sensor and a CDR, written with v1's columns
        cur = conn.cursor()
        v1 = tables_at(1)["sensors"]
        names = [c.name for c in v1.columns if c.name in ("id_sensor", "name", "connected",
                                                          "central", "first_seen")]
        cur.execute(f"INSERT INTO `sensors` ({', '.join(q(n) for n in names)}) VALUES "
                    f"({dialect.params(len(names))})",
                    (4, "old-4", 1, "central-z", "2023-11-14 22:13:20.000"))
        cdr = testing.make_cdr(1, id_sensor=4)
        dialect.insert(cur, "cdr", CDR_COLUMNS, [encode(cdr, None, None, None, "sensor")[0]])
        cur.execute("SELECT `ID` FROM `cdr`")
        (cdr_id,) = cur.fetchone()
        _row, nxt, rtp = encode(cdr, None, None, None, "sensor", cdr_id=cdr_id)
        v1_next = {c.name for c in tables_at(1)["cdr_next"].columns}
        kept = [i for i, name in enumerate(NEXT_COLUMNS) if name in v1_next]
        dialect.insert(cur, "cdr_next", [NEXT_COLUMNS[i] for i in kept],
                       [tuple(nxt[i] for i in kept)])
        dialect.insert(cur, "cdr_rtp", RTP_COLUMNS, rtp)
        conn.commit()

        store = yield self.start_store()
        self.assertIn(f"Migrated {dialect.where} from schema version 1 to {SCHEMA_VERSION}",
                      self.messages())
        cur = conn.cursor()
        conn.commit()   # a fresh snapshot
        self.assertEqual(current_version(dialect, cur), SCHEMA_VERSION)
        self.assertEqual(self.columns(conn, "sensors"), {c.name for c in TABLES["sensors"].columns})
        (sensor,) = yield store.list_sensors()
        self.assertEqual((sensor["id_sensor"], sensor["name"], sensor["packets"],
                          sensor["stats_at"]), (4, "old-4", 0, None))
        yield store.upsert_sensor({"id_sensor": 4, "packets": 12, "drops": 1, "when": T0})
        (sensor,) = yield store.list_sensors()
        self.assertEqual((sensor["packets"], sensor["drops"]), (12, 1))
        # (its lookup texts were not written above: no user agents, no response text)
        bare = dataclasses.replace(cdr, a_ua="", b_ua="", lastSIPresponse="")
        self.assertEqual((yield store.get_cdr(cdr_id)), cdr_json(cdr_id, *stored_form(bare)))
        # v3: the Call-ID search has its index, and finds the CDR written before it existed
        self.assertTrue(dialect.has_index(cur, "cdr_next", "cdr_next_callid"))
        self.assertEqual([r["id"] for r in (yield store.list_cdrs({"callid": cdr.callid}))],
                         [cdr_id])

    def test_migrating_again_changes_nothing(self) -> None:
        conn = self.connect()
        dialect = self.make_dialect()
        self.assertEqual(migrate(dialect, conn, T0), (0, SCHEMA_VERSION))
        self.assertEqual(migrate(dialect, conn, T0), (SCHEMA_VERSION, SCHEMA_VERSION))
        cur = conn.cursor()
        for migration in MIGRATIONS:
            for step in migration.steps:
                self.assertFalse(apply(dialect, cur, step), step)

    @defer.inlineCallbacks
    def test_an_interrupted_first_migration_resumes(self) -> Any:
        conn = self.connect()
        dialect = self.make_dialect()
        cur = conn.cursor()
        for step in MIGRATIONS[0].steps[:6]:    # schema_version and some tables, no version
            apply(dialect, cur, step)
        conn.commit()
        yield self.start_store()
        conn.commit()
        self.assertEqual(current_version(dialect, conn.cursor()), SCHEMA_VERSION)
        self.assertEqual(self.columns(conn, "cdr_rtp"), {c.name for c in TABLES["cdr_rtp"].columns})

    @defer.inlineCallbacks
    def test_a_newer_schema_is_refused(self) -> Any:
        conn = self.connect()
        dialect = self.make_dialect()
        migrate(dialect, conn, T0)
        cur = conn.cursor()
        cur.execute("UPDATE `schema_version` SET `version` = 99")
        conn.commit()
        failure = yield self.assertFailure(self.start_store(), SchemaError)
        self.assertIn("version 99, newer than this voipmon knows", str(failure))

    @defer.inlineCallbacks
    def test_a_cdr_table_that_is_not_ours_is_left_alone(self) -> Any:
        conn = self.connect()
        cur = conn.cursor()
        cur.execute("CREATE TABLE `cdr` (`ID` integer PRIMARY KEY, `calldate` varchar(30))")
        conn.commit()
        failure = yield self.assertFailure(self.start_store(), SchemaError)
        self.assertIn("voipmon did not create", str(failure))
        dialect = self.make_dialect()
        cur = conn.cursor()
        self.assertFalse(dialect.has_table(cur, "schema_version"))
        self.assertFalse(dialect.has_column(cur, "cdr", "sensor_cdr_uid"))

    @defer.inlineCallbacks
    def test_several_centrals_starting_at_once(self) -> Any:
        stores = [SqlStore(self.make_dialect(), reactor, central_id=f"c{i}") for i in range(3)]
        for store in stores:
            self.addCleanup(store.close)
        yield defer.gatherResults([s.start() for s in stores], consumeErrors=True)
        conn = self.connect()
        self.assertEqual(current_version(self.make_dialect(), conn.cursor()), SCHEMA_VERSION)


class SQLiteSchemaTests(SQLiteBackend, SchemaTests, unittest.TestCase):
    def ensure_database(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)

    @defer.inlineCallbacks
    def test_wal_journal_in_a_created_directory(self) -> Any:
        yield self.start_store()
        self.assertTrue(os.path.isdir(os.path.dirname(self.path)))
        (mode,) = self.connect().execute("PRAGMA journal_mode").fetchone()
        self.assertEqual(mode, "wal")

    @defer.inlineCallbacks
    def test_a_path_that_cannot_be_created(self) -> Any:
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as handle:
            handle.write("a file, not a directory")
        self.path = os.path.join(blocker, "sub", "voipmon.sqlite")
        failure = yield self.assertFailure(self.start_store(), StoreUnavailable)
        self.assertIn(f"SQLite {self.path}", str(failure))


class MySQLSchemaTests(MySQLBackend, SchemaTests, unittest.TestCase):
    def ensure_database(self) -> None:
        testing.mysql_admin_execute((f"CREATE DATABASE IF NOT EXISTS {q(self.database)}", None))

    @defer.inlineCallbacks
    def test_a_missing_database_is_created(self) -> Any:
        yield self.start_store()
        self.assertIn(f"Created database {self.make_dialect().where}", self.messages())
        conn = self.connect()
        cur = conn.cursor()
        cur.execute("SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA "
                    "WHERE SCHEMA_NAME = %s", (self.database,))
        self.assertEqual(cur.fetchone()[0], "utf8mb4")
        cur.execute("SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE "
                    "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'cdr'")
        types = dict(cur.fetchall())
        self.assertEqual(types["ID"], "bigint(20) unsigned")
        self.assertEqual(types["calldate"], "datetime(3)")
        self.assertEqual(types["duration"], "decimal(9,3)")
        self.assertEqual(types["sipcallerip"], "varbinary(16)")
        self.assertEqual(types["a_mos_f1_mult10"], "tinyint(3) unsigned")
        self.assertEqual(types["id_sensor"], "smallint(5) unsigned")
        cur.execute("SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()")
        self.assertEqual({row[0] for row in cur.fetchall()}, {"InnoDB"})
        # reports written for VoIPmonitor read the address columns with INET6_NTOA
        store = SqlStore(self.make_dialect(), reactor)
        self.addCleanup(store.close)
        yield store.start()
        yield store.store_cdrs([testing.make_cdr(1)])
        conn.commit()
        cur.execute("SELECT INET6_NTOA(sipcallerip), INET6_NTOA(sipcalledip), "
                    "a_mos_f1_mult10 FROM cdr")
        self.assertEqual(cur.fetchone(), ("198.51.100.7", "2001:db8::5060", 42))  # MOS 4.21

    @defer.inlineCallbacks
    def test_a_user_who_may_not_create_it_is_told_so(self) -> Any:
        with testing.mysql_user() as (user, password):
            dialect = testing.mysql_dialect(self.database, user=user, password=password)
            store = SqlStore(dialect, reactor, log=Logger(observer=self.events.append))
            self.addCleanup(store.close)
            failure = yield self.assertFailure(store.start(), StoreUnavailable)
        message = str(failure)
        self.assertIn(f"{user}@127.0.0.1:", message)
        self.assertIn(f"/{self.database}: database '{self.database}' does not exist (or "
                      f"{user} may not use it) and {user} could not create it", message)
        self.assertNotIn(password, message)
        self.assertNotIn(password, " ".join(self.messages()))
        self.assertEqual(len([m for m in self.messages() if "unavailable" in m]), 1)

    @defer.inlineCallbacks
    def test_a_wrong_password_is_reported_without_it(self) -> Any:
        self.ensure_database()
        with testing.mysql_user(f"ALL ON {q(self.database)}.*") as (user, password):
            wrong = password[::-1]
            dialect = testing.mysql_dialect(self.database, user=user, password=wrong)
            store = SqlStore(dialect, reactor, log=Logger(observer=self.events.append))
            self.addCleanup(store.close)
            failure = yield self.assertFailure(store.start(), StoreUnavailable)
        self.assertIn("(1045) Access denied", str(failure))
        self.assertIn(f"MySQL {user}@127.0.0.1:", str(failure))
        for text in (str(failure), *self.messages()):
            self.assertNotIn(wrong, text)
