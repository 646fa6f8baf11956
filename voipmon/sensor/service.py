"""The sensor's service tree: source -> (engine ->) uplink -> channel, with failover.

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

import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

import voipmon
from voipmon.analysis.settings import analysis_to_hello, engine_for
from voipmon.config import Destination, SensorSettings, destinations
from voipmon.config.settings import ChannelClientSettings
from voipmon.manager.commands import ICallLister, IStatsProvider
from voipmon.manager.service import advertised_manager, make_manager_service
from voipmon.protocols import tls
from voipmon.protocols.client import AuthenticatingEndpoint
from voipmon.protocols.failover import (
    FailbackProber,
    FailoverEndpoint,
    FailoverRoundFailed,
    describe_failure,
)
from voipmon.protocols.handshake import PERMANENT, CentralProofFailed, ClientHandshake, Rejection
from voipmon.protocols.wire import MessageType
from voipmon.queue import DurableQueue, QueueError
from voipmon.sensor.mirror import MirrorUplink
from voipmon.sensor.uplink import CdrUplink, UplinkFactory
from voipmon.sources import registry as sources
from voipmon.sources.interfaces import IFrameSink
from voipmon.spool.deadletter import DIRECTORY as DEAD_LETTERS
from voipmon.spool.deadletter import DeadLetters, IDeadLetters

log = Logger()

CONNECT_TIMEOUT = 5.0
STATS_INTERVAL = 10.0
STATUS_EVERY = 6          # a status line every 6 stats intervals (a minute)
GIVE_UP_AFTER = 300.0     # --exit-when-done: no central for this long = cannot deliver
ADVANCE_INTERVAL = 1.0
UNDELIVERED = 3           # --exit-when-done: done, but some records are dead letters


def default_engine(settings: SensorSettings, on_cdr: Callable[[Any], None],
                   dead_letters: IDeadLetters | None = None) -> Any:
    """The analysis engine of a local-processing sensor, writing pcaps to its spool."""
    return engine_for(settings.analysis, id_sensor=settings.channel.id_sensor,
                      spooldir=settings.spool.spooldir, on_cdr=on_cdr,
                      dead_letters=dead_letters)


def tls_endpoint(channel: ChannelClientSettings, reactor: Any,
                 destination: Destination) -> tuple[Any, Any]:
    """(TLS client endpoint, its connection creator) for one central."""
    creator = tls.client_creator(destination.host, pin=channel.server_certificate_sha256,
                                 ca_file=channel.server_ca_file)
    tcp = endpoints.HostnameEndpoint(reactor, destination.host, destination.port,
                                     timeout=CONNECT_TIMEOUT)
    return endpoints.wrapClientTLS(creator, tcp), creator


class _Probe(protocol.Protocol):
    """The session of a failback probe: it only proves the primary answers."""

    def messageReceived(self, kind: MessageType, payload: bytes) -> None:
        pass


@implementer(IStatsProvider, ICallLister)
class SensorService(service.MultiService):
    """Everything one sensor process runs."""

    def __init__(self, settings: SensorSettings, reactor: Any, *, read_pcap: str | None = None,
                 exit_when_done: bool = False, clock: Any = None,
                 connect_via: Callable[[Destination], Any] | None = None,
                 binding: Callable[[Any], bytes] = tls.exporter_binding,
                 engine_factory: Callable[..., Any] = default_engine,
                 on_exit: Callable[[int, str], None] | None = None,
                 give_up_after: float = GIVE_UP_AFTER, manager_port: int | None = None,
                 source: Any = None) -> None:
        super().__init__()
        self.setName("voipmon-sensor")
        self.settings = settings
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.read_pcap = read_pcap
        self.exit_when_done = exit_when_done
        self.on_exit = on_exit
        self.give_up_after = give_up_after
        self.mode = "mirror" if settings.channel.packetbuffer_sender else "local"
        self.instance = secrets.token_hex(16)
        self.started_at = time.time()
        self.engine: Any = None
        self.queue: DurableQueue | None = None
        self.exit_status: int | None = None
        self.dead_letters = DeadLetters(os.path.join(settings.spool.spooldir, DEAD_LETTERS),
                                        self.clock)
        self._last_connected = self.clock.seconds()
        self._ticks = 0
        self._announced: set[tuple[str, str]] = set()

        self.uplink = self._make_uplink(engine_factory)
        self._make_channel(connect_via, binding)
        self._make_source(source)
        self._make_timers()
        manager = make_manager_service(settings.manager, reactor,
                                       spooldir=settings.spool.spooldir,
                                       password=settings.channel.server_password,
                                       id_sensor=settings.channel.id_sensor,
                                       stats=self, calls=self, port=manager_port)
        if manager is not None:
            manager.setServiceParent(self)

    # -- building ------------------------------------------------------------------

    def _make_uplink(self, engine_factory: Callable[..., Any]) -> Any:
        if self.mode == "mirror":
            return MirrorUplink(self.clock, self.settings.mirroring.max_buffer_mem * 1024 * 1024)
        path = os.path.join(self.settings.spool.spooldir, "queue")
        try:
            self.queue = DurableQueue(path)
        except (QueueError, OSError) as exc:
            raise usage.UsageError(f"{self.settings.where('spooldir')}: spooldir = "
                                   f"{self.settings.spool.spooldir}: cannot use the CDR "
                                   f"queue: {exc}")
        uplink = CdrUplink(self.queue, self.clock)
        self.engine = engine_factory(self.settings, uplink.add,
                                     dead_letters=self.dead_letters)
        return uplink

    def _hello_factory(self, probe: bool = False) -> Callable[[], ClientHandshake]:
        from voipmon.protocols.handshake import derive_key

        channel = self.settings.channel
        key = derive_key(channel.server_password)
        params = dict(id_sensor=channel.id_sensor, name=channel.name_sensor,
                      version=voipmon.__version__, mode=self.mode,
                      compression=channel.server_type_compress, instance=self.instance,
                      manager=advertised_manager(self.settings.manager),
                      replay=self.read_pcap is not None, probe=probe,
                      analysis=analysis_to_hello(self.settings.analysis)
                      if self.mode == "mirror" else {})
        seconds = self.clock.seconds  # the reactor's: wall-clock UTC epoch seconds

        def make() -> ClientHandshake:
            return ClientHandshake(key, seconds=seconds, **params)

        return make

    def _make_channel(self, connect_via: Callable[[Destination], Any] | None,
                      binding: Callable[[Any], bytes]) -> None:
        self.destinations = destinations(self.settings.channel)
        self.creators: list[Any] = []
        children = []
        probe = None
        for index, destination in enumerate(self.destinations):
            if connect_via is None:
                transport, creator = tls_endpoint(self.settings.channel, self.reactor,
                                                  destination)
            else:
                transport, creator = connect_via(destination), None
            self.creators.append(creator)
            compression = self.settings.channel.server_type_compress
            children.append((str(destination), AuthenticatingEndpoint(
                transport, self._hello_factory(), compression, self.clock, binding)))
            if index == 0:
                probe = AuthenticatingEndpoint(transport, self._hello_factory(probe=True),
                                               compression, self.clock, binding)
        self.failover = FailoverEndpoint(children, self.clock,
                                         on_round_failed=self._round_failed)
        factory = UplinkFactory(self.uplink, on_lost=self._lost, on_made=self._made)
        self.client = internet.ClientService(self.failover, factory,
                                             retryPolicy=self.failover.retry_delay,
                                             clock=self.clock)
        self.client.setName("channel")
        self.client.setServiceParent(self)
        if len(children) > 1:
            self.prober = FailbackProber(self.failover, probe,
                                         protocol.Factory.forProtocol(_Probe),
                                         self.settings.channel.failback_probe_interval,
                                         self.clock,
                                         self._fail_back)
            self.prober.setName("failback")
            self.prober.setServiceParent(self)

    def _make_source(self, source: Any) -> None:
        sink: IFrameSink = self.uplink if self.mode == "mirror" else self.engine
        if source is None:
            source = sources.from_config(self.settings, sink, self.reactor,
                                         read_pcap=self.read_pcap, clock=self.clock)
        self.source = source
        self.source.done.addCallback(self._source_ended).addErrback(
            lambda f: log.failure("closing the calls at the end of the capture", f))
        self.source.setServiceParent(self)  # added last: stopped first

    def _make_timers(self) -> None:
        stats = internet.TimerService(STATS_INTERVAL, self._report)
        stats.clock = self.clock
        stats.setName("stats")
        stats.setServiceParent(self)
        if self.read_pcap is None:
            # Live capture: the engine's clock must move even when no packet comes; in
            # mirroring the engine is the central's, and the uplink carries the clock there.
            advance = internet.TimerService(ADVANCE_INTERVAL, self._advance)
            advance.clock = self.clock
            advance.setName("advance")
            advance.setServiceParent(self)
        spool = self.settings.spool
        if self.mode == "local" and (spool.maxpoolsize or spool.maxpooldays):
            from twisted.internet import threads

            from voipmon.spool.retention import Retention

            retention = Retention(spool.spooldir, spool.maxpoolsize, spool.maxpooldays,
                                  self.clock,
                                  blocking=lambda f: threads.deferToThreadPool(
                                      self.reactor, self.reactor.getThreadPool(), f))
            retention.setServiceParent(self)

    # -- running -------------------------------------------------------------------

    def _advance(self) -> None:
        try:
            if self.engine is not None:
                self.engine.advance(self.clock.seconds())
            else:
                self.uplink.advance_clock()
        except Exception:
            log.failure("engine housekeeping failed")

    def _source_ended(self, _: object = None) -> None:
        if self.engine is not None:
            self.engine.finish()
        self.uplink.finish_source()
        if self.exit_when_done:
            self.uplink.when_done().addCallback(self._delivered)

    def _delivered(self, _: Any) -> None:
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
        error = self.source.error
        if error:  # a damaged capture: what it held is delivered, yet the run failed
            self._exit(1, f"{message}; but the capture stopped early: {error}")
            return
        self._exit(UNDELIVERED if undelivered else 0, message)

    def _made(self, channel: Any) -> None:
        self._last_connected = self.clock.seconds()
        channel_settings = self.settings.channel
        if channel_settings.server_certificate_sha256 or channel_settings.server_ca_file:
            return
        fingerprint = tls.peer_fingerprint(getattr(channel, "transport", None))
        if fingerprint and (channel.peer, fingerprint) not in self._announced:
            self._announced.add((channel.peer, fingerprint))
            log.warn("central {central}: TLS certificate SHA-256 {fingerprint} is not verified "
                     "(only the password proof authenticates the central); set "
                     "server_certificate_sha256 = {fingerprint} to pin it",
                     central=channel.peer, fingerprint=fingerprint)

    def _lost(self, reason: Failure) -> None:
        self._last_connected = self.clock.seconds()
        emit = log.info if not self.running or self.exit_status is not None else log.warn
        emit("connection to central {central} closed: {reason}",
             central=self.failover.current or "?", reason=describe_failure(reason))

    def _fail_back(self, reason: str) -> None:
        transport = getattr(self.uplink, "transport", None)
        if transport is not None:
            transport.close(reason)

    def _round_failed(self, error: FailoverRoundFailed) -> None:
        if not self.exit_when_done:
            return
        pins = {name: getattr(creator, "mismatch", None)
                for (name, _), creator in zip(self.failover.endpoints, self.creators, strict=True)}
        permanent = [
            (name, f) for name, f in error.attempts
            if (f.check(Rejection) and f.value.code in PERMANENT) or f.check(CentralProofFailed)
            or pins.get(name)
        ]
        if permanent and len(permanent) == len(error.attempts):
            reasons = "; ".join(f"{name}: {pins.get(name) or describe_failure(f)}"
                                for name, f in permanent)
            self._exit(2, f"cannot deliver: every central refused this sensor ({reasons})")

    def _report(self) -> None:
        try:
            stats = self.sniffer_stat()
            transport = getattr(self.uplink, "transport", None)
            if transport is not None:
                transport.send_message(MessageType.STATS, {
                    k: stats[k] for k in ("packets", "dropped", "queue_depth", "cdrs",
                                          "dead_letters")
                    if isinstance(stats.get(k), int)})
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
        source = self.source.stats()
        uplink = self.uplink.counters()
        dropped = int(source.get("dropped", 0)) + int(uplink.get("dropped", 0))
        stats: dict[str, Any] = {
            "version": voipmon.__version__, "id_sensor": self.settings.channel.id_sensor,
            "mode": self.mode, "source": self.source.name,
            "packets": int(source.get("packets", 0)), "dropped": dropped,
            "central": self.failover.current, "failover_switches": self.failover.switches,
            "uptime": round(time.time() - self.started_at, 1),
            "queue_depth": int(uplink.get("queue_depth", uplink.get("ready_batches", 0))),
            "cdrs": int(uplink.get("cdrs", 0)), "uplink": {"mode": self.uplink.mode, **uplink},
            "dead_letters": self.dead_letters.count,
        }
        if self.engine is not None:
            try:
                stats["active_calls"] = len(self.engine.active_calls())
            except Exception:
                stats["active_calls"] = None
        return stats

    def list_active_calls(self) -> list[dict[str, Any]]:
        return self.engine.active_calls() if self.engine is not None else []

    # -- life ------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred:
        if not self.running:
            return defer.succeed(None)
        finished = self.source.done.called
        d = defer.maybeDeferred(super().stopService)
        if self.engine is not None and self.read_pcap is None and not finished:
            # Live capture: calls in progress are closed and their CDRs kept on disk.
            try:
                self.engine.finish()
            except Exception:
                log.failure("closing the calls in progress at shutdown")
        uplink, queue = self.uplink, self.queue

        def close(result: Any) -> Any:
            try:
                uplink.close()
                if queue is not None:
                    queue.close()
            except QueueError:
                log.failure("closing the CDR queue")
            return result

        d.addBoth(close)
        return d
