"""Statements in flight on a PyMySQL connection (voipmon.store.pipeline), on the real
MariaDB: answers in order, refusals and drains that keep the connection in step, a
connection killed with statements in flight."""

from __future__ import annotations

import sqlite3

from twisted.trial import unittest

from voipmon.store.dialect import LOST
from voipmon.store.pipeline import Pipeline, usable
from voipmon.test.common import mysql_test_session
from voipmon.test.test_store_pool import kill


class UsableTests(unittest.SynchronousTestCase):
    def test_only_pymysql_connections(self) -> None:
        conn = sqlite3.connect(":memory:")
        self.addCleanup(conn.close)
        self.assertFalse(usable(conn))
        self.assertFalse(usable(object()))


class PipelineTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dialect, self.conn = mysql_test_session(self)
        cur = self.conn.cursor()
        cur.execute("CREATE TABLE t (k INT PRIMARY KEY, v VARCHAR(10)) ENGINE=InnoDB")
        self.assertTrue(usable(self.conn))

    def in_step(self) -> None:
        """The connection answers a new query with its own answer."""
        cur = self.conn.cursor()
        cur.execute("SELECT 'in step', COUNT(*) FROM t")
        self.assertEqual(cur.fetchone()[0], "in step")

    def test_answers_come_in_order_with_their_notes(self) -> None:
        pipe = Pipeline(self.conn)
        cur = self.conn.cursor()
        cur.execute("CREATE TABLE a (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB")
        pipe.send("INSERT INTO t VALUES (1, 'a'), (2, 'b')", "two")
        pipe.send("INSERT INTO t VALUES (3, 'c') RETURNING k, v", "returning")
        pipe.send("INSERT INTO a (v) VALUES (7), (8), (9)", "auto")
        pipe.send("SELECT COUNT(*) FROM t", "count")
        self.assertEqual(len(pipe), 4)
        self.assertEqual(pipe.receive(), ("two", 2, (), 0))
        self.assertEqual(pipe.receive(), ("returning", 1, ((3, "c"),), 0))
        self.assertEqual(pipe.receive(), ("auto", 3, (), 1))    # the first row's ID
        self.assertEqual(pipe.receive(), ("count", 1, ((3,),), 0))
        self.assertEqual(len(pipe), 0)
        self.in_step()

    def test_a_refusal_is_raised_in_its_turn(self) -> None:
        import pymysql

        pipe = Pipeline(self.conn)
        pipe.send("INSERT INTO t VALUES (1, 'a')", 1)
        pipe.send("INSERT INTO t VALUES (1, 'again')", 1)
        pipe.send("SELECT 'after'", "after")
        self.assertEqual(pipe.receive()[0], 1)
        error = self.assertRaises(pymysql.err.IntegrityError, pipe.receive)
        self.assertTrue(self.dialect.is_duplicate_key(error))
        self.assertEqual(pipe.receive().rows, (("after",),))
        self.in_step()

    def test_drain_reads_every_answer_due(self) -> None:
        pipe = Pipeline(self.conn)
        pipe.send("INSERT INTO t VALUES (1, 'a')")
        pipe.send("INSERT INTO t VALUES (1, 'dup')")
        pipe.send("SELECT 1")
        pipe.drain()
        self.assertEqual(len(pipe), 0)
        self.in_step()
        self.conn.rollback()
        cur = self.conn.cursor()
        cur.execute("SELECT COUNT(*) FROM t")
        self.assertEqual(cur.fetchone(), (0,))

    def test_a_killed_connection_is_lost_not_stuck(self) -> None:
        pipe = Pipeline(self.conn)
        pipe.send("INSERT INTO t VALUES (1, 'a')")
        pipe.send("SELECT SLEEP(5)")
        kill(self.conn.thread_id())
        errors = []
        while len(pipe):
            try:
                pipe.receive()
            except Exception as exc:
                errors.append(exc)
                break
        self.assertTrue(errors)
        self.assertEqual(self.dialect.classify(errors[0]), LOST)
        pipe.drain()
        self.assertEqual(len(pipe), 0)
