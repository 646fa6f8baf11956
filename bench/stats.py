"""Seconds for the dashboard's /api/stats over one day of 1M CDRs on MariaDB (target <= 1 s),
beside a plain ``SELECT COUNT(*)`` of the same day's calls in the same run.

A throwaway MariaDB database (VOIPMON_TEST_MYSQL_* or root@127.0.0.1:3306) gets the schema
from SqlStore itself and a few thousand varied CDRs through its own writer (cdr, cdr_next,
cdr_rtp rows as the central writes them). Those cdr rows are then copied by
``INSERT ... SELECT`` from MariaDB's sequence tables to ``--cdrs`` calls spread over one
day (2024-05-01 UTC), 10 sensors, every outcome, MOS, loss and jitter varied, a tenth
without media, plus a tenth more on the days before and after (not counted). Then, warm,
best of ``--rounds``:

- reference: ``SELECT COUNT(*) FROM cdr`` over the day (the calldate index);
- ``SqlStore.cdr_stats`` (both queries, in two pool threads) and ``GET /api/stats`` on a
  real loopback HTTP server, for step=1h and step=5m, overall and for one sensor;
- for comparison, what the choices made cost or would give: the series query without the
  cdr_stats index (IGNORE INDEX: the rows themselves), and the same figures read from a
  per-minute pre-aggregation table (built here by GROUP BY; voipmon does not keep one).

The EXPLAIN of both statistics queries is printed.

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

from voipmon.store import testing
from voipmon.store.dialect import q, qlist
from voipmon.store.rows import CDR_COLUMNS
from voipmon.store.sqlstore import SqlStore
from voipmon.store.stats import StatsQuery, distribution_sql, series_sql
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


_ROLLUP = ("CREATE TABLE `bench_minute` (PRIMARY KEY (`m`, `id_sensor`)) "
           "SELECT `calldate_minute` AS `m`, `id_sensor`, COUNT(*) AS `calls`, "
           "COUNT(CASE WHEN `lastSIPresponseNum` BETWEEN 200 AND 299 THEN 1 END) AS `answered`, "
           "COUNT(CASE WHEN `lastSIPresponseNum` IN (480, 486, 487, 600, 603) THEN 1 END) "
           "AS `user_failures`, SUM(CASE WHEN `lastSIPresponseNum` BETWEEN 200 AND 299 THEN "
           "ROUND(`connect_duration` * 1000) END) AS `connected_ms`, "
           "COUNT(`mos_min_mult10`) AS `mos_known`, "
           "COUNT(CASE WHEN `mos_min_mult10` < 31 THEN 1 END) AS `mos_below` "
           "FROM `cdr` GROUP BY `m`, `id_sensor`")


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
        hint = dialect.index_hint("cdr_stats")
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
                for sql in (series_sql(query, hint), distribution_sql(query, hint)):
                    explain(conn, sql)
        yield port.stopListening()

        query = StatsQuery(DAY, DAY + 86400, 3600)
        bare = series_sql(query, " IGNORE INDEX (`cdr_stats`)")
        took, _ = yield best(1, blocking(conn, bare))
        print(f"for comparison: the series query without the cdr_stats index: {took:.3f} s")
        cur.execute("DROP TABLE IF EXISTS `bench_minute`")
        t0 = time.perf_counter()
        cur.execute(_ROLLUP)
        conn.commit()
        built = time.perf_counter() - t0
        m0, m1 = DAY // 60, (DAY + 86400) // 60
        rollup = (f"SELECT `m` - (`m` - {m0}) % 60, SUM(`calls`), SUM(`answered`), "
                  "SUM(`user_failures`), SUM(`connected_ms`), SUM(`mos_known`), "
                  f"SUM(`mos_below`) FROM `bench_minute` WHERE `m` >= {m0} AND `m` < {m1} "
                  "GROUP BY 1")
        took, _ = yield best(args.rounds, blocking(conn, rollup))
        print(f"for comparison: a per-minute pre-aggregation table (built in {built:.1f} s, "
              f"not kept by voipmon): the day's series from it: {took:.3f} s")
        cur.execute("DROP TABLE `bench_minute`")
        conn.close()
        print(f"target: /api/stats of one day of {args.cdrs:,} CDRs <= {TARGET:.0f} s: "
              f"{'met' if worst <= TARGET else 'NOT met'} (slowest case {worst:.3f} s)")
    finally:
        yield store.close()
        if not args.keep:
            testing.drop_mysql_database(name)


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
