"""Database retention: ``cleandatabase`` keeps N days of calls, deleting the oldest first.

As VoIPmonitor's ``cleandatabase``: a call whose ``calldate`` is more than N days old goes,
with its streams (``cdr_rtp``) and pcap location (``cdr_next``). The sensors list is kept.
The records of SIP that is not a call go the same way, table by table (``register_state``,
``register_failed``, ``register_time_info``, ``sip_msg``, ``message``, ``alert``: by their
time column, ``IStore.delete_records_before``), as VoIPmonitor's ``cleandatabase`` covers
them. Pcaps in a spool have their own retention (``maxpooldays``, ``maxpoolsize``).

The pass runs once the store is up, then every hour on an injected clock. It deletes in
chunks of short transactions (``IStore.delete_cdrs_before``), so it never holds locks long
enough to stall the CDR batches sensors are waiting on. An error (the database is down) is
logged and the next period tries again. Centrals sharing a database may all run it: a call
another central already deleted is simply not deleted twice. A call older than the limit
that arrives late (a sensor's queue drained after a long outage) is stored, then deleted by
the next pass.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from voipmon.protocols.failover import describe_failure
from voipmon.records.times import iso_ms
from voipmon.store.recordrows import SPECS

log = Logger()

DEFAULT_INTERVAL = 3600.0
CHUNK = 1000
DAY = 86400.0


class DatabaseRetention(service.Service):
    """Runs :meth:`check` every ``interval`` seconds once :meth:`ready` was called."""

    name = "database-retention"

    def __init__(self, store: Any, days: int, clock: Any,
                 interval: float = DEFAULT_INTERVAL, chunk: int = CHUNK) -> None:
        self.store = store
        self.days = days
        self.clock = clock
        self.interval = interval
        self.chunk = chunk
        self.deleted = 0
        self.records_deleted = 0    # rows of the other record tables
        self.errors = 0
        self._store_ready = False
        self._loop: task.LoopingCall | None = None
        self._pass: defer.Deferred | None = None

    def ready(self) -> None:
        """The store has started: begin (now, or when this service starts)."""
        self._store_ready = True
        self._begin()

    def startService(self) -> None:
        super().startService()
        self._begin()

    def _begin(self) -> None:
        if not (self.running and self._store_ready and self.days > 0) or self._loop:
            return
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> defer.Deferred | None:
        """Stop the loop; fires once a pass in progress has finished its chunk."""
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        if self._pass is None:
            return None
        done: defer.Deferred = defer.Deferred()
        self._pass.addBoth(lambda result: (done.callback(None), result)[1])
        return done

    def check(self) -> defer.Deferred:
        """One pass: chunk after chunk until nothing older is left. Never fails."""
        cutoff = self.clock.seconds() - self.days * DAY
        self._pass = d = self._run(cutoff)

        def finished(result: Any) -> Any:
            self._pass = None
            return result

        return d.addBoth(finished)

    @defer.inlineCallbacks
    def _run(self, cutoff: float) -> Any:
        total = 0
        try:
            while self.running:
                count = yield self.store.delete_cdrs_before(cutoff, self.chunk)
                total += count
                if count < self.chunk:
                    break
            for kind in SPECS:
                while self.running:
                    count = yield self.store.delete_records_before(kind, cutoff, self.chunk)
                    self.records_deleted += count
                    if count < self.chunk:
                        break
        except Exception:
            self.errors += 1
            log.error("database retention: could not delete calls before {cutoff} "
                      "(cleandatabase = {days}): {error}; trying again in {interval:g} s",
                      cutoff=iso_ms(cutoff), days=self.days,
                      error=describe_failure(Failure()), interval=self.interval)
        if total:
            self.deleted += total
            log.info("database retention deleted {count} calls from before {cutoff} "
                     "(cleandatabase = {days})", count=total, cutoff=iso_ms(cutoff),
                     days=self.days)
        return total
