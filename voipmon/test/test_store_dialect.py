"""MySQL and SQLite differences (voipmon.store.dialect): DDL, the row renderer (checked
against the real MariaDB: exact values, hostile text, NO_BACKSLASH_ESCAPES), the error
classification on real driver errors, and the choice of dialect from the config."""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import struct
from typing import Any

from twisted.trial import unittest

from voipmon.config import load_central_config
from voipmon.store import testing
from voipmon.store.dialect import (
    FATAL,
    LOST,
    RETRY,
    UNAVAILABLE,
    MySQLDialect,
    SQLiteDialect,
    dialect_for,
    q,
    row_renderer,
)
from voipmon.store.migrate import migrate
from voipmon.store.rows import CDR_COLUMNS, RTP_COLUMNS, encode
from voipmon.store.schema import TABLES
from voipmon.test.common import mysql_unavailable

CENTRAL = "server_bind = 0.0.0.0\nserver_password = pw\n"

HOSTILE = ["O'Brien", 'say "hi"', "back\\slash", "nul\x00byte", "ctrl-z\x1a", "new\nline",
           "'); DROP TABLE cdr; --", "\\'", "100%_done", "Zoë 😀", "tab\there", ""]


class ConfigTests(unittest.SynchronousTestCase):
    def test_sqlite_unless_mysqlhost(self) -> None:
        config = load_central_config("c.conf", CENTRAL + "sqlite_path = /var/x/v.sqlite\n")
        dialect = dialect_for(config)
        self.assertIsInstance(dialect, SQLiteDialect)
        self.assertEqual(dialect.where, "SQLite /var/x/v.sqlite")

    def test_mysql_names_user_host_port_db_never_the_password(self) -> None:
        config = load_central_config("c.conf", CENTRAL + "mysqlhost = 2001:db8::3\n"
                                     "mysqlport = 3307\nmysqluser = voip\nmysqldb = cdrs\n"
                                     "mysqlpassword = hunter2\n")
        dialect = dialect_for(config)
        self.assertIsInstance(dialect, MySQLDialect)
        self.assertEqual(dialect.where, "MySQL voip@[2001:db8::3]:3307/cdrs")
        self.assertNotIn("hunter2", repr(dialect))
        error = Exception(1045, "Access denied for user 'voip' (password hunter2)")
        self.assertEqual(dialect.describe(error),
                         "(1045) Access denied for user 'voip' (password ***)")


class DDLTests(unittest.SynchronousTestCase):
    def test_mysql(self) -> None:
        dialect = MySQLDialect("h", 1, "u", "", "d")
        sql = dialect.create_table_sql(TABLES["cdr"])
        self.assertIn("`ID` bigint unsigned NOT NULL AUTO_INCREMENT", sql)
        self.assertIn("`sipcallerip` varbinary(16) NULL", sql)
        self.assertIn("`sensor_cdr_uid` varchar(64) CHARACTER SET ascii COLLATE ascii_bin NOT "
                      "NULL", sql)
        self.assertIn("`whohanged` enum('caller','callee') NULL", sql)
        self.assertIn("PRIMARY KEY (`ID`)", sql)
        self.assertTrue(sql.endswith("ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 "
                                     "COLLATE=utf8mb4_general_ci"))
        rtp = dialect.create_table_sql(TABLES["cdr_rtp"])
        self.assertIn("PRIMARY KEY (`cdr_ID`, `index`)", rtp)
        self.assertIn("FOREIGN KEY (`cdr_ID`) REFERENCES `cdr` (`ID`) ON DELETE CASCADE", rtp)

    def test_sqlite(self) -> None:
        dialect = SQLiteDialect("x.sqlite")
        sql = dialect.create_table_sql(TABLES["cdr"])
        self.assertIn("`ID` INTEGER PRIMARY KEY AUTOINCREMENT", sql)
        self.assertNotIn("PRIMARY KEY (`ID`)", sql)
        self.assertIn("`caller` TEXT COLLATE NOCASE NULL", sql)
        self.assertIn("`calldate` TEXT NOT NULL", sql)

    def test_every_table_is_valid_sqlite(self) -> None:
        conn = sqlite3.connect(":memory:")
        dialect = SQLiteDialect(":memory:")
        for table in TABLES.values():
            conn.execute(dialect.create_table_sql(table))
            for index in table.indexes:
                conn.execute(dialect.create_index_sql(table.name, index))
        conn.close()


