"""The dashboard's figures (IStore.cdr_stats) against an independent computation over the
stored rows, on SQLite, the real MariaDB and the FakeStore; and every figure's link: the
/api/cdrs filter it names lists exactly the calls it counts.

The reference below reads the stored ``cdr`` rows back (the test's own SELECT on the SQL
back ends) and computes each figure in plain Python from the definitions as documented
(voipmon.store.figures and stats), with its own bucket arithmetic and exact fractions for
the MOS threshold: none of the code under test. The data: random calls of every outcome,
answered calls of zero length, calls without media or MOS, loss, jitter and MOS on the
buckets' edges, and calls on the edges of the range and of its buckets.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from twisted.internet import defer
from twisted.trial import unittest

from voipmon.records.cdr import Cdr
from voipmon.store import testing
from voipmon.test.test_fakes import FakeBackend
from voipmon.test.test_store import MySQLBackend, SQLiteBackend, SqlStores

DAY = 1_714_521_600          # 2024-05-01T00:00:00Z
ANSWERED = range(200, 300)
USER_FAILURES = {480, 486, 487, 600, 603}
# distribution buckets as documented: loss in percent, jitter in ms, [lo, hi)
LOSS = [(Fraction(0), Fraction(1, 1000)), (Fraction(1, 1000), Fraction(1)), (Fraction(1), 2),
        (Fraction(2), 5), (Fraction(5), 10), (Fraction(10), None)]
JITTER = [(Fraction(0), 5), (Fraction(5), 10), (Fraction(10), 20), (Fraction(20), 30),
          (Fraction(30), 50), (Fraction(50), None)]


class Row(NamedTuple):
    id: int
    ms: int              # calldate, epoch milliseconds
    sensor: int
    code: int | None
    connect_ms: int      # connect_duration in ms
    mos: int | None      # mos_min_mult10
    loss: int | None     # packet_loss_perc_mult1000
    jitter: int | None   # jitter_mult10


def epoch_ms(value: Any) -> int:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return round(value.replace(tzinfo=UTC).timestamp() * 1000)


def to_ms(seconds: Any) -> int:
    return int(Decimal(str(seconds)) * 1000)


def within(lo: Fraction, hi: Fraction | None, value: Fraction) -> bool:
    return lo <= value and (hi is None or value < hi)


def figures(calls: list[Row], minutes: Fraction, threshold: Fraction) -> dict[str, Any]:
    answered = [r for r in calls if r.code in ANSWERED]
    effective = [r for r in calls if r.code in ANSWERED or r.code in USER_FAILURES]
    connected = sum(r.connect_ms for r in answered)
    with_mos = [r for r in calls if r.mos is not None]
    below = [r for r in with_mos if Fraction(r.mos, 10) < threshold]
    return {
        "calls": len(calls), "answered": len(answered), "failed": len(calls) - len(answered),
        "effective": len(effective), "ineffective": len(calls) - len(effective),
        "connected": connected / 1000, "mos_known": len(with_mos), "mos_below": len(below),
        "calls_per_minute": len(calls) / float(minutes),
        "asr": len(answered) / len(calls) if calls else None,
        "ner": len(effective) / len(calls) if calls else None,
        "acd": round(Fraction(connected, len(answered))) / 1000 if answered else None,
        "mos_below_share": len(below) / len(with_mos) if with_mos else None,
    }


def reference(rows: Iterable[Row], start: int, end: int, step: int, id_sensor: int | None,
              mos_below: float) -> tuple[dict[str, Any], dict[tuple[str, ...], set[int]]]:
    """The expected answer (without its query strings), and the ids of the calls each
    figure counts, by (scope..., figure)."""
    threshold = Fraction(str(mos_below))
    chosen = [r for r in rows if start * 1000 <= r.ms < end * 1000
              and (id_sensor is None or r.sensor == id_sensor)]
    lists: dict[tuple[str, ...], set[int]] = {}

    def note(scope: tuple[str, ...], calls: list[Row]) -> None:
        classes = {
            "calls": calls, "answered": [r for r in calls if r.code in ANSWERED],
            "failed": [r for r in calls if r.code not in ANSWERED],
            "effective": [r for r in calls if r.code in ANSWERED or r.code in USER_FAILURES],
            "ineffective": [r for r in calls
                            if r.code not in ANSWERED and r.code not in USER_FAILURES],
            "mos_known": [r for r in calls if r.mos is not None],
            "mos_below": [r for r in calls
                          if r.mos is not None and Fraction(r.mos, 10) < threshold],
        }
        for name, members in classes.items():
            lists[(*scope, name)] = {r.id for r in members}

    series = []
    count = -(-(end - start) // step)
    for i in range(count):
        lo, hi = start + i * step, min(start + (i + 1) * step, end)
        calls = [r for r in chosen if lo * 1000 <= r.ms < hi * 1000]
        series.append({"from": iso(lo), "to": iso(hi),
                       **figures(calls, Fraction(hi - lo, 60), threshold)})
        note(("series", str(i)), calls)
    note(("totals",), chosen)
    sensors = []
    for sensor in sorted({r.sensor for r in chosen}):
        calls = [r for r in chosen if r.sensor == sensor]
        sensors.append({"id_sensor": sensor,
                        **figures(calls, Fraction(end - start, 60), threshold)})
        note(("sensor", str(sensor)), calls)
    distributions = {}
    for name, edges, scale, unit in (("loss", LOSS, 1000, "%"), ("jitter", JITTER, 10, "ms")):
        known = [r for r in chosen if getattr(r, name) is not None]
        buckets = []
        for i, (lo, hi) in enumerate(edges):
            members = [r for r in known if within(lo, hi, Fraction(getattr(r, name), scale))]
            lists[(name, str(i))] = {r.id for r in members}
            buckets.append({"from": float(lo), "to": None if hi is None else float(hi),
                            "calls": len(members)})
        distributions[name] = {"unit": unit, "buckets": buckets, "known": len(known)}
    expected = {
        "from": iso(start), "to": iso(end), "step": step, "id_sensor": id_sensor,
        "mos_below": mos_below,
        "totals": figures(chosen, Fraction(end - start, 60), threshold),
        "series": series, "sensors": sensors, **distributions,
    }
    return expected, lists


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def without_queries(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer less its query strings (checked by following them instead)."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("cdrs", "filters")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(answer)


# -- calls ----------------------------------------------------------------------------------

CODES = [200] * 8 + [202, 486, 486, 487, 480, 600, 603, 404, 408, 503, 500, 0]
# (received, lost): 0 %, 0.001 % (an edge), 0.0999 %, 1 %, 2 %, 5 %, 10 %, 50 %, 1.86 %
LOSSES = [(100, 0), (99999, 1), (1000, 1), (99, 1), (98, 2), (95, 5), (90, 10), (50, 50),
          (1000, 19)]
JITTERS = [0.0, 4.9, 5.0, 9.9, 10.0, 19.9, 20.0, 30.0, 49.9, 50.0, 120.3]
MOSES = [None, 1.0, 2.9, 3.0, 3.1, 3.2, 4.4]


def call(n: int, when: float, sensor: int, code: int, connect: float,
         sides: tuple[tuple[int, int, float, float | None], ...]) -> Cdr:
    """A call at ``when`` with final code ``code``, ``connect`` seconds connected and one
    main stream per side given as (received, lost, mean jitter ms, MOS)."""
    streams = tuple(dataclasses.replace(
        testing.make_stream(n, i, when), received=received, lost=lost, avgjitter=jitter,
        mos_f1=mos, mos_f2=mos, mos_adapt=None)
        for i, (received, lost, jitter, mos) in enumerate(sides))
    return testing.make_cdr(
        n, id_sensor=sensor, calldate=when, callend=when + connect + 2, duration=connect + 2,
        connect_duration=connect, lastSIPresponseNum=code,
        lastSIPresponse=f"{code} Whatever" if code else "", rtp=streams,
        a_index=0 if streams else None, b_index=1 if len(streams) > 1 else None,
        connect_time=when + 2 if code in ANSWERED else None)


def random_calls(rng: random.Random, count: int, start: int, end: int, step: int,
                 sensors: int = 3, first: int = 0) -> list[Cdr]:
    edges = [start, end, *range(start, end, step)]
    cdrs = []
    for n in range(first, first + count):
        if rng.random() < 0.3:   # on or next to an edge of the range or of a bucket
            when = rng.choice(edges) + rng.choice((-0.001, 0.0, 0.001, step - 0.001))
        else:
            when = rng.uniform(start - 3600, end + 3600)
        code = rng.choice(CODES)
        connect = 0.0
        if code in ANSWERED:
            connect = rng.choice((0.0, round(rng.uniform(0, 900), 3), 59.999))
        sides = tuple((*rng.choice(LOSSES), rng.choice(JITTERS), rng.choice(MOSES))
                      for _ in range(rng.choice((0, 1, 2, 2))))
        cdrs.append(call(n, round(when, 3), 1 + n % sensors, code, connect, sides))
    return cdrs


# -- the contract ---------------------------------------------------------------------------


class StatsContract:
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.backend_setup()
        self.store = yield self.make_store()

    @defer.inlineCallbacks
    def check(self, start: int, end: int, step: int, id_sensor: int | None = None,
              mos_below: float = 3.1, links: bool = True) -> Any:
        """cdr_stats equals the reference, and (``links``) every figure's list is its calls."""
        args = {"from": iso(start), "to": iso(end), "step": str(step), "mos_below": str(mos_below)}
        if id_sensor is not None:
            args["id_sensor"] = str(id_sensor)
        answer = yield self.store.cdr_stats(args)
        expected, lists = reference(self.stored_rows(), start, end, step, id_sensor, mos_below)
        self.assertEqual(without_queries(answer), expected)
        if links:
            yield self.follow_links(answer, lists)
        return answer

    @defer.inlineCallbacks
    def follow_links(self, answer: dict[str, Any], lists: dict[tuple[str, ...], set[int]]) -> Any:
        scopes = [(("totals",), answer["totals"])]
        scopes += [(("series", str(i)), b) for i, b in enumerate(answer["series"])]
        scopes += [(("sensor", str(s["id_sensor"])), s) for s in answer["sensors"]]
        checked = 0
        for scope, figures_ in scopes:
            if scope[0] == "series" and not figures_["calls"] and scope[1] != "0":
                continue   # empty buckets: one is enough
            for name, extra in answer["filters"].items():
                ids = yield self.listed({**dict(parse_qsl(figures_["cdrs"])), **extra})
                self.assertEqual(ids, lists[(*scope, name)], (scope, name))
                self.assertEqual(len(ids), figures_[name], (scope, name))
                checked += 1
        for name in ("loss", "jitter"):
            for i, bucket in enumerate(answer[name]["buckets"]):
                ids = yield self.listed(dict(parse_qsl(bucket["cdrs"])))
                self.assertEqual(ids, lists[(name, str(i))], (name, i))
                self.assertEqual(len(ids), bucket["calls"])
                checked += 1
        self.assertGreater(checked, 20)

    @defer.inlineCallbacks
    def listed(self, args: dict[str, str]) -> Any:
        ids: set[int] = set()
        offset = 0
        while True:
            page = yield self.store.list_cdrs({**args, "limit": "1000", "offset": str(offset)})
            ids.update(row["id"] for row in page)
            if len(page) < 1000:
                return ids
            offset += 1000

    @defer.inlineCallbacks
    def test_random_calls_by_bucket_sensor_and_threshold(self) -> Any:
        rng = random.Random(19)
        start, end = DAY + 6 * 3600, DAY + 9 * 3600 + 1200   # the last bucket is cut short
        yield self.store.store_cdrs(random_calls(rng, 400, start, end, 900))
        yield self.check(start, end, 900)
        yield self.check(start, end, 3600, id_sensor=2, mos_below=3.0)
        yield self.check(start, end, 60, mos_below=5, links=False)
        yield self.check(start - 3600, end + 3600, 300, id_sensor=3, mos_below=0.5, links=False)

    @defer.inlineCallbacks
    def test_a_long_range_in_large_steps(self) -> Any:
        rng = random.Random(5)
        start, end = DAY, DAY + 4 * 86400
        yield self.store.store_cdrs(random_calls(rng, 200, start, end, 21600))
        yield self.check(start, end, 21600)
        yield self.check(start, end, 86400 * 3, id_sensor=1, links=False)

    @defer.inlineCallbacks
    def test_replayed_and_concurrent_batches_count_once(self) -> Any:
        """Overlapping batches of several sensors in the same minutes, all in flight at
        once, then replayed: every call counted once."""
        start, end = DAY, DAY + 1800
        cdrs = random_calls(random.Random(8), 240, start, end, 300, sensors=4)
        batches = [cdrs[k:k + 50] for k in range(0, 240, 30)]
        yield defer.gatherResults([self.store.store_cdrs(b) for b in reversed(batches)],
                                  consumeErrors=True)
        yield self.store.store_cdrs(cdrs[::-1])
        yield self.check(start, end, 300, links=False)

    @defer.inlineCallbacks
    def test_retention_takes_its_calls_off(self) -> Any:
        start, end = DAY, DAY + 7200
        yield self.store.store_cdrs(random_calls(random.Random(9), 200, start, end, 600))
        cutoff = DAY + 3000.5
        while (yield self.store.delete_cdrs_before(cutoff, limit=37)) == 37:
            pass
        answer = yield self.check(start - 3600, end + 3600, 600, links=False)
        # buckets of 10 minutes from an hour before DAY: the 11th holds the cutoff
        self.assertEqual(sum(b["calls"] for b in answer["series"][:11]), 0)
        self.assertGreater(answer["series"][11]["calls"], 0)
        yield self.check(start, end, 600)

    @defer.inlineCallbacks
    def test_no_calls(self) -> Any:
        answer = yield self.check(DAY, DAY + 3600, 600)
        self.assertEqual((answer["totals"]["calls"], answer["totals"]["asr"],
                          answer["totals"]["acd"], answer["totals"]["mos_below_share"]),
                         (0, None, None, None))
        self.assertEqual(len(answer["series"]), 6)
        self.assertEqual(answer["sensors"], [])

    @defer.inlineCallbacks
    def test_all_failed_and_no_media(self) -> Any:
        cdrs = [call(n, DAY + 60 * n + 0.5, 1, code, 0.0, ())
                for n, code in enumerate((486, 503, 0, 404, 487, 408))]
        yield self.store.store_cdrs(cdrs)
        answer = yield self.check(DAY, DAY + 3600, 3600)
        totals = answer["totals"]
        self.assertEqual((totals["asr"], totals["acd"], totals["ner"], totals["mos_known"]),
                         (0.0, None, 2 / 6, 0))
        self.assertEqual((answer["loss"]["known"], answer["jitter"]["known"]), (0, 0))

    @defer.inlineCallbacks
    def test_zero_length_answered_calls_count_in_acd(self) -> Any:
        side = (1000, 0, 2.0, 4.4)
        cdrs = [call(1, DAY + 10, 1, 200, 0.0, (side, side)),
                call(2, DAY + 20, 1, 200, 0.0, (side,)),
                call(3, DAY + 30, 1, 200, 91.5, ())]
        yield self.store.store_cdrs(cdrs)
        answer = yield self.check(DAY, DAY + 60, 60)
        self.assertEqual((answer["totals"]["answered"], answer["totals"]["acd"]), (3, 30.5))

    @defer.inlineCallbacks
    def test_edges_of_range_and_buckets(self) -> Any:
        """A call exactly on from or a bucket's start is in it; on to (or a millisecond
        before from) it is not; a millisecond before a bucket's end is in that bucket."""
        side = (99, 1, 5.0, 3.1)    # loss exactly 1 %, jitter exactly 5 ms, MOS exactly 3.1
        times = [DAY - 0.001, DAY, DAY + 299.999, DAY + 300, DAY + 599.999, DAY + 600]
        yield self.store.store_cdrs([call(n, t, 1, 200, 1.0, (side,))
                                     for n, t in enumerate(times)])
        answer = yield self.check(DAY, DAY + 600, 300)
        self.assertEqual([b["calls"] for b in answer["series"]], [2, 2])
        self.assertEqual([b["calls"] for b in answer["loss"]["buckets"]], [0, 0, 4, 0, 0, 0])
        self.assertEqual([b["calls"] for b in answer["jitter"]["buckets"]], [0, 4, 0, 0, 0, 0])
        self.assertEqual(answer["totals"]["mos_below"], 0)
        below = yield self.check(DAY, DAY + 600, 300, mos_below=3.2, links=False)
        self.assertEqual(below["totals"]["mos_below"], 4)

    @defer.inlineCallbacks
    def test_times_with_an_offset_are_utc_minutes(self) -> Any:
        yield self.store.store_cdrs([call(1, DAY - 7200 + 30, 1, 200, 5.0, ())])
        answer = yield self.store.cdr_stats({"from": "2024-04-30T23:45:00+01:45",
                                             "to": "2024-05-01T01:00+02:00", "step": "15m"})
        self.assertEqual((answer["from"], answer["to"]),
                         ("2024-04-30T22:00:00.000Z", "2024-04-30T23:00:00.000Z"))
        self.assertEqual([b["calls"] for b in answer["series"]], [1, 0, 0, 0])

    @defer.inlineCallbacks
    def test_bad_arguments_name_what_is_allowed(self) -> Any:
        for args, words in (
            ({"from": "2024-05-01T00:00:30Z", "to": "2024-05-01T01:00:00Z"}, "whole minute"),
            ({"from": "2024-05-01T01:00:00Z", "to": "2024-05-01T00:00:00Z"}, "not after"),
            ({"from": "yesterday"}, "from = 'yesterday'"),
            ({"from": "2024-05-01T00:00Z", "to": "2024-05-02T00:00Z", "step": "90"},
             "whole number of minutes"),
            ({"from": "2024-05-01T00:00Z", "to": "2024-05-03T00:00Z", "step": "1m"},
             "at most 1440"),
            ({"from": "2020-01-01T00:00Z", "to": "2022-01-01T00:00Z"}, "at most 366"),
            ({"step": "1w"}, "step = '1w'"), ({"step": "0"}, "step = '0'"),
            ({"id_sensor": "-1"}, "id_sensor"), ({"mos_below": "7"}, "mos_below"),
            ({"mos_below": "nan"}, "mos_below"), ({"sensor": "1"}, "unknown argument"),
        ):
            failure = yield self.assertFailure(self.store.cdr_stats(args), ValueError)
            self.assertIn(words, str(failure), args)

    @defer.inlineCallbacks
    def test_default_range_is_the_last_day_in_automatic_steps(self) -> Any:
        answer = yield self.store.cdr_stats({})
        self.assertEqual(answer["step"], 300)
        self.assertEqual(len(answer["series"]), 288)
        answer = yield self.store.cdr_stats({"from": iso(DAY), "to": iso(DAY + 7 * 86400)})
        self.assertEqual((answer["step"], len(answer["series"])), (3600, 168))


