"""``SqlStore``: IStore over an adbapi pool, for MySQL/MariaDB and for embedded SQLite.

The SQL is written once; ``voipmon.store.dialect`` holds the differences. MySQL uses one
pool for everything. SQLite uses a one-thread writer pool (one writer, as SQLite wants)
and a small reader pool beside it (WAL lets readers run while the writer writes).

A batch write is one transaction: lookup ids (user agents, response texts; cached once
committed), then which of the batch's keys are stored already (one query), then plain
multi-row INSERTs of the others into ``cdr``, ``cdr_next`` and ``cdr_rtp``
(``voipmon.store.cdrwrite``). If another writer (another central, a replay on another
connection) stores one of those keys in between, the INSERT fails whole on the duplicate
key and the attempt runs again from the look-up, so each CDR is inserted by exactly one
transaction and the count a batch returns is exact. Rows are sorted by key so concurrent
batches take their locks in the same order; the deadlocks that remain are retried by
``Pool``. (INSERT IGNORE and ON DUPLICATE KEY UPDATE are not used to skip stored keys:
see ``MySQLDialect.insert``.)
"""

from __future__ import annotations

import socket
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from voipmon.counters import Counters
from voipmon.records.cdr import Cdr
from voipmon.store import recordread, recordrows, recordwrite, rollup
from voipmon.store.cdrwrite import write_mysql, write_sqlite
from voipmon.store.dialect import MySQLDialect, SQLiteDialect, q, qlist
from voipmon.store.fields import datetime_text, text
from voipmon.store.interfaces import SENSOR_JSON_FIELDS, IStore, StoreError, StoreUnavailable
from voipmon.store.measures import StoreMeasures
from voipmon.store.migrate import migrate
from voipmon.store.pool import Availability, Pool, Retry, Txn
from voipmon.store.query import CdrQuery, as_query, delete_args, where_sql
from voipmon.store.rows import (
    CDR_COLUMNS,
    READ_COLUMNS,
    READ_RTP_COLUMNS,
    batch_items,
    cdr_json,
    decode_cdr,
    lookup_keys,
)
from voipmon.store.schema import SCHEMA_VERSION
from voipmon.store.sensors import check_id_sensor, check_name, sensor_json, sensor_upsert
from voipmon.store.stats import StatsQuery, as_stats_query, assemble, ints, stats_sql

_CHUNK = 500            # keys per IN (...) list
_CACHE_LIMIT = 20000    # lookup texts remembered per table

_SELECT_CDR = "SELECT " + ", ".join(
    f"{alias}.{q(col)}" for alias, col in (name.split(".") for name in READ_COLUMNS)
) + (
    " FROM `cdr` c LEFT JOIN `cdr_next` n ON n.`cdr_ID` = c.`ID`"
    " LEFT JOIN `cdr_sip_response` r ON r.`id` = c.`lastSIPresponse_id`"
    " LEFT JOIN `cdr_ua` ua ON ua.`id` = c.`a_ua_id`"
    " LEFT JOIN `cdr_ua` ub ON ub.`id` = c.`b_ua_id`"
)
_ID_SENSOR_AT = CDR_COLUMNS.index("id_sensor")
_LOOKUPS = {kind: (table, column) for kind, (table, column, _) in recordrows.LOOKUPS.items()}


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class _Batch:
    """A validated batch and what its attempts learn about it."""

    def __init__(self, cdrs: Sequence[Cdr], pcap_on: str) -> None:
        self.items = batch_items(cdrs, pcap_on)
        self.pcap_on = pcap_on
        self.lookups: list[tuple[str | None, str | None, str | None]] | None = None
        self.new_sensors: list[int] = []     # the id_sensor of each CDR newly inserted


