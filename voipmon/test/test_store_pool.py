"""The pool's transaction loop and outage handling (voipmon.store.pool).

The retry rules are checked on scripted connections (no threads, no database); the
outages on the real MariaDB: connections KILLed from a second connection in the middle of
writes, and the database taken away and brought back behind a TCP proxy, checking that
every acknowledged batch is present exactly once, and what was logged.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger, formatEvent
from twisted.protocols import portforward
from twisted.trial import unittest

from voipmon.records.cdr import Cdr
from voipmon.store import testing
from voipmon.store.dialect import FATAL, LOST, RETRY, UNAVAILABLE, MySQLDialect, q
from voipmon.store.interfaces import SchemaError, StoreError, StoreUnavailable
from voipmon.store.pool import Availability, Pool, Retry
from voipmon.store.sqlstore import SqlStore
from voipmon.test.common import mysql_test_database

# -- the transaction loop, scripted -----------------------------------------------------


class Scripted(Exception):
    """A driver error of a given kind."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"scripted {kind}")
        self.kind = kind


class FakeConnection:
    def __init__(self, log: list[str], number: int, fail_rollback: bool = False) -> None:
        self.log = log
        self.number = number
        self.fail_rollback = fail_rollback

    def cursor(self) -> Any:
        return protocol.Protocol()   # anything: the scripted work never uses it

    def commit(self) -> None:
        self.log.append(f"commit {self.number}")

    def rollback(self) -> None:
        self.log.append(f"rollback {self.number}")
        if self.fail_rollback:
            raise Scripted(LOST)

    def close(self) -> None:
        self.log.append(f"close {self.number}")


class FakeDialect:
    name = "SQLite"
    where = "Test user@db:1/x"
    secret = "s3cret"

    def __init__(self, connects: list[Any] | None = None, fail_rollback: bool = False) -> None:
        self.log: list[str] = []
        self.connects = list(connects or [])
        self.number = 0
        self.fail_rollback = fail_rollback

    def connect(self) -> FakeConnection:
        if self.connects:
            error = self.connects.pop(0)
            if error is not None:
                raise error
        self.number += 1
        self.log.append(f"connect {self.number}")
        return FakeConnection(self.log, self.number, self.fail_rollback)

    def begin(self, cur: Any, write: bool) -> None:
        self.log.append("begin")

    def classify(self, exc: BaseException) -> str:
        return exc.kind if isinstance(exc, Scripted) else FATAL

    def describe(self, exc: BaseException) -> str:
        return str(exc).replace(self.secret, "***")


