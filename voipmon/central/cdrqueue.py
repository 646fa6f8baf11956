"""The central's durable queue of the CDRs it makes itself (packet mirroring, legacy mirror).

It holds every kind of record a central's engine makes (CDRs, registrations, SIP messages,
alerts: ``voipmon.records.kinds`` items, the same bytes as the sensor's queue); "CDR"
below stands for any of them.

A CDR made on the central exists nowhere else: the sensor only sent packets, and once
they are acknowledged it forgets them. So ``CentralCdrQueue.add`` appends each CDR to a
``voipmon.queue.DurableQueue`` (``spooldir/central-queue``) and schedules one write and
fsync for everything added in this reactor turn (group commit). ``when_durable()`` fires
after that flush; only then do the PACKETS_ACK and END_ACK that depend on those CDRs go
to the sensor. A drain loop hands the queued CDRs to ``IStore.store_cdrs(batch,
"central")`` one batch at a time, in queue order, and acknowledges (deletes) a batch in
the queue only after the store committed it; a crash between commit and acknowledgement
stores the batch again at the next start, which the store's idempotent writes ignore.

While the database is down the same batch is retried (0.5 s doubling to 5 s), nothing
more is read, and memory holds one batch at most: the backlog is on disk, and its depth
is logged every minute. What is on disk at start-up (left by a crash, a restart or an
outage) is stored as soon as the store has started.

One queue per central, not one per sensor: an outage of the shared database stops every
sensor's CDRs alike; one fsync covers the CDRs of all sensors in a turn; each record
carries its sensor's id (it is the CDR's own ``id_sensor``); and there are no per-sensor
directories to find, drain and remove as sensors come and go.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from voipmon.counters import Counters
from voipmon.protocols.failover import describe_failure
from voipmon.queue import DurableQueue, QueueError
from voipmon.records.codec import Record
from voipmon.records.kinds import from_item_bytes, item_bytes
from voipmon.spool.deadletter import DeadLetters, IDeadLetters, RecordRefused
from voipmon.store.interfaces import StoreUnavailable

log = Logger()

QUEUE_DIRECTORY = "central-queue"   # under the central's spooldir
WRITE_BATCH = 500
FLUSH_RECORDS = 1000                # written at once when a turn makes this many (memory)
RETRY_INITIAL = 0.5
RETRY_MAX = 5.0
FLUSH_RETRY = 1.0
DEPTH_LOG_INTERVAL = 60.0


class CentralCdrQueue:
    """CDRs made on the central -> fsync'd queue on disk -> the store, in order."""

    def __init__(self, queue: DurableQueue, store: Any, clock: IReactorTime,
                 batch: int = WRITE_BATCH, retry_initial: float = RETRY_INITIAL,
                 retry_max: float = RETRY_MAX, flush_retry: float = FLUSH_RETRY,
                 depth_log_interval: float = DEPTH_LOG_INTERVAL,
                 dead_letters: IDeadLetters | None = None) -> None:
        self.queue = queue
        # Where CDRs that cannot be queued or read back go (the engines get it too).
        self.dead_letters = dead_letters if dead_letters is not None else DeadLetters(None)
        self.store = store
        self.clock = clock
        self.batch = batch
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.flush_retry = flush_retry
        self.depth_log_interval = depth_log_interval
        self.accepted = 0           # CDRs added by this process
        self.written = 0            # CDRs committed by the store (new or already there)
        self.stored = 0             # of those, newly inserted
        self.rejected = 0           # records that are no CDR this version can store
        self.oversized = 0          # CDRs too big for a queue record
        self.waiting: dict[int, int] = {}   # CDRs added by this process and not stored, by
        #                                     id_sensor (the queue depth each sensor sees)
        self.tries = 0              # attempts at the current batch
        self.started = False
        self.stopped = False
        self.outage_since: float | None = None
        self._sent = queue.acked    # highest seq committed by the store
        self._batch: tuple[int, list[Record]] | None = None
        self._busy = False
        self._draining = False
        self._flush_call: Any = None
        self._flush_failing = False
        self._retry_call: Any = None
        self._report_call: Any = None
        self._durable_waiters: list[tuple[int, defer.Deferred]] = []
        self._settled_waiters: list[defer.Deferred] = []
        if self.depth:
            log.info("{count} CDRs from mirrored packets wait in {directory} from before this "
                     "start; they are stored first", count=self.depth,
                     directory=queue.directory)
            self._arm_report()

    # -- input -----------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """CDRs on disk or about to be, not yet committed by the store."""
        return self.queue.depth + self.queue.buffered

    def add(self, cdr: Record) -> bool:
        """Queue one CDR (an engine's on_cdr). One it can never take raises RecordRefused:
        the engine keeps it as a dead letter."""
        if self.stopped:
            raise RecordRefused("the CDR was made after the CDR queue closed")
        record = item_bytes(cdr)
        try:
            self.queue.append(record)
        except ValueError as exc:
            self.oversized += 1
            raise RecordRefused(f"the CDR queue cannot hold it: {exc}")
        self.accepted += 1
        self.waiting[cdr.id_sensor] = self.waiting.get(cdr.id_sensor, 0) + 1
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)
        elif self.queue.buffered >= FLUSH_RECORDS and not self._flush_failing:
            # One turn closing thousands of calls (a sensor away too long): write them as
            # they come. Waking and storing stay with the scheduled flush, out of the engine.
            try:
                self.queue.flush()
            except (QueueError, OSError):
                pass  # the scheduled flush retries, and says why
        self._arm_report()
        return True

    def flush(self) -> None:
        """Write and fsync what was added; then wake who waits for it and store it."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self.stopped:
            return
        try:
            self.queue.flush()
        except (QueueError, OSError) as exc:
            if not self._flush_failing:
                log.error("cannot write the CDR queue: {error}; retrying every {delay:g} s; "
                          "mirroring sensors get no acknowledgement meanwhile (their packets "
                          "wait on the sensors)", error=exc, delay=self.flush_retry)
            self._flush_failing = True
            self._flush_call = self.clock.callLater(self.flush_retry, self.flush)
            return
        if self._flush_failing:
            log.info("the CDR queue is writable again")
            self._flush_failing = False
        self._wake_durable()
        self._drain()

    def when_durable(self) -> defer.Deferred:
        """Fires once every CDR added so far is on disk (at once if it already is)."""
        mark = self.queue.durable + self.queue.buffered
        if mark <= self.queue.durable:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._durable_waiters.append((mark, d))
        return d

    def _wake_durable(self) -> None:
        # Marks only grow, so waiters fire in the order they were asked for.
        durable = self.queue.durable
        ready = [d for mark, d in self._durable_waiters if mark <= durable]
        self._durable_waiters = [(m, d) for m, d in self._durable_waiters if m > durable]
        for d in ready:
            d.callback(None)

    # -- draining into the store -------------------------------------------------------

    def start(self) -> None:
        """The store is up: store what is queued, and everything added from now on."""
        if self.started or self.stopped:
            return
        self.started = True
        self._drain()

    def _drain(self) -> None:
        if self._draining:
            return  # a store call completed synchronously: the loop below goes on
        self._draining = True
        try:
            while (self.started and not self.stopped and not self._busy
                   and self._retry_call is None):
                if self._batch is None:
                    self._batch = self._next_batch()
                    if self._batch is None:
                        if not self.queue.buffered:  # else a flush is on its way
                            self._wake_settled()
                        return
                last, cdrs = self._batch
                self._busy = True
                self.tries += 1
                if cdrs:
                    d = defer.maybeDeferred(self.store.store_cdrs, cdrs, "central")
                else:
                    d = defer.succeed(0)
                d.addCallbacks(self._stored, self._failed, callbackArgs=(last, len(cdrs)),
                               errbackArgs=(last, len(cdrs)))
        finally:
            self._draining = False

    def _next_batch(self) -> tuple[int, list[Record]] | None:
        try:
            records = self.queue.read(self._sent, max_records=self.batch)
        except (QueueError, OSError):
            log.failure("reading the CDR queue")
            return None
        if not records:
            return None
        cdrs = [cdr for cdr in (self._decode(seq, data) for seq, data in records)
                if cdr is not None]
        return records[-1][0], cdrs

    def _decode(self, seq: int, data: bytes) -> Record | None:
        try:
            return from_item_bytes(data)
        except ValueError as exc:
            # The CRC vouches for the bytes, so this is a record no retry can store
            # (written by another version?): holding it would block everything behind it.
            self.rejected += 1
            self.dead_letters.keep("queue_record", data,
                                   f"CDR queue record #{seq} is not a CDR this version can "
                                   f"store: {exc}")
            return None

    def _stored(self, new: Any, last: int, count: int) -> None:
        self._busy = False
        if self.stopped:
            return  # committed, not acknowledged: the next start stores it again, harmlessly
        self._sent = last
        if self._batch is not None:
            for cdr in self._batch[1]:
                left = self.waiting.get(cdr.id_sensor, 0)
                if left:    # (a record a previous run queued was not counted)
                    self.waiting[cdr.id_sensor] = left - 1
        self._batch = None
        self.written += count
        self.stored += new if isinstance(new, int) else 0
        try:
            self.queue.ack(last)
        except (QueueError, OSError):
            # The next acknowledgement covers this one (acks are cumulative); a restart
            # before then stores the batch again, which the store ignores.
            log.failure("acknowledging stored CDRs in the CDR queue")
        if self.outage_since is not None:
            log.info("database reachable again after {seconds:.0f} s: stored {count} CDRs "
                     "from mirrored packets; {depth} more in the CDR queue",
                     seconds=self.clock.seconds() - self.outage_since, count=count,
                     depth=self.depth)
            self.outage_since = None
        self.tries = 0
        self._drain()

    def _failed(self, failure: Failure, last: int, count: int) -> None:
        self._busy = False
        if self.stopped:
            return
        if self.outage_since is None:
            self.outage_since = self.clock.seconds()
            log.warn("cannot store CDRs from mirrored packets: {error}; {depth} wait in the "
                     "CDR queue on disk and are retried every {initial:g}..{maximum:g} s "
                     "(mirroring sensors are still acknowledged: their CDRs are safe here)",
                     error=describe_failure(failure), depth=self.depth,
                     initial=self.retry_initial, maximum=self.retry_max)
            self._arm_report()
        if not failure.check(StoreUnavailable):
            log.failure("storing {count} CDRs from mirrored packets", failure, count=count)
        delay = min(self.retry_initial * 2 ** (self.tries - 1), self.retry_max)
        self._retry_call = self.clock.callLater(delay, self._retry)
        self._wake_settled()

    def _retry(self) -> None:
        self._retry_call = None
        self._drain()

    # -- reporting ---------------------------------------------------------------------

    def _waiting_for_store(self) -> bool:
        return self.depth > 0 and (not self.started or self.outage_since is not None)

    def _arm_report(self) -> None:
        if self._report_call is None and not self.stopped and self._waiting_for_store():
            self._report_call = self.clock.callLater(self.depth_log_interval, self._report)

    def _report(self) -> None:
        self._report_call = None
        if not self._waiting_for_store():
            return
        if self.started:
            why = f"the database is down ({self.clock.seconds() - self.outage_since:.0f} s)"
        else:
            why = "the store has not started"
        log.warn("{why}: {depth} CDRs from mirrored packets wait in {directory} "
                 "({mb:.1f} MB on disk)", why=why, depth=self.depth,
                 directory=self.queue.directory, mb=self.queue.disk_bytes / 1048576)
        self._arm_report()

    @property
    def database(self) -> str:
        """The store as this queue sees it: "up", "down" or "not started"."""
        if self.outage_since is not None:
            return "down"
        return "up" if self.started else "not started"

    def counters(self) -> Counters:
        return {"queued": self.depth, "queue_bytes": self.queue.disk_bytes,
                "accepted": self.accepted, "written": self.written, "stored": self.stored,
                "rejected": self.rejected, "oversized": self.oversized,
                "dead_letters": self.dead_letters.count,
                "database_up": int(self.database == "up")}

    # -- life --------------------------------------------------------------------------

    def settled(self) -> defer.Deferred:
        """Fires when the queue is empty, or storing cannot go on for now (the store is
        down or not started): what a shutdown may wait for."""
        if self.stopped or not self.started or self.outage_since is not None or (
                not self.depth and not self._busy):
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._settled_waiters.append(d)
        return d

    def _wake_settled(self) -> None:
        waiters, self._settled_waiters = self._settled_waiters, []
        for d in waiters:
            d.callback(None)

    def stop(self) -> None:
        """Shutdown: make everything added durable, stop storing, close the queue."""
        if self.stopped:
            return
        flushed = True
        try:
            self.queue.flush()
        except (QueueError, OSError) as exc:
            flushed = False
            log.error("{count} CDRs could not be written to the CDR queue at shutdown ({error});"
                      " no sensor was told they were safe", count=self.queue.buffered, error=exc)
        else:
            self._wake_durable()
        self.stopped = True
        for call in (self._flush_call, self._retry_call, self._report_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._retry_call = self._report_call = None
        if self.depth:
            log.info("{count} CDRs from mirrored packets stay in {directory}; they are stored "
                     "at the next start", count=self.queue.depth,
                     directory=self.queue.directory)
        try:
            self.queue.close()
        except (QueueError, OSError):
            if flushed:
                log.failure("closing the CDR queue")
        self._wake_settled()
