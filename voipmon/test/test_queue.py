"""Tests for voipmon.queue: durability, order, acks, crash recovery (real SIGKILL), the lock."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from voipmon import queue as queue_module
from voipmon.queue import RECORD, DurableQueue, QueueError
from voipmon.test.common import ROOT


def payload(n: int) -> bytes:
    return b'{"callid":"call-%d","pad":"%s"}' % (n, b"x" * (n % 50))


class QueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()

    def make(self, **kwargs) -> DurableQueue:
        queue = DurableQueue(self.path, **kwargs)
        self.addCleanup(queue.close)
        return queue

    def closed_segment(self, records: list[bytes]) -> str:
        """Append ``records`` to a new queue, flush and close it: its last segment's path."""
        queue = DurableQueue(self.path)
        for record in records:
            queue.append(record)
        queue.flush()
        segment = queue._segments[-1].path
        queue.close()
        return segment

    def test_append_flush_read_ack(self) -> None:
        """Records get increasing seqs, are readable once flushed, and go when acked."""
        queue = self.make()
        seqs = [queue.append(payload(i)) for i in range(5)]
        self.assertEqual(seqs, [1, 2, 3, 4, 5])
        self.assertEqual(queue.read(0), [])  # not durable yet
        self.assertEqual(queue.buffered, 5)
        self.assertEqual(queue.flush(), 5)
        self.assertEqual(queue.buffered, 0)
        self.assertEqual(queue.read(0), [(i + 1, payload(i)) for i in range(5)])
        self.assertEqual(queue.depth, 5)
        self.assertEqual(queue.ack(3), 3)
        self.assertEqual(queue.depth, 2)
        self.assertEqual(queue.read(0), [(4, payload(3)), (5, payload(4))])
        queue.append(payload(5))
        self.assertEqual(queue.counters(), {"depth": 2, "buffered": 1, "durable": 5,
                                            "acked": 3, "disk_bytes": queue.disk_bytes})
        self.assertGreater(queue.disk_bytes, 5 * 16)

    def test_read_limits(self) -> None:
        """read() honours the record and byte limits, but always returns one record."""
        queue = self.make()
        for _ in range(10):
            queue.append(b"y" * 100)
        queue.flush()
        self.assertEqual([s for s, _ in queue.read(0, max_records=3)], [1, 2, 3])
        self.assertEqual([s for s, _ in queue.read(3, max_bytes=250)], [4, 5])
        self.assertEqual([s for s, _ in queue.read(5, max_bytes=10)], [6])

    def test_reread_from_any_point(self) -> None:
        """After a reconnect the unacknowledged records can be read again from the start."""
        queue = self.make(segment_bytes=500)
        for i in range(40):
            queue.append(payload(i))
        queue.flush()
        first = queue.read(0, max_records=25)
        queue.ack(10)
        again = queue.read(0, max_records=100)
        self.assertEqual([s for s, _ in again], list(range(11, 41)))
        self.assertEqual(again[:15], first[10:])

    def test_reopen_replays_in_order(self) -> None:
        """A restart replays exactly the unacknowledged records, in order; seqs continue."""
        queue = DurableQueue(self.path, segment_bytes=300)
        for i in range(30):
            queue.append(payload(i))
        queue.flush()
        queue.ack(12)
        queue.close()
        reopened = self.make(segment_bytes=300)
        self.assertEqual(reopened.depth, 18)
        self.assertEqual(reopened.read(0, max_records=100),
                         [(i + 1, payload(i)) for i in range(12, 30)])
        self.assertEqual(reopened.append(b"next"), 31)

    def test_unflushed_records_are_not_promised(self) -> None:
        """Records never flushed are simply absent after a crash; nothing else is harmed."""
        queue = DurableQueue(self.path)
        queue.append(b"a")
        queue.flush()
        queue.append(b"b")  # buffered only
        os.close(queue._fd)  # simulate dying without close(): the kernel drops the lock
        os.close(queue._lock_fd)
        queue._fd = queue._lock_fd = None
        reopened = self.make()
        self.assertEqual(reopened.read(0), [(1, b"a")])
        self.assertEqual(reopened.append(b"c"), 2)

    def test_segments_deleted_after_ack(self) -> None:
        """Fully acknowledged segments are deleted; the acked pointer keeps seqs going."""
        queue = DurableQueue(self.path, segment_bytes=200)
        for _ in range(20):
            queue.append(b"z" * 60)
            queue.flush()
        segments = [n for n in os.listdir(self.path) if n.startswith("seg-")]
        self.assertGreater(len(segments), 3)
        queue.ack(20)
        left = [n for n in os.listdir(self.path) if n.startswith("seg-")]
        self.assertLessEqual(len(left), 1)
        self.assertEqual(queue.depth, 0)
        queue.close()
        reopened = self.make(segment_bytes=200)
        self.assertEqual(reopened.acked, 20)
        self.assertEqual(reopened.append(b"after"), 21)
        reopened.flush()
        self.assertEqual(reopened.read(0), [(21, b"after")])

    def test_ack_bounds(self) -> None:
        """Acks beyond what is durable are clamped; old acks are ignored."""
        queue = self.make()
        for _ in range(3):
            queue.append(b"r")
        queue.flush()
        queue.append(b"buffered")
        self.assertEqual(queue.ack(100), 3)
        self.assertEqual(queue.acked, 3)
        self.assertEqual(queue.ack(2), 0)
        self.assertEqual(queue.acked, 3)

    def test_torn_tail_is_cut(self) -> None:
        """A record half-written when the process died is cut off; the rest survives."""
        segment = self.closed_segment([payload(i) for i in range(5)])
        whole = os.path.getsize(segment)
        with open(segment, "ab") as handle:
            handle.write(RECORD.pack(1000, 6, 0) + b"partial")
        reopened = self.make()
        self.assertEqual([s for s, _ in reopened.read(0)], [1, 2, 3, 4, 5])
        self.assertEqual(os.path.getsize(segment), whole)
        self.assertEqual(reopened.recovered_tail_bytes, RECORD.size + 7)
        self.assertEqual(reopened.append(b"six"), 6)
        reopened.flush()
        self.assertEqual(reopened.read(5), [(6, b"six")])

    def test_torn_header_is_cut(self) -> None:
        """Even a few bytes of a header at the end are recognised as torn."""
        segment = self.closed_segment([b"one"])
        with open(segment, "ab") as handle:
            handle.write(b"\x05\x00")
        self.assertEqual(self.make().read(0), [(1, b"one")])

    def test_corrupt_record_stops_replay_there(self) -> None:
        """A record whose CRC fails (bit rot) and everything after it are dropped, logged."""
        segment = self.closed_segment([payload(i) for i in range(4)])
        with open(segment, "r+b") as handle:
            data = bytearray(handle.read())
            third = 2 * RECORD.size + len(payload(0)) + len(payload(1))
            data[third + RECORD.size + 3] ^= 0xFF
            handle.seek(0)
            handle.write(data)
        self.assertEqual([s for s, _ in self.make().read(0)], [1, 2])

    def test_damaged_ack_file_resends(self) -> None:
        """A damaged 'acked' file means resending (duplicates are harmless), never loss."""
        queue = DurableQueue(self.path)
        for i in range(3):
            queue.append(payload(i))
        queue.flush()
        queue.ack(2)
        queue.close()
        with open(os.path.join(self.path, "acked"), "wb") as handle:
            handle.write(b"garbage")
        self.assertEqual([s for s, _ in self.make().read(0)], [1, 2, 3])

    def test_leftover_ack_tmp_removed(self) -> None:
        """A temporary ack file from a crash mid-ack is ignored and removed."""
        queue = DurableQueue(self.path)
        queue.append(b"a")
        queue.flush()
        queue.close()
        with open(os.path.join(self.path, "acked.tmp"), "wb") as handle:
            handle.write(b"1 0")
        reopened = self.make()
        self.assertEqual(reopened.depth, 1)
        self.assertFalse(os.path.exists(os.path.join(self.path, "acked.tmp")))

    def test_record_too_large(self) -> None:
        queue = self.make()
        self.assertRaises(ValueError, queue.append, b"x" * (64 * 1024 * 1024 + 1))

    def test_unusable_directory(self) -> None:
        """A queue directory that cannot be created gives a QueueError naming it."""
        blocker = self.mktemp()
        with open(blocker, "w") as handle:
            handle.write("a file, not a directory")
        with self.assertRaises(QueueError) as caught:
            DurableQueue(os.path.join(blocker, "queue"))
        self.assertIn(blocker, str(caught.exception))

    def test_one_owner_at_a_time(self) -> None:
        """A queue directory in use cannot be opened a second time; after close it can."""
        queue = DurableQueue(self.path)
        queue.append(b"a")
        queue.flush()
        with self.assertRaises(QueueError) as caught:
            DurableQueue(self.path)
        self.assertIn("in use by another process", str(caught.exception))
        self.assertIn(self.path, str(caught.exception))
        queue.close()
        queue.close()  # twice is harmless
        self.assertEqual(self.make().read(0), [(1, b"a")])

    def test_failed_open_releases_the_lock(self) -> None:
        """A queue that fails while recovering does not keep its directory locked."""
        os.makedirs(self.path)
        segment = os.path.join(self.path, "seg-00000000000000000001.log")
        os.mkdir(segment)  # a directory where a segment should be: unreadable
        self.assertRaises(OSError, DurableQueue, self.path)
        os.rmdir(segment)
        self.assertEqual(self.make().depth, 0)


