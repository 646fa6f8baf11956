"""MySQL and SQLite differences (voipmon.store.dialect): DDL, multi-row inserts and
session settings on the real MariaDB, the error classification on real driver errors,
and the choice of dialect from the config."""

from __future__ import annotations

import os
import socket
import sqlite3
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
)
from voipmon.store.migrate import migrate
from voipmon.store.rows import CDR_COLUMNS, encode
from voipmon.store.schema import TABLES
from voipmon.test.common import mysql_test_session

CENTRAL = "server_bind = 0.0.0.0\nserver_password = pw\n"



class ConfigTests(unittest.SynchronousTestCase):
    def test_sqlite_unless_mysqlhost(self) -> None:
        config = load_central_config("c.conf", CENTRAL + "sqlite_path = /var/x/v.sqlite\n")
        dialect = dialect_for(config.store)
        self.assertIsInstance(dialect, SQLiteDialect)
        self.assertEqual(dialect.where, "SQLite /var/x/v.sqlite")

    def test_mysql_names_user_host_port_db_never_the_password(self) -> None:
        config = load_central_config("c.conf", CENTRAL + "mysqlhost = 2001:db8::3\n"
                                     "mysqlport = 3307\nmysqluser = voip\nmysqldb = cdrs\n"
                                     "mysqlpassword = hunter2\n")
        dialect = dialect_for(config.store)
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

    def test_long_text_indexes_take_a_prefix_on_mysql_only(self) -> None:
        (index,) = TABLES["cdr_next"].indexes
        self.assertEqual(MySQLDialect("h", 1, "u", "", "d").create_index_sql("cdr_next", index),
                         "CREATE INDEX `cdr_next_callid` ON `cdr_next` (`callid`(255))")
        self.assertEqual(SQLiteDialect("x.sqlite").create_index_sql("cdr_next", index),
                         "CREATE INDEX `cdr_next_callid` ON `cdr_next` (`callid`)")

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


class MySQLSessionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dialect, self.conn = mysql_test_session(self)

    def test_connections_notice_a_vanished_server(self) -> None:
        sock = self.conn._sock
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 30)
        cur = self.conn.cursor()
        cur.execute("SELECT @@session.time_zone, @@session.tx_isolation")
        self.assertEqual(cur.fetchone(), ("+00:00", "READ-COMMITTED"))

    def test_insert_splits_big_batches(self) -> None:
        """Rows past a megabyte of literals go in a further statement; all counted."""
        migrate(self.dialect, self.conn, testing.BASE_TIME)
        cur = self.conn.cursor()
        rows = [encode(testing.make_cdr(n, callername="x" * 250), None, None, None,
                       "sensor")[0] for n in range(3000)]                # about 3 MB
        self.assertEqual(self.dialect.insert(cur, "cdr", CDR_COLUMNS, rows), 3000)
        self.conn.commit()
        cur.execute("SELECT COUNT(*), COUNT(DISTINCT sensor_cdr_uid) FROM cdr")
        self.assertEqual(cur.fetchone(), (3000, 3000))


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
