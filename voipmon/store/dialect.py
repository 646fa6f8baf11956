"""Everything that differs between MySQL/MariaDB (PyMySQL) and SQLite, in one place.

The store's SQL is written once; a dialect supplies what cannot be: how to connect and set
up a session, the DDL for the portable column types of ``voipmon.store.schema``, how to
look at a live schema, how to start a transaction, how to insert many rows fast (one
multi-row statement per megabyte of literals for MySQL, ``executemany`` of a prepared
statement for SQLite), how to say "insert unless the key exists" and "insert or update",
how to serialise migrations, and which driver errors mean "connection lost", "retry the
transaction", "database unavailable" or "a bug". Both accept backtick-quoted names.

Methods taking a connection or cursor run in a pool thread, never in the reactor thread.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.enterprise import adbapi

from voipmon.config.settings import StoreSettings
from voipmon.store.literals import renderer, statements
from voipmon.store.schema import Column, Index, Table

# What a driver error means to the store (see classify()).
LOST = "lost"                # the connection is dead: drop it, retry once on a fresh one
RETRY = "retry"              # deadlock, lock timeout, busy: roll back and run again
UNAVAILABLE = "unavailable"  # cannot connect or the server refuses work: StoreUnavailable
FATAL = "fatal"              # a bug or a broken schema: retrying will not help



def q(name: str) -> str:
    """Quote an identifier; MySQL and SQLite both accept backticks."""
    return "`" + name.replace("`", "``") + "`"


def qlist(names: Iterable[str]) -> str:
    return ", ".join(q(n) for n in names)


class Dialect:
    """The interface both dialects implement (documentation and shared helpers)."""

    name = "SQL"
    placeholder = "?"
    where = ""                    # user@host:port/db or the file: never the password
    secret = ""                   # scrubbed from every message we produce
    inline_id_pk = False          # the "id" column type already says PRIMARY KEY
    table_options = ""

    def connect(self) -> Any:
        raise NotImplementedError

    def params(self, n: int) -> str:
        return ", ".join([self.placeholder] * n)

    def describe(self, exc: BaseException) -> str:
        """A one-line reason for an error, with the password (if any) scrubbed."""
        args = getattr(exc, "args", ())
        if len(args) == 2 and isinstance(args[0], int):
            text = f"({args[0]}) {args[1]}"
        else:
            text = str(exc) or type(exc).__name__
        text = " ".join(text.split())
        if self.secret:
            text = text.replace(self.secret, "***")
        return text

    # DDL ----------------------------------------------------------------------------

    def column_type(self, col: Column) -> str:
        raise NotImplementedError

    def column_sql(self, col: Column) -> str:
        text = f"{q(col.name)} {self.column_type(col)}"
        if col.type == "id":
            return text
        text += " NULL" if col.null else " NOT NULL"
        if col.default is not None:
            text += f" DEFAULT {int(col.default)}"
        return text

    def create_table_sql(self, table: Table) -> str:
        parts = [self.column_sql(col) for col in table.columns]
        if not (self.inline_id_pk and any(col.type == "id" for col in table.columns)):
            parts.append(f"PRIMARY KEY ({qlist(table.primary_key)})")
        for n, fk in enumerate(table.foreign_keys, 1):
            parts.append(
                f"CONSTRAINT {q(f'{table.name}_fk{n}')} FOREIGN KEY ({qlist(fk.columns)}) "
                f"REFERENCES {q(fk.table)} ({qlist(fk.ref_columns)}) ON DELETE CASCADE"
            )
        body = ",\n  ".join(parts)
        return f"CREATE TABLE IF NOT EXISTS {q(table.name)} (\n  {body}\n){self.table_options}"

    def create_index_sql(self, table: str, index: Index) -> str:
        unique = "UNIQUE " if index.unique else ""
        return f"CREATE {unique}INDEX {q(index.name)} ON {q(table)} ({self.index_columns(index)})"

    def index_columns(self, index: Index) -> str:
        return qlist(index.columns)

    def add_column_sql(self, table: str, col: Column) -> str:
        return f"ALTER TABLE {q(table)} ADD COLUMN {self.column_sql(col)}"

    # statements ----------------------------------------------------------------------

    #: what comes between an upsert's VALUES and its updates; ``{key}`` is the key column
    upsert_clause = ""

    def excluded(self, column: str) -> str:
        """In an upsert's update clause: the value the INSERT tried to write."""
        raise NotImplementedError

    def upsert_sql(self, table: str, columns: Sequence[str], key: str,
                   updates: dict[str, str]) -> str:
        """Insert one row, or where ``key`` exists set ``updates`` (column: expression)."""
        sets = ", ".join(f"{q(col)} = {expr}" for col, expr in updates.items())
        return (f"INSERT INTO {q(table)} ({qlist(columns)}) VALUES ({self.params(len(columns))})"
                f" {self.upsert_clause.format(key=q(key))} {sets}")

    def add_sql(self, table: str, key: Sequence[str], counters: Sequence[str],
                rows: Iterable[Sequence[int]]) -> str:
        """Add rows of integers (``key`` then ``counters``) to the rows with the same key,
        inserting those that are new: one statement, integers written in as literals."""
        values = ",".join("(" + ",".join(str(int(v)) for v in row) + ")" for row in rows)
        sets = ", ".join(f"{q(col)} = {q(col)} + {self.excluded(col)}" for col in counters)
        return (f"INSERT INTO {q(table)} ({qlist((*key, *counters))}) VALUES {values} "
                f"{self.upsert_clause.format(key=qlist(key))} {sets}")

    #: a locking read's suffix: rows read are the rows this transaction will change
    for_update = ""

    def epoch_minute_sql(self, column: str) -> str:
        """Whole minutes since 1970-01-01 00:00 UTC of a stored datetime column."""
        raise NotImplementedError


