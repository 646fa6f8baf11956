"""IStore.delete_cdrs_before on SQLite, the real MariaDB and the FakeStore (cleandatabase)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from voipmon.store import testing
from voipmon.store.query import CdrQuery
from voipmon.test.test_fakes import FakeBackend
from voipmon.test.test_store import (
    MySQLBackend,
    SQLiteBackend,
    SqlStores,
    cdrs_of,
)

T0 = testing.BASE_TIME


class RetentionContract:
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.backend_setup()
        self.store = yield self.make_store()

    @defer.inlineCallbacks
    def callids(self) -> Any:
        rows = yield self.store.list_cdrs(CdrQuery(limit=1000))
        return sorted(r["callid"] for r in rows)

    @defer.inlineCallbacks
    def test_oldest_first_in_chunks_until_none_is_older(self) -> Any:
        cdrs = cdrs_of(1, range(10)) + cdrs_of(2, range(10, 20))
        yield self.store.store_cdrs(cdrs[::-1])
        cutoff = cdrs[12].calldate          # calls 0..11 are older
        self.assertEqual((yield self.store.delete_cdrs_before(cutoff, 5)), 5)
        self.assertEqual((yield self.callids()), sorted(c.callid for c in cdrs[5:]))
        self.assertEqual((yield self.store.delete_cdrs_before(cutoff, 5)), 5)
        self.assertEqual((yield self.store.delete_cdrs_before(cutoff, 5)), 2)
        self.assertEqual((yield self.store.delete_cdrs_before(cutoff, 5)), 0)
        self.assertEqual((yield self.callids()), sorted(c.callid for c in cdrs[12:]))

    @defer.inlineCallbacks
    def test_a_deleted_call_sent_again_is_stored_again(self) -> Any:
        (cdr,) = cdrs_of(1, range(1))
        yield self.store.store_cdrs([cdr])
        self.assertEqual((yield self.store.delete_cdrs_before(cdr.calldate + 1, 10)), 1)
        self.assertEqual((yield self.store.store_cdrs([cdr])), 1)
        self.assertEqual((yield self.callids()), [cdr.callid])

    @defer.inlineCallbacks
    def test_bad_arguments(self) -> Any:
        for cutoff, limit, word in ((T0, 0, "limit"), (T0, 10_001, "limit"),
                                    ("yesterday", 10, "cutoff"), (None, 10, "cutoff"),
                                    (True, 10, "cutoff"), (T0, 2.5, "limit")):
            failure = yield self.assertFailure(self.store.delete_cdrs_before(cutoff, limit),
                                               ValueError)
            self.assertIn(word, str(failure))


class SqlRetention(SqlStores):
    @defer.inlineCallbacks
    def test_streams_and_pcap_locations_go_with_their_call(self) -> Any:
        cdrs = cdrs_of(1, range(6))
        yield self.store.store_cdrs(cdrs)
        yield self.store.delete_cdrs_before(cdrs[4].calldate, 1000)
        ids = sorted(r[0] for r in self.query("SELECT ID FROM cdr"))
        self.assertEqual(len(ids), 2)
        self.assertEqual(sorted({r[0] for r in self.query("SELECT cdr_ID FROM cdr_rtp")}), ids)
        self.assertEqual(sorted(r[0] for r in self.query("SELECT cdr_ID FROM cdr_next")), ids)

    @defer.inlineCallbacks
    def test_two_centrals_cleaning_at_once(self) -> Any:
        other = yield self.make_store("central-b")
        cdrs = cdrs_of(1, range(300))
        yield self.store.store_cdrs(cdrs)
        cutoff = cdrs[250].calldate
        counts = yield defer.gatherResults([
            store.delete_cdrs_before(cutoff, 40) for store in (self.store, other) * 4])
        self.assertLessEqual(sum(counts), 250)
        while (yield self.store.delete_cdrs_before(cutoff, 40)):
            pass
        self.assertEqual(self.query("SELECT COUNT(*) FROM cdr")[0][0], 50)
        self.assertEqual(self.query("SELECT COUNT(*) FROM cdr_rtp")[0][0], 100)


class SQLiteRetentionTests(SQLiteBackend, RetentionContract, SqlRetention, unittest.TestCase):
    pass


class MySQLRetentionTests(MySQLBackend, RetentionContract, SqlRetention, unittest.TestCase):
    pass


class FakeRetentionTests(FakeBackend, RetentionContract, unittest.TestCase):
    pass