class RendererTests(unittest.SynchronousTestCase):
    def test_values_are_formatted_by_column_type(self) -> None:
        render = row_renderer("cdr_rtp", ("cdr_ID", "saddr", "avgjitter", "codec"))
        self.assertEqual(render((7, b"\x0a\x00\x00\x01", 0.1, "PCMU")),
                         "(7,X'0a000001',0.1,'PCMU')")
        self.assertEqual(render((None, None, None, None)), "(NULL,NULL,NULL,NULL)")
        self.assertEqual(render((True, b"", 1e-05, "it's")), "(1,X'',1e-05,'it\\'s')")

    def test_a_value_of_the_wrong_type_is_refused_not_pasted(self) -> None:
        render = row_renderer("cdr_rtp", ("cdr_ID", "saddr", "avgjitter", "codec"))
        for row in (("1) ; DROP TABLE cdr; --", b"", 1.0, "x"), (1, "0a", 1.0, "x"),
                    (1, b"", "1); --", "x"), (1, b"", 1.0, b"bytes")):
            self.assertRaises((ValueError, TypeError, AttributeError), render, row)

    def test_quote_doubling_without_backslash_escapes(self) -> None:
        render = row_renderer("cdr_rtp", ("codec",), no_backslash_escapes=True)
        self.assertEqual(render(("it's \\ fine",)), "('it''s \\ fine')")


class MySQLRendererTests(unittest.TestCase):
    def setUp(self) -> None:
        reason = testing.mysql_unreachable_reason()
        if reason:
            raise mysql_unavailable(reason)
        self.database = testing.unique_database_name()
        conn = testing.mysql_admin()
        conn.cursor().execute(f"CREATE DATABASE {q(self.database)}")
        conn.close()
        self.addCleanup(testing.drop_mysql_database, self.database)
        self.dialect = testing.mysql_dialect(self.database)
        self.conn = self.dialect.connect()
        self.addCleanup(self.conn.close)
        migrate(self.dialect, self.conn, testing.BASE_TIME)

    def round_trip(self, texts: list[str], floats: list[float]) -> None:
        cur = self.conn.cursor()
        cdr = testing.make_cdr(1)
        row, _nxt, rtp = encode(cdr, None, None, None, "sensor")
        self.dialect.insert(cur, "cdr", CDR_COLUMNS, [row])
        cur.execute("SELECT ID FROM cdr")
        (cdr_id,) = cur.fetchone()
        template = dict(zip(RTP_COLUMNS, (cdr_id, *rtp[0]), strict=True))
        rows = [tuple({**template, "index": i, "codec": texts[i % len(texts)],
                       "avgjitter": floats[i]}.values()) for i in range(len(floats))]
        self.assertEqual(self.dialect.insert(cur, "cdr_rtp", RTP_COLUMNS, rows), len(rows))
        self.conn.commit()
        cur.execute("SELECT `index`, codec, avgjitter FROM cdr_rtp ORDER BY `index`")
        for index, codec, avgjitter in cur.fetchall():
            self.assertEqual(codec, texts[index % len(texts)])
            self.assertEqual(avgjitter, floats[index])
        cur.execute("SELECT COUNT(*) FROM cdr")
        self.assertEqual(cur.fetchone()[0], 1)

    def test_hostile_text_and_exact_doubles(self) -> None:
        rng = random.Random(5)
        floats = [rng.uniform(0, 1000) for _ in range(300)]
        floats += [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(62)))[0]
                   for _ in range(300)]
        floats += [5e-324, 1.7976931348623157e308, 0.1, 1e-05, 123456789.123456789]
        self.round_trip(HOSTILE, floats)

    def test_connections_notice_a_vanished_server(self) -> None:
        sock = self.conn._sock
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 30)
        cur = self.conn.cursor()
        cur.execute("SELECT @@session.time_zone, @@session.tx_isolation")
        self.assertEqual(cur.fetchone(), ("+00:00", "READ-COMMITTED"))

    def test_under_no_backslash_escapes(self) -> None:
        cur = self.conn.cursor()
        cur.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
        self.round_trip(HOSTILE, [0.5] * len(HOSTILE))