class TransactionLoopTests(unittest.SynchronousTestCase):
    def make_pool(self, **kwargs: Any) -> Pool:
        self.dialect = FakeDialect(**kwargs)
        self.sleeps: list[float] = []
        return Pool(self.dialect, MemoryReactor(), sleep=self.sleeps.append)

    def run_work(self, pool: Pool, *outcomes: Any) -> Any:
        """Run work that raises/returns ``outcomes`` in turn (one per attempt)."""
        script = list(outcomes)
        self.committed: list[int] = []

        def work(txn: Any) -> Any:
            outcome = script.pop(0)
            txn.after_commit.append(lambda: self.committed.append(txn.attempt))
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return pool._attempts(None, work, (), True, True)

    def test_success_commits_then_runs_hooks(self) -> None:
        pool = self.make_pool()
        self.assertEqual(self.run_work(pool, 42), 42)
        self.assertEqual(self.dialect.log, ["connect 1", "begin", "commit 1"])
        self.assertEqual(self.committed, [1])
        self.assertEqual(pool.stats["transactions"], 1)

    def test_a_lost_connection_is_replaced_and_the_work_runs_again(self) -> None:
        pool = self.make_pool()
        self.assertEqual(self.run_work(pool, Scripted(LOST), 7), 7)
        self.assertEqual(self.dialect.log, ["connect 1", "begin", "close 1", "connect 2",
                                            "begin", "commit 2"])
        self.assertEqual(self.committed, [2])   # the failed attempt's hooks never run
        self.assertEqual(pool.stats["lost"], 1)

    def test_a_connection_lost_twice_is_unavailable(self) -> None:
        pool = self.make_pool()
        exc = self.assertRaises(StoreUnavailable, self.run_work, pool, Scripted(LOST),
                                Scripted(LOST))
        self.assertEqual(str(exc), "Test user@db:1/x: connection lost: scripted lost")

    def test_deadlocks_are_rolled_back_and_retried_after_a_pause(self) -> None:
        pool = self.make_pool()
        result = self.run_work(pool, Scripted(RETRY), Retry(), Scripted(RETRY), "done")
        self.assertEqual(result, "done")
        self.assertEqual(self.dialect.log.count("rollback 1"), 3)
        self.assertEqual(len(self.sleeps), 3)
        self.assertTrue(all(0 <= s <= 0.2 for s in self.sleeps))
        self.assertEqual(pool.stats["retried"], 3)

    def test_endless_deadlocks_give_up_unavailable(self) -> None:
        pool = self.make_pool()
        exc = self.assertRaises(StoreUnavailable, self.run_work, pool,
                                *[Scripted(RETRY)] * Pool.retry_attempts)
        self.assertIn(f"gave up after {Pool.retry_attempts} attempts", str(exc))

    def test_a_refusal_is_unavailable_at_once(self) -> None:
        pool = self.make_pool()
        exc = self.assertRaises(StoreUnavailable, self.run_work, pool, Scripted(UNAVAILABLE))
        self.assertIn("refused", str(exc))
        self.assertEqual(self.dialect.log, ["connect 1", "begin", "rollback 1"])

    def test_a_bug_is_a_store_error_not_unavailable(self) -> None:
        pool = self.make_pool()
        exc = self.assertRaises(StoreError, self.run_work, pool, KeyError("ID"))
        self.assertNotIsInstance(exc, StoreUnavailable)
        self.assertEqual(pool.stats["failed"], 1)

    def test_store_errors_from_the_work_pass_through(self) -> None:
        pool = self.make_pool()
        error = SchemaError("too new")
        self.assertIs(self.assertRaises(SchemaError, self.run_work, pool, error), error)

    def test_cannot_connect_names_the_database_not_the_password(self) -> None:
        pool = self.make_pool(connects=[Scripted(UNAVAILABLE)])
        self.dialect.connects = [Exception("denied for s3cret")]
        self.dialect.classify = lambda exc: UNAVAILABLE
        exc = self.assertRaises(StoreUnavailable, self.run_work, pool, 1)
        self.assertEqual(str(exc), "Test user@db:1/x: cannot connect: denied for ***")

    def test_a_busy_database_at_connect_is_retried(self) -> None:
        pool = self.make_pool(connects=[Scripted(RETRY), Scripted(RETRY), None])
        self.assertEqual(self.run_work(pool, 3), 3)
        self.assertEqual(len(self.sleeps), 2)

    def test_a_connection_that_cannot_roll_back_is_not_reused(self) -> None:
        pool = self.make_pool(fail_rollback=True)
        self.assertEqual(self.run_work(pool, Scripted(RETRY), 5), 5)
        self.assertEqual(self.dialect.log, ["connect 1", "begin", "rollback 1", "close 1",
                                            "connect 2", "begin", "commit 2"])


class AvailabilityTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.availability = Availability("MySQL u@h:1/db", self.clock,
                                         Logger(observer=self.events.append))

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def test_one_line_down_one_line_back(self) -> None:
        reason = "MySQL u@h:1/db: cannot connect: (2003) refused"
        for _ in range(3):
            d = self.availability.watch(defer.fail(StoreUnavailable(reason)))
            self.failureResultOf(d, StoreUnavailable)
            self.clock.advance(4)
        self.assertFalse(self.availability.up)
        d = self.availability.watch(defer.fail(ValueError("bad limit")))   # not the database
        self.failureResultOf(d, ValueError)
        self.assertFalse(self.availability.up)
        self.availability.watch(defer.succeed(1))
        self.availability.watch(defer.succeed(2))
        self.assertTrue(self.availability.up)
        self.assertEqual(self.lines(), [
            f"Database unavailable: {reason}. CDR writes fail and are retried by their "
            "senders until it is back.",
            "Database MySQL u@h:1/db is back after 12.0 s (3 failed calls).",
        ])
        self.assertEqual([e["log_level"].name for e in self.events], ["error", "info"])

    def test_results_pass_through(self) -> None:
        self.assertEqual(self.successResultOf(self.availability.watch(defer.succeed(5))), 5)
        self.failureResultOf(self.availability.watch(defer.fail(StoreError("bug"))), StoreError)
        self.assertTrue(self.availability.up)


# -- outages on the real MariaDB ---------------------------------------------------------


class KillingDialect(MySQLDialect):
    """MySQLDialect whose connections are KILLed after a COMMIT, from another connection."""

    kill_after_commit = False         # COMMIT, then KILL, then report the connection lost

    def connect(self, with_database: bool = True) -> Any:
        conn = super().connect(with_database)
        return _CommitKiller(conn, self) if with_database else conn


