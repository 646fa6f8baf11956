"""Packet mirroring on the central: one analysis per sensor, its CDRs into the CDR queue.

Each mirroring sensor gets a ``SensorAnalysis`` (decoder + engine, built by an injected
factory, writing its pcaps under a per-sensor directory of the central's spool). It
survives reconnects of the same sensor process, and ignores a batch it has already
analysed (a batch resent because its acknowledgement was lost). A different process of
the same sensor replaces it: a replayed capture starts again from its first packet, so
the old state is dropped; a live sensor's old calls are closed and stored. A live sensor's
CLOCK messages move its analysis on while no packet comes (calls time out as they would on
the sensor). An analysis
whose sensor stays away for ``idle_finish`` seconds is closed too. The CDRs go to the
central's durable CDR queue (voipmon.central.cdrqueue), which stores them when the
database can take them; the sensor is acknowledged once they are on disk there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface

from voipmon.central.cdrqueue import CentralCdrQueue
from voipmon.protocols.handshake import Hello
from voipmon.records.cdr import Cdr

log = Logger()

IDLE_FINISH = 300.0


class IPacketAnalyzer(Interface):
    """Decoder and call engine for one sensor's packets (built per sensor)."""

    def feed_all(records):
        """Analyse ``(ts, linktype, frame)`` records, in capture order."""

    def advance(now):
        """Capture time ``now`` has come without packets: close what timed out."""

    def finish():
        """End of input: close every open call (emitting its CDR)."""

    def counters():
        """Its counters (``voipmon.counters``); ``undelivered``: records its consumer could
        not take (kept as dead letters)."""

    def active_calls():
        """The calls in progress (JSON-able dicts, as the sensor's listcalls shows them)."""


#: factory(hello, on_cdr) -> an IPacketAnalyzer for the sensor that said ``hello``.
AnalyzerFactory = Callable[[Hello, Callable[[Any], None]], Any]


class SensorAnalysis:
    """One mirroring sensor's packets on their way through decoder and engine."""

    def __init__(self, hello: Hello, factory: AnalyzerFactory,
                 cdr_queue: CentralCdrQueue) -> None:
        self.hello = hello
        self.id_sensor = hello.id_sensor
        self.instance = hello.instance
        self.factory = factory
        self.cdr_queue = cdr_queue
        self.analyzer: Any = None
        self.last_seq = 0
        self.packets = 0
        self.cdrs = 0
        self.duplicate_batches = 0
        self.undelivered = 0       # CDRs its engines kept as dead letters (not stored)

    def _on_cdr(self, record: Any) -> None:
        # Every record of the engine (CDRs, registrations, ...) goes to the queue; the
        # END_ACK counts the CDRs.
        if self.cdr_queue.add(record) and isinstance(record, Cdr):
            self.cdrs += 1

    def feed_batch(self, seq: int, linktype: int,
                   packets: list[tuple[float, int, bytes]]) -> None:
        """Analyse one batch: ``packets`` are ``(ts, linktype, frame)`` records."""
        if seq <= self.last_seq:
            self.duplicate_batches += 1
            return
        self.last_seq = seq
        if self.analyzer is None:
            self.analyzer = self.factory(self.hello, self._on_cdr)
        try:
            self.analyzer.feed_all(packets)
        except Exception:
            log.failure("analysing mirrored packets of sensor {id_sensor} (batch {seq})",
                        id_sensor=self.id_sensor, seq=seq)
        self.packets += len(packets)

    def advance(self, now: float) -> None:
        """The sensor's capture clock (CLOCK): calls due by ``now`` close, as they would
        on a local-processing sensor; their CDRs go to the CDR queue."""
        if self.analyzer is None:
            return
        try:
            self.analyzer.advance(now)
        except Exception:
            log.failure("advancing the calls of sensor {id_sensor} to {now}",
                        id_sensor=self.id_sensor, now=now)

    def finish(self) -> None:
        """Close every open call (their CDRs go to the CDR queue)."""
        analyzer, self.analyzer = self.analyzer, None
        if analyzer is not None:
            try:
                analyzer.finish()
            except Exception:
                log.failure("closing the calls of sensor {id_sensor}", id_sensor=self.id_sensor)
            self.undelivered += analyzer.counters().get("undelivered", 0)

    def active_calls(self) -> list[dict[str, Any]]:
        """The calls in progress of this sensor, analysed here."""
        return self.analyzer.active_calls() if self.analyzer is not None else []

    def end_of_input(self) -> defer.Deferred:
        """The sensor's replay ended: close its calls. Fires with the number of CDRs made
        from this sensor's packets (by this analysis) once every one of them is on disk."""
        self.finish()
        cdrs = self.cdrs
        return self.cdr_queue.when_durable().addCallback(lambda _: cdrs)


class MirrorAnalyses:
    """The central's per-sensor analyses."""

    def __init__(self, factory: AnalyzerFactory, cdr_queue: CentralCdrQueue, clock: IReactorTime,
                 idle_finish: float = IDLE_FINISH) -> None:
        self.factory = factory
        self.cdr_queue = cdr_queue
        self.clock = clock
        self.idle_finish = idle_finish
        self.analyses: dict[int, SensorAnalysis] = {}
        self._idle: dict[int, Any] = {}

    def attach(self, hello: Hello) -> SensorAnalysis:
        timer = self._idle.pop(hello.id_sensor, None)
        if timer is not None and timer.active():
            timer.cancel()
        current = self.analyses.get(hello.id_sensor)
        if current is not None and current.instance != hello.instance:
            if hello.replay:
                log.info("sensor {id_sensor} restarted its replay; dropping the calls it had "
                         "open here", id_sensor=hello.id_sensor)
            else:
                log.info("sensor {id_sensor} restarted; closing the calls it had open here",
                         id_sensor=hello.id_sensor)
                current.finish()
            current = None
        if current is None:
            current = self.analyses[hello.id_sensor] = SensorAnalysis(hello, self.factory,
                                                                      self.cdr_queue)
        return current

    def active_calls(self, id_sensor: int) -> list[dict[str, Any]] | None:
        """The calls in progress of mirroring sensor ``id_sensor`` on this central; None
        if its packets are not analysed here."""
        analysis = self.analyses.get(id_sensor)
        return analysis.active_calls() if analysis is not None else None

    def detach(self, hello: Hello) -> None:
        analysis = self.analyses.get(hello.id_sensor)
        if analysis is None or analysis.instance != hello.instance:
            return
        old = self._idle.pop(hello.id_sensor, None)
        if old is not None and old.active():
            old.cancel()
        self._idle[hello.id_sensor] = self.clock.callLater(self.idle_finish, self._expire,
                                                           hello.id_sensor)

    def _expire(self, id_sensor: int) -> None:
        self._idle.pop(id_sensor, None)
        analysis = self.analyses.pop(id_sensor, None)
        if analysis is not None:
            log.info("sensor {id_sensor} has been away {seconds:g} s; closing its open calls",
                     id_sensor=id_sensor, seconds=self.idle_finish)
            analysis.finish()

    def stop(self) -> defer.Deferred:
        """Shutdown: close every sensor's calls; fires once their CDRs are on disk."""
        for timer in self._idle.values():
            if timer.active():
                timer.cancel()
        self._idle.clear()
        for analysis in self.analyses.values():
            analysis.finish()
        self.analyses.clear()
        return self.cdr_queue.when_durable()
