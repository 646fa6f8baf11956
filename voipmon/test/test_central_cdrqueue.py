"""Tests for voipmon.central.cdrqueue: CDRs made on the central are fsync'd before anyone is
told, stored in order, deleted only after commit, retried with backoff while the database is
down (memory bounded, depth logged), and stored after a restart, exactly once."""

from __future__ import annotations

import base64
import itertools
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from voipmon.central.cdrqueue import CentralCdrQueue
from voipmon.queue import DurableQueue, QueueError
from voipmon.spool.deadletter import DeadLetters, RecordRefused, read
from voipmon.store.testing import make_cdr
from voipmon.test.fakes import FakeStore, StoreError


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = FakeStore(self.clock)
        self.path = os.path.abspath(self.mktemp())
        self.cdr_queues: list[CentralCdrQueue] = []
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.addCleanup(self.cleanup)

    def cleanup(self) -> None:
        for cdr_queue in self.cdr_queues:
            cdr_queue.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def make_queue(self, start: bool = True, **options) -> CentralCdrQueue:
        cdr_queue = CentralCdrQueue(DurableQueue(self.path), self.store, self.clock, **options)
        self.cdr_queues.append(cdr_queue)
        if start:
            cdr_queue.start()
        return cdr_queue

    def logged(self, text: str) -> list[str]:
        return [line for line in map(formatEvent, self.observer) if text in line]

    def stored_order(self) -> list[str]:
        return [cdr.callid for batch, _ in self.store.batches for cdr in batch]


class DurabilityTests(Base):
    def test_group_commit_then_durable_then_stored(self) -> None:
        """CDRs of one reactor turn are written with one fsync; when_durable fires after it;
        then they are stored in batches, in order, and deleted from the queue."""
        cdr_queue = self.make_queue(batch=2)
        for n in range(5):
            self.assertTrue(cdr_queue.add(make_cdr(n, id_sensor=3)))
        d = cdr_queue.when_durable()
        self.assertNoResult(d)
        self.assertEqual((cdr_queue.queue.durable, cdr_queue.queue.buffered), (0, 5))
        self.assertEqual(self.store.batches, [])
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual([len(batch) for batch, _ in self.store.batches], [2, 2, 1])
        self.assertEqual({pcap_on for _, pcap_on in self.store.batches}, {"central"})
        self.assertEqual(self.stored_order(), [make_cdr(n, id_sensor=3).callid
                                               for n in range(5)])
        self.assertEqual((cdr_queue.queue.acked, cdr_queue.depth, cdr_queue.written,
                          cdr_queue.stored), (5, 0, 5, 5))
        self.successResultOf(cdr_queue.when_durable())  # nothing pending: at once

    def test_a_huge_turn_is_written_as_it_comes(self) -> None:
        """Thousands of CDRs made in one turn are not all held in memory until its end;
        when_durable still fires only with the flush that ends the turn."""
        cdr_queue = self.make_queue()
        most = 0
        for n in range(2500):
            cdr_queue.add(make_cdr(n))
            most = max(most, cdr_queue.queue.buffered)
        d = cdr_queue.when_durable()
        self.assertLess(most, 1000)
        self.assertEqual(cdr_queue.queue.durable, 2000)
        self.assertNoResult(d)
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.store.cdr_count, 2500)

    def test_nothing_stored_before_the_store_started(self) -> None:
        """Until the store has started the CDRs only go to disk; start() stores them."""
        cdr_queue = self.make_queue(start=False)
        cdr_queue.add(make_cdr(1))
        self.clock.advance(0)
        self.assertEqual((cdr_queue.queue.durable, self.store.calls), (1, []))
        cdr_queue.start()
        self.assertEqual(self.store.cdr_count, 1)

    def test_many_batches_completing_at_once_do_not_recurse(self) -> None:
        """A store that commits synchronously drains batch after batch in a loop (deeper
        than the recursion limit, were each batch to start the next from its callback)."""
        cdr_queue = self.make_queue(batch=1)
        for n in range(600):
            cdr_queue.add(make_cdr(n))
        self.clock.advance(0)
        self.assertEqual(self.store.cdr_count, 600)
        self.assertEqual(cdr_queue.depth, 0)

    def test_queue_write_failure_withholds_durability(self) -> None:
        """A flush that fails (disk full) leaves when_durable waiting, retries every second,
        and logs once; the CDRs are still there when it succeeds."""
        cdr_queue = self.make_queue()
        real_flush = cdr_queue.queue.flush
        failures = [QueueError("disk full"), QueueError("disk full")]

        def flaky_flush() -> int:
            if failures:
                raise failures.pop()
            return real_flush()

        cdr_queue.queue.flush = flaky_flush
        cdr_queue.add(make_cdr(1))
        d = cdr_queue.when_durable()
        self.clock.advance(0)
        self.clock.advance(1)
        self.assertNoResult(d)
        self.assertEqual(self.store.cdr_count, 0)
        self.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(self.store.cdr_count, 1)
        self.assertEqual(len(self.logged("cannot write the CDR queue: disk full")), 1)
        self.assertEqual(len(self.logged("writable again")), 1)

    def test_undecodable_record_is_skipped_not_blocking(self) -> None:
        """A record that is no CDR (another version's?) is skipped, not lost: kept as a dead
        letter (its bytes exactly), counted and logged; the CDRs around it are stored."""
        directory = os.path.join(self.path + "-dead")
        cdr_queue = self.make_queue(start=False, dead_letters=DeadLetters(directory, self.clock))
        cdr_queue.add(make_cdr(1))
        cdr_queue.queue.append(b'{"callid": 5, "x": "\xff"}')
        cdr_queue.add(make_cdr(2))
        self.clock.advance(0)
        cdr_queue.start()
        self.assertEqual(self.store.cdr_count, 2)
        self.assertEqual((cdr_queue.rejected, cdr_queue.depth), (1, 0))
        self.assertEqual(len(self.logged("record #2 is not a CDR")), 1)
        [entry] = read(directory)
        self.assertEqual(base64.b64decode(entry["record_base64"]), b'{"callid": 5, "x": "\xff"}')
        self.assertEqual(cdr_queue.counters()["dead_letters"], 1)

    def test_add_after_stop_is_refused(self) -> None:
        """A CDR made after the queue closed is refused (its engine keeps it as a dead
        letter), not silently dropped."""
        cdr_queue = self.make_queue()
        cdr_queue.stop()
        with self.assertRaises(RecordRefused) as caught:
            cdr_queue.add(make_cdr(1))
        self.assertIn("after the CDR queue closed", str(caught.exception))
        self.assertEqual(cdr_queue.accepted, 0)


