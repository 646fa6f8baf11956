"""Inserting a batch's new CDRs (voipmon.store.cdrwrite), on SQLite and the real MariaDB
(pipelined with RETURNING, and the plain path other servers take): any CDR reads back as
its stored form (hostile text, NaN and huge numbers, IPv6, empty values), the key look-up,
a key stored since the look-up makes the attempt retry, SQLite's IDs never reused."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from voipmon.records.cdr import Cdr
from voipmon.store import cdrwrite, testing
from voipmon.store.cdrwrite import has_returning, stored_ids
from voipmon.store.fields import uid
from voipmon.store.migrate import migrate
from voipmon.store.pipeline import Pipeline
from voipmon.store.pool import Retry, Txn
from voipmon.store.rows import cdr_json, stored_form
from voipmon.store.sqlstore import SqlStore, _Batch
from voipmon.test.common import mysql_test_session
from voipmon.test.test_store_literals import texts
from voipmon.test.test_store_rows import anything_numeric, streams

# differing_executors: the contract's test runs in each back end's class, on its own
# database; no state passes between them.
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.differing_executors])

addresses = st.one_of(st.ip_addresses(v=6).map(str), st.ip_addresses(v=4).map(str),
                      st.sampled_from(["", "fe80::1%eth0", "::", "::ffff:1.2.3.4", "x"]))


@st.composite
def hostile_cdrs(draw: Any, n: int) -> Cdr:
    """A CDR whose every text is drawn from hostile text, numbers from odd ones."""
    rtp = tuple(draw(st.lists(streams(), max_size=3)))
    return testing.make_cdr(
        n, id_sensor=draw(st.integers(0, 3)), rtp=rtp,
        sensor_cdr_uid=draw(st.one_of(st.just(f"uid-{n}"), texts.map(lambda t: f"{n}{t}"))),
        **{name: draw(texts) for name in (
            "callid", "caller", "called", "callername", "caller_domain", "called_domain",
            "lastSIPresponse", "a_ua", "b_ua", "fbasename", "sip_pcap", "rtp_pcap")},
        whohanged=draw(st.sampled_from(["caller", "callee", "", "x'"])),
        sipcallerip=draw(addresses), sipcalledip=draw(addresses),
        calldate=draw(st.one_of(st.floats(1.6e9, 1.8e9), anything_numeric)),
        callend=draw(st.one_of(st.floats(1.6e9, 1.8e9), anything_numeric)),
        duration=draw(st.one_of(st.floats(0, 1e4), anything_numeric)),
        connect_time=draw(st.one_of(st.none(), st.floats(1.6e9, 1.8e9), anything_numeric)),
        sipcallerport=draw(st.one_of(st.integers(0, 65535), anything_numeric)),
        bye=draw(st.one_of(st.integers(0, 5), anything_numeric)),
        a_index=draw(st.one_of(st.none(), st.integers(-1, 3))),
        b_index=draw(st.one_of(st.none(), st.integers(-1, 3))),
        extra=draw(st.dictionaries(texts, st.one_of(texts, st.integers(), st.floats()),
                                   max_size=2)),
    )


batches = st.integers(1, 9).flatmap(
    lambda size: st.tuples(*(hostile_cdrs(n) for n in range(size))))


class ChoiceTests(unittest.SynchronousTestCase):
    def test_returning_is_mariadb_10_5_and_later(self) -> None:
        class Conn:
            def __init__(self, info: str) -> None:
                self.info = info

            def get_server_info(self) -> str:
                return self.info

        for info, expected in (("5.5.5-10.11.6-MariaDB-0+deb12u1", True),
                               ("10.5.0-MariaDB", True), ("11.4.2-MariaDB-log", True),
                               ("5.5.5-10.4.33-MariaDB", False), ("8.0.36", False),
                               ("8.4.0-MariaDBish", False), ("5.7.44-log", False)):
            self.assertEqual(has_returning(Conn(info)), expected, info)


class WriteContract:
    """Writing through a real connection, synchronously (no pool, no reactor)."""

    conn: Any
    dialect: Any

    def start(self) -> None:
        migrate(self.dialect, self.conn, testing.BASE_TIME)
        self.store = SqlStore(self.dialect, None)
        self.cur = self.conn.cursor()
        self.patch(cdrwrite, "CHUNKS", (1, 2))    # several chunks even in small batches
        self.patch(cdrwrite, "CHUNK", 3)

    def write(self, cdrs: list[Cdr], pcap_on: str = "sensor") -> int:
        txn = Txn(self.dialect, self.conn, self.cur, 1)
        self.dialect.begin(self.cur, True)
        try:
            count = self.store._write(txn, _Batch(cdrs, pcap_on))
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()
        for hook in txn.after_commit:
            hook()
        return count

    def read(self, cdr_id: int) -> Any:
        return self.store._get(Txn(self.dialect, self.conn, self.cur, 1), cdr_id)

    def ids(self) -> dict[tuple[int, str], int]:
        self.cur.execute("SELECT `id_sensor`, `sensor_cdr_uid`, `ID` FROM `cdr`")
        found = {(s, u): i for s, u, i in self.cur.fetchall()}
        self.conn.commit()
        return found

    @SETTINGS
    @given(batches, st.sampled_from(["sensor", "central"]))
    def test_what_is_written_is_read_back(self, cdrs: tuple[Cdr, ...], pcap_on: str) -> None:
        self.cur.execute("DELETE FROM `cdr`")
        self.conn.commit()
        first: dict[tuple[int, str], Cdr] = {}     # of CDRs with the same key, the first
        for cdr in cdrs:
            first.setdefault((cdr.id_sensor, uid(cdr.sensor_cdr_uid)), cdr)
        self.assertEqual(self.write(list(cdrs), pcap_on), len(first))
        self.assertEqual(self.write(list(cdrs), pcap_on), 0)
        ids = self.ids()
        self.assertEqual(set(ids), set(first))
        for key, cdr in first.items():
            self.assertEqual(self.read(ids[key]), cdr_json(ids[key], *stored_form(cdr, pcap_on)))

    def test_stored_ids_in_few_queries(self) -> None:
        self.patch(cdrwrite, "KEYS_PER_QUERY", 7)
        cdrs = [testing.make_cdr(n, id_sensor=n % 3) for n in range(40)]
        self.assertEqual(self.write(cdrs[:25]), 25)
        keys = [(c.id_sensor, c.sensor_cdr_uid) for c in cdrs]
        found = stored_ids(self.cur, self.dialect.placeholder, keys)
        self.assertEqual(found, {k: v for k, v in self.ids().items() if k in keys[:25]})
        self.assertEqual(len(set(found.values())), 25)

    def test_a_key_stored_since_the_look_up_retries(self) -> None:
        """Another writer stored a key of the batch's fifth chunk after the look-up (the
        look-up here sees nothing): the attempt fails whole with Retry and leaves nothing
        once rolled back; the next attempt stores the others."""
        cdrs = [testing.make_cdr(n) for n in range(12)]
        self.assertEqual(self.write([cdrs[9]]), 1)
        blind = [self.patch(cdrwrite, "stored_ids", lambda *args: {}),
                 self.patch(cdrwrite, "_key_queries", lambda keys: [])]
        self.assertRaises(Retry, self.write, cdrs)
        self.assertEqual(list(self.ids()), [(cdrs[9].id_sensor, cdrs[9].sensor_cdr_uid)])
        self.cur.execute("SELECT COUNT(*) FROM `cdr_next`")
        self.assertEqual(self.cur.fetchone()[0], 1)
        self.conn.commit()
        for patch in blind:
            patch.restore()
        self.assertEqual(self.write(cdrs), 11)

    def test_a_replayed_batch_inserts_nothing(self) -> None:
        cdrs = [testing.make_cdr(n, id_sensor=n % 2) for n in range(40)]
        self.assertEqual(self.write(cdrs[:20]), 20)
        before = self.ids()
        self.assertEqual(self.write(cdrs[:20]), 0)
        self.assertEqual(self.write(cdrs[5:15] + cdrs[30:]), 10)
        self.assertEqual(self.write(cdrs), 10)
        after = self.ids()
        self.assertEqual(len(after), 40)
        self.assertEqual({k: after[k] for k in before}, before)


class SQLiteWriteTests(WriteContract, unittest.TestCase):
    def setUp(self) -> None:
        path = os.path.join(os.path.abspath(self.mktemp()), "v.sqlite")
        self.dialect = testing.sqlite_dialect(path)
        self.dialect.prepare()
        self.conn = self.dialect.connect()
        self.addCleanup(self.conn.close)
        self.start()

    def test_ids_are_never_reused(self) -> None:
        """As AUTOINCREMENT: the newest CDR deleted, the next one still gets a new ID."""
        self.assertEqual(self.write([testing.make_cdr(n) for n in range(3)]), 3)
        newest = max(self.ids().values())
        self.cur.execute(f"DELETE FROM `cdr` WHERE `ID` = {newest}")
        self.conn.commit()
        self.assertEqual(self.write([testing.make_cdr(7)]), 1)
        self.assertEqual(self.ids()[(1, testing.make_cdr(7).sensor_cdr_uid)], newest + 1)
        self.cur.execute("INSERT INTO `cdr` (`id_sensor`, `sensor_cdr_uid`, `calldate`, "
                         "`callend`) VALUES (9, 'by hand', '2024-01-01', '2024-01-01')")
        by_hand = self.cur.lastrowid
        self.conn.commit()
        self.assertEqual(by_hand, newest + 2)
        self.assertEqual(self.write([testing.make_cdr(8)]), 1)
        self.assertEqual(self.ids()[(1, testing.make_cdr(8).sensor_cdr_uid)], newest + 3)


class MySQLBase(WriteContract):
    pipelining = True
    consecutive_ids = True

    def setUp(self) -> None:
        self.dialect, self.conn = mysql_test_session(self)
        self.dialect.pipelining = self.pipelining
        self.dialect.consecutive_ids = self.consecutive_ids
        self.start()
        self.sent: list[str] = []
        self.lookups = 0
        send, look_up = Pipeline.send, cdrwrite.stored_ids

        def spy_send(pipe: Pipeline, sql: str, note: Any = None) -> None:
            self.sent.append(sql)
            send(pipe, sql, note)

        def spy_look_up(*args: Any) -> Any:
            self.lookups += 1
            return look_up(*args)

        self.patch(Pipeline, "send", spy_send)
        self.patch(cdrwrite, "stored_ids", spy_look_up)

    def refuse(self, *args: Any) -> None:
        self.fail("this class tests another path")

    def test_key_queries_find_what_stored_ids_finds(self) -> None:
        """The look-up sent ahead in a pipeline (literals) finds what the one with
        parameters finds, for keys that need quoting."""
        self.patch(cdrwrite, "KEYS_PER_QUERY", 3)
        uids = ["a'b", "a\\b", "x%y", "');--", "plain", "\\'", "end\\"]
        cdrs = [testing.make_cdr(n, id_sensor=n % 2, sensor_cdr_uid=u)
                for n, u in enumerate(uids)]
        self.assertEqual(self.write(cdrs[:5]), 5)
        keys = [(c.id_sensor, uid(c.sensor_cdr_uid)) for c in cdrs] + [(0, "missing")]
        found = {}
        for sql in cdrwrite._key_queries(keys):
            self.cur.execute(sql)
            found.update(((ident, key), cdr_id) for cdr_id, ident, key in self.cur.fetchall())
        self.assertEqual(found, stored_ids(self.cur, "%s", keys))
        self.assertEqual(len(found), 5)

    def cdr_inserts(self) -> list[str]:
        return [sql for sql in self.sent if sql.startswith("INSERT INTO `cdr` ")]


class MySQLWriteTests(MySQLBase, unittest.TestCase):
    """MariaDB as configured by default (InnoDB lock mode 1): pipelined, IDs from
    LAST_INSERT_ID."""

    def test_the_way_ids_come(self) -> None:
        self.patch(cdrwrite, "_write_plain", self.refuse)
        self.assertEqual(cdrwrite.id_step(self.cur, self.dialect), 1)
        self.assertEqual(self.write([testing.make_cdr(n) for n in range(20)]), 20)
        self.assertGreater(len(self.cdr_inserts()), 2)
        self.assertFalse([sql for sql in self.cdr_inserts() if "RETURNING" in sql])
        self.assertEqual(self.lookups, 0)

    def test_the_step_between_ids(self) -> None:
        """auto_increment_increment 3 (a multi-source setup): IDs 3 apart, all found."""
        self.cur.execute("SET SESSION auto_increment_increment = 3")
        self.conn.commit()
        self.assertEqual(self.write([testing.make_cdr(n) for n in range(20)]), 20)
        ids = sorted(self.ids().values())
        self.assertEqual(ids, list(range(ids[0], ids[0] + 60, 3)))
        for cdr_id in ids:
            self.assertEqual(self.read(cdr_id)["id"], cdr_id)


class MySQLReturningWriteTests(MySQLBase, unittest.TestCase):
    """InnoDB lock mode 2 (Galera) on MariaDB 10.5+: pipelined, IDs from RETURNING."""

    consecutive_ids = False

    def test_the_way_ids_come(self) -> None:
        self.patch(cdrwrite, "_write_plain", self.refuse)
        self.assertTrue(has_returning(self.conn), self.conn.get_server_info())
        self.assertEqual(self.write([testing.make_cdr(n) for n in range(20)]), 20)
        self.assertGreater(len(self.cdr_inserts()), 2)
        self.assertTrue(all("RETURNING" in sql for sql in self.cdr_inserts()))


class MySQLPlainWriteTests(MySQLBase, unittest.TestCase):
    """Without the pipeline, IDs from LAST_INSERT_ID."""

    pipelining = False

    def test_the_way_ids_come(self) -> None:
        self.patch(cdrwrite, "_write_pipelined", self.refuse)
        self.assertEqual(self.write([testing.make_cdr(n) for n in range(20)]), 20)
        self.assertEqual(self.lookups, 1)          # the stored keys, not the new IDs


class MySQLLookUpWriteTests(MySQLBase, unittest.TestCase):
    """The way of MySQL in lock mode 2: no pipeline, IDs looked up after the INSERT."""

    pipelining = consecutive_ids = False

    def test_the_way_ids_come(self) -> None:
        self.patch(cdrwrite, "_write_pipelined", self.refuse)
        self.assertEqual(self.write([testing.make_cdr(n) for n in range(20)]), 20)
        self.assertEqual(self.lookups, 2)
        self.assertEqual(self.write([testing.make_cdr(20)]), 1)
        self.assertEqual(self.lookups, 3)          # one CDR: its LAST_INSERT_ID