# -- MySQL / MariaDB ---------------------------------------------------------------------

_MYSQL_TYPES = {
    "id": "bigint unsigned NOT NULL AUTO_INCREMENT",
    "u8": "tinyint unsigned", "u16": "smallint unsigned", "u32": "int unsigned",
    "u64": "bigint unsigned", "i32": "int", "i64": "bigint", "bool": "tinyint(1)",
    "double": "double", "dec3": "decimal(9,3)", "datetime": "datetime(3)",
    "ip": "varbinary(16)", "longtext": "mediumtext", "blob": "mediumblob",
}

# Error codes (MySQL/MariaDB server errors and PyMySQL client errors).
_MYSQL_LOST = {
    0,     # PyMySQL InterfaceError: the connection was already closed
    1053,  # server shutdown in progress
    1927,  # MariaDB: connection was killed
    2006,  # server has gone away
    2013,  # lost connection during query
    2014,  # commands out of sync: the connection is unusable
    2055,  # lost connection at '%s', system error
    4031,  # MySQL 8: disconnected by the server because of inactivity
}
_MYSQL_RETRY = {
    1205,  # lock wait timeout exceeded
    1213,  # deadlock found (also Galera certification failures)
    1020,  # record has changed since last read
}
_MYSQL_UNAVAILABLE = {
    1021, 1030, 1036, 1037, 1040, 1041, 1044, 1045, 1047, 1049, 1114, 1129, 1130, 1290,
    1836, 2002, 2003, 2005, 2026,
}