CHILD = textwrap.dedent("""
    import sys
    from voipmon.queue import DurableQueue
    queue = DurableQueue(sys.argv[1], segment_bytes=4096)
    n = queue.durable
    ack_every = int(sys.argv[2])
    while True:
        for _ in range(7):
            n += 1
            queue.append(b"cdr-%d-" % n + b"p" * (n % 300))
        durable = queue.flush()
        line = "durable %d" % durable
        if ack_every and durable % ack_every < 7:
            queue.ack(durable - 20)
            line += " acked %d" % (durable - 20)
        print(line, flush=True)
""")


class FaultyOs:
    """``os`` as voipmon.queue sees it, with chosen calls failing like a full disk."""

    def __init__(self) -> None:
        self.write_fails = False     # write 7 bytes, then ENOSPC
        self.truncate_fails = False  # EIO
        self.open_fails = ""         # ENOSPC for paths containing this

    def __getattr__(self, name: str):
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        if self.write_fails:
            os.write(fd, data[:7])
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    def ftruncate(self, fd: int, size: int) -> None:
        if self.truncate_fails:
            raise OSError(errno.EIO, "Input/output error")
        os.ftruncate(fd, size)

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        if self.open_fails and self.open_fails in os.path.basename(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.open(path, flags, mode)


class DiskFaultTests(SynchronousTestCase):
    """A full disk or a failing write loses no record and never corrupts a later one."""

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.os = FaultyOs()
        self.patch(queue_module, "os", self.os)

    def reopened(self) -> tuple[list[tuple[int, bytes]], DurableQueue]:
        queue = DurableQueue(self.path)
        self.addCleanup(queue.close)
        return queue.read(0), queue

    def append(self, queue: DurableQueue, numbers: range) -> None:
        for n in numbers:
            queue.append(payload(n))

    def test_full_disk_keeps_records_buffered_until_it_has_room(self) -> None:
        queue = DurableQueue(self.path)
        self.append(queue, range(3))
        self.os.write_fails = True
        error = self.assertRaises(QueueError, queue.flush)
        self.assertIn("No space left on device", str(error))
        self.assertEqual(queue.read(0), [])       # nothing promised
        self.os.write_fails = False
        self.assertEqual(queue.flush(), 3)
        queue.close()
        records, again = self.reopened()
        self.assertEqual(records, [(n + 1, payload(n)) for n in range(3)])
        self.assertEqual(again.recovered_tail_bytes, 0)   # the partial write was cut

    def test_a_partial_write_that_cannot_be_cut_seals_its_segment(self) -> None:
        queue = DurableQueue(self.path)
        self.append(queue, range(2))
        queue.flush()
        self.append(queue, range(2, 4))
        self.os.write_fails = self.os.truncate_fails = True
        self.assertRaises(QueueError, queue.flush)
        self.os.write_fails = self.os.truncate_fails = False
        self.append(queue, range(4, 5))
        self.assertEqual(queue.flush(), 5)
        self.assertEqual(len(queue._segments), 2)   # later records are not behind stray bytes
        self.assertEqual([seq for seq, _ in queue.read(0)], [1, 2, 3, 4, 5])
        queue.close()
        records, again = self.reopened()
        self.assertEqual(records, [(n + 1, payload(n)) for n in range(5)])
        self.assertEqual(again.recovered_tail_bytes, 7)

    def test_a_sealed_segment_with_no_record_is_replaced(self) -> None:
        queue = DurableQueue(self.path)
        self.append(queue, range(2))
        self.os.write_fails = self.os.truncate_fails = True
        self.assertRaises(QueueError, queue.flush)
        self.os.write_fails = self.os.truncate_fails = False
        self.assertEqual(queue.flush(), 2)
        self.assertEqual(len(queue._segments), 1)
        queue.close()
        records, again = self.reopened()
        self.assertEqual(records, [(1, payload(0)), (2, payload(1))])
        self.assertEqual(again.recovered_tail_bytes, 0)

    def test_a_segment_that_cannot_be_started_is_tried_again(self) -> None:
        queue = DurableQueue(self.path, segment_bytes=1)
        self.append(queue, range(1))
        queue.flush()
        self.append(queue, range(1, 3))
        self.os.open_fails = "seg-"
        error = self.assertRaises(QueueError, queue.flush)
        self.assertIn("cannot start", str(error))
        self.os.open_fails = ""
        self.assertEqual(queue.flush(), 3)          # the old segment's descriptor was kept
        queue.close()
        records, _again = self.reopened()
        self.assertEqual(records, [(n + 1, payload(n)) for n in range(3)])

    def test_an_ack_that_cannot_be_written_counts_until_a_restart(self) -> None:
        queue = DurableQueue(self.path)
        self.append(queue, range(4))
        queue.flush()
        self.assertEqual(queue.ack(1), 1)
        self.os.open_fails = "acked"
        self.assertEqual(queue.ack(3), 2)
        self.assertEqual((queue.acked, queue.depth), (3, 1))
        self.assertEqual(queue.read(0), [(4, payload(3))])
        self.os.open_fails = ""
        queue.close()
        records, _again = self.reopened()      # delivered again from the last recorded ack
        self.assertEqual(records, [(n + 1, payload(n)) for n in range(1, 4)])


class CrashTests(SynchronousTestCase):
    """A real process appending and acking is SIGKILLed at arbitrary moments."""

    def run_and_kill(self, path: str, lines: int, ack_every: int) -> tuple[int, int]:
        env = dict(os.environ, PYTHONPATH=ROOT)
        child = subprocess.Popen([sys.executable, "-c", CHILD, path, str(ack_every)],
                                 stdout=subprocess.PIPE, env=env, cwd=ROOT)
        durable = acked = 0
        try:
            for _ in range(lines):
                words = child.stdout.readline().split()
                self.assertEqual(words[0], b"durable", words)
                durable = int(words[1])
                if len(words) == 4:
                    acked = int(words[3])
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        return durable, acked

    def test_lock_held_by_a_process_and_released_by_sigkill(self) -> None:
        """Another process cannot open a queue a live process holds; once that process is
        killed, no lock is left behind."""
        path = os.path.abspath(self.mktemp())
        env = dict(os.environ, PYTHONPATH=ROOT)
        child = subprocess.Popen([sys.executable, "-c", CHILD, path, "0"],
                                 stdout=subprocess.PIPE, env=env, cwd=ROOT)
        try:
            self.assertEqual(child.stdout.readline().split()[0], b"durable")
            self.assertRaises(QueueError, DurableQueue, path)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        DurableQueue(path, segment_bytes=4096).close()

    def test_sigkill_loses_nothing_durable(self) -> None:
        """After each SIGKILL every record reported durable is there, in order, intact,
        and nothing reported acknowledged comes back."""
        path = os.path.abspath(self.mktemp())
        previous_last = 0
        for round_number, lines in enumerate((40, 3, 120, 1, 75)):
            durable, acked = self.run_and_kill(path, lines, ack_every=5)
            queue = DurableQueue(path, segment_bytes=4096)
            try:
                self.assertGreaterEqual(queue.durable, durable, round_number)
                self.assertGreaterEqual(queue.acked, acked, round_number)
                records = []
                after = 0
                while True:
                    batch = queue.read(after, max_records=500)
                    if not batch:
                        break
                    records.extend(batch)
                    after = batch[-1][0]
                seqs = [seq for seq, _ in records]
                self.assertEqual(seqs, list(range(queue.acked + 1, queue.durable + 1)))
                for seq, data in records:
                    self.assertEqual(data, b"cdr-%d-" % seq + b"p" * (seq % 300))
                self.assertGreater(queue.durable, previous_last)
                previous_last = queue.durable
            finally:
                queue.close()