class OutageTests(Base):
    def test_retries_back_off_on_the_clock_then_store_in_order(self) -> None:
        """While the database is down the first batch is retried 0.5 s doubling to 5 s;
        nothing is deleted; when it is back every CDR is stored, in order."""
        cdr_queue = self.make_queue(batch=2)
        self.store.down = True
        for n in range(5):
            cdr_queue.add(make_cdr(n))
        self.clock.advance(0)
        attempts = [self.clock.seconds()]
        for _ in range(7):
            call = cdr_queue._retry_call
            self.clock.advance(call.getTime() - self.clock.seconds())
            attempts.append(self.clock.seconds())
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        self.assertEqual(gaps, [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0])
        self.assertEqual(self.store.calls.count("store_cdrs"), 8)
        self.assertEqual((cdr_queue.queue.acked, cdr_queue.depth), (0, 5))
        self.assertEqual(cdr_queue.database, "down")
        self.store.down = False
        self.clock.advance(5)
        self.assertEqual(self.stored_order(), [make_cdr(n).callid for n in range(5)])
        self.assertEqual((cdr_queue.depth, cdr_queue.database), (0, "up"))
        self.assertEqual(len(self.logged("cannot store CDRs from mirrored packets")), 1)
        [line] = self.logged("database reachable again")
        self.assertIn("after 28 s: stored 2 CDRs from mirrored packets; 3 more", line)

    def test_memory_bounded_during_a_long_outage(self) -> None:
        """Thousands of CDRs made during an outage go to disk; memory holds one batch (the
        one being retried), never the backlog."""
        cdr_queue = self.make_queue(batch=10)
        self.store.down = True
        for turn in range(20):
            for n in range(100):
                cdr_queue.add(make_cdr(turn * 100 + n))
            self.clock.advance(1)
            self.assertEqual(cdr_queue.queue.buffered, 0)
            self.assertLessEqual(len(cdr_queue._batch[1]), 10)
        self.assertEqual(cdr_queue.queue.depth, 2000)
        self.assertGreater(cdr_queue.queue.disk_bytes, 2000 * 500)
        self.assertEqual(len(cdr_queue._durable_waiters), 0)
        self.store.down = False
        self.clock.advance(5)
        self.assertEqual(self.store.cdr_count, 2000)
        self.assertEqual(cdr_queue.depth, 0)

    def test_depth_logged_while_the_database_is_down(self) -> None:
        """Every minute of an outage the queue's depth is logged; not once it is over."""
        cdr_queue = self.make_queue()
        self.store.down = True
        for n in range(7):
            cdr_queue.add(make_cdr(n))
        self.clock.advance(0)
        self.clock.advance(60)
        self.clock.advance(60)
        lines = self.logged("CDRs from mirrored packets wait in")
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("the database is down (120 s): 7 CDRs", lines[1])
        self.assertIn(self.path, lines[1])
        self.store.down = False
        self.clock.advance(5)
        self.clock.advance(120)
        self.assertEqual(len(self.logged("CDRs from mirrored packets wait in")), 2)

    def test_depth_logged_while_the_store_has_not_started(self) -> None:
        cdr_queue = self.make_queue(start=False)
        cdr_queue.add(make_cdr(1))
        self.clock.advance(60)
        [line] = self.logged("CDRs from mirrored packets wait in")
        self.assertIn("the store has not started: 1 CDRs", line)

    def test_other_store_errors_logged_and_retried(self) -> None:
        """A store error that is not an outage is logged with its traceback, and the batch
        is retried (never dropped)."""
        class Failing(FakeStore):
            failures = 1

            def store_cdrs(self, cdrs, pcap_on="sensor"):
                if self.failures:
                    self.failures -= 1
                    return defer.fail(StoreError("deadlock storm"))
                return super().store_cdrs(cdrs, pcap_on)

        self.store = Failing(self.clock)
        cdr_queue = self.make_queue()
        cdr_queue.add(make_cdr(1))
        self.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(StoreError)), 1)
        self.clock.advance(0.5)
        self.assertEqual(self.store.cdr_count, 1)

    def test_settled(self) -> None:
        """settled() waits for a reachable database to take everything, not for one that
        is down (a shutdown must not hang on an outage)."""
        cdr_queue = self.make_queue()
        self.store.hold = True
        cdr_queue.add(make_cdr(1))
        self.clock.advance(0)
        d = cdr_queue.settled()
        self.assertNoResult(d)
        self.store.release()
        self.successResultOf(d)
        self.store.hold = False
        self.store.down = True
        cdr_queue.add(make_cdr(2))
        d = cdr_queue.settled()
        self.clock.advance(0)
        self.successResultOf(d)
        self.successResultOf(cdr_queue.settled())


