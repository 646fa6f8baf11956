"""Every kind of record on the CDRs' path, in memory: the sensor's uplink queues records of
any kind as items, the channel carries them in CDRS batches, the central's session parses
them (a malformed one is a dead letter), stores the batch and acknowledges it after the
commit, exactly once across a database outage and a reconnect; and the central's own queue
(mirroring) takes every kind too."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from voipmon.central.cdrqueue import CentralCdrQueue
from voipmon.protocols.wire import MessageType, encode_cdr_batch
from voipmon.queue import DurableQueue
from voipmon.records.kinds import item_bytes
from voipmon.store.testing import make_cdr
from voipmon.test.dispatching import to_central
from voipmon.test.fakes import FakeStore
from voipmon.test.recordsupport import PHONES, SCANNED, engine_records, final
from voipmon.test.test_central_sessions import Base, EndToEndTests

RECORDS = engine_records(SCANNED, id_sensor=7)


def stored(store: FakeStore) -> dict:
    """What the store holds, as ``final`` names it."""
    out = {("cdr", key): cdr for key, cdr in store.cdrs.items()}
    for kind, rows in store.records.items():
        out.update(((kind, key), record) for key, record in rows.items())
    return out


class SessionRecordTests(Base):
    def test_mixed_batch_stored_then_acked(self) -> None:
        self.store.hold = True
        session = self.open()
        items = [item_bytes(make_cdr(1, id_sensor=7)), *map(item_bytes, RECORDS[:30])]
        to_central(session, MessageType.CDRS, encode_cdr_batch(1, items))
        self.assertEqual(self.acks(), [])
        self.store.release()
        [ack] = self.acks()
        self.assertEqual(ack["upto"], 31)
        self.assertEqual(stored(self.store), final([make_cdr(1, id_sensor=7), *RECORDS[:30]]))

    def test_malformed_record_is_a_dead_letter(self) -> None:
        session = self.open()
        items = [item_bytes(RECORDS[0]), b'["register_state",{"uid":1}]', b'["nope",{}]']
        to_central(session, MessageType.CDRS, encode_cdr_batch(1, items))
        self.assertEqual(self.acks(), [{"upto": 3, "stored": 1}])
        self.assertEqual(session.rejected, 2)
        self.assertEqual(self.sessions.dead_letters.for_sensor(7), 2)
        self.assertTrue(any("register_state #2 is malformed" in x for x in self.logged()))

    def test_foreign_id_sensor_replaced(self) -> None:
        session = self.open()
        other = engine_records(PHONES, id_sensor=99)[0]
        to_central(session, MessageType.CDRS, encode_cdr_batch(1, [item_bytes(other)]))
        [(_kind, rows)] = self.store.records.items()
        self.assertEqual([key[0] for key in rows], [7])


class UplinkRecordTests(SynchronousTestCase):
    """A real CdrUplink and CentralSessions over the real channel, in memory (the set-up
    of the CDRs' end-to-end tests)."""

    setUp = EndToEndTests.setUp
    finish = EndToEndTests.finish
    connect = EndToEndTests.connect

    def test_records_stored_once_across_outage_and_reconnect(self) -> None:
        uplink = self.uplink
        for record in RECORDS[:40]:
            uplink.add(record)
        uplink.add(make_cdr(0, id_sensor=7))
        self.pair.clock.advance(0)
        self.assertEqual(uplink.counters()["cdrs"], 1)
        self.assertEqual(uplink.counters()["records"], 41)
        self.connect()
        self.store.down = True
        for record in RECORDS[40:]:
            uplink.add(record)
        self.pair.clock.advance(0)
        self.pair.flush()
        self.pair.close_all()                  # the connection drops meanwhile
        self.store.down = False
        self.connect()
        for _ in range(10):
            self.pair.clock.advance(5)
            self.pair.flush()
        self.assertEqual(self.queue.depth, 0)
        self.assertEqual(stored(self.store), final([*RECORDS, make_cdr(0, id_sensor=7)]))


class CentralQueueRecordTests(SynchronousTestCase):
    def test_every_kind_through_the_central_queue(self) -> None:
        clock = Clock()
        store = FakeStore(clock)
        queue = CentralCdrQueue(DurableQueue(os.path.abspath(self.mktemp())), store, clock)
        for record in RECORDS:
            queue.add(record)
        clock.advance(0)
        queue.start()
        clock.advance(0)
        self.assertEqual(queue.depth, 0)
        self.assertEqual(stored(store), final(RECORDS))
        queue.stop()
