"""The central's logic for connected sensors: CDR batches, mirrored packets, the registry.

``CentralSessions`` is the ``ISessionHandler`` the channel opens sessions through. A
local-processing sensor gets a ``CdrSession``: its batches are stored one after another
and each is acknowledged only after the store committed it; while the database is down
the batch is retried (0.5 s doubling to 5 s) and the sensor, its window full, waits with
the rest on its own disk. A mirroring sensor gets a ``MirrorSession``: it feeds that
sensor's analysis (voipmon.central.mirror) and acknowledges what the central's CDR queue
has made durable; a live one's CLOCK moves that analysis on while no packet comes.
Sensors are upserted in the store on connect and marked offline on disconnect, unless the
same sensor is connected again already.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from voipmon.central.cdrbatch import Prepare, ReadBatch, Rejected, inline, read_batch
from voipmon.central.metrics import CentralMetrics
from voipmon.central.mirror import MirrorAnalyses, SensorAnalysis
from voipmon.central.retry import RegistryWriter, StoreRetry
from voipmon.counters import Counters
from voipmon.manager.service import resolve_manager
from voipmon.protocols.channel import IMessageTransport
from voipmon.protocols.failover import describe_failure
from voipmon.protocols.handshake import Hello
from voipmon.protocols.server import ISession, ISessionHandler, SessionRegistry
from voipmon.protocols.wire import (
    MAX_INT,
    MessageType,
    ProtocolError,
    field,
    is_number,
)
from voipmon.records.codec import Record
from voipmon.records.kinds import kind_of_item
from voipmon.spool.deadletter import DeadLetters, IDeadLetters
from voipmon.store.interfaces import IStore

log = Logger()

MAX_PENDING_BATCHES = 16   # more unacknowledged batches than any window allows = misbehaving
STORE_CONCURRENCY = 4      # CDR batches of one sensor written at once
STATS_FIELDS = {"packets": "packets", "dropped": "drops", "queue_depth": "queue_depth"}


@implementer(ISession)
class CdrSession:
    """A local-processing sensor: store each CDR batch, then acknowledge it.

    Up to ``concurrency`` batches are written at once (separate transactions: the database
    commits several faster than one after another), but acknowledgements go out strictly
    in order, each only once its batch and every batch before it have committed.
    """

    def __init__(self, sessions: CentralSessions, channel: IMessageTransport, hello: Hello,
                 concurrency: int = STORE_CONCURRENCY) -> None:
        self.sessions = sessions
        self.channel = channel
        self.hello = hello
        self.concurrency = concurrency
        self.pending: deque[_Batch] = deque()
        self.retries: list[StoreRetry] = []
        self.received = self.stored = self.duplicates = self.rejected = 0
        self._warned_foreign_id = False
        self.lost = False

    def counters(self) -> Counters:
        return {"received": self.received, "stored": self.stored,
                "duplicates": self.duplicates, "rejected": self.rejected,
                "pending_batches": len(self.pending)}

    @property
    def retry(self) -> StoreRetry | None:
        """The oldest write in progress (tests look at it)."""
        return self.retries[0] if self.retries else None

    def on_stats(self, body: dict[str, Any]) -> None:
        self.sessions.heard(self.hello)
        self.sessions.record_stats(self.hello, body)

    def on_end(self, body: dict[str, Any]) -> None:
        self.sessions.heard(self.hello)
        self.channel.send_message(MessageType.END_ACK, {"cdrs": 0})

    def on_cdrs(self, payload: bytes) -> None:
        """A CDRS message: read (``sessions.prepare``: off the reactor thread in a
        central), then stored and acknowledged in the order the messages came."""
        self.sessions.heard(self.hello)
        if len(self.pending) >= MAX_PENDING_BATCHES:
            raise ProtocolError(f"more than {MAX_PENDING_BATCHES} CDR batches unacknowledged")
        batch = _Batch()
        self.pending.append(batch)
        outcome: list[Any] = []
        inline = True

        def done(result: Any) -> None:
            if inline:
                outcome.append(result)
            else:
                self._read(batch, result, inline=False)

        self.sessions.prepare(read_batch, payload).addBoth(done)
        inline = False
        if outcome:
            self._read(batch, outcome[0], inline=True)

    def _read(self, batch: _Batch, result: ReadBatch | Failure, inline: bool) -> None:
        if self.lost:
            return
        if isinstance(result, Failure):
            self.pending.remove(batch)
            error = result.value
            if not isinstance(error, ProtocolError):
                log.failure("reading CDRs of sensor {id_sensor}", result,
                            id_sensor=self.hello.id_sensor)
                error = ProtocolError("internal error while reading CDRs")
            if inline:
                raise error
            self.channel.fail(str(error))
            return
        for rejected in result.rejected:
            self._reject(rejected)
        records = result.records
        own = self.hello.id_sensor
        if any(record.id_sensor != own for record in records):
            records = [self._own(record) for record in records]
        self.received += result.last - result.first + 1
        batch.first, batch.last, batch.cdrs = result.first, result.last, records
        self._start_writes()

    def _reject(self, rejected: Rejected) -> None:
        # Resending cannot repair it, and holding it would block every record behind it:
        # it is kept as a dead letter (acknowledged, so the sensor moves on).
        self.rejected += 1
        item = rejected.item
        kind = kind_of_item(item)
        callid = item.get("callid") if isinstance(item, dict) else None
        self.sessions.dead_letters.keep(
            f"{kind}_from_sensor"[:40], item,
            f"{'CDR' if kind == 'cdr' else kind} #{rejected.seq} is malformed: "
            f"{rejected.reason}", id_sensor=self.hello.id_sensor,
            callid=callid if isinstance(callid, str) else None)

    def _own(self, record: Record) -> Record:
        if record.id_sensor == self.hello.id_sensor:
            return record
        if not self._warned_foreign_id:
            log.warn("sensor {id_sensor} sent records with id_sensor {other}; storing "
                     "them under {id_sensor}", id_sensor=self.hello.id_sensor,
                     other=record.id_sensor)
            self._warned_foreign_id = True
        return dataclasses.replace(record, id_sensor=self.hello.id_sensor)

    def _start_writes(self) -> None:
        # A write may complete at once and acknowledge (popping ``pending``): look again
        # for the next batch to write after each one.
        while len(self.retries) < self.concurrency:
            batch = next((b for b in self.pending if b.cdrs is not None and not b.writing
                          and b.stored is None), None)
            if batch is None:
                return
            self._write(batch)

    def _write(self, batch: _Batch) -> None:
        batch.writing = True
        cdrs = batch.cdrs

        def stored(count: object) -> None:
            self.retries.remove(retry)
            batch.writing = False
            batch.stored = count if isinstance(count, int) else 0
            self._acknowledge()
            self._start_writes()

        attempt = (lambda: self.sessions.store.store_cdrs(cdrs)) if cdrs else (
            lambda: defer.succeed(0))
        retry = StoreRetry(self.sessions.clock, attempt,
                           f"{len(cdrs)} CDRs (#{batch.first}..#{batch.last}) of sensor "
                           f"{self.hello.id_sensor}", stored)
        self.retries.append(retry)
        retry.start()

    def _acknowledge(self) -> None:
        while self.pending and self.pending[0].stored is not None:
            batch = self.pending.popleft()
            self.stored += batch.stored
            self.duplicates += len(batch.cdrs) - batch.stored
            self.channel.send_message(MessageType.CDR_ACK,
                                      {"upto": batch.last, "stored": batch.stored})

    def connectionLost(self, reason: Failure) -> None:
        self.lost = True
        for retry in self.retries:
            retry.cancel()
        self.retries = []
        self.pending.clear()
        self.sessions.closed(self)


class _Batch:
    """One CDRS message on its way to the store (``cdrs`` None while it is being read)."""

    __slots__ = ("cdrs", "first", "last", "stored", "writing")

    def __init__(self) -> None:
        self.first = self.last = 0
        self.cdrs: list[Record] | None = None
        self.stored: int | None = None
        self.writing = False


@implementer(ISession)
class MirrorSession:
    """A mirroring sensor: feed its packets to its analysis, acknowledge each batch.

    An acknowledgement tells the sensor it may forget what it acknowledges, so it goes out
    only once the CDRs the batch completed are on the central's disk (the CDR queue's
    next group commit; at once when the batch completed no call). END_ACK likewise: the
    sensor's calls are closed and their CDRs are durable here, stored in the database
    now or once it is reachable. Acknowledgements keep their order.
    """

    def __init__(self, sessions: CentralSessions, channel: IMessageTransport, hello: Hello,
                 analysis: SensorAnalysis) -> None:
        self.sessions = sessions
        self.channel = channel
        self.hello = hello
        self.analysis = analysis
        self.batches = 0
        self._ending = False
        self._lost = False

    def counters(self) -> Counters:
        return {"batches": self.batches}

    def on_packets(self, batch: tuple[int, int, list[Any]]) -> None:
        self.sessions.heard(self.hello)
        seq, linktype, packets = batch
        self.analysis.feed_batch(seq, linktype, packets)
        self.batches += 1
        self._reply_when_durable(self.analysis.cdr_queue.when_durable(),
                                 MessageType.PACKETS_ACK, lambda _: {"upto": seq})

    def on_end(self, body: dict[str, Any]) -> None:
        self.sessions.heard(self.hello)
        if self._ending:
            return
        self._ending = True
        log.info("sensor {id_sensor}: end of replay; closing its open calls",
                 id_sensor=self.hello.id_sensor)

        def ended(cdrs: int) -> dict[str, Any]:
            self._ending = False
            # ``undelivered``: CDRs of this sensor's packets kept as dead letters here
            # (a sensor with --exit-when-done then exits non-zero).
            return {"cdrs": cdrs, "undelivered": self.analysis.undelivered}

        self._reply_when_durable(self.analysis.end_of_input(), MessageType.END_ACK, ended)

    def on_clock(self, body: dict[str, Any]) -> None:
        self.sessions.heard(self.hello)
        # After the packets it follows (the channel keeps their order): close the calls
        # that timed out on the sensor's capture clock while its line is quiet.
        now = field(body, "t", (int, float), "CLOCK")
        if not math.isfinite(now):
            raise ProtocolError("malformed CLOCK message: 't' is not a finite time")
        self.analysis.advance(float(now))

    def on_stats(self, body: dict[str, Any]) -> None:
        self.sessions.heard(self.hello)
        self.sessions.record_stats(self.hello, body)

    def _reply_when_durable(self, durable: defer.Deferred, kind: MessageType,
                            body: Callable[[Any], dict[str, object]]) -> None:
        # Each ``durable`` fires after the CDR queue's flush that covers it, and the
        # queue fires its waiters in the order they asked: replies keep their order.
        def send(result: object) -> None:
            if not self._lost:
                self.channel.send_message(kind, body(result))

        durable.addCallback(send)
        durable.addErrback(lambda f: log.failure("acknowledging sensor {id_sensor}", f,
                                                 id_sensor=self.hello.id_sensor))

    def connectionLost(self, reason: Failure) -> None:
        self._lost = True
        self.sessions.closed(self)


@implementer(ISessionHandler)
class CentralSessions:
    """Opens sessions, keeps the sensor registry in the store up to date.

    ``registry`` is the central's one map of connected sensors (the channels, each with
    its session and requester), shared with the channel factory that claims ids in it.
    """

    def __init__(self, store: IStore, clock: IReactorTime,
                 registry: SessionRegistry | None = None,
                 mirrors: MirrorAnalyses | None = None,
                 dead_letters: IDeadLetters | None = None,
                 metrics: CentralMetrics | None = None, prepare: Prepare = inline) -> None:
        self.store = store
        self.prepare = prepare     # where CDRS messages are read (voipmon.central.cdrbatch)
        self.metrics = metrics if metrics is not None else CentralMetrics(clock)
        self.clock = clock
        self.dead_letters = dead_letters if dead_letters is not None else DeadLetters(None)
        self.registry = registry if registry is not None else SessionRegistry(clock)
        self.mirrors = mirrors
        self.reported: dict[int, dict[str, Any]] = {}   # the last STATS of each sensor
        self.writers: dict[int, RegistryWriter] = {}

    def open_session(self, channel: IMessageTransport, hello: Hello
                     ) -> CdrSession | MirrorSession:
        self._upsert(hello, channel)
        if hello.mode == "mirror":
            if self.mirrors is None:
                raise ProtocolError("this central does not accept packet mirroring")
            session: CdrSession | MirrorSession = MirrorSession(self, channel, hello,
                                                               self.mirrors.attach(hello))
        else:
            session = CdrSession(self, channel, hello)
        self.metrics.connected(hello.id_sensor, hello.name or f"sensor {hello.id_sensor}",
                               hello.mode)
        return session

    def _upsert(self, hello: Hello, channel: IMessageTransport) -> None:
        host = getattr(channel.getPeer(), "host", "")   # a Twisted address; UNIX ones have none
        sensor: dict[str, Any] = {
            "id_sensor": hello.id_sensor, "name": hello.name or f"sensor {hello.id_sensor}",
            "host": host or "", "mode": hello.mode, "version": hello.version,
            "when": self.clock.seconds(),
        }
        reachable = resolve_manager(hello.manager, sensor["host"])
        if reachable is not None:
            sensor["manager_host"], sensor["manager_port"] = reachable
        self._writer(hello.id_sensor).set(lambda: self.store.upsert_sensor(sensor),
                                          f"the registration of sensor {hello.id_sensor}")

    def _writer(self, id_sensor: int) -> RegistryWriter:
        writer = self.writers.get(id_sensor)
        if writer is None:
            writer = self.writers[id_sensor] = RegistryWriter(self.clock)
        return writer

    def idle(self) -> bool:
        """No registry write is running or waiting to retry."""
        return all(writer.idle for writer in self.writers.values())

    def stop(self) -> None:
        """Stop retrying registry writes (the central is shutting down)."""
        for writer in self.writers.values():
            writer.cancel()

    def heard(self, hello: Hello) -> None:
        self.metrics.heard(hello.id_sensor)

    def record_stats(self, hello: Hello, body: dict[str, Any]) -> None:
        self.reported[hello.id_sensor] = body
        self.metrics.stats(hello.id_sensor, body)
        update = {"id_sensor": hello.id_sensor}
        for key, column in STATS_FIELDS.items():
            value = body.get(key)
            if is_number(value, 0, MAX_INT, integer=True):
                update[column] = value
        dropped = update.get("drops")
        if dropped:
            log.info("sensor {id_sensor} reports {dropped} mirrored packets dropped so far",
                     id_sensor=hello.id_sensor, dropped=dropped)
        if len(update) > 1:
            d = self.store.upsert_sensor(update)
            d.addErrback(lambda f: log.debug("sensor stats not stored: {e}",
                                             e=describe_failure(f)))

    def closed(self, session: CdrSession | MirrorSession) -> None:
        hello = session.hello
        if self.mirrors is not None and hello.mode == "mirror":
            self.mirrors.detach(hello)
        if self.registry.connected(hello.id_sensor):
            return  # the same sensor is connected again (took its session over)
        self.metrics.disconnected(hello.id_sensor)
        when = self.clock.seconds()
        self._writer(hello.id_sensor).set(
            lambda: self.store.mark_sensor_offline(hello.id_sensor, when),
            f"sensor {hello.id_sensor} going offline")
