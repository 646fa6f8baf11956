"""Tests for voipmon.sensor.uplink: batches, window, acks, resends, buffer limits, END."""

from __future__ import annotations

import json
import os

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from voipmon.protocols.wire import (
    MessageType,
    ProtocolError,
)
from voipmon.queue import DurableQueue, QueueError
from voipmon.records.cdr import Cdr
from voipmon.sensor.uplink import CdrUplink, UplinkFactory
from voipmon.spool.deadletter import RecordRefused
from voipmon.store.testing import make_cdr
from voipmon.test.dispatching import to_sensor
from voipmon.test.fakes_channel import FakeMessageTransport, ack


def batch_range(body: bytes) -> tuple[int, int, list[dict]]:
    data = json.loads(body)
    return data["first"], data["first"] + len(data["cdrs"]) - 1, data["cdrs"]


class CdrUplinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.path = self.mktemp()
        self.queue = DurableQueue(self.path)
        self.addCleanup(self.queue.close)
        self.uplink = CdrUplink(self.queue, self.clock, batch_records=3, window=2)
        self.transport = FakeMessageTransport({"window": 8})

    def add(self, count: int, start: int = 0) -> list[Cdr]:
        cdrs = [make_cdr(n, id_sensor=7) for n in range(start, start + count)]
        for cdr in cdrs:
            self.uplink.add(cdr)
        return cdrs

    def test_nothing_sent_before_flush(self) -> None:
        """CDRs are fsync'd (flushed) before they are sent: one flush per reactor turn."""
        self.uplink.attach(self.transport)
        self.add(2)
        self.assertEqual(self.transport.sent, [])
        self.assertEqual(self.queue.durable, 0)
        self.clock.advance(0)
        self.assertEqual(self.queue.durable, 2)
        [(kind, body)] = self.transport.sent
        self.assertEqual(kind, MessageType.CDRS)
        first, last, cdrs = batch_range(body)
        self.assertEqual((first, last), (1, 2))
        self.assertEqual(Cdr.from_wire(cdrs[0]), make_cdr(0, id_sensor=7))

    def test_window_and_acks(self) -> None:
        """At most ``window`` batches are unacknowledged; each ack lets the next one go."""
        self.uplink.attach(self.transport)
        self.add(10)
        self.clock.advance(0)
        self.assertEqual([batch_range(b)[:2] for _, b in self.transport.take()], [(1, 3), (4, 6)])
        to_sensor(self.uplink, *ack(MessageType.CDR_ACK, upto=3, stored=3))
        self.assertEqual(self.queue.acked, 3)
        self.assertEqual([batch_range(b)[:2] for _, b in self.transport.take()], [(7, 9)])
        to_sensor(self.uplink, *ack(MessageType.CDR_ACK, upto=9, stored=5))
        self.assertEqual([batch_range(b)[:2] for _, b in self.transport.take()], [(10, 10)])
        to_sensor(self.uplink, *ack(MessageType.CDR_ACK, upto=10, stored=1))
        self.assertEqual((self.uplink.delivered, self.uplink.stored), (10, 9))
        self.assertEqual(self.queue.depth, 0)
        self.assertEqual(self.transport.sent, [])

    def test_small_batches_first(self) -> None:
        """After each (re)connect the first batch is small and each next one twice as big,
        so a central just reached acknowledges something quickly."""
        uplink = CdrUplink(self.queue, self.clock, batch_records=100, window=8, first_batch=10)
        for n in range(300):
            uplink.add(make_cdr(n, id_sensor=7))
        self.clock.advance(0)
        uplink.attach(self.transport)
        sizes = [len(batch_range(body)[2]) for _, body in self.transport.take()]
        self.assertEqual(sizes, [10, 20, 40, 80, 100, 50])
        uplink.detach(None)
        uplink.attach(self.transport)
        self.assertEqual(len(batch_range(self.transport.take()[0][1])[2]), 10)

    def test_central_window_is_respected(self) -> None:
        """A central that allows one batch in flight gets one."""
        self.uplink.attach(FakeMessageTransport({"window": 1}))
        self.add(9)
        self.clock.advance(0)
        self.assertEqual(len(self.uplink.inflight), 1)

    def test_bad_acks(self) -> None:
        """Acks that match no batch boundary in flight are protocol errors."""
        self.uplink.attach(self.transport)
        self.add(6)
        self.clock.advance(0)
        for upto in (2, 7, 0):
            self.assertRaises(ProtocolError, to_sensor, self.uplink,
                              *ack(MessageType.CDR_ACK, upto=upto))
        self.assertRaises(ProtocolError, to_sensor, self.uplink, MessageType.CDR_ACK, b"{}")
        self.assertRaises(ProtocolError, to_sensor, self.uplink,
                          *ack(MessageType.PACKETS_ACK, upto=1))
        self.assertEqual(self.queue.acked, 0)

    def test_resend_after_reconnect(self) -> None:
        """After a lost connection everything unacknowledged is sent again, in order."""
        self.uplink.attach(self.transport)
        self.add(6)
        self.clock.advance(0)
        to_sensor(self.uplink, *ack(MessageType.CDR_ACK, upto=3))
        self.uplink.detach(Failure(Exception("lost")))
        self.add(2, start=6)
        self.clock.advance(0)
        again = FakeMessageTransport()
        self.uplink.attach(again)
        self.assertEqual([batch_range(b)[:2] for _, b in again.sent], [(4, 6), (7, 8)])

    def test_resend_after_restart(self) -> None:
        """A new process on the same queue sends what the old one never got acknowledged."""
        self.uplink.attach(self.transport)
        self.add(5)
        self.clock.advance(0)
        to_sensor(self.uplink, *ack(MessageType.CDR_ACK, upto=3))
        self.queue.close()
        queue = DurableQueue(self.path)
        self.addCleanup(queue.close)
        uplink = CdrUplink(queue, self.clock, batch_records=3)
        transport = FakeMessageTransport()
        uplink.attach(transport)
        [(_, body)] = transport.sent
        first, last, cdrs = batch_range(body)
        self.assertEqual((first, last), (4, 5))
        self.assertEqual([Cdr.from_wire(c) for c in cdrs],
                         [make_cdr(3, id_sensor=7), make_cdr(4, id_sensor=7)])

    def test_queue_write_failure_retries(self) -> None:
        """A failing disk keeps CDRs in memory and retries every second; nothing is sent."""
        self.uplink.attach(self.transport)
        real_flush = self.queue.flush
        failures = [QueueError("disk full"), QueueError("disk full")]

        def flaky() -> int:
            if failures:
                raise failures.pop(0)
            return real_flush()

        self.queue.flush = flaky
        self.add(1)
        self.clock.advance(0)
        self.assertEqual(self.transport.sent, [])
        self.assertEqual(len(self.flushLoggedErrors(QueueError)), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(QueueError)), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.transport.sent), 1)

    def test_big_burst_flushes_early(self) -> None:
        """A burst of a full batch is flushed without waiting for the end of the turn."""
        self.uplink.attach(self.transport)
        self.add(3)
        self.assertEqual(self.queue.durable, 3)

    def test_done_after_last_ack(self) -> None:
        """when_done fires once the source ended and the last CDR is acknowledged."""
        self.uplink.attach(self.transport)
        done = self.uplink.when_done()
        self.add(4)
        self.uplink.finish_source()
        self.assertNoResult(done)
        to_sensor(self.uplink, *ack(MessageType.CDR_ACK, upto=3))
        self.assertNoResult(done)
        to_sensor(self.uplink, *ack(MessageType.CDR_ACK, upto=4))
        self.successResultOf(done)
        self.successResultOf(self.uplink.when_done())

    def test_done_with_nothing(self) -> None:
        self.uplink.finish_source()
        self.successResultOf(self.uplink.when_done())

    def test_oversized_cdr_refused_loudly(self) -> None:
        """A CDR too big for any frame is refused (its engine keeps it as a dead letter) and
        counted, not queued to block the rest."""
        self.uplink.attach(self.transport)
        self.assertRaises(RecordRefused, self.uplink.add,
                          make_cdr(1, id_sensor=7, extra={"blob": "x" * (9 * 1024 * 1024)}))
        self.add(1, start=2)
        self.clock.advance(0)
        self.assertEqual(self.uplink.oversized, 1)
        self.assertEqual(self.queue.durable, 1)
        [(_kind, body)] = self.transport.sent
        self.assertEqual(batch_range(body)[:2], (1, 1))

    def test_stats(self) -> None:
        self.uplink.attach(self.transport)
        self.add(4)
        self.clock.advance(0)
        stats = self.uplink.counters()
        self.assertEqual((stats["cdrs"], stats["queue_depth"], stats["inflight_batches"]),
                         (4, 4, 2))

    def test_queued_bytes_round_trip(self) -> None:
        """What add() queues is the CDR's wire form, which reads back as the same CDR."""
        cdr = make_cdr(3, id_sensor=9)
        self.uplink.add(cdr)
        self.queue.flush()
        [(_seq, record)] = self.queue.read(0)
        self.assertEqual(record, cdr.to_wire())
        self.assertEqual(Cdr.from_wire(json.loads(record)), cdr)


class ProtocolTests(SynchronousTestCase):
    def test_protocol_forwards(self) -> None:
        """The session protocol attaches, forwards messages and detaches its uplink."""
        clock = Clock()
        queue = DurableQueue(os.path.abspath(self.mktemp()))
        self.addCleanup(queue.close)
        uplink = CdrUplink(queue, clock)
        lost = []
        proto = UplinkFactory(uplink, lost.append).buildProtocol(None)
        transport = FakeMessageTransport()
        proto.makeConnection(transport)
        self.assertIs(uplink.transport, transport)
        self.assertRaises(ProtocolError, to_sensor, proto, MessageType.PING, b"{}")
        self.assertRaises(ProtocolError, proto.dataReceived, b"raw")
        proto.connectionLost(Failure(Exception("x")))
        self.assertIsNone(uplink.transport)
        self.assertEqual(len(lost), 1)
