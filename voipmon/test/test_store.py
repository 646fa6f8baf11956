"""The IStore contract, run against SQLite and the real MariaDB (and, in test_fakes.py,
against the tests' FakeStore and CommitCounter).

One suite, three back ends: what the HTTP API and the channel see must not depend on the
database. MariaDB runs in a throwaway database (unique name, created by the store itself
and dropped afterwards); it is skipped with a reason when unreachable, and fails instead
when VOIPMON_REQUIRE_MYSQL=1 (CI).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from voipmon.records.cdr import Cdr
from voipmon.records.times import iso_ms
from voipmon.store import testing
from voipmon.store.interfaces import IStore, StoreError
from voipmon.store.query import CdrQuery
from voipmon.store.rows import cdr_json, stored_form
from voipmon.store.sqlstore import SqlStore
from voipmon.test.common import mysql_test_database

T0 = testing.BASE_TIME


def cdrs_of(sensor: int, numbers: range) -> list[Cdr]:
    return [testing.make_cdr(n, id_sensor=sensor) for n in numbers]


def by_callid(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        assert row["callid"] not in found, f"{row['callid']} listed twice"
        found[row["callid"]] = row
    return found


# -- back ends ----------------------------------------------------------------------------


class SQLiteBackend:
    """A fresh SQLite file (in a directory the store has to create)."""

    def backend_setup(self) -> None:
        self.path = os.path.join(os.path.abspath(self.mktemp()), "db", "voipmon.sqlite")

    def make_dialect(self) -> Any:
        return testing.sqlite_dialect(self.path)


class MySQLBackend:
    """A throwaway MariaDB database that does not exist until the store creates it."""

    def backend_setup(self) -> None:
        self.database = mysql_test_database(self)

    def make_dialect(self) -> Any:
        return testing.mysql_dialect(self.database)


class SqlStores:
    """Started SqlStores on the back end's database, closed after the test."""

    @defer.inlineCallbacks
    def make_store(self, central_id: str = "central-a") -> Any:
        store = SqlStore(self.make_dialect(), reactor, central_id=central_id)
        self.addCleanup(store.close)
        yield store.start()
        return store

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run SQL on a connection of the test's own (blocking; for assertions)."""
        conn = self.make_dialect().connect()
        try:
            cur = conn.cursor()
            cur.execute(sql)
            rows = list(cur.fetchall())
            conn.commit()
            return rows
        finally:
            conn.close()


# -- the contract ---------------------------------------------------------------------------