@implementer(IStore)
class SqlStore:
    """The central's CDR and sensor store over MySQL/MariaDB or SQLite."""

    def __init__(self, dialect: MySQLDialect | SQLiteDialect, reactor: Any,
                 central_id: str | None = None, pool_size: int = 4,
                 log: Logger | None = None) -> None:
        self.dialect = dialect
        self.where = dialect.where
        self.central_id = central_id or socket.gethostname()
        self._reactor = reactor
        self._pool_size = pool_size
        self.log = log or Logger()
        self.availability = Availability(dialect.where, reactor, self.log)
        self._writer: Pool | None = None
        self._reader: Pool | None = None
        self._cache: dict[str, dict[str, int]] = {kind: {} for kind in _LOOKUPS}
        self.measures = StoreMeasures()

    def __repr__(self) -> str:
        return f"<SqlStore {self.where}>"

    @property
    def is_mysql(self) -> bool:
        return isinstance(self.dialect, MySQLDialect)

    def pools(self) -> tuple[Pool, ...]:
        pools = [p for p in (self._writer, self._reader) if p is not None]
        return tuple(dict.fromkeys(pools))

    def counters(self) -> Counters:
        """The pools' counters added up (``Pool.counters``), and whether the database is
        reachable (``up``, 1 or 0)."""
        totals: Counters = {"up": int(self.availability.up)}
        for pool in self.pools():
            for key, value in pool.counters().items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def _watch(self, d: Deferred) -> Deferred:
        return self.availability.watch(d)

    def _not_started(self) -> Deferred:
        return fail(StoreError(f"{self.where}: the store is not started"))

    # lifecycle --------------------------------------------------------------------------

    def start(self) -> Deferred:
        if self._writer is None:
            if self.is_mysql:
                self._writer = self._reader = Pool(self.dialect, self._reactor,
                                                   size=self._pool_size)
            else:
                self._writer = Pool(self.dialect, self._reactor, size=1)
                self._reader = Pool(self.dialect, self._reactor, size=2, name="voipmon-db-read")
        writer = self._writer
        d = writer.runWithConnection(lambda _handle: self._prepare())
        d.addCallback(self._prepared)
        now = self._reactor.seconds()
        d.addCallback(lambda _: writer.run(self._migrate, now, transaction=False))
        d.addCallback(self._migrated)
        d.addCallback(lambda _: writer.run(self._reset_sensors))
        d.addCallback(lambda _: None)
        return self._watch(d)

    def _prepare(self) -> bool:
        """Pool thread: make sure there is a database to connect to; True if created."""
        if isinstance(self.dialect, SQLiteDialect):
            try:
                self.dialect.prepare()
            except OSError as exc:
                raise StoreUnavailable(f"{self.where}: cannot create its directory: {exc}")
            return False
        dialect = self.dialect
        try:
            dialect.connect().close()
            return False
        except Exception as exc:
            if not dialect.is_unknown_database(exc):
                raise StoreUnavailable(f"{self.where}: cannot connect: {dialect.describe(exc)}")
        try:
            conn = dialect.connect(with_database=False)
            try:
                created = dialect.create_database(conn)
                conn.commit()
            finally:
                conn.close()
        except Exception as exc:
            raise StoreUnavailable(
                f"{self.where}: database {dialect.database!r} does not exist (or "
                f"{dialect.user} may not use it) and {dialect.user} could not create it: "
                f"{dialect.describe(exc)}"
            )
        return created

    def _prepared(self, created: bool) -> None:
        if created:
            self.log.info("Created database {where}", where=self.where)

    def _migrate(self, txn: Txn, now: float) -> tuple[int, int]:
        return migrate(self.dialect, txn.conn, now)

    def _migrated(self, versions: tuple[int, int]) -> None:
        found, now = versions
        if found == 0:
            self.log.info("Created the schema (version {version}) in {where}",
                          version=now, where=self.where)
        elif found != now:
            self.log.info("Migrated {where} from schema version {found} to {version}",
                          where=self.where, found=found, version=now)

    def _reset_sensors(self, txn: Txn) -> None:
        # Sensors this central held when it last stopped are no longer connected to it.
        ph = self.dialect.placeholder
        txn.cursor.execute(f"UPDATE `sensors` SET `connected` = 0 WHERE `connected` = 1 "
                           f"AND `central` = {ph}", (self.central_id,))

    def close(self) -> Deferred:
        for pool in self.pools():
            pool.close()
        self._writer = self._reader = None
        return succeed(None)

    # writing CDRs -----------------------------------------------------------------------

    def _write(self, txn: Txn, batch: _Batch) -> int:
        if batch.lookups is None:
            batch.lookups = [lookup_keys(cdr) for _key, cdr in batch.items]
        responses = self._resolve(txn, "response", {lk[0] for lk in batch.lookups})
        uas = self._resolve(txn, "ua", {t for lk in batch.lookups for t in lk[1:]})
        candidates = [(key, cdr, responses.get(r), uas.get(a), uas.get(b))
                      for (key, cdr), (r, a, b) in zip(batch.items, batch.lookups, strict=True)]
        inserted: list[Sequence[Any]] = []
        write = write_mysql if isinstance(txn.dialect, MySQLDialect) else write_sqlite
        count = write(txn.cursor, txn.dialect, candidates, batch.pcap_on, inserted)
        batch.new_sensors = [row[_ID_SENSOR_AT] for row in inserted]
        if inserted:   # the dashboard's per-minute counts, in the same transaction
            rollup.apply(txn.cursor, txn.dialect, rollup.tallies(map(rollup.source, inserted)))
        return count

    def store_cdrs(self, records: Sequence[Any], pcap_on: str = "sensor") -> Deferred:
        """CDRs and every other kind of record (``voipmon.records.kinds``) in one
        transaction; fires with the rows newly inserted or brought up to date."""
        try:
            cdrs = [r for r in records if isinstance(r, Cdr)]
            others = [r for r in records if not isinstance(r, Cdr)]
            for record in others:
                if record.KIND not in recordrows.SPECS:
                    raise ValueError(f"no table for records of kind {record.KIND!r}")
                check_id_sensor(record.id_sensor)
            batch = _Batch(cdrs, pcap_on)
            by_kind = recordwrite.latest(others)
        except (ValueError, AttributeError) as exc:
            return fail(ValueError(str(exc)))
        if self._writer is None:
            return self._not_started()
        if not batch.items and not by_kind:
            return succeed(0)
        started = self._reactor.seconds()

        def measured(count: int) -> int:
            self.measures.committed(self._reactor.seconds() - started, batch.new_sensors)
            return count

        return self._watch(self._writer.run(self._write_records, batch, by_kind)).addCallback(
            measured)

    def _write_records(self, txn: Txn, batch: _Batch, by_kind: dict[str, Any]) -> int:
        count = self._write(txn, batch) if batch.items else 0
        if not by_kind:
            return count
        resolved = {kind: self._resolve(txn, kind, found)
                    for kind, found in recordwrite.lookup_texts(by_kind).items()}

        def ids(lookup: str, value: str | None) -> int | None:
            return None if value is None else resolved.get(lookup, {}).get(value)

        return count + recordwrite.write(txn.cursor, txn.dialect, by_kind, ids)

    def delete_records_before(self, kind: str, cutoff: float, limit: int = 1000) -> Deferred:
        try:
            stamp, limit = delete_args(cutoff, limit)
            if kind not in recordrows.SPECS:
                raise ValueError(f"no table for records of kind {kind!r}")
        except ValueError as exc:
            return fail(exc)
        if self._writer is None:
            return self._not_started()
        return self._watch(self._writer.run(
            lambda txn: recordwrite.delete_before(txn.cursor, txn.dialect, kind, stamp, limit)))

    def list_records(self, kind: str, query: Any = None) -> Deferred:
        try:
            parsed = recordread.as_record_query(kind, query)
        except ValueError as exc:
            return fail(exc)
        if self._reader is None:
            return self._not_started()
        return self._watch(self._reader.run(self._list_records, parsed, write=False))

    def _list_records(self, txn: Txn, query: recordread.RecordQuery) -> list[dict[str, Any]]:
        return recordread.read_page(txn.cursor, self.dialect, query)

    def _insert_new(self, txn: Txn, table: str, columns: Sequence[str],
                    rows: Sequence[Sequence[Any]]) -> None:
        """Insert lookup rows whose texts were absent a moment ago. If another transaction
        stored one of them since, the INSERT fails whole and the attempt runs again,
        looking anew."""
        try:
            txn.dialect.insert(txn.cursor, table, columns, rows)
        except Exception as exc:
            if txn.dialect.is_duplicate_key(exc):
                raise Retry() from exc
            raise

    def _resolve(self, txn: Txn, kind: str, texts: set[str | None]) -> dict[str, int]:
        """Ids of lookup texts (cdr_sip_response / cdr_ua), inserting the new ones."""
        cache = self._cache[kind]
        ids = {t: cache[t] for t in texts if t is not None and t in cache}
        need = sorted(t for t in texts if t is not None and t not in ids)
        if not need:
            return ids
        table, column = _LOOKUPS[kind]
        found = self._select_lookup(txn, table, column, need)
        missing = [t for t in need if t not in found]
        if missing:
            self._insert_new(txn, table, (column,), [(t,) for t in missing])
            found.update(self._select_lookup(txn, table, column, missing))
        txn.after_commit.append(lambda: self._remember(kind, found))
        ids.update(found)
        return ids

    def _select_lookup(self, txn: Txn, table: str, column: str,
                       texts: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in _chunks(texts):
            txn.cursor.execute(
                f"SELECT `id`, {q(column)} FROM {q(table)} WHERE {q(column)} IN "
                f"({self.dialect.params(len(chunk))})", tuple(chunk))
            for ident, value in txn.cursor.fetchall():
                found[value] = ident
        return found

    def _remember(self, kind: str, found: dict[str, int]) -> None:
        cache = self._cache[kind]
        if len(cache) + len(found) > _CACHE_LIMIT:
            cache.clear()
        cache.update(found)

    # reading CDRs -----------------------------------------------------------------------

    def list_cdrs(self, query: CdrQuery | Mapping[Any, Any] | None = None) -> Deferred:
        try:
            parsed = as_query(query)
        except ValueError as exc:
            return fail(exc)
        if self._reader is None:
            return self._not_started()
        return self._watch(self._reader.run(self._list, parsed, write=False))

    def _list(self, txn: Txn, query: CdrQuery) -> list[dict[str, Any]]:
        ph = self.dialect.placeholder
        where, params = where_sql(query, ph, datetime_text)
        txn.cursor.execute(
            f"{_SELECT_CDR}{where} ORDER BY c.`calldate` DESC, c.`ID` DESC "
            f"LIMIT {ph} OFFSET {ph}", (*params, query.limit, query.offset))
        return self._assemble(txn, txn.cursor.fetchall())

    def get_cdr(self, cdr_id: int) -> Deferred:
        if not isinstance(cdr_id, int) or isinstance(cdr_id, bool) or cdr_id < 0:
            return fail(ValueError(f"cdr id = {cdr_id!r}: allowed: a whole number"))
        if self._reader is None:
            return self._not_started()
        return self._watch(self._reader.run(self._get, cdr_id, write=False))

    def _get(self, txn: Txn, cdr_id: int) -> dict[str, Any] | None:
        if cdr_id >= 1 << 63:
            return None
        txn.cursor.execute(f"{_SELECT_CDR} WHERE c.`ID` = {self.dialect.placeholder}",
                           (cdr_id,))
        found = self._assemble(txn, txn.cursor.fetchall())
        return found[0] if found else None

    def _assemble(self, txn: Txn, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        streams: dict[int, list[Sequence[Any]]] = defaultdict(list)
        columns = qlist(READ_RTP_COLUMNS)
        for chunk in _chunks([row[0] for row in rows]):
            txn.cursor.execute(
                f"SELECT `cdr_ID`, {columns} FROM `cdr_rtp` WHERE `cdr_ID` IN "
                f"({self.dialect.params(len(chunk))}) ORDER BY `cdr_ID`, `index`", tuple(chunk))
            for row in txn.cursor.fetchall():
                streams[row[0]].append(row[1:])
        result = []
        for row in rows:
            cdr_id, cdr, pcap_on = decode_cdr(row, streams.get(row[0], ()))
            result.append(cdr_json(cdr_id, cdr, pcap_on))
        return result

    # the dashboard ----------------------------------------------------------------------

    def cdr_stats(self, query: StatsQuery | Mapping[Any, Any]) -> Deferred:
        try:
            parsed = as_stats_query(query, self._reactor.seconds())
        except ValueError as exc:
            return fail(exc)
        if self._reader is None:
            return self._not_started()
        d = self._reader.run(self._fetch, stats_sql(parsed), write=False)
        d.addCallback(lambda rows: assemble(parsed, map(ints, rows)))
        return self._watch(d)

    def _fetch(self, txn: Txn, sql: str) -> list[Sequence[Any]]:
        txn.cursor.execute(sql)
        return list(txn.cursor.fetchall())

    # retention --------------------------------------------------------------------------

    def delete_cdrs_before(self, cutoff: float, limit: int = 1000) -> Deferred:
        try:
            stamp, limit = delete_args(cutoff, limit)
        except ValueError as exc:
            return fail(exc)
        if self._writer is None:
            return self._not_started()
        return self._watch(self._writer.run(self._delete_before, stamp, limit))

    def _delete_before(self, txn: Txn, stamp: str, limit: int) -> int:
        # The calldate index finds the oldest; the foreign keys take their cdr_next and
        # cdr_rtp rows along. By ID, so a central running the same pass meanwhile only
        # makes this one delete fewer.
        # The rows are read with a locking read, so that what is taken off the dashboard's
        # per-minute counts is exactly what this transaction deletes.
        ph = self.dialect.placeholder
        txn.cursor.execute(f"SELECT `ID`, {qlist(rollup.SOURCE)} FROM `cdr` WHERE "
                           f"`calldate` < {ph} ORDER BY `calldate`, `ID` LIMIT {ph}"
                           f"{self.dialect.for_update}", (stamp, limit))
        rows = txn.cursor.fetchall()
        deleted = 0
        for chunk in _chunks([row[0] for row in rows]):
            txn.cursor.execute(f"DELETE FROM `cdr` WHERE `ID` IN "
                               f"({self.dialect.params(len(chunk))})", tuple(chunk))
            deleted += max(txn.cursor.rowcount, 0)
        if deleted != len(rows):   # cannot happen under the lock; never count wrong
            raise StoreError(f"{self.where}: retention deleted {deleted} of {len(rows)} "
                             "rows it had locked")
        rollup.apply(txn.cursor, txn.dialect, rollup.tallies(row[1:] for row in rows), -1)
        return deleted

    # sensors ----------------------------------------------------------------------------

    def upsert_sensor(self, sensor: Mapping[str, Any]) -> Deferred:
        try:
            upsert = sensor_upsert(sensor, self.central_id, self._reactor.seconds())
        except ValueError as exc:
            return fail(exc)
        if self._writer is None:
            return self._not_started()
        excluded = self.dialect.excluded
        updates = {col: excluded(col) for col in upsert.updates}
        if upsert.rename:
            updates["name"] = f"CASE WHEN `name_locked` = 1 THEN `name` ELSE {excluded('name')} END"
        sql = self.dialect.upsert_sql("sensors", tuple(upsert.values), "id_sensor", updates)
        d = self._writer.run(self._execute, sql, tuple(upsert.values.values()))
        return self._watch(d.addCallback(lambda _: None))

    def _execute(self, txn: Txn, sql: str, params: tuple[Any, ...]) -> int:
        txn.cursor.execute(sql, params)
        return txn.cursor.rowcount

    def mark_sensor_offline(self, id_sensor: int, when: float) -> Deferred:
        try:
            ident = check_id_sensor(id_sensor)
            stamp = datetime_text(float(when))
        except (TypeError, ValueError) as exc:
            return fail(ValueError(str(exc)))
        if self._writer is None:
            return self._not_started()
        ph = self.dialect.placeholder
        sql = (f"UPDATE `sensors` SET `connected` = 0, `last_seen` = {ph} WHERE `id_sensor` = "
               f"{ph} AND `central` = {ph} AND `connected` = 1")
        d = self._writer.run(self._execute, sql, (stamp, ident, text(self.central_id, 255)))
        return self._watch(d.addCallback(lambda count: count > 0))

    def rename_sensor(self, id_sensor: int, name: str) -> Deferred:
        try:
            ident = check_id_sensor(id_sensor)
            fitted = check_name(name)
        except ValueError as exc:
            return fail(exc)
        if self._writer is None:
            return self._not_started()
        return self._watch(self._writer.run(self._rename, ident, fitted))

    def _rename(self, txn: Txn, ident: int, name: str) -> bool:
        ph = self.dialect.placeholder
        txn.cursor.execute(f"UPDATE `sensors` SET `name` = {ph}, `name_locked` = 1 "
                           f"WHERE `id_sensor` = {ph}", (name, ident))
        if txn.cursor.rowcount > 0:
            return True
        # MySQL counts changed rows only: renaming to the same name changes none.
        txn.cursor.execute(f"SELECT 1 FROM `sensors` WHERE `id_sensor` = {ph}", (ident,))
        return txn.cursor.fetchone() is not None

    def list_sensors(self) -> Deferred:
        if self._reader is None:
            return self._not_started()
        return self._watch(self._reader.run(self._sensors, write=False))

    def _sensors(self, txn: Txn) -> list[dict[str, Any]]:
        txn.cursor.execute(f"SELECT {qlist(SENSOR_JSON_FIELDS)} FROM `sensors` "
                           "ORDER BY `id_sensor`")
        return [sensor_json(row) for row in txn.cursor.fetchall()]


__all__ = ["SCHEMA_VERSION", "SqlStore"]
