"""CDRs/s through SqlStore.store_cdrs beside a raw driver executemany of the same rows.

For MariaDB (a throwaway database on the test server, VOIPMON_TEST_MYSQL_* or
root@127.0.0.1:3306) and for SQLite (a temporary file), stores fresh CDRs with two RTP
streams each in batches of 1, 100 and 1000, one batch in flight at a time (and, on MariaDB,
also four at a time at batch 1000: several sensors writing at once). Beside each it runs
the reference: the driver's own ``executemany`` of the very rows store_cdrs writes (cdr,
cdr_next, cdr_rtp), already encoded, IDs taken from LAST_INSERT_ID/lastrowid, one commit
per batch, on the same server in the same run. The reference does strictly less work (no
Cdr-to-row encoding, no idempotency checks), so it is the limit. On MariaDB a second
reference, labelled as such, sends store_cdrs's own statements rendered beforehand: the
server's and the wire's share of store_cdrs's time.

    .venv/bin/python bench/store.py [--cdrs 20000] [--single 2000] [--sqlite-only]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task

from voipmon.records.cdr import Cdr
from voipmon.store import testing
from voipmon.store.cdrwrite import id_step
from voipmon.store.dialect import qlist
from voipmon.store.fields import uid
from voipmon.store.literals import quote, renderer, statements
from voipmon.store.migrate import migrate
from voipmon.store.rows import (
    CDR_COLUMNS,
    NEXT_COLUMNS,
    RTP_COLUMNS,
    encode,
)
from voipmon.store.schema import TABLES
from voipmon.store.sqlstore import SqlStore

TARGET_RATIO = 0.70
TARGET_RATE = 10_000


class Numbers:
    """Fresh CDR numbers, so no batch ever replays another."""

    def __init__(self) -> None:
        self.next = 0

    def cdrs(self, count: int, sensors: int = 4) -> list[Cdr]:
        start, self.next = self.next, self.next + count
        return [testing.make_cdr(n, id_sensor=1 + n % sensors) for n in range(start, start + count)]


def encoded(cdrs: list[Cdr]) -> tuple[list[tuple], list[tuple], list[list[tuple]]]:
    """The rows store_cdrs would write (lookup ids as the store would have them cached),
    without their ID columns (the reference takes the IDs from the database)."""
    rows = [encode(c, 1, 1, 2, "sensor") for c in cdrs]
    return ([r[0][1:] for r in rows], [r[1][1:] for r in rows],
            [[x[1:] for x in r[2]] for r in rows])


def raw_insert(conn: Any, placeholder: str, cdrs: list[Cdr], batch: int, mysql: bool) -> float:
    """The reference: executemany of pre-encoded rows, one commit per batch; CDR/s."""
    cdr_rows, next_rows, rtp_rows = encoded(cdrs)

    def insert(table: str, columns: tuple[str, ...]) -> str:
        values = ", ".join([placeholder] * len(columns))
        return f"INSERT INTO `{table}` ({qlist(columns)}) VALUES ({values})"

    ins_cdr = insert("cdr", CDR_COLUMNS[1:])
    ins_next = insert("cdr_next", NEXT_COLUMNS)
    ins_rtp = insert("cdr_rtp", RTP_COLUMNS)
    cur = conn.cursor()
    if not mysql:
        cur.execute("BEGIN")
    began = time.perf_counter()
    for at in range(0, len(cdrs), batch):
        chunk = range(at, min(at + batch, len(cdrs)))
        cur.executemany(ins_cdr, [cdr_rows[i] for i in chunk])
        if mysql:
            cur.execute("SELECT LAST_INSERT_ID()")
            first = cur.fetchone()[0]
        else:
            cur.execute("SELECT last_insert_rowid()")
            first = cur.fetchone()[0] - len(chunk) + 1
        cur.executemany(ins_next, [(first + k, *next_rows[i]) for k, i in enumerate(chunk)])
        cur.executemany(ins_rtp, [(first + k, *r)
                                  for k, i in enumerate(chunk) for r in rtp_rows[i]])
        conn.commit()
        if not mysql:
            cur.execute("BEGIN")
    elapsed = time.perf_counter() - began
    if not mysql:
        conn.commit()
    cur.close()
    return len(cdrs) / elapsed


def text_insert(conn: Any, cdrs: list[Cdr], batch: int, step: int | None) -> float:
    """A second reference (MySQL): the statements store_cdrs sends for these CDRs,
    rendered beforehand, sent one after the other with PyMySQL's execute (IDs as the
    store takes them: from LAST_INSERT_ID and ``step``, or by RETURNING), the child rows
    completed with them; one commit per batch. Server and wire only: what store_cdrs
    would reach if converting and rendering cost nothing."""
    render = renderer("cdr", CDR_COLUMNS)
    next_tail = renderer("cdr_next", NEXT_COLUMNS, tail=True)
    rtp_tail = renderer("cdr_rtp", RTP_COLUMNS, tail=True)
    head = f"INSERT INTO `cdr` ({qlist(CDR_COLUMNS)}) VALUES "
    returning = "" if step else " RETURNING `ID`, `id_sensor`, `sensor_cdr_uid`"
    prepared = []
    for at in range(0, len(cdrs), batch):
        rows = [encode(c, 1, 1, 2, "sensor", uid(c.sensor_cdr_uid)) for c in cdrs[at:at + batch]]
        prepared.append((
            statements(head, [render(r[0]) for r in rows], returning),
            [(r[0][1], r[0][2]) for r in rows], [next_tail(r[1]) for r in rows],
            [[rtp_tail(x) for x in r[2]] for r in rows]))
    cur = conn.cursor()
    began = time.perf_counter()
    for inserts, keys, nexts, rtps in prepared:
        found = {}
        at = 0
        for sql, count in inserts:
            cur.execute(sql)
            if step:
                first = cur.lastrowid
                found.update(zip(keys[at:at + count], range(first, first + count * step, step),
                                 strict=True))
                at += count
            else:
                found.update(((ident, key), cdr_id) for cdr_id, ident, key in cur.fetchall())
        ids = [found[key] for key in keys]
        for table, columns, texts in (
                ("cdr_next", NEXT_COLUMNS,
                 [f"({i}{t}" for i, t in zip(ids, nexts, strict=True)]),
                ("cdr_rtp", RTP_COLUMNS,
                 [f"({i}{t}" for i, ts in zip(ids, rtps, strict=True) for t in ts])):
            for sql, _count in statements(f"INSERT INTO `{table}` ({qlist(columns)}) VALUES ",
                                          texts):
                cur.execute(sql)
        conn.commit()
    elapsed = time.perf_counter() - began
    cur.close()
    return len(cdrs) / elapsed


@defer.inlineCallbacks
def store_rate(store: SqlStore, cdrs: list[Cdr], batch: int, in_flight: int = 1,
               expect_new: bool = True) -> Any:
    batches = [cdrs[i:i + batch] for i in range(0, len(cdrs), batch)]
    began = time.perf_counter()
    stored = 0
    for at in range(0, len(batches), in_flight):
        counts = yield defer.gatherResults(
            [store.store_cdrs(b) for b in batches[at:at + in_flight]], consumeErrors=True)
        stored += sum(counts)
    elapsed = time.perf_counter() - began
    if stored != (len(cdrs) if expect_new else 0):
        raise AssertionError(f"stored {stored} of {len(cdrs)}")
    return len(cdrs) / elapsed


def encode_rate(cdrs: list[Cdr]) -> float:
    began = time.perf_counter()
    encoded(cdrs)
    return len(cdrs) / (time.perf_counter() - began)


def _plain_literal(kind: str, value: Any) -> str:
    """One value as store.literals renders it, written as a plain function (the reference
    for the compiled renderers: what a call per value costs)."""
    if value is None:
        return "NULL"
    if kind in ("double", "dec3"):
        return repr(float(value))
    if kind in ("ip", "blob"):
        return "X'" + value.hex() + "'"
    if kind in ("text", "bintext", "longtext", "ascii", "enum", "datetime"):
        return quote(value)
    return str(int(value))


def render_rates(cdrs: list[Cdr]) -> tuple[float, float]:
    """CDR/s of rendering the cdr, cdr_next and cdr_rtp rows of ``cdrs`` as SQL literals:
    by the compiled renderers, and by a plain loop calling ``_plain_literal`` per value."""
    rows = [encode(c, 1, 1, 2, "sensor") for c in cdrs]
    tables = [(table, columns, [r[0] for r in rows] if table == "cdr" else
               [r[1] for r in rows] if table == "cdr_next" else [x for r in rows for x in r[2]])
              for table, columns in (("cdr", CDR_COLUMNS), ("cdr_next", NEXT_COLUMNS),
                                     ("cdr_rtp", RTP_COLUMNS))]

    def plain(table: str, columns: tuple[str, ...]) -> Callable[[Sequence[Any]], str]:
        kinds = {col.name: col.type.partition(":")[0] for col in TABLES[table].columns}
        order = [kinds[c] for c in columns]
        return lambda row: "(" + ",".join([_plain_literal(k, v) for k, v in
                                           zip(order, row, strict=True)]) + ")"

    rates = []
    for make in (renderer, plain):
        best = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            for table, columns, sample in tables:
                render = make(table, columns)
                texts = [render(row) for row in sample]
            best = min(best, time.perf_counter() - began)
        del texts
        rates.append(len(cdrs) / best)
    return rates[0], rates[1]


def line(backend: str, label: str, store: float, raw: float | None) -> None:
    ratio = f"{store / raw:6.0%}" if raw else "     -"
    raw_text = f"{raw:10,.0f}" if raw else "         -"
    print(f"{backend:8} {label:>16} {store:12,.0f} {raw_text} {ratio}", flush=True)


@defer.inlineCallbacks
def compare(backend: str, store: SqlStore, conn: Any, placeholder: str, numbers: Numbers,
            cases: list[tuple[int, int, int]], rounds: int, step: int | None = None) -> Any:
    """Best of ``rounds`` for the store and for the raw reference, interleaved, per case
    (on MariaDB at batch 1000, the pre-rendered statements too)."""
    results = {}
    mysql = placeholder == "%s"
    for batch, n, in_flight in cases:
        best_store = best_raw = best_text = 0.0
        text = mysql and batch == 1000 and in_flight == 1
        for _ in range(rounds):
            rate = yield store_rate(store, numbers.cdrs(n), batch, in_flight)
            best_store = max(best_store, rate)
            raw = raw_insert(conn, placeholder, numbers.cdrs(n), batch, mysql)
            best_raw = max(best_raw, raw)
            if text:
                best_text = max(best_text, text_insert(conn, numbers.cdrs(n), batch, step))
        label = f"{batch}" + (f" x{in_flight} in flight" if in_flight > 1 else "")
        line(backend, label, best_store, best_raw)
        results[label] = (best_store, best_raw)
        if text:
            results["text"] = best_text
    replayed = numbers.cdrs(cases[-1][1])
    yield store_rate(store, replayed, 1000)
    rate = yield store_rate(store, replayed, 1000, expect_new=False)
    line(backend, "1000 replayed", rate, None)
    if "text" in results:
        print(f"{backend:8} {'1000':>16} {results['text']:12,.0f}  <- second reference: "
              "store_cdrs's own SQL, pre-rendered, sent by execute (server and wire only)")
    return results


@defer.inlineCallbacks
def bench_mysql(reactor: Any, numbers: Numbers, count: int, single: int, rounds: int) -> Any:
    import pymysql

    reason = testing.mysql_unreachable_reason()
    if reason:
        print(f"MariaDB skipped: {reason}")
        return None
    store_db = testing.unique_database_name("voipmon_bench")
    store = SqlStore(testing.mysql_dialect(store_db), reactor, central_id="bench")
    try:
        yield store.start()
        with testing.mysql_database() as raw_db:
            dialect = testing.mysql_dialect(raw_db)
            conn = dialect.connect()
            migrate(dialect, conn, time.time())
            cur = conn.cursor()
            cur.execute("SELECT VERSION()")
            print(f"MariaDB {cur.fetchone()[0]} at {dialect.where}, PyMySQL "
                  f"{pymysql.__version__}")
            cases = [(1, single, 1), (100, count, 1), (1000, count, 1), (1000, count, 4)]
            step = id_step(cur, dialect)
            results = yield compare("MariaDB", store, conn, "%s", numbers, cases, rounds, step)
            conn.close()
    finally:
        yield store.close()
        testing.drop_mysql_database(store_db)
    return results


@defer.inlineCallbacks
def bench_sqlite(reactor: Any, numbers: Numbers, count: int, single: int, rounds: int) -> Any:
    import sqlite3

    folder = tempfile.mkdtemp(prefix="voipmon-bench-")
    store = SqlStore(testing.sqlite_dialect(os.path.join(folder, "store.sqlite")), reactor,
                     central_id="bench")
    dialect = testing.sqlite_dialect(os.path.join(folder, "raw.sqlite"))
    conn = dialect.connect()
    migrate(dialect, conn, time.time())
    try:
        yield store.start()
        print(f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL), a temporary file")
        cases = [(1, single, 1), (100, count, 1), (1000, count, 1)]
        results = yield compare("SQLite", store, conn, "?", numbers, cases, rounds)
    finally:
        conn.close()
        yield store.close()
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)
    return results


@defer.inlineCallbacks
def main(reactor: Any, argv: list[str]) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cdrs", type=int, default=10000, help="CDRs per run at batch 100/1000")
    parser.add_argument("--single", type=int, default=1000, help="CDRs per run at batch 1")
    parser.add_argument("--rounds", type=int, default=3, help="runs per case; the best counts")
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args(argv)
    numbers = Numbers()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load}; best of {args.rounds} runs per case")
    print(f"Cdr -> rows encoding alone: {encode_rate(numbers.cdrs(5000)):,.0f} CDR/s "
          "(2 RTP streams per CDR)")
    compiled, plain = render_rates(numbers.cdrs(5000))
    print(f"rows -> SQL literals alone: {compiled:,.0f} CDR/s by the compiled renderers, "
          f"{plain:,.0f} CDR/s by a plain call per value (the reference)")
    print(f"{'backend':8} {'batch':>16} {'store CDR/s':>12} {'raw CDR/s':>10} {'ratio':>6}")
    mysql = None
    if not args.sqlite_only:
        mysql = yield bench_mysql(reactor, numbers, args.cdrs, args.single, args.rounds)
    yield bench_sqlite(reactor, numbers, args.cdrs, args.single, args.rounds)
    if mysql and "1000" in mysql:
        rate, raw = mysql["1000"]
        ok = rate >= TARGET_RATIO * raw and rate >= TARGET_RATE
        print(f"target at batch 1000 on MariaDB: >= {TARGET_RATIO:.0%} of raw and >= "
              f"{TARGET_RATE:,} CDR/s: {'met' if ok else 'NOT met'} "
              f"({rate / raw:.0%} of raw, {rate:,.0f} CDR/s)")


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