class StoreContract:
    """Behaviour every IStore provides, identically."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.backend_setup()
        self.store = yield self.make_store()

    def expected(self, cdr_id: int, cdr: Cdr, pcap_on: str | None = "sensor") -> dict[str, Any]:
        return cdr_json(cdr_id, *stored_form(cdr, pcap_on))

    @defer.inlineCallbacks
    def all_cdrs(self) -> Any:
        rows = yield self.store.list_cdrs(CdrQuery(limit=1000))
        return by_callid(rows)

    def test_provides_istore(self) -> None:
        self.assertTrue(verifyObject(IStore, self.store))

    @defer.inlineCallbacks
    def test_round_trip(self) -> Any:
        """What goes in comes out as Cdr.to_json() plus id and pcap_on, via list and get."""
        cdrs = [testing.make_cdr(n, id_sensor=1 + n % 3, streams=n % 4,
                                 hep_capture_id=(None, 0, 4242, 0xFFFFFFFF)[n % 4])
                for n in range(30)]
        self.assertEqual((yield self.store.store_cdrs(cdrs)), 30)
        listed = yield self.all_cdrs()
        self.assertEqual(len(listed), 30)
        for cdr in cdrs:
            row = listed[cdr.callid]
            self.assertEqual(row, self.expected(row["id"], cdr))
            self.assertEqual((yield self.store.get_cdr(row["id"])), row)
            self.assertEqual(Cdr.from_json(row), cdr)   # exact for data at stored precision
            self.assertEqual(len(row["rtp"]), len(cdr.rtp))
            self.assertEqual(row["hep_capture_id"], cdr.hep_capture_id)

    @defer.inlineCallbacks
    def test_replayed_batch_stores_nothing_new(self) -> Any:
        cdrs = cdrs_of(1, range(10))
        self.assertEqual((yield self.store.store_cdrs(cdrs)), 10)
        before = yield self.all_cdrs()
        self.assertEqual((yield self.store.store_cdrs(cdrs)), 0)
        self.assertEqual((yield self.store.store_cdrs(list(reversed(cdrs)))), 0)
        self.assertEqual((yield self.all_cdrs()), before)

    @defer.inlineCallbacks
    def test_partly_replayed_batch_stores_the_new_ones_once(self) -> Any:
        cdrs = cdrs_of(2, range(20))
        self.assertEqual((yield self.store.store_cdrs(cdrs[:10])), 10)
        self.assertEqual((yield self.store.store_cdrs(cdrs[5:])), 10)
        listed = yield self.all_cdrs()
        self.assertEqual(len(listed), 20)
        for cdr in cdrs:
            self.assertEqual(listed[cdr.callid], self.expected(listed[cdr.callid]["id"], cdr))

    @defer.inlineCallbacks
    def test_duplicates_within_a_batch_count_once(self) -> Any:
        a, b = cdrs_of(1, range(2))
        self.assertEqual((yield self.store.store_cdrs([a, b, a, a])), 2)
        self.assertEqual(len((yield self.all_cdrs())), 2)

    @defer.inlineCallbacks
    def test_same_uid_on_two_sensors_is_two_cdrs(self) -> Any:
        one = testing.make_cdr(1, id_sensor=1)
        other = testing.make_cdr(1, id_sensor=2, sensor_cdr_uid=one.sensor_cdr_uid,
                                 callid="other@x")
        self.assertEqual((yield self.store.store_cdrs([one, other])), 2)

    @defer.inlineCallbacks
    def test_empty_batch(self) -> Any:
        self.assertEqual((yield self.store.store_cdrs([])), 0)

    @defer.inlineCallbacks
    def test_concurrent_batches_from_several_sensors(self) -> Any:
        """Overlapping batches of six sensors, all in flight at once: each CDR once."""
        batches = []
        expected: dict[str, Cdr] = {}
        for sensor in range(1, 7):
            cdrs = cdrs_of(sensor, range(sensor * 1000, sensor * 1000 + 160))
            expected.update((c.callid, c) for c in cdrs)
            batches += [cdrs[k:k + 40] for k in range(0, 160, 30)]   # each overlaps the next
        batches.reverse()
        counts = yield defer.gatherResults([self.store.store_cdrs(b) for b in batches],
                                           consumeErrors=True)
        self.assertEqual(sum(counts), len(expected))
        listed = yield self.all_cdrs()
        self.assertEqual(set(listed), set(expected))
        for callid, cdr in expected.items():
            self.assertEqual(listed[callid], self.expected(listed[callid]["id"], cdr))

    @defer.inlineCallbacks
    def test_bad_batches_are_refused_and_store_nothing(self) -> Any:
        good = testing.make_cdr(1)
        for batch, pcap_on in (("abc", "sensor"), ([good, 3], "sensor"),
                               ([testing.make_cdr(2, id_sensor=70000)], "sensor"),
                               ([good], "somewhere")):
            yield self.assertFailure(self.store.store_cdrs(batch, pcap_on), ValueError)
        self.assertEqual((yield self.all_cdrs()), {})

    @defer.inlineCallbacks
    def test_pcap_location(self) -> Any:
        local = testing.make_cdr(1, id_sensor=1)
        sip_only = testing.make_cdr(2, id_sensor=1, rtp_pcap="")
        no_pcap = testing.make_cdr(3, id_sensor=1, sip_pcap="", rtp_pcap="")
        mirrored = testing.make_cdr(4, id_sensor=2)
        yield self.store.store_cdrs([local, sip_only, no_pcap])
        yield self.store.store_cdrs([mirrored], pcap_on="central")
        listed = yield self.all_cdrs()
        self.assertEqual(listed[local.callid]["pcap_on"], "sensor")
        self.assertEqual(listed[sip_only.callid]["pcap_on"], "sensor")
        self.assertEqual(listed[sip_only.callid]["rtp_pcap"], "")
        self.assertIsNone(listed[no_pcap.callid]["pcap_on"])
        self.assertEqual(listed[mirrored.callid]["pcap_on"], "central")
        self.assertEqual(listed[mirrored.callid]["sip_pcap"], mirrored.sip_pcap)

    @defer.inlineCallbacks
    def test_values_that_do_not_fit_are_fitted_not_fatal(self) -> Any:
        base = testing.make_cdr(7)
        stream = base.rtp[0]
        odd_stream = type(stream)(**{
            **{f: getattr(stream, f) for f in stream.__dataclass_fields__},
            "avgjitter": float("nan"), "maxjitter": float("inf"), "mos_f1": 99.0,
            "received": 1 << 40, "lost": -(1 << 40), "sport": -1, "dport": 70000,
            "ssrc": -5, "codec": "x" * 100, "sl": (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12),
            "saddr": "fe80::1%eth0", "daddr": "not-an-address", "rtcp_rtt": float("-inf"),
        })
        odd = testing.make_cdr(
            7, caller="9" * 300, called="Zoë 😀 \udcff", callername="O'Brien \\ \x00 \"q\"",
            sipcallerport=99999, sipcalledip="", whohanged="nobody", bye=1000,
            lastSIPresponse="480  Temporarily Unavailable   ", a_ua=" padded ",
            sensor_cdr_uid="ünïcode uid " * 10, duration=float("nan"),
            connect_time=float("inf"), extra={"nested": {"list": [1, 2.5, None]}, "n": 1},
            rtp=(odd_stream, *base.rtp[1:]), a_index=0, b_index=5,
        )
        self.assertEqual((yield self.store.store_cdrs([odd])), 1)
        self.assertEqual((yield self.store.store_cdrs([odd])), 0)   # its key is stable
        (row,) = (yield self.all_cdrs()).values()
        self.assertEqual(row, self.expected(row["id"], odd))
        self.assertEqual(len(row["caller"]), 255)
        self.assertEqual(row["callername"], "O'Brien \\ \x00 \"q\"")
        self.assertEqual(row["lastSIPresponse"], "480  Temporarily Unavailable")
        self.assertEqual((row["rtp"][0]["avgjitter"], row["rtp"][0]["maxjitter"]), (0.0, 0.0))
        self.assertEqual(row["rtp"][0]["mos_f1"], 99.0)
        self.assertIsNone(row["rtp"][0]["rtcp_rtt"])
        self.assertEqual(row["duration"], 0.0)
        self.assertIsNone(row["connect_time"])
        self.assertEqual(row["b_index"], 5)
        self.assertIsNone(row["b_mos_f1"])
        self.assertEqual(row["rtp"][0]["saddr"], "fe80::1")
        self.assertEqual(row["rtp"][0]["daddr"], "")
        self.assertEqual(row["rtp"][0]["received"], 0xFFFFFFFF)
        self.assertEqual(row["extra"], {"nested": {"list": [1, 2.5, None]}, "n": 1})

    @defer.inlineCallbacks
    def test_a_cdr_without_times_is_stored_last(self) -> Any:
        timeless = testing.make_cdr(1, calldate=float("nan"), callend=float("nan"),
                                    extra={"big": "x" * (1 << 21)})
        normal = testing.make_cdr(2)
        self.assertEqual((yield self.store.store_cdrs([timeless, normal])), 2)
        rows = yield self.store.list_cdrs({})
        self.assertEqual([r["callid"] for r in rows], [normal.callid, timeless.callid])
        self.assertEqual(rows[1]["calldate"], "1970-01-01T00:00:00.000Z")
        self.assertEqual(rows[1], self.expected(rows[1]["id"], timeless))

    @defer.inlineCallbacks
    def test_list_is_newest_first_and_pages(self) -> Any:
        cdrs = cdrs_of(1, range(25))
        yield self.store.store_cdrs(cdrs[::2])
        yield self.store.store_cdrs(cdrs[1::2])
        first = yield self.store.list_cdrs({"limit": "10"})
        second = yield self.store.list_cdrs({b"limit": [b"10"], b"offset": [b"10"]})
        third = yield self.store.list_cdrs(CdrQuery(limit=10, offset=20))
        callids = [r["callid"] for r in first + second + third]
        self.assertEqual(callids, [c.callid for c in reversed(cdrs)])

    @defer.inlineCallbacks
    def test_filters(self) -> Any:
        def call(n: int, **kw: Any) -> Cdr:
            return testing.make_cdr(n, **kw)

        alice = call(1, caller="Alice", called="100")
        bob = call(2, caller="+4930555", called="200", id_sensor=2)
        under = call(3, caller="a_b", called="300")
        other = call(4, caller="axb", called="1000")
        low = call(5, rtp=tuple(s.__class__(**{**s.__dict__, "mos_f1": 3.4, "mos_f2": 4.0,
                                                 "mos_adapt": None})
                                for s in testing.make_cdr(5).rtp), caller="low")
        mid = call(6, rtp=tuple(s.__class__(**{**s.__dict__, "mos_f1": 3.5, "mos_f2": 4.0,
                                                 "mos_adapt": None})
                                for s in testing.make_cdr(6).rtp), caller="mid")
        silent = call(7, rtp=(), a_index=None, b_index=None, caller="silent")
        yield self.store.store_cdrs([alice, bob, under, other, low, mid, silent])

        @defer.inlineCallbacks
        def names(**args: str) -> Any:
            rows = yield self.store.list_cdrs(args)
            return sorted(r["caller"] for r in rows)

        self.assertEqual((yield names(caller="alice")), ["Alice"])
        self.assertEqual((yield names(caller="+4930*")), ["+4930555"])
        self.assertEqual((yield names(caller="*555")), ["+4930555"])
        self.assertEqual((yield names(caller="a_b")), ["a_b"])
        self.assertEqual((yield names(caller="a_*")), ["a_b"])
        self.assertEqual((yield names(caller="a%b")), ["a_b", "axb"])
        self.assertEqual((yield names(called="100")), ["Alice"])
        self.assertEqual((yield names(called="100*")), ["Alice", "axb"])
        self.assertEqual((yield names(id_sensor="2")), ["+4930555"])
        self.assertEqual((yield names(mos_below="3.5")), ["low"])
        self.assertEqual((yield names(mos_below="3.46")), ["low"])
        self.assertEqual((yield names(mos_below="3.51")), ["low", "mid"])
        # from is inclusive, to exclusive, on calldate; ISO 8601 or epoch seconds
        self.assertEqual((yield names(**{"from": iso_ms(under.calldate),
                                         "to": iso_ms(other.calldate)})), ["a_b"])
        self.assertEqual((yield names(**{"from": str(mid.calldate)})), ["mid", "silent"])
        self.assertEqual((yield names(to="2023-11-14T22:13:21Z", caller="Alice")), [])
        self.assertEqual((yield names(to="2023-11-14T23:13:21+01:00", caller="Alice")), [])
        self.assertEqual((yield names(caller="Alice", id_sensor="2")), [])
        # the SIP Call-ID, exactly (case-insensitively) or with a wildcard
        self.assertEqual((yield names(callid=alice.callid)), ["Alice"])
        self.assertEqual((yield names(callid=alice.callid.upper())), ["Alice"])
        self.assertEqual((yield names(callid=bob.callid[:9] + "*")), ["+4930555"])
        self.assertEqual((yield names(callid="*-1@pbx.example.com", caller="a*")),
                         ["Alice", "a_b", "axb"])
        self.assertEqual((yield names(callid=alice.callid[:-1])), [])
        self.assertEqual((yield names(callid=alice.callid, id_sensor="2")), [])

    @defer.inlineCallbacks
    def test_bad_queries_name_the_argument(self) -> Any:
        for args, word in (({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"),
                           ({"offset": "-1"}, "offset"), ({"from": "yesterday"}, "from"),
                           ({"mos_below": "abc"}, "mos_below"), ({"colour": "red"}, "colour"),
                           ({"id_sensor": "70000"}, "id_sensor")):
            failure = yield self.assertFailure(self.store.list_cdrs(args), ValueError)
            self.assertIn(word, str(failure))

    @defer.inlineCallbacks
    def test_get_missing_or_bad_id(self) -> Any:
        self.assertIsNone((yield self.store.get_cdr(12345)))
        self.assertIsNone((yield self.store.get_cdr(1 << 70)))
        yield self.assertFailure(self.store.get_cdr(-1), ValueError)
        yield self.assertFailure(self.store.get_cdr("7"), ValueError)

    # sensors

    @defer.inlineCallbacks
    def sensor(self, ident: int) -> Any:
        for row in (yield self.store.list_sensors()):
            if row["id_sensor"] == ident:
                return row
        return None

    @defer.inlineCallbacks
    def test_sensor_lifecycle(self) -> Any:
        yield self.store.upsert_sensor({
            "id_sensor": 5, "name": "edge-5", "host": "192.0.2.5", "mode": "local",
            "version": "0.1.0", "manager_host": "192.0.2.5", "manager_port": 5029,
            "when": T0})
        row = yield self.sensor(5)
        self.assertEqual(row, {
            "id_sensor": 5, "name": "edge-5", "host": "192.0.2.5", "mode": "local",
            "version": "0.1.0", "connected": True, "central": "central-a",
            "first_seen": iso_ms(T0), "last_seen": iso_ms(T0), "manager_host": "192.0.2.5",
            "manager_port": 5029, "packets": 0, "drops": 0, "queue_depth": 0, "stats_at": None,
        })
        yield self.store.upsert_sensor({"id_sensor": 5, "host": "192.0.2.6", "when": T0 + 60})
        yield self.store.upsert_sensor({"id_sensor": 5, "packets": 1000, "drops": 3,
                                        "queue_depth": 17, "when": T0 + 90})
        row = yield self.sensor(5)
        self.assertEqual((row["name"], row["host"], row["first_seen"], row["last_seen"]),
                         ("edge-5", "192.0.2.6", iso_ms(T0), iso_ms(T0 + 90)))
        self.assertEqual((row["packets"], row["drops"], row["queue_depth"], row["stats_at"]),
                         (1000, 3, 17, iso_ms(T0 + 90)))
        self.assertTrue((yield self.store.mark_sensor_offline(5, T0 + 120)))
        self.assertFalse((yield self.store.mark_sensor_offline(5, T0 + 130)))
        self.assertFalse((yield self.store.mark_sensor_offline(6, T0 + 130)))
        row = yield self.sensor(5)
        self.assertEqual((row["connected"], row["last_seen"]), (False, iso_ms(T0 + 120)))
        yield self.store.upsert_sensor({"id_sensor": 5, "when": T0 + 200})
        self.assertTrue((yield self.sensor(5))["connected"])

    @defer.inlineCallbacks
    def test_operator_name_wins_over_the_reported_one(self) -> Any:
        yield self.store.upsert_sensor({"id_sensor": 7, "when": T0})
        self.assertEqual((yield self.sensor(7))["name"], "sensor 7")
        yield self.store.upsert_sensor({"id_sensor": 7, "name": "edge-7", "when": T0})
        self.assertEqual((yield self.sensor(7))["name"], "edge-7")
        self.assertTrue((yield self.store.rename_sensor(7, "Core router")))
        self.assertTrue((yield self.store.rename_sensor(7, "Core router")))
        yield self.store.upsert_sensor({"id_sensor": 7, "name": "edge-7", "when": T0 + 1})
        self.assertEqual((yield self.sensor(7))["name"], "Core router")
        self.assertFalse((yield self.store.rename_sensor(8, "nobody")))
        yield self.assertFailure(self.store.rename_sensor(7, "   "), ValueError)

    @defer.inlineCallbacks
    def test_sensor_validation(self) -> Any:
        for sensor in ({"id_sensor": 0.5}, {"id_sensor": 1, "colour": "red"},
                       {"id_sensor": 1, "packets": -1}, {"id_sensor": 1, "manager_port": 1 << 20},
                       {"id_sensor": 1, "when": "noon"}):
            yield self.assertFailure(self.store.upsert_sensor(sensor), ValueError)
        self.assertEqual((yield self.store.list_sensors()), [])

    @defer.inlineCallbacks
    def test_start_marks_this_centrals_sensors_offline(self) -> Any:
        yield self.store.upsert_sensor({"id_sensor": 3, "when": T0})
        yield self.store.start()   # a restart of the same central finds it still "connected"
        self.assertFalse((yield self.sensor(3))["connected"])


class SqlContract(SqlStores):
    """What only a real database can show: several centrals on one database, child rows."""

    def missing(self, batch: list[Cdr]) -> list[tuple[int, str]]:
        """The (id_sensor, uid) of the batch that are not committed (a connection of ours)."""
        keys = {(c.id_sensor, c.sensor_cdr_uid) for c in batch}
        stored = set(self.query("SELECT id_sensor, sensor_cdr_uid FROM cdr"))
        return sorted(keys - stored)

    def assertRowsOnce(self, count: int) -> None:
        self.assertEqual(self.query("SELECT COUNT(*) FROM cdr")[0][0], count)
        self.assertEqual(self.query("SELECT COUNT(*) FROM cdr_next")[0][0], count)
        dupes = self.query("SELECT id_sensor, sensor_cdr_uid FROM cdr "
                           "GROUP BY id_sensor, sensor_cdr_uid HAVING COUNT(*) > 1")
        self.assertEqual(dupes, [])

    @defer.inlineCallbacks
    def test_two_centrals_share_one_database(self) -> Any:
        """The same CDRs reach two centrals (a sensor failing over, replaying): once each."""
        other = yield self.make_store("central-b")
        batches = []
        distinct = {}
        for sensor in range(1, 5):
            cdrs = cdrs_of(sensor, range(500))
            distinct.update(((c.id_sensor, c.sensor_cdr_uid), c) for c in cdrs)
            batches += [(self.store if k % 2 else other, cdrs[k * 40:k * 40 + 100])
                        for k in range(12)]
        missing: list[int] = []

        def acknowledged(count: int, batch: list[Cdr]) -> int:
            # at the moment of the acknowledgement, every CDR of the batch is committed
            missing.extend(self.missing(batch))
            return count

        counts = yield defer.gatherResults(
            [s.store_cdrs(b).addCallback(acknowledged, b) for s, b in batches],
            consumeErrors=True)
        self.assertEqual(missing, [])
        self.assertEqual(sum(counts), len(distinct))
        self.assertRowsOnce(len(distinct))
        self.assertEqual(self.query("SELECT COUNT(*) FROM cdr_rtp")[0][0], 2 * len(distinct))

    @defer.inlineCallbacks
    def test_lookup_texts_are_stored_once(self) -> Any:
        other = yield self.make_store("central-b")
        yield defer.gatherResults([
            self.store.store_cdrs(cdrs_of(1, range(0, 50))),
            other.store_cdrs(cdrs_of(2, range(0, 50))),
            self.store.store_cdrs(cdrs_of(3, range(0, 50))),
        ], consumeErrors=True)
        uas = sorted(r[0] for r in self.query("SELECT ua FROM cdr_ua"))
        self.assertEqual(uas, ["Asterisk PBX 20.5.0", "Linphone/5.0", "Linphone/5.1",
                               "Linphone/5.2"])
        self.assertEqual(self.query("SELECT COUNT(*) FROM cdr_sip_response")[0][0], 2)

    @defer.inlineCallbacks
    def test_another_central_does_not_take_a_sensor_offline(self) -> Any:
        other = yield self.make_store("central-b")
        yield self.store.upsert_sensor({"id_sensor": 9, "when": T0})
        yield other.upsert_sensor({"id_sensor": 9, "when": T0 + 5})   # failed over to b
        self.assertFalse((yield self.store.mark_sensor_offline(9, T0 + 30)))  # a notices late
        (row,) = yield other.list_sensors()
        self.assertEqual((row["connected"], row["central"]), (True, "central-b"))

    @defer.inlineCallbacks
    def test_calls_before_start_fail(self) -> Any:
        store = SqlStore(self.make_dialect(), reactor)
        for d in (store.store_cdrs([testing.make_cdr(1)]), store.list_cdrs({}),
                  store.get_cdr(1), store.list_sensors(), store.rename_sensor(1, "x"),
                  store.upsert_sensor({"id_sensor": 1}), store.mark_sensor_offline(1, T0),
                  store.delete_cdrs_before(T0, 10)):
            yield self.assertFailure(d, StoreError)


class SQLiteStoreTests(SQLiteBackend, StoreContract, SqlContract, unittest.TestCase):
    pass


class MySQLStoreTests(MySQLBackend, StoreContract, SqlContract, unittest.TestCase):
    """MariaDB as configured by default: pipelined, IDs from LAST_INSERT_ID."""


class MySQLReturningStoreTests(MySQLBackend, StoreContract, SqlContract, unittest.TestCase):
    """The way of a Galera cluster (lock mode 2) of MariaDB 10.5+: IDs from RETURNING."""

    def make_dialect(self) -> Any:
        dialect = super().make_dialect()
        dialect.consecutive_ids = False
        return dialect


class MySQLPlainStoreTests(MySQLBackend, StoreContract, SqlContract, unittest.TestCase):
    """The way of MySQL in lock mode 2: no pipeline, IDs looked up after the INSERT."""

    def make_dialect(self) -> Any:
        dialect = super().make_dialect()
        dialect.pipelining = dialect.consecutive_ids = False
        return dialect