class RestartTests(Base):
    def test_left_over_cdrs_stored_after_restart(self) -> None:
        """CDRs queued during an outage survive a stop; the next start stores them once."""
        first = self.make_queue()
        self.store.down = True
        for n in range(4):
            first.add(make_cdr(n))
        self.clock.advance(0)
        first.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.logged("4 CDRs from mirrored packets stay in")), 1)
        second = self.make_queue(start=False)
        self.assertEqual(second.depth, 4)
        self.assertEqual(len(self.logged("4 CDRs from mirrored packets wait in")), 1)
        second.start()
        self.assertEqual(self.store.cdr_count, 0)
        self.store.down = False
        self.clock.advance(0.5)
        self.assertEqual(self.store.cdr_count, 4)
        self.assertEqual(second.depth, 0)
        second.stop()
        third = self.make_queue()
        self.assertEqual((third.depth, len(self.store.batches)), (0, 1))

    def test_committed_but_not_acknowledged_is_stored_once(self) -> None:
        """A batch the database committed just as the central died is still in the queue;
        stored again at the next start, the idempotent store keeps one copy."""
        first = self.make_queue()
        self.store.hold = True
        for n in range(3):
            first.add(make_cdr(n))
        self.clock.advance(0)
        self.assertEqual(len(self.store.held), 1)
        # The central dies: its files are closed by the kernel, no ack is written.
        os.close(first.queue._fd)
        os.close(first.queue._lock_fd)
        first.queue._fd = first.queue._lock_fd = None
        first.stopped = True
        self.store.hold = False
        self.store.release()
        self.assertEqual(self.store.cdr_count, 3)
        second = self.make_queue()
        self.assertEqual(second.depth, 0)
        self.assertEqual(second.written, 3)
        self.assertEqual(second.stored, 0)
        self.assertEqual(self.store.cdr_count, 3)
        self.assertEqual(len(self.store.batches), 2)
