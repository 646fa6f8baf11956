"""The connection pool: adbapi threads, one DB-API connection each, and our transaction loop.

``twisted.enterprise.adbapi.ConnectionPool`` gives threads and per-thread connections, but
its ``cp_reconnect`` only notices a dead connection after the query has failed, never runs
the query again, and logs rollback failures as errors. ``Pool.run`` does the transaction
itself, in the pool thread:

- a lost connection (server restart, KILL, network: MySQL 2006/2013/1927/..., adbapi's
  ConnectionLost) is dropped and the work runs once more on a fresh connection, which is
  what a stale connection after a database restart needs; the work is idempotent, so a
  COMMIT whose answer was lost is safe to repeat;
- a deadlock, lock wait timeout or SQLITE_BUSY is rolled back and run again after a short
  random pause, up to ``retry_attempts`` times (Galera reports certification conflicts as
  deadlocks too);
- when the database cannot be reached (or refuses: access denied, disk full...) the call
  fails with ``StoreUnavailable``, whose message names ``user@host:port/db``;
- anything else is a ``StoreError``: retrying cannot help.

``Availability`` watches results in the reactor thread and logs one line when the database
goes away and one when it is back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from voipmon.counters import Counters
from voipmon.store.dialect import FATAL, LOST, RETRY, UNAVAILABLE
from voipmon.store.interfaces import StoreError, StoreUnavailable


class Retry(Exception):
    """Raised by work to be rolled back and run again (e.g. a concurrent insert raced it)."""


class Txn:
    """What work receives: the dialect, the DB-API connection and cursor of this attempt."""

    def __init__(self, dialect: Any, conn: Any, cursor: Any, attempt: int) -> None:
        self.dialect = dialect
        self.conn = conn
        self.cursor = cursor
        self.attempt = attempt
        self.after_commit: list[Callable[[], None]] = []


class _Handle:
    """adbapi's per-call connection object; we commit and roll back ourselves."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