def stored_rows(dialect: Any) -> list[Row]:
    """The stored calls' rows, read on a connection of the test's own."""
    conn = dialect.connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT `ID`, `calldate`, `id_sensor`, `lastSIPresponseNum`, "
                    "`connect_duration`, `mos_min_mult10`, `packet_loss_perc_mult1000`, "
                    "`jitter_mult10` FROM `cdr`")
        rows = list(cur.fetchall())
        conn.commit()
    finally:
        conn.close()
    return [Row(i, epoch_ms(when), sensor, code, to_ms(connect or 0), mos, loss, jitter)
            for i, when, sensor, code, connect, mos, loss, jitter in rows]


class SqlRows(SqlStores):
    def stored_rows(self) -> list[Row]:
        return stored_rows(self.make_dialect())


class FakeRows(FakeBackend):
    def stored_rows(self) -> list[Row]:
        return [Row(i, ms, row["id_sensor"], row["lastSIPresponseNum"],
                    to_ms(row["connect_duration"] or 0), row["mos_min_mult10"],
                    row["packet_loss_perc_mult1000"], row["jitter_mult10"])
                for i, (_cdr, _pcap_on, row, ms) in self.store._cdrs.items()]


class SQLiteStatsTests(SQLiteBackend, SqlRows, StatsContract, unittest.TestCase):
    pass


class MySQLStatsTests(MySQLBackend, SqlRows, StatsContract, unittest.TestCase):
    pass


class FakeStoreStatsTests(FakeRows, StatsContract, unittest.TestCase):
    pass