class MySQLDialect(Dialect):
    """MySQL and MariaDB through PyMySQL (also Galera: IDs are never assumed consecutive)."""

    name = "MySQL"
    placeholder = "%s"
    table_options = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"
    upsert_clause = "ON DUPLICATE KEY UPDATE"   # whichever unique key the row hits
    for_update = " FOR UPDATE"
    # How CDR batches go in (voipmon.store.cdrwrite): statements pipelined where PyMySQL
    # allows it; new IDs from LAST_INSERT_ID where they are consecutive (InnoDB lock mode
    # 0/1), else from RETURNING (MariaDB 10.5+) or a look-up. Tests turn these off to run
    # the paths other servers take.
    pipelining = True
    consecutive_ids = True

    def index_columns(self, index: Index) -> str:
        if index.prefix is None:
            return qlist(index.columns)
        return ", ".join(f"{q(name)}({index.prefix})" for name in index.columns)

    def __init__(self, host: str, port: int, user: str, password: str, database: str,
                 connect_timeout: float = 10.0, read_timeout: float = 3600.0,
                 write_timeout: float = 120.0) -> None:
        self.host, self.port, self.user, self.database = host, port, user, database
        self.secret = password
        self._password = password
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        shown = f"[{host}]" if ":" in host else host
        self.where = f"MySQL {user}@{shown}:{port}/{database}"

    def __repr__(self) -> str:
        return f"<MySQLDialect {self.where}>"

    def connect(self, with_database: bool = True) -> Any:
        import pymysql

        conn = pymysql.connect(
            host=self.host, port=self.port, user=self.user, password=self._password,
            database=self.database if with_database else None, charset="utf8mb4",
            autocommit=False, connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout, write_timeout=self.write_timeout,
        )
        try:
            _keepalive(getattr(conn, "_sock", None))
            with conn.cursor() as cur:
                cur.execute("SET time_zone = '+00:00'")
                # Fewer gap locks between concurrent batch inserts, so fewer deadlocks.
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        except BaseException:
            conn.close()
            raise
        return conn

    def epoch_minute_sql(self, column: str) -> str:
        return f"TIMESTAMPDIFF(MINUTE, '1970-01-01 00:00:00', {column})"

    def create_database(self, conn: Any) -> bool:
        """Create the configured database if missing; True if it was created."""
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                        (self.database,))
            if cur.fetchone():
                return False
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {q(self.database)} "
                        "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
        return True

    def column_type(self, col: Column) -> str:
        kind, _, arg = col.type.partition(":")
        if kind == "text":
            return f"varchar({arg})"
        if kind == "bintext":
            return f"varchar({arg}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        if kind == "ascii":
            return f"varchar({arg}) CHARACTER SET ascii COLLATE ascii_bin"
        if kind == "enum":
            return "enum(" + ",".join(f"'{word}'" for word in arg.split(",")) + ")"
        return _MYSQL_TYPES[kind]

    # introspection (DATABASE() is the connection's database)

    def has_table(self, cur: Any, table: str) -> bool:
        cur.execute("SELECT 1 FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s", (table,))
        return cur.fetchone() is not None

    def has_column(self, cur: Any, table: str, column: str) -> bool:
        cur.execute("SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                    "AND TABLE_NAME = %s AND COLUMN_NAME = %s", (table, column))
        return cur.fetchone() is not None

    def has_index(self, cur: Any, table: str, index: str) -> bool:
        cur.execute("SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
                    "AND TABLE_NAME = %s AND INDEX_NAME = %s", (table, index))
        return cur.fetchone() is not None

    def lock_schema(self, cur: Any) -> None:
        """Serialise migrations between centrals sharing the server (DDL is not transactional)."""
        cur.execute("SELECT GET_LOCK(%s, 120)", (f"voipmon_schema.{self.database}"[:64],))
        if cur.fetchone()[0] != 1:
            raise RuntimeError("timed out waiting for another central's schema migration")

    def unlock_schema(self, cur: Any) -> None:
        cur.execute("SELECT RELEASE_LOCK(%s)", (f"voipmon_schema.{self.database}"[:64],))
        cur.fetchall()

    # transactions and statements

    def begin(self, cur: Any, write: bool) -> None:
        pass   # autocommit is off: the first statement opens the transaction, no round trip

    def insert_one(self, cur: Any, table: str, columns: Sequence[str], row: Sequence[Any]) -> int:
        """Insert one row; returns its AUTO_INCREMENT id (LAST_INSERT_ID of a one-row
        INSERT is that row's, whatever innodb_autoinc_lock_mode says)."""
        self.insert(cur, table, columns, [row])
        return int(cur.lastrowid)

    def insert(self, cur: Any, table: str, columns: Sequence[str],
               rows: Iterable[Sequence[Any]]) -> int:
        """Multi-row INSERTs of rendered literals; returns the number of rows inserted.

        Plain INSERTs, all or nothing: a key that exists fails the statement (1062). The
        store does not use INSERT IGNORE or ON DUPLICATE KEY UPDATE to skip stored keys:
        under concurrency MariaDB's affected-row count for those can claim a row exists
        when the transaction that held it rolled back, and the row is silently lost.
        """
        head = f"INSERT INTO {q(table)} ({qlist(columns)}) VALUES "
        render = renderer(table, columns)
        return sum(cur.execute(sql) for sql, _count in statements(head, map(render, rows)))

    def excluded(self, column: str) -> str:
        return f"VALUES({q(column)})"

    def classify(self, exc: BaseException) -> str:
        import pymysql

        if isinstance(exc, adbapi.ConnectionLost | OSError):
            return LOST
        if isinstance(exc, pymysql.err.InterfaceError):
            return LOST
        if isinstance(exc, pymysql.err.MySQLError):
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1
            if code in _MYSQL_LOST:
                return LOST
            if code in _MYSQL_RETRY:
                return RETRY
            if code in _MYSQL_UNAVAILABLE:
                return UNAVAILABLE
        return FATAL

    @staticmethod
    def is_duplicate_key(exc: BaseException) -> bool:
        args = getattr(exc, "args", ())
        return bool(args) and args[0] == 1062   # ER_DUP_ENTRY

    @staticmethod
    def is_unknown_database(exc: BaseException) -> bool:
        """Unknown database (1049), or one this user may not see (1044): try creating it."""
        args = getattr(exc, "args", ())
        return bool(args) and args[0] in (1044, 1049)


def _keepalive(sock: Any) -> None:
    """TCP keepalive on a MySQL connection: a peer that vanished (network cut, host down)
    is noticed within about a minute even while waiting for a long query's answer, where a
    read timeout would have to be longer than the longest migration."""
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


# -- SQLite ------------------------------------------------------------------------------

_SQLITE_TYPES = {
    "id": "INTEGER PRIMARY KEY AUTOINCREMENT", "double": "REAL", "dec3": "REAL",
    "datetime": "TEXT", "ip": "BLOB", "longtext": "TEXT", "blob": "BLOB",
}
_SQLITE_RETRY = {5, 6}                       # SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_UNAVAILABLE = {7, 8, 10, 13, 14, 15}  # NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL


class SQLiteDialect(Dialect):
    """The embedded database: one file, WAL journal, one writer, readers alongside it."""

    name = "SQLite"
    placeholder = "?"
    inline_id_pk = True
    upsert_clause = "ON CONFLICT ({key}) DO UPDATE SET"

    def __init__(self, path: str, busy_timeout: float = 10.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.where = f"SQLite {path}"

    def __repr__(self) -> str:
        return f"<SQLiteDialect {self.path}>"

    def prepare(self) -> None:
        """Create the database file's directory if needed (at start, in a thread)."""
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, mode=0o750, exist_ok=True)

    def connect(self) -> Any:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            if mode != "wal":   # switching needs the file to itself; Pool retries if busy
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")   # an acknowledged batch survives power loss
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def column_type(self, col: Column) -> str:
        kind, _, _arg = col.type.partition(":")
        if kind == "text":
            return "TEXT COLLATE NOCASE"  # as MySQL's _ci collation; keeps LIKE 'x%' indexed
        if kind in ("bintext", "ascii", "enum"):
            return "TEXT"
        return _SQLITE_TYPES.get(kind, "INTEGER")

    def epoch_minute_sql(self, column: str) -> str:
        # stored as 'YYYY-MM-DD HH:MM:SS.mmm' UTC; %s truncates to the second
        return f"CAST(strftime('%s', {column}) AS INTEGER) / 60"

    def has_table(self, cur: Any, table: str) -> bool:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        return cur.fetchone() is not None

    def has_column(self, cur: Any, table: str, column: str) -> bool:
        cur.execute(f"PRAGMA table_info({q(table)})")
        return any(row[1] == column for row in cur.fetchall())

    def has_index(self, cur: Any, table: str, index: str) -> bool:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                    "AND name = ?", (table, index))
        return cur.fetchone() is not None

    def lock_schema(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")   # SQLite DDL is transactional: one step, all or nothing

    def unlock_schema(self, cur: Any) -> None:
        pass

    def begin(self, cur: Any, write: bool) -> None:
        # IMMEDIATE takes the write lock up front: no deadlock upgrading a read lock later.
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def insert(self, cur: Any, table: str, columns: Sequence[str],
               rows: Iterable[Sequence[Any]]) -> int:
        values = self.params(len(columns))
        sql = f"INSERT INTO {q(table)} ({qlist(columns)}) VALUES ({values})"
        cur.executemany(sql, rows)
        return max(cur.rowcount, 0)

    def insert_one(self, cur: Any, table: str, columns: Sequence[str], row: Sequence[Any]) -> int:
        values = self.params(len(columns))
        cur.execute(f"INSERT INTO {q(table)} ({qlist(columns)}) VALUES ({values})", row)
        return int(cur.lastrowid)

    def excluded(self, column: str) -> str:
        return f"excluded.{q(column)}"

    def classify(self, exc: BaseException) -> str:
        if isinstance(exc, adbapi.ConnectionLost):
            return LOST
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
            return LOST
        if isinstance(exc, sqlite3.Error):
            code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
            if code in _SQLITE_RETRY:
                return RETRY
            if code in _SQLITE_UNAVAILABLE:
                return UNAVAILABLE
        if isinstance(exc, OSError):
            return UNAVAILABLE
        return FATAL

    @staticmethod
    def is_duplicate_key(exc: BaseException) -> bool:
        code = getattr(exc, "sqlite_errorcode", 0)
        return isinstance(exc, sqlite3.IntegrityError) and code in (1555, 2067)  # PK, UNIQUE

    @staticmethod
    def is_unknown_database(exc: BaseException) -> bool:
        return False


def dialect_for(store: StoreSettings) -> MySQLDialect | SQLiteDialect:
    """The dialect the central's store settings ask for: MySQL when ``mysqlhost`` is set,
    else SQLite."""
    if store.mysqlhost:
        return MySQLDialect(store.mysqlhost, store.mysqlport, store.mysqluser,
                            store.mysqlpassword, store.mysqldb)
    return SQLiteDialect(store.sqlite_path)
