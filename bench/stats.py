"""Seconds for the dashboard's /api/stats over one day of 1M CDRs on MariaDB (target <= 1 s),
beside a plain ``SELECT COUNT(*)`` of the same day's calls in the same run.

A throwaway MariaDB database (VOIPMON_TEST_MYSQL_* or root@127.0.0.1:3306) gets the schema
from SqlStore itself and a few thousand varied CDRs through its own writer (cdr, cdr_next,
cdr_rtp rows as the central writes them, counted into cdr_minute). Those cdr rows are then
copied by ``INSERT ... SELECT`` from MariaDB's sequence tables to ``--cdrs`` calls spread
over one day (2024-05-01 UTC), 10 sensors, every outcome, MOS, loss and jitter varied, a
tenth without media, plus a tenth more on the days before and after (not counted); the
copies bypass the writer, so cdr_minute is then rebuilt by the schema migration's own
backfill (timed: what migrating such a database costs). Then, warm, best of ``--rounds``:

- reference: ``SELECT COUNT(*) FROM cdr`` over the day (the calldate index);
- ``SqlStore.cdr_stats`` and ``GET /api/stats`` on a real loopback HTTP server, for
  step=1h and step=5m, overall and for one sensor, with the query's EXPLAIN;
- for comparison, the alternative measured before choosing the per-minute table: the same
  figures by scanning cdr, through a covering index on (a virtual calldate minute,
  id_sensor, code, connect_duration, MOS, loss, jitter) grouped in index order (built
  here, dropped after), and without it (the table's rows).

    .venv/bin/python bench/stats.py [--cdrs 1000000] [--rounds 3] [--keep DBNAME]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, endpoints, task
from twisted.web.client import Agent, readBody

from voipmon.store import rollup, testing
from voipmon.store.dialect import q, qlist
from voipmon.store.figures import JITTER_EDGES, LOSS_EDGES
from voipmon.store.rows import CDR_COLUMNS
from voipmon.store.sqlstore import SqlStore
from voipmon.store.stats import StatsQuery, stats_sql
from voipmon.web.site import make_site

DAY = 1_714_521_600              # 2024-05-01T00:00:00Z
TARGET = 1.0
SEEDS = 2000
CHUNK = 100_000

# How each copied row differs from its seed (s.seq is the copy's number, 0..n-1).
_CODES = "ELT(1 + (s.seq * 2654435761) % 20, " + ", ".join(
    ["200"] * 12 + ["486", "486", "487", "480", "503", "404", "603", "0"]) + ")"


def _overrides(n: int, first_day: int) -> dict[str, str]:
    spread = f"(s.seq * 86400000 DIV {n})"      # ms into the day
    when = f"TIMESTAMPADD(MICROSECOND, 1000 * {spread}, FROM_UNIXTIME({first_day}))"
    return {
        "sensor_cdr_uid": f"CONCAT('bench-{first_day}-', s.seq)",
        "id_sensor": "1 + (s.seq * 7919) % 10",
        "calldate": when,
        "callend": f"TIMESTAMPADD(SECOND, 95, {when})",
        "lastSIPresponseNum": _CODES,
        "connect_duration": "IF((s.seq * 2654435761) % 20 < 12, (s.seq * 40503) % 600000 "
                            "/ 1000, 0)",
        "mos_min_mult10": "IF(s.seq % 10 = 0, NULL, 10 + (s.seq * 48271) % 36)",
        "packet_loss_perc_mult1000": "IF(s.seq % 10 = 0, NULL, IF(s.seq % 3 = 0, 0, "
                                     "(s.seq * 69621) % 15000))",
        "jitter_mult10": "IF(s.seq % 10 = 0, NULL, (s.seq * 16807) % 800)",
    }


def fill(conn: Any, n: int, first_day: int) -> None:
    """``n`` cdr rows over the day starting at ``first_day``, copied from the seeds."""
    columns = CDR_COLUMNS[1:]
    over = _overrides(n, first_day)
    exprs = ", ".join(over.get(c, f"c.{q(c)}") for c in columns)
    cur = conn.cursor()
    # the seeds in a table of their own: no INSERT ... SELECT from the table it fills
    cur.execute("CREATE TEMPORARY TABLE IF NOT EXISTS `bench_seed` (`k` int PRIMARY KEY) "
                "SELECT `ID` - (SELECT MIN(`ID`) FROM `cdr`) AS `k`, `cdr`.* FROM `cdr` "
                f"ORDER BY `ID` LIMIT {SEEDS}")
    for start in range(0, n, CHUNK):
        end = min(n, start + CHUNK) - 1
        cur.execute(f"INSERT INTO `cdr` ({qlist(columns)}) SELECT {exprs} "
                    f"FROM seq_{start}_to_{end} s JOIN `bench_seed` c ON c.`k` = s.seq % {SEEDS}")
        conn.commit()


def seconds(work: Callable[[], Any]) -> defer.Deferred:
    start = time.perf_counter()
    d = defer.maybeDeferred(work)
    return d.addCallback(lambda result: (time.perf_counter() - start, result))


@defer.inlineCallbacks
def best(rounds: int, work: Callable[[], Any]) -> Any:
    yield work()                                   # warm
    times = []
    result = None
    for _ in range(rounds):
        elapsed, result = yield seconds(work)
        times.append(elapsed)
    return min(times), result


def blocking(conn: Any, sql: str) -> Callable[[], Any]:
    def run() -> Any:
        cur = conn.cursor()
        cur.execute(sql)
        return cur.fetchall()
    return run


def explain(conn: Any, sql: str) -> None:
    cur = conn.cursor()
    cur.execute(f"EXPLAIN {sql}")
    names = [d[0] for d in cur.description]
    for row in cur.fetchall():
        info = dict(zip(names, row, strict=True))
        print(f"    EXPLAIN: table={info['table']} type={info['type']} key={info['key']} "
              f"rows={info['rows']} Extra={info['Extra']}")


_SCAN_INDEX = ("ALTER TABLE `cdr` ADD COLUMN `bench_minute` int unsigned AS "
               "(TIMESTAMPDIFF(MINUTE, '1970-01-01 00:00:00', `calldate`)) VIRTUAL, "
               "ADD INDEX `bench_stats` (`bench_minute`, `id_sensor`, `lastSIPresponseNum`, "
               "`connect_duration`, `mos_min_mult10`, `packet_loss_perc_mult1000`, "
               "`jitter_mult10`)")


def scan_sql(index: str) -> str:
    """The day's figures (step 1 h) counted from cdr itself, grouped by minute and sensor
    (in the covering index's order when ``index`` names it)."""
    counts = ["COUNT(*)", "COUNT(CASE WHEN `lastSIPresponseNum` BETWEEN 200 AND 299 THEN 1 END)",
              "COUNT(CASE WHEN `lastSIPresponseNum` IN (480, 486, 487, 600, 603) THEN 1 END)",
              "SUM(CASE WHEN `lastSIPresponseNum` BETWEEN 200 AND 299 THEN "
              "ROUND(`connect_duration` * 1000) END)", "COUNT(`mos_min_mult10`)",
              "COUNT(CASE WHEN `mos_min_mult10` < 31 THEN 1 END)"]
    for column, edges in (("packet_loss_perc_mult1000", LOSS_EDGES),
                          ("jitter_mult10", JITTER_EDGES)):
        counts.append(f"COUNT(`{column}`)")
        counts.extend(f"COUNT(CASE WHEN `{column}` < {e} THEN 1 END)" for e in edges)
    return (f"SELECT `bench_minute`, `id_sensor`, {', '.join(counts)} FROM `cdr` {index} "
            f"WHERE `bench_minute` >= {DAY // 60} AND `bench_minute` < {(DAY + 86400) // 60} "
            "GROUP BY `bench_minute`, `id_sensor`")


@defer.inlineCallbacks
def main(reactor: Any, argv: list[str]) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cdrs", type=int, default=1_000_000, help="calls in the day")
    parser.add_argument("--rounds", type=int, default=3, help="runs per case; the best counts")
    parser.add_argument("--keep", metavar="DBNAME", help="use (and keep) this database: "
                        "filled once, reused by later runs")
    args = parser.parse_args(argv)
    reason = testing.mysql_unreachable_reason()
    if reason:
        print(f"MariaDB unreachable: {reason}")
        raise SystemExit(1)
    name = args.keep or testing.unique_database_name("voipmon_bench")
    dialect = testing.mysql_dialect(name)
    store = SqlStore(dialect, reactor, central_id="bench")
    try:
        yield store.start()
        conn = dialect.connect()
        cur = conn.cursor()
        cur.execute("SELECT VERSION(), @@innodb_buffer_pool_size")
        version, pool = cur.fetchone()
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"MariaDB {version} (buffer pool {pool >> 20} MiB), {os.cpu_count()} CPUs, "
              f"load average {load}; best of {args.rounds} warm runs")
        cur.execute("SELECT COUNT(*) FROM `cdr`")
        if cur.fetchone()[0] < args.cdrs:
            t0 = time.perf_counter()
            yield store.store_cdrs([testing.make_cdr(n, id_sensor=1 + n % 10)
                                    for n in range(SEEDS)])
            fill(conn, args.cdrs, DAY)
            for day in (DAY - 86400, DAY + 86400):
                fill(conn, args.cdrs // 20, day)
            cur.execute("ANALYZE TABLE `cdr`")
            cur.fetchall()
            print(f"filled in {time.perf_counter() - t0:.1f} s")
            cur.execute(f"DELETE FROM `{rollup.TABLE}`")
            t0 = time.perf_counter()
            rollup.backfill(dialect, cur)
            conn.commit()
            cur.execute(f"SELECT COUNT(*) FROM `{rollup.TABLE}`")
            print(f"cdr_minute rebuilt by the migration's backfill in "
                  f"{time.perf_counter() - t0:.1f} s ({cur.fetchone()[0]:,} rows)")
        cur.execute("SELECT COUNT(*) FROM `cdr`")
        print(f"cdr rows: {cur.fetchone()[0]:,}")

        day_sql = (f"SELECT COUNT(*) FROM `cdr` WHERE `calldate` >= FROM_UNIXTIME({DAY}) "
                   f"AND `calldate` < FROM_UNIXTIME({DAY + 86400})")
        ref, rows = yield best(args.rounds, blocking(conn, day_sql))
        print(f"reference: SELECT COUNT(*) of the day: {ref:.3f} s ({rows[0][0]:,} calls)")

        site = make_site(store, None)
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        agent = Agent(reactor)
        base = f"http://127.0.0.1:{port.getHost().port}/api/stats"

        @defer.inlineCallbacks
        def http(query: str) -> Any:
            response = yield agent.request(b"GET", f"{base}?{query}".encode())
            body = yield readBody(response)
            assert response.code == 200, body
            return body

        worst = 0.0
        print(f"{'case':34} {'store s':>8} {'HTTP s':>8} {'x ref':>6}  calls")
        for step, sensor in ((3600, None), (300, None), (3600, 3), (300, 3)):
            query = StatsQuery(DAY, DAY + 86400, step, id_sensor=sensor)
            took, answer = yield best(args.rounds, lambda q=query: store.cdr_stats(q))
            text = f"from={DAY}&to={DAY + 86400}&step={step}"
            if sensor is not None:
                text += f"&id_sensor={sensor}"
            web, body = yield best(args.rounds, lambda t=text: http(t))
            worst = max(worst, took, web)
            label = f"step={step // 60} min, " + ("all sensors" if sensor is None
                                                  else f"sensor {sensor}")
            print(f"{label:34} {took:8.3f} {web:8.3f} {web / ref:6.1f}  "
                  f"{answer['totals']['calls']:,} ({len(body) >> 10} KiB JSON)")
            if step == 300:
                explain(conn, stats_sql(query))
        yield port.stopListening()

        print("for comparison, the same figures (step 1 h) counted from cdr itself:")
        t0 = time.perf_counter()
        cur.execute(_SCAN_INDEX)
        print(f"  covering index (virtual minute column) built in "
              f"{time.perf_counter() - t0:.1f} s")
        try:
            covered = scan_sql("FORCE INDEX (`bench_stats`)")
            took, _ = yield best(args.rounds, blocking(conn, covered))
            print(f"  through the covering index, in its order: {took:.3f} s")
            explain(conn, covered)
            took, _ = yield best(1, blocking(conn, scan_sql("IGNORE INDEX (`bench_stats`)")))
            print(f"  from the table's rows (no such index): {took:.3f} s")
        finally:
            cur.execute("ALTER TABLE `cdr` DROP INDEX `bench_stats`, DROP COLUMN `bench_minute`")
        conn.close()
        print(f"target: /api/stats of one day of {args.cdrs:,} CDRs <= {TARGET:.0f} s: "
              f"{'met' if worst <= TARGET else 'NOT met'} (slowest case {worst:.3f} s)")
    finally:
        yield store.close()
        if not args.keep:
            testing.drop_mysql_database(name)


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
