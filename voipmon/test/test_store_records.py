"""The records that are not CDRs in the store (registrations, failed registrations,
per-minute counts, SIP messages, instant messages, alerts): exactly once, the highest
revision of a growing row, VoIPmonitor's columns, the API's filters and retention; on
SQLite, MariaDB and the tests' FakeStore alike. The records are the engine's, from the
bundled real captures."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from voipmon.records import register as rec
from voipmon.records.alert import BRUTE_FORCE, POSSIBLE_COMPROMISE, SCAN
from voipmon.store import recordrows, testing
from voipmon.store.schema import RECORD_TABLES
from voipmon.test.recordsupport import (
    ATTACKER,
    PBX,
    PHONES,
    SCANNED,
    engine_records,
    final,
)
from voipmon.test.test_fakes import FakeBackend
from voipmon.test.test_store import MySQLBackend, SQLiteBackend, SqlStores

_RECORDS: dict[str, list[Any]] = {}


def records_of(name: str) -> list[Any]:
    if name not in _RECORDS:
        _RECORDS[name] = engine_records(name)
    return _RECORDS[name]


class RecordsContract:
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.backend_setup()
        self.store = yield self.make_store()

    @defer.inlineCallbacks
    def listed(self, table: str, **args: str) -> Any:
        rows = yield self.store.list_records(table, {"limit": "1000", **args})
        return rows

    def test_every_record_field_has_a_column(self) -> None:
        """Each column map covers the record's fields (but the key and ours that are
        not kept): nothing the engine says is lost on the way to the table."""
        from voipmon.records.kinds import RECORD_TYPES
        for kind, spec in recordrows.SPECS.items():
            fields = {f.name for f in dataclasses.fields(RECORD_TYPES[kind])}
            self.assertEqual(fields - {c.field for c in spec} - {"uid", "id_sensor"}, set(),
                             kind)

    @defer.inlineCallbacks
    def test_exactly_once_in_any_order(self) -> Any:
        """Every record of the captures, delivered three times (in order, reversed, and
        each revision alone): one row per key, holding the last revision."""
        records = records_of(PHONES) + records_of(SCANNED) + records_of(PBX)
        records = [r for r in records if r.KIND != "cdr"]
        want = final(records)
        first = yield self.store.store_cdrs(records)
        self.assertTrue(first >= len(want))
        again = yield self.store.store_cdrs(records[::-1])
        self.assertEqual(again, 0)
        for record in records[:40]:
            self.assertEqual((yield self.store.store_cdrs([record])), 0)
        for kind in recordrows.SPECS:
            rows = yield self.listed(kind)
            expected = {key[1]: r for (k, key), r in want.items() if k == kind}
            self.assertEqual(sorted(row["uid"] for row in rows), sorted(expected), kind)
            for row in rows:
                record = expected[row["uid"]]
                if kind == "register_failed":
                    self.assertEqual((row["counter"], row["revision"], row["to_num"]),
                                     (record.counter, record.revision, record.to_num))
                if kind == "alert":
                    self.assertEqual((row["failures"], row["extensions"], row["closed"]),
                                     (record.failures, record.extensions, record.closed))

    @defer.inlineCallbacks
    def test_the_scan_in_the_tables(self) -> Any:
        """sipvicious against kamailio: 91 failed attempts from the attacker, folded into
        register_failed rows with their counters; the scan, the brute force and the
        possible compromise flagged, naming the source and the extensions."""
        yield self.store.store_cdrs(records_of(SCANNED))
        failed = yield self.listed("register_failed", ip=ATTACKER)
        self.assertEqual(sum(row["counter"] for row in failed), 91)
        self.assertEqual(Counter(row["response"] for row in failed)[404], 58)
        alerts = yield self.listed("alert", ip=ATTACKER)
        self.assertEqual({a["kind"] for a in alerts}, {SCAN, BRUTE_FORCE, POSSIBLE_COMPROMISE})
        got_in = next(a for a in alerts if a["kind"] == POSSIBLE_COMPROMISE)
        self.assertEqual((got_in["sipcallerip"], got_in["extensions"]), (ATTACKER, "1001"))
        scans = yield self.listed("alert", kind=SCAN)
        self.assertEqual(len(scans), 1)
        self.assertTrue(scans[0]["created_at"].endswith("Z"))
        minutes = yield self.listed("register_time_info", type="failed")
        self.assertEqual(sum(row["counter"] for row in minutes), 91)

    @defer.inlineCallbacks
    def test_registrations_current_and_history(self) -> Any:
        yield self.store.store_cdrs(records_of(PHONES))
        history = yield self.listed("register_state")
        self.assertEqual(Counter((r["to_num"], r["state_name"]) for r in history), Counter({
            ("dave", "OK"): 1, ("alice", "OK"): 1, ("alice", "Unregister"): 1,
            ("erin", "OK"): 2, ("carol", "OK"): 1}))
        current = yield self.listed("register_state", current="yes")
        self.assertEqual(sorted((r["to_num"], r["state_name"]) for r in current), [
            ("alice", "Unregister"), ("carol", "OK"), ("dave", "OK"), ("erin", "OK"),
            ("erin", "OK")])
        alice = yield self.listed("register_state", user="alice", state="unregister")
        self.assertEqual([(r["to_num"], r["state"], r["expires"]) for r in alice],
                         [("alice", rec.STATE_UNREGISTER, 0)])
        self.assertTrue(alice[0]["ua"])                 # the User-Agent through cdr_ua
        page = yield self.store.list_records("register_state", {"limit": "2", "offset": "1"})
        self.assertEqual([r["id"] for r in page], [r["id"] for r in history[1:3]])
        for bad in ({"state": "nonsense"}, {"ip": "not-an-ip"}, {"method": "OPTIONS"},
                    {"limit": "0"}):
            yield self.assertFailure(self.store.list_records("register_state", bad),
                                     ValueError)

    @defer.inlineCallbacks
    def test_sip_messages_and_qualify(self) -> Any:
        yield self.store.store_cdrs(records_of(PBX))
        options = yield self.listed("sip_msg", method="options")
        # (the unanswered ping to "silent" waits 32 s for its answer: longer than the capture)
        self.assertEqual({r["number_dst"]: r["qualify_ok"] for r in options},
                         {"trunk": True, "slow": False})
        self.assertEqual({r["method"] for r in options}, {"OPTIONS"})
        slow = yield self.listed("sip_msg", method="options", qualify="no", response="200")
        self.assertEqual([r["number_dst"] for r in slow], ["slow"])
        self.assertTrue(3000 <= slow[0]["response_duration_ms"] < 3500)
        notify = yield self.listed("sip_msg", method="notify")
        self.assertEqual(notify[0]["request_content_type"], "application/pidf+xml")
        [message] = yield self.listed("message")
        self.assertTrue(message["message"])

    @defer.inlineCallbacks
    def test_retention_takes_the_old_rows(self) -> Any:
        records = [r for r in records_of(SCANNED) if r.KIND != "cdr"]
        yield self.store.store_cdrs(records)
        for kind in recordrows.SPECS:
            if not (yield self.listed(kind)):
                continue
            deleted = yield self.store.delete_records_before(kind, 0.0)
            self.assertEqual(deleted, 0)
            total = 0
            while True:
                count = yield self.store.delete_records_before(kind, 4e9, 10)
                total += count
                if count < 10:
                    break
            self.assertTrue(total > 0, kind)
            self.assertEqual((yield self.listed(kind)), [], kind)
        yield self.assertFailure(self.store.delete_records_before("cdr", 4e9), ValueError)

    @defer.inlineCallbacks
    def test_cdrs_and_records_in_one_batch(self) -> Any:
        cdr = testing.make_cdr(1, id_sensor=1)
        records = [r for r in records_of(PBX) if r.KIND == "sip_msg"]
        count = yield self.store.store_cdrs([cdr, *records])
        self.assertEqual(count, 1 + len(records))
        self.assertEqual((yield self.store.store_cdrs([cdr, *records])), 0)
        self.assertEqual(len((yield self.store.list_cdrs({}))), 1)


class SQLiteRecordTests(SQLiteBackend, SqlStores, RecordsContract, unittest.TestCase):
    def test_tables_have_voipmonitors_columns(self) -> None:
        names = {t: {c.name for c in table.columns} for t, table in RECORD_TABLES.items()}
        self.assertTrue({"sipcallerip", "to_num", "contact_num", "digestusername", "expires",
                         "state", "ua_id"} <= names["register_state"])
        self.assertTrue({"counter", "to_num"} <= names["register_failed"])
        self.assertTrue({"type_info", "counter", "counter_2"} <= names["register_time_info"])
        self.assertTrue({"type", "response_number", "qualify_ok", "response_duration_ms",
                         "request_repetition", "ua_src_id"} <= names["sip_msg"])


class MySQLRecordTests(MySQLBackend, SqlStores, RecordsContract, unittest.TestCase):
    pass


class FakeRecordTests(FakeBackend, RecordsContract, unittest.TestCase):
    pass