class ClassifyTests(unittest.SynchronousTestCase):
    def test_mysql_codes(self) -> None:
        import pymysql

        dialect = MySQLDialect("h", 1, "u", "", "d")
        for error, kind in (
            (pymysql.err.OperationalError(2013, "Lost connection"), LOST),
            (pymysql.err.OperationalError(2006, "gone away"), LOST),
            (pymysql.err.OperationalError(1927, "Connection was killed"), LOST),
            (pymysql.err.InterfaceError(0, ""), LOST),
            (ConnectionResetError(104, "reset"), LOST),
            (pymysql.err.OperationalError(1213, "Deadlock found"), RETRY),
            (pymysql.err.OperationalError(1205, "Lock wait timeout"), RETRY),
            (pymysql.err.OperationalError(2003, "Can't connect"), UNAVAILABLE),
            (pymysql.err.OperationalError(1045, "Access denied"), UNAVAILABLE),
            (pymysql.err.OperationalError(1290, "read-only"), UNAVAILABLE),
            (pymysql.err.ProgrammingError(1146, "Table doesn't exist"), FATAL),
            (pymysql.err.IntegrityError(1062, "Duplicate entry"), FATAL),
            (KeyError("x"), FATAL),
        ):
            self.assertEqual(dialect.classify(error), kind, error)
        self.assertTrue(dialect.is_duplicate_key(pymysql.err.IntegrityError(1062, "dup")))
        self.assertTrue(dialect.is_unknown_database(pymysql.err.OperationalError(1049, "?")))

    def test_sqlite_errors(self) -> None:
        path = os.path.join(os.path.abspath(self.mktemp()), "x.sqlite")
        dialect = SQLiteDialect(path, busy_timeout=0.0)
        dialect.prepare()
        holder = dialect.connect()
        holder.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        holder.execute("BEGIN IMMEDIATE")
        other = dialect.connect()
        try:
            busy = self.assertRaises(sqlite3.OperationalError, other.execute, "BEGIN IMMEDIATE")
            self.assertEqual(dialect.classify(busy), RETRY)
            holder.execute("INSERT INTO t VALUES (1)")
            dup = self.assertRaises(sqlite3.IntegrityError, holder.execute,
                                    "INSERT INTO t VALUES (1)")
            self.assertTrue(dialect.is_duplicate_key(dup))
            self.assertEqual(dialect.classify(dup), FATAL)
            missing = self.assertRaises(sqlite3.OperationalError, holder.execute,
                                        "SELECT * FROM nothing")
            self.assertEqual(dialect.classify(missing), FATAL)
        finally:
            holder.rollback()
            holder.close()
            other.close()
        closed = self.assertRaises(sqlite3.ProgrammingError, other.execute, "SELECT 1")
        self.assertEqual(dialect.classify(closed), LOST)
        unopenable = SQLiteDialect(os.path.join(path, "under-a-file.sqlite"))
        error: Any = self.assertRaises(sqlite3.OperationalError, unopenable.connect)
        self.assertEqual(unopenable.classify(error), UNAVAILABLE)
