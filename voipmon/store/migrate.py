"""Bring a database's schema to ``SCHEMA_VERSION``, one recorded step at a time.

Runs in a pool thread on one connection. Migrations are serialised between centrals that
share a server (MySQL ``GET_LOCK``; SQLite's write lock, where the whole run is also one
transaction). On MySQL each step's DDL commits on its own, so every step first checks
whether its table, column or index is already there: an interrupted run resumes.
"""

from __future__ import annotations

from typing import Any

from voipmon.store import rollup
from voipmon.store.dialect import q
from voipmon.store.fields import datetime_text
from voipmon.store.interfaces import SchemaError
from voipmon.store.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AddColumn,
    Backfill,
    CreateIndex,
    CreateTable,
    Step,
)

# How each derived table is filled from the tables it is derived from (a Backfill step).
BACKFILLS = {rollup.TABLE: rollup.backfill}


def current_version(dialect: Any, cur: Any) -> int:
    """0 for a database voipmon never touched, else the recorded version."""
    if not dialect.has_table(cur, "schema_version"):
        return 0
    cur.execute("SELECT `version` FROM `schema_version` WHERE `id` = 1")
    row = cur.fetchone()
    return int(row[0]) if row else 0


def apply(dialect: Any, cur: Any, step: Step) -> bool:
    """Run one step unless its effect is already there; True if it changed something."""
    if isinstance(step, CreateTable):
        if dialect.has_table(cur, step.table.name):
            return False
        cur.execute(dialect.create_table_sql(step.table))
    elif isinstance(step, AddColumn):
        if dialect.has_column(cur, step.table, step.column.name):
            return False
        cur.execute(dialect.add_column_sql(step.table, step.column))
    elif isinstance(step, CreateIndex):
        if dialect.has_index(cur, step.table, step.index.name):
            return False
        cur.execute(dialect.create_index_sql(step.table, step.index))
    elif isinstance(step, Backfill):
        return bool(BACKFILLS[step.table](dialect, cur))
    else:  # pragma: no cover
        raise TypeError(step)
    return True


def _record(dialect: Any, cur: Any, version: int, now: float) -> None:
    sql = dialect.upsert_sql("schema_version", ("id", "version", "updated"), "id",
                             {"version": dialect.excluded("version"),
                              "updated": dialect.excluded("updated")})
    cur.execute(sql, (1, version, datetime_text(now)))


def migrate(dialect: Any, conn: Any, now: float, target: int = SCHEMA_VERSION) -> tuple[int, int]:
    """Migrate to ``target``; returns (version found, version now)."""
    cur = conn.cursor()
    try:
        dialect.lock_schema(cur)
        try:
            found = current_version(dialect, cur)
            if found > SCHEMA_VERSION:
                raise SchemaError(
                    f"{dialect.where}: the schema is version {found}, newer than this voipmon "
                    f"knows ({SCHEMA_VERSION}); upgrade voipmon or use another database"
                )
            if found == 0 and not dialect.has_table(cur, "schema_version") and any(
                dialect.has_table(cur, name) for name in ("cdr", "cdr_rtp", "cdr_next")
            ):
                raise SchemaError(
                    f"{dialect.where}: the database holds a cdr table that voipmon did not "
                    "create (no schema_version table), perhaps VoIPmonitor's own; refusing "
                    "to change it: point voipmon at another database"
                )
            version = found
            for migration in MIGRATIONS:
                if version < migration.version <= target:
                    for step in migration.steps:
                        apply(dialect, cur, step)
                    _record(dialect, cur, migration.version, now)
                    if dialect.name == "MySQL":
                        conn.commit()
                    version = migration.version
            conn.commit()
            return found, version
        except BaseException:
            try:
                conn.rollback()
            except Exception:
                pass
            raise
        finally:
            try:
                dialect.unlock_schema(cur)
            except Exception:
                pass  # a lost connection released its lock with it
    finally:
        cur.close()


def drop_all(dialect: Any, conn: Any) -> None:
    """Drop every voipmon table (tests and benchmarks only)."""
    cur = conn.cursor()
    try:
        for name in ("alert", "message", "sip_msg", "register_time_info", "register_failed",
                     "register_state", "contenttype", "cdr_minute", "cdr_rtp", "cdr_next",
                     "cdr", "cdr_ua", "cdr_sip_response", "sensors", "schema_version"):
            cur.execute(f"DROP TABLE IF EXISTS {q(name)}")
        conn.commit()
    finally:
        cur.close()
