"""The test doubles of fakes.py held to what they stand in for: FakeStore and CommitCounter
to the IStore contract of test_store.py (what a test sees from the fake is what it would
see from the real store), and FakeStore's test controls."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from voipmon.store import testing
from voipmon.store.interfaces import StoreUnavailable
from voipmon.test.fakes import CommitCounter, FakeStore
from voipmon.test.test_store import SQLiteBackend, SqlStores, StoreContract


class FakeBackend:
    def backend_setup(self) -> None:
        pass

    def make_store(self, central_id: str = "central-a") -> Any:
        store = FakeStore(central_id=central_id)
        return store.start().addCallback(lambda _: store)



class FakeStoreTests(FakeBackend, StoreContract, unittest.TestCase):
    @defer.inlineCallbacks
    def test_down_and_hold(self) -> Any:
        self.store.down = True
        yield self.assertFailure(self.store.store_cdrs([testing.make_cdr(1)]), StoreUnavailable)
        yield self.assertFailure(self.store.list_sensors(), StoreUnavailable)
        self.store.down = False
        self.store.hold = True
        d = self.store.store_cdrs([testing.make_cdr(1)])
        self.assertNoResult(d)
        self.assertEqual(self.store.cdr_count, 0)
        self.store.release()
        self.assertEqual(self.successResultOf(d), 1)
        d = self.store.store_cdrs([testing.make_cdr(2)])
        self.store.fail_held()
        self.failureResultOf(d, StoreUnavailable)
        self.assertEqual(self.store.cdr_count, 1)

    def test_out_of_order_commits_and_the_logs(self) -> None:
        """The controls other tests read: release_one, cdrs in commit order, calls,
        batches, upserts and offline marks that reached the store."""
        self.store.hold = True
        first = self.store.store_cdrs([testing.make_cdr(1), testing.make_cdr(2)])
        second = self.store.store_cdrs([testing.make_cdr(3)])
        self.store.release_one(1)
        self.assertEqual(self.successResultOf(second), 1)
        self.assertNoResult(first)
        self.store.release()
        self.assertEqual(self.successResultOf(first), 2)
        uids = [uid for _ident, uid in self.store.cdrs]   # a batch commits in key order
        self.assertEqual((uids[0], set(uids[1:])), (testing.make_cdr(3).sensor_cdr_uid, {
            testing.make_cdr(1).sensor_cdr_uid, testing.make_cdr(2).sensor_cdr_uid}))
        self.assertEqual([len(batch) for batch, _pcap_on in self.store.batches], [2, 1])
        self.store.hold = False
        self.store.down = True
        self.failureResultOf(self.store.upsert_sensor({"id_sensor": 4}), StoreUnavailable)
        self.failureResultOf(self.store.mark_sensor_offline(4, 10.0), StoreUnavailable)
        self.store.down = False
        self.successResultOf(self.store.upsert_sensor({"id_sensor": 4, "queue_depth": 2}))
        self.assertEqual(self.successResultOf(self.store.mark_sensor_offline(4, 12.0)), True)
        self.assertEqual(self.successResultOf(self.store.mark_sensor_offline(5, 13.0)), False)
        self.assertEqual(self.store.upserts, [{"id_sensor": 4, "queue_depth": 2}])
        self.assertEqual(self.store.offline, [(4, 12.0), (5, 13.0)])
        self.assertEqual(self.store.sensors[4]["connected"], 0)
        self.assertEqual(self.store.calls.count("store_cdrs"), 2)


class CommitCounterTests(SQLiteBackend, SqlStores, StoreContract, unittest.TestCase):
    """The contract through CommitCounter around a real store: nothing changes."""

    @defer.inlineCallbacks
    def make_store(self, central_id: str = "central-a") -> Any:
        inner = yield SqlStores.make_store(self, central_id)
        return CommitCounter(inner, expect=3)

    @defer.inlineCallbacks
    def test_done_once_enough_are_committed(self) -> Any:
        yield self.store.store_cdrs([testing.make_cdr(1), testing.make_cdr(2)])
        self.assertNoResult(self.store.done)
        yield self.store.store_cdrs([testing.make_cdr(2), testing.make_cdr(3)])
        self.assertEqual(self.store.stored, 3)
        self.successResultOf(self.store.done)