class Pool(adbapi.ConnectionPool):
    """adbapi's pool with our retry loop; connections come from the dialect."""

    connectionFactory = _Handle
    lost_attempts = 2        # a lost connection: once more on a fresh connection
    retry_attempts = 12      # deadlocks and busy database

    def __init__(self, dialect: Any, reactor: Any, size: int = 4, name: str = "voipmon-db",
                 sleep: Callable[[float], None] = time.sleep) -> None:
        module = "pymysql" if dialect.name == "MySQL" else "sqlite3"
        super().__init__(module, cp_min=1, cp_max=size, cp_reactor=reactor, cp_name=name)
        self.dialect = dialect
        self._sleep = sleep
        # Counted in pool threads (a lost update under contention is harmless here).
        self.stats = {"transactions": 0, "lost": 0, "retried": 0, "unavailable": 0,
                      "failed": 0}

    def counters(self) -> Counters:
        """Committed transactions, lost connections, retried transactions (deadlocks,
        busy), calls failed unavailable or with an error; connections open."""
        return {**self.stats, "connections": len(self.connections)}

    # connections (pool threads) -----------------------------------------------------

    def connect(self) -> Any:
        tid = self.threadID()
        conn = self.connections.get(tid)
        if conn is None:
            conn = self.dialect.connect()
            self.connections[tid] = conn
        return conn

    def discard(self, conn: Any) -> None:
        """Forget this thread's connection (it is dead or in an unknown state) and close it."""
        tid = self.threadID()
        if self.connections.get(tid) is conn:
            del self.connections[tid]
        self._close(conn)

    def _close(self, conn: Any) -> None:
        try:
            conn.close()
        except Exception:
            pass  # already closed by the driver after a lost connection

    def connection_count(self) -> int:
        return len(self.connections)

    # the transaction loop -------------------------------------------------------------

    def run(self, work: Callable[..., Any], *args: Any, write: bool = True,
            transaction: bool = True) -> Deferred:
        """Run ``work(txn, *args)`` in a pool thread inside one transaction; fires its result
        after commit. ``transaction=False``: no BEGIN (the work manages its own, e.g. DDL)."""
        return self.runWithConnection(self._attempts, work, args, write, transaction)

    def _attempts(self, _handle: _Handle, work: Callable[..., Any], args: tuple[Any, ...],
                  write: bool, transaction: bool) -> Any:
        dialect = self.dialect
        attempt = 0
        while True:
            attempt += 1
            try:
                conn = self.connect()
            except Exception as exc:
                if dialect.classify(exc) == RETRY and attempt < self.retry_attempts:
                    self._sleep(random.uniform(0, min(0.2, 0.002 * 2 ** attempt)))
                    continue        # e.g. SQLite busy while another opens the file
                raise self._unavailable("cannot connect", exc) from exc
            cursor = None
            try:
                cursor = conn.cursor()
                txn = Txn(dialect, conn, cursor, attempt)
                if transaction:
                    dialect.begin(cursor, write)
                result = work(txn, *args)
                conn.commit()
            except StoreError:
                self._rollback(conn)
                raise
            except Exception as exc:
                kind = RETRY if isinstance(exc, Retry) else dialect.classify(exc)
                if kind == LOST:
                    self.stats["lost"] += 1
                    self.discard(conn)
                    if attempt < self.lost_attempts:
                        continue
                    raise self._unavailable("connection lost", exc) from exc
                self._rollback(conn)
                if kind == RETRY:
                    if attempt < self.retry_attempts:
                        self.stats["retried"] += 1
                        self._sleep(random.uniform(0, min(0.2, 0.002 * 2 ** attempt)))
                        continue
                    raise self._unavailable(f"gave up after {attempt} attempts", exc) from exc
                if kind == UNAVAILABLE:
                    raise self._unavailable("refused", exc) from exc
                assert kind == FATAL
                self.stats["failed"] += 1
                raise StoreError(f"{dialect.where}: {dialect.describe(exc)}") from exc
            finally:
                if cursor is not None:
                    try:
                        cursor.close()
                    except Exception:
                        pass
            self.stats["transactions"] += 1
            for hook in txn.after_commit:
                hook()
            return result

    def _rollback(self, conn: Any) -> None:
        try:
            conn.rollback()
        except Exception:
            self.discard(conn)   # a connection that cannot roll back is not reused

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailable:
        self.stats["unavailable"] += 1
        return StoreUnavailable(f"{self.dialect.where}: {what}: {self.dialect.describe(exc)}")


class Availability:
    """One log line when the database goes away, one when it is back (reactor thread)."""

    def __init__(self, where: str, clock: Any, log: Logger | None = None) -> None:
        self.where = where
        self.clock = clock
        self.log = log or Logger()
        self.down_since: float | None = None
        self.failures = 0
        self.reason = ""

    @property
    def up(self) -> bool:
        return self.down_since is None

    def watch(self, d: Deferred) -> Deferred:
        """Pass ``d``'s result through, noting whether the database answered."""
        def ok(result: Any) -> Any:
            self.succeeded()
            return result

        def failed(failure: Failure) -> Failure:
            if failure.check(StoreUnavailable):
                self.failed(str(failure.value))
            return failure   # anything else (a bad argument, a bug) says nothing of the database

        return d.addCallbacks(ok, failed)

    def failed(self, reason: str) -> None:
        self.failures += 1
        if self.down_since is None:
            self.down_since = self.clock.seconds()
            self.reason = reason
            self.log.error(
                "Database unavailable: {reason}. CDR writes fail and are retried by their "
                "senders until it is back.", reason=reason, where=self.where,
            )

    def succeeded(self) -> None:
        if self.down_since is None:
            return
        down_for = self.clock.seconds() - self.down_since
        self.log.info(
            "Database {where} is back after {down_for:.1f} s ({failures} failed calls).",
            where=self.where, down_for=down_for, failures=self.failures,
        )
        self.down_since = None
        self.failures = 0
