"""The sensor's service tree: source -> (engine ->) uplink -> channel, with failover.

Its parts are built by the tap (voipmon.sensor.tap); this module runs them.

Local processing (``packetbuffer_sender = no``): frames go through the analysis engine;
its CDRs go to the durable queue (``spooldir/queue``) and up the channel. Packet
mirroring (``packetbuffer_sender = yes``): frames go to the bounded mirroring buffer, and a
live sensor carries its capture clock to the central's engine every second.
The channel is a ``ClientService`` over a ``FailoverEndpoint`` of authenticating TLS
endpoints, one per ``server_destination``; a ``FailbackProber`` returns to the primary.
With ``--read-pcap`` the source is the file; ``--exit-when-done`` stops the process once
everything is acknowledged (exit 0), or when it cannot be delivered (non-zero, saying why).
A CDR that could not be taken (a dead letter, kept in ``spooldir/deadletter`` here or in
the central's spool when mirroring) makes that exit status 3: the replay is over, but not
everything it made reached the database.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

import voipmon
from voipmon.analysis.engine import Engine
from voipmon.manager.commands import ICallLister, IStatsProvider
from voipmon.metrics.snapshot import Figures
from voipmon.protocols import tls
from voipmon.protocols.channel import ChannelProtocol
from voipmon.protocols.failover import (
    FailbackProber,
    FailoverEndpoint,
    FailoverRoundFailed,
    describe_failure,
)
from voipmon.protocols.handshake import PERMANENT, CentralProofFailed, Rejection
from voipmon.protocols.wire import MessageType
from voipmon.queue import DurableQueue, QueueError
from voipmon.sensor.centrals import Central, ProbeSession
from voipmon.sensor.metrics import SensorMetrics
from voipmon.sensor.mirror import MirrorUplink
from voipmon.sensor.uplink import CdrUplink, UplinkFactory
from voipmon.sources.interfaces import ISource
from voipmon.spool.deadletter import DeadLetters

log = Logger()

STATS_INTERVAL = 5.0
STATUS_EVERY = 12         # a status line every 12 stats intervals (a minute)
GIVE_UP_AFTER = 300.0     # --exit-when-done: no central for this long = cannot deliver
ADVANCE_INTERVAL = 1.0
UNDELIVERED = 3           # --exit-when-done: done, but some records are dead letters


@implementer(IStatsProvider, ICallLister)
class SensorService(service.MultiService):
    """Everything one sensor process runs, from parts its tap built.

    ``uplink`` sends what the sensor makes (CDRs from ``engine`` and ``queue``, or the
    frames themselves when mirroring) over a ``ClientService`` that fails over across
    ``centrals`` in order (and probes the first every ``failback_interval`` seconds while
    on another). ``source`` starts after the channel and the timers and stops before
    them, so nothing comes in while they shut down (the tap adds the management port and
    retention, which do not depend on it, after it). ``on_exit(status, message)`` is given
    for ``--exit-when-done``: it is called once the replay is delivered, or cannot be.
    """

    def __init__(self, uplink: CdrUplink | MirrorUplink, source: ISource,
                 centrals: Sequence[Central], *, id_sensor: int, clock: IReactorTime,
                 dead_letters: DeadLetters, engine: Engine | None = None,
                 queue: DurableQueue | None = None, failback_interval: float = 30.0,
                 verified: bool = False, on_exit: Callable[[int, str], None] | None = None,
                 give_up_after: float = GIVE_UP_AFTER,
                 metrics: SensorMetrics | None = None) -> None:
        super().__init__()
        self.setName("voipmon-sensor")
        self.uplink = uplink
        self.source = source
        self.centrals = list(centrals)
        self.id_sensor = id_sensor
        self.clock = clock
        self.dead_letters = dead_letters
        self.engine = engine
        self.queue = queue
        self.verified = verified            # a pinned or CA-checked central: nothing to log
        self.on_exit = on_exit
        self.exit_when_done = on_exit is not None
        self.give_up_after = give_up_after
        self.mode = uplink.mode
        self.started_at = time.time()
        self.exit_status: int | None = None
        self._last_connected = self.clock.seconds()
        self._ticks = 0
        self._clock_anchor = (-math.inf, 0.0)   # (capture time, wall time) of the last move
        self._clock_set = -math.inf             # what _advance last set the engine to
        self._announced: set[tuple[str, str]] = set()

        self.failover = FailoverEndpoint([(c.name, c.endpoint) for c in self.centrals],
                                         clock, on_round_failed=self._round_failed)
        factory = UplinkFactory(uplink, on_lost=self._lost, on_made=self._made)
        self.client = internet.ClientService(self.failover, factory,
                                             retryPolicy=self.failover.retry_delay, clock=clock)
        self._child("channel", self.client)
        # The one registry every view of the sensor's figures reads (STATS, sniffer_stat,
        # the status line, a sensor's own /metrics); the tap made it before the engine.
        self.metrics = metrics if metrics is not None else SensorMetrics(id_sensor, clock,
                                                                         self.mode)
        self.metrics.bind(source=source, uplink=uplink, engine=engine,
                          dead_letters=dead_letters, failover=self.failover)
        if len(self.centrals) > 1:
            self.prober = FailbackProber(self.failover, self.centrals[0].probe,
                                         protocol.Factory.forProtocol(ProbeSession),
                                         failback_interval, clock, self._fail_back)
            self._child("failback", self.prober)
        self._timer("stats", STATS_INTERVAL, self._report)
        if source.live:
            # The engine's clock must move even when no packet comes; in mirroring the
            # engine is the central's, and the uplink carries the clock there.
            self._timer("advance", ADVANCE_INTERVAL, self._advance)
        source.done.addCallback(self._source_ended).addErrback(
            lambda f: log.failure("closing the calls at the end of the capture", f))
        source.setServiceParent(self)

    def _child(self, name: str, child: service.Service) -> None:
        child.setName(name)
        child.setServiceParent(self)

    def _timer(self, name: str, interval: float, call: Callable[[], None]) -> None:
        timer = internet.TimerService(interval, call)
        timer.clock = self.clock
        self._child(name, timer)

    # -- running -------------------------------------------------------------------

    def _advance(self) -> None:
        try:
            if self.engine is not None:
                self._advance_engine(self.engine)
            else:
                self.uplink.advance_clock()
        except Exception:
            log.failure("engine housekeeping failed")

    def _advance_engine(self, engine: Engine) -> None:
        """Move the engine's capture clock on by the wall time elapsed since frames last
        moved it, as the mirroring uplink moves the central's: never to the wall clock
        itself, so frames with old times (HEP from a replay or a delayed agent, a host whose
        clock is behind) are analysed in their own time and their last calls still close."""
        wall = self.clock.seconds()
        latest = engine.now
        if latest == -math.inf:
            return  # nothing captured yet: nothing to time out
        if latest != self._clock_set:
            self._clock_anchor = (latest, wall)
        ts, at = self._clock_anchor
        engine.advance(ts + max(0.0, wall - at))
        self._clock_set = engine.now

    def _source_ended(self, _: object = None) -> None:
        if self.engine is not None:
            self.engine.finish()
        self.uplink.finish_source()
        if self.exit_when_done:
            self.uplink.when_done().addCallback(self._delivered)

    def _delivered(self, _: object) -> None:
        central = self.failover.current or (self.failover.endpoints[self.failover.last_index
                                                                    or 0][0])
        if self.mode == "local":
            stats = self.uplink.counters()
            undelivered = self.dead_letters.count
            message = (f"every CDR {'queued ' if undelivered else ''}acknowledged by the "
                       f"central ({stats['delivered']} delivered by this run, "
                       f"{stats['stored']} new in the database; last central {central})")
            where = f"kept in {self.dead_letters.directory}"
        else:
            # END_ACK: the central closed the calls and has their CDRs on its disk; it
            # stores them in its database now, or once the database is reachable.
            message = (f"{self.uplink.packets_acked} mirrored packets acknowledged and "
                       f"the replay closed on central {central} ({self.uplink.central_cdrs} "
                       f"CDRs made there, safe on its disk; {self.uplink.dropped} packets "
                       f"dropped)")
            undelivered = self.uplink.central_undelivered
            where = f"kept in the dead-letter directory of central {central}"
        if undelivered:
            message = (f"not delivered: {undelivered} records could not be taken (dead "
                       f"letters, {where}; the log says why); {message}")
        else:
            message = f"done: {message}"
        transport = self.uplink.transport
        if transport is not None:       # the replay's final figures, before the exit
            self._push_stats(transport)
        error = self.source.error
        if error:  # a damaged capture: what it held is delivered, yet the run failed
            self._exit(1, f"{message}; but the capture stopped early: {error}")
            return
        self._exit(UNDELIVERED if undelivered else 0, message)

    def _made(self, channel: ChannelProtocol) -> None:
        self._last_connected = self.clock.seconds()
        self.metrics.session_made(channel)
        self._push_stats(channel)     # the central knows the sensor's figures at once
        if self.verified:
            return
        fingerprint = tls.peer_fingerprint(channel.transport)
        if fingerprint and (channel.peer, fingerprint) not in self._announced:
            self._announced.add((channel.peer, fingerprint))
            log.warn("central {central}: TLS certificate SHA-256 {fingerprint} is not verified "
                     "(only the password proof authenticates the central); set "
                     "server_certificate_sha256 = {fingerprint} to pin it",
                     central=channel.peer, fingerprint=fingerprint)

    def _lost(self, reason: Failure) -> None:
        self._last_connected = self.clock.seconds()
        self.metrics.session_lost()
        emit = log.info if not self.running or self.exit_status is not None else log.warn
        emit("connection to central {central} closed: {reason}",
             central=self.failover.current or "?", reason=describe_failure(reason))

    def _fail_back(self, reason: str) -> None:
        transport = self.uplink.transport
        if transport is not None:
            transport.close(reason)

    def _round_failed(self, error: FailoverRoundFailed) -> None:
        if not self.exit_when_done:
            return
        pins = {central.name: central.pin_mismatch() for central in self.centrals}
        permanent = [
            (name, f) for name, f in error.attempts
            if (f.check(Rejection) and f.value.code in PERMANENT) or f.check(CentralProofFailed)
            or pins.get(name)
        ]
        if permanent and len(permanent) == len(error.attempts):
            reasons = "; ".join(f"{name}: {pins.get(name) or describe_failure(f)}"
                                for name, f in permanent)
            self._exit(2, f"cannot deliver: every central refused this sensor ({reasons})")

    def _push_stats(self, transport: Any) -> None:
        """STATS: the registry's next snapshot (``metrics``, docs/metrics.md), with the
        summary the sensors table keeps (packets, dropped, queue depth ...)."""
        snapshot = self.metrics.taker.take()
        summary = summarize(snapshot.figures)
        transport.send_message(MessageType.STATS, {**summary, "metrics": snapshot.to_json()})

    def _report(self) -> None:
        try:
            stats = self.sniffer_stat()
            transport = self.uplink.transport
            if transport is not None:
                self._push_stats(transport)
            if self.mode == "mirror":
                self.uplink.report_drops()
            self._ticks += 1
            if self._ticks % STATUS_EVERY == 0:
                log.info("status: central {central}, {packets} packets, {dropped} dropped, "
                         "queue {queue_depth}", central=stats["central"] or "none",
                         packets=stats["packets"], dropped=stats["dropped"],
                         queue_depth=stats["queue_depth"])
            if (self.exit_when_done and self.failover.connected_index is None
                    and self.clock.seconds() - self._last_connected >= self.give_up_after):
                self._exit(1, f"cannot deliver: no central reachable for "
                              f"{self.give_up_after:g} s")
        except Exception:
            log.failure("stats report failed")

    def _exit(self, status: int, message: str) -> None:
        if self.exit_status is not None:
            return
        self.exit_status = status
        if status:
            log.error("{message}", message=message)
        else:
            log.info("{message}", message=message)
        if self.on_exit is not None:
            # In a turn of its own: the caller may be deep inside ClientService's machine,
            # and on_exit stops services.
            self.clock.callLater(0, self.on_exit, status, message)

    # -- management port -------------------------------------------------------------

    def sniffer_stat(self) -> dict[str, Any]:
        """The management port's view of the metrics registry (plus who and where)."""
        figures = self.metrics.figures()
        uplink = self.uplink.counters()
        stats: dict[str, Any] = {
            "version": voipmon.__version__, "id_sensor": self.id_sensor,
            "mode": self.mode, "source": self.source.name, **summarize(figures),
            "central": self.failover.current, "failover_switches": self.failover.switches,
            "uptime": round(time.time() - self.started_at, 1),
            "uplink": {"mode": self.uplink.mode, **uplink},
            "metrics": figures.to_json(),
        }
        if self.engine is None:
            stats["queue_depth"] = int(uplink.get("ready_batches", 0))
        return stats

    def list_active_calls(self) -> list[dict[str, Any]]:
        return self.engine.active_calls() if self.engine is not None else []

    def list_registrations(self, active_only: bool = True) -> list[dict[str, Any]]:
        return self.engine.registrations(active_only) if self.engine is not None else []

    # -- life ------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred:
        if not self.running:
            return defer.succeed(None)
        finished = self.source.done.called
        transport = self.uplink.transport
        if transport is not None:
            # The figures as they are now, before the channel closes: the central keeps
            # them (up 0) and the last periodic push may be up to STATS_INTERVAL old.
            try:
                self._push_stats(transport)
            except Exception:
                log.failure("the last STATS before stopping")
        d = defer.maybeDeferred(super().stopService)
        if self.engine is not None and self.source.live and not finished:
            # Live capture: calls in progress are closed and their CDRs kept on disk.
            try:
                self.engine.finish()
            except Exception:
                log.failure("closing the calls in progress at shutdown")
        uplink, queue = self.uplink, self.queue

        def close(result: object) -> object:
            try:
                uplink.close()
                if queue is not None:
                    queue.close()
            except QueueError:
                log.failure("closing the CDR queue")
            return result

        d.addBoth(close)
        return d


def summarize(figures: Figures) -> dict[str, int]:
    """The few figures the sensors table, sniffer_stat and the status line show."""
    def whole(*names: str) -> int:
        return int(sum(figures.total(name) or 0 for name in names))

    out = {"packets": whole("voipmon_sensor_packets_total"),
           "dropped": whole("voipmon_sensor_dropped_packets_total",
                            "voipmon_mirror_dropped_packets_total"),
           "queue_depth": whole("voipmon_sensor_queue_records"),
           "cdrs": whole("voipmon_cdrs_made_total"),
           "dead_letters": whole("voipmon_dead_letters_total")}
    if figures.total("voipmon_calls_active") is not None:
        out["active_calls"] = whole("voipmon_calls_active")
    return out