class _CommitKiller:
    def __init__(self, conn: Any, dialect: KillingDialect) -> None:
        self._conn, self._dialect = conn, dialect

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def commit(self) -> None:
        self._conn.commit()
        if self._dialect.kill_after_commit:
            self._dialect.kill_after_commit = False
            kill(self._conn.thread_id())
            import pymysql

            raise pymysql.err.OperationalError(2013, "Lost connection to server (test)")


def kill(*thread_ids: int) -> None:
    conn = testing.mysql_admin()
    try:
        with conn.cursor() as cur:
            for ident in thread_ids:
                try:
                    cur.execute(f"KILL CONNECTION {int(ident)}")
                except Exception:
                    pass   # it ended on its own meanwhile
    finally:
        conn.close()


def connections_to(database: str) -> list[int]:
    conn = testing.mysql_admin()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s "
                        "AND ID <> CONNECTION_ID()", (database,))
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


class TrackingProxy(portforward.ProxyFactory):
    """A TCP proxy to MariaDB that can drop every connection it carries."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.carried: set[Any] = set()

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        proto = super().buildProtocol(addr)
        lost = proto.connectionLost

        def connectionLost(reason: Any) -> None:
            self.carried.discard(proto)
            lost(reason)

        proto.connectionLost = connectionLost
        self.carried.add(proto)
        return proto

    def drop_all(self) -> None:
        for proto in list(self.carried):
            proto.transport.abortConnection()


class MySQLOutageTests(unittest.TestCase):
    def setUp(self) -> None:
        self.database = mysql_test_database(self)
        self.events: list[dict[str, Any]] = []

    @defer.inlineCallbacks
    def make_store(self, dialect: Any) -> Any:
        store = SqlStore(dialect, reactor, log=Logger(observer=self.events.append))
        self.addCleanup(store.close)
        yield store.start()
        return store

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def stored_keys(self) -> list[tuple[int, str]]:
        conn = testing.mysql_dialect(self.database).connect()
        try:
            cur = conn.cursor()
            cur.execute("SELECT id_sensor, sensor_cdr_uid FROM cdr")
            keys = [tuple(row) for row in cur.fetchall()]
            cur.execute("SELECT COUNT(*) FROM cdr_rtp")
            self.rtp_rows = cur.fetchone()[0]
            cur.execute("SELECT COUNT(*) FROM cdr_next")
            self.next_rows = cur.fetchone()[0]
            return keys
        finally:
            conn.close()

    def assertExactlyOnce(self, cdrs: list[Cdr]) -> None:
        keys = self.stored_keys()
        self.assertEqual(len(keys), len(set(keys)))
        self.assertEqual(set(keys), {(c.id_sensor, c.sensor_cdr_uid) for c in cdrs})
        self.assertEqual(self.rtp_rows, sum(len(c.rtp) for c in cdrs))
        self.assertEqual(self.next_rows, len(cdrs))

    def kill_before(self, statement: bytes) -> list[int]:
        """KILL (from another connection) the connection that is about to send a statement
        starting with ``statement``, once; returns the list of connections killed. Both
        ways statements reach the server (a cursor, a pipeline) pass through here."""
        import pymysql

        original = pymysql.connections.Connection._execute_command
        killed: list[int] = []

        def execute(conn: Any, command: int, sql: Any) -> Any:
            text = sql.encode() if isinstance(sql, str) else sql
            if not killed and text.startswith(statement):
                killed.append(conn.thread_id())
                kill(conn.thread_id())
            return original(conn, command, sql)

        self.patch(pymysql.connections.Connection, "_execute_command", execute)
        return killed

    @defer.inlineCallbacks
    def killed_in_the_middle_of_a_transaction(self, pipelining: bool) -> Any:
        dialect = testing.mysql_dialect(self.database)
        dialect.pipelining = pipelining
        store = yield self.make_store(dialect)
        cdrs = [testing.make_cdr(n) for n in range(200)]
        killed = self.kill_before(b"INSERT INTO `cdr_rtp`")  # cdr and cdr_next rows went in
        self.assertEqual((yield store.store_cdrs(cdrs)), 200)
        self.assertEqual(len(killed), 1)
        self.assertEqual(store.counters()["lost"], 1)
        self.assertExactlyOnce(cdrs)

    def test_killed_in_the_middle_of_a_transaction(self) -> Any:
        return self.killed_in_the_middle_of_a_transaction(pipelining=True)

    def test_killed_in_the_middle_of_a_plain_transaction(self) -> Any:
        return self.killed_in_the_middle_of_a_transaction(pipelining=False)

    @defer.inlineCallbacks
    def test_killed_after_commit_before_the_answer(self) -> Any:
        """The COMMIT happened but its answer was lost: the retry finds the batch stored.
        The count says 0 new (this call could not know); the data is there once."""
        dialect = KillingDialect(**{k: v for k, v in testing.mysql_settings().items()},
                                 database=self.database)
        store = yield self.make_store(dialect)
        cdrs = [testing.make_cdr(n) for n in range(50)]
        dialect.kill_after_commit = True
        self.assertEqual((yield store.store_cdrs(cdrs)), 0)
        self.assertExactlyOnce(cdrs)
        self.assertEqual(len((yield store.list_cdrs({"limit": "100"}))), 50)

    @defer.inlineCallbacks
    def test_kill_every_connection_while_batches_are_in_flight(self) -> Any:
        store = yield self.make_store(testing.mysql_dialect(self.database))
        batches = [[testing.make_cdr(n, id_sensor=s) for n in range(k * 30, k * 30 + 60)]
                   for s in range(1, 5) for k in range(10)]     # overlapping, four sensors
        acknowledged: list[list[Cdr]] = []
        missing: list[tuple[int, str]] = []
        kills = {"done": 0}

        def acked(count: int, batch: list[Cdr]) -> int:
            acknowledged.append(batch)
            stored = set(self.stored_keys())
            missing.extend(k for c in batch if (k := (c.id_sensor, c.sensor_cdr_uid))
                           not in stored)
            if len(acknowledged) in (3, 12, 25):    # while the others are in flight
                kill(*connections_to(self.database))
                kills["done"] += 1
            return count

        results = yield defer.DeferredList(
            [store.store_cdrs(b).addCallback(acked, b) for b in batches], consumeErrors=True)
        self.assertEqual(kills["done"], 3)
        failed = [b for (ok, result), b in zip(results, batches, strict=True) if not ok]
        for (ok, result) in results:
            if not ok:
                result.trap(StoreUnavailable)
        self.assertEqual(missing, [])
        # what was not acknowledged is sent again, as a sensor would
        for batch in failed:
            yield store.store_cdrs(batch)
        everything = {(c.id_sensor, c.sensor_cdr_uid): c for b in batches for c in b}
        self.assertExactlyOnce(list(everything.values()))
        self.assertGreater(store.counters()["lost"], 0)

    @defer.inlineCallbacks
    def test_database_down_and_back(self) -> Any:
        """Behind a proxy: the database goes away (connections dropped, connects refused),
        writes fail StoreUnavailable and one line is logged; it comes back, the retried
        batches are stored once, and one line says so. The password is never shown."""
        testing.mysql_admin_execute((f"CREATE DATABASE {q(self.database)}", None))
        settings = testing.mysql_settings()
        proxy = TrackingProxy(settings["host"], settings["port"])
        port = reactor.listenTCP(0, proxy, interface="127.0.0.1")
        number = port.getHost().port
        with testing.mysql_user(f"ALL ON {q(self.database)}.*") as (user, password):
            dialect = testing.mysql_dialect(self.database, host="127.0.0.1", port=number,
                                            user=user, password=password)
            store = yield self.make_store(dialect)
            first = [testing.make_cdr(n) for n in range(0, 40)]
            second = [testing.make_cdr(n) for n in range(30, 80)]
            self.assertEqual((yield store.store_cdrs(first)), 40)

            yield port.stopListening()
            proxy.drop_all()
            yield deferLater(reactor, 0, lambda: None)   # let the aborts complete
            for _ in range(3):
                failure = yield self.assertFailure(store.store_cdrs(second), StoreUnavailable)
            yield self.assertFailure(store.list_sensors(), StoreUnavailable)
            self.assertFalse(store.availability.up)

            port = reactor.listenTCP(number, proxy, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            self.assertEqual((yield store.store_cdrs(second)), 40)
            self.assertEqual((yield store.store_cdrs(first + second)), 0)
            yield store.close()
            proxy.drop_all()
        self.assertExactlyOnce(first + second[10:])
        where = f"MySQL {user}@127.0.0.1:{number}/{self.database}"
        self.assertIn(where, str(failure))
        down = [line for line in self.lines() if "unavailable" in line]
        back = [line for line in self.lines() if "is back after" in line]
        self.assertEqual(len(down), 1, self.lines())
        self.assertIn(where, down[0])
        self.assertIn("(2003)", down[0])
        self.assertEqual(len(back), 1, self.lines())
        self.assertIn(f"Database {where} is back after", back[0])
        self.assertIn("(4 failed calls)", back[0])
        for text in (str(failure), *self.lines()):
            self.assertNotIn(password, text)
