"""The deprecated legacy mirror receiver on a central (``mirror_bind``).

See ``voipmon.protocols.legacy_mirror`` for the protocol. The receiver listens on plain
TCP behind an admission gate and keeps one analysis engine per sending sensor, across its
reconnects (a new process of the same sensor keeps the engine and starts its batch
numbering afresh); it drops a batch it already has, and advances each engine on its
sender's clock. ``receiver_service`` builds it for a central: the engines are the
mirroring sensors' (default analysis settings, pcaps under ``spooldir/<id_sensor>``), and
their CDRs go to the central's CDR queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import endpoints, protocol, task
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import failure, usage
from zope.interface import implementer

from voipmon.central.cdrqueue import CentralCdrQueue
from voipmon.central.service import mirror_engine_factory
from voipmon.config import CentralSettings, Destination
from voipmon.protocols import handshake, wire
from voipmon.protocols.admission import AdmissionGate
from voipmon.protocols.gated import gated
from voipmon.protocols.legacy_mirror import ILegacyReceiver, ReceiverProtocol
from voipmon.sources.interfaces import IFrameSink
from voipmon.spool.deadletter import IDeadLetters

log = Logger()

ADVANCE_INTERVAL = 1.0            # engine timeouts, on each sender's clock

#: engine_factory(id_sensor, name) -> an engine as voipmon.analysis.engine.Engine: an
#: IFrameSink with advance(now) and finish().
EngineFactory = Callable[[int, str], Any]


class CannotListen(usage.UsageError):
    """mirror_bind cannot be listened on; one line saying why."""


class SenderState:
    """What the receiver keeps per sending sensor, across its reconnects."""

    def __init__(self, id_sensor: int, name: str, engine: IFrameSink) -> None:
        self.id_sensor = id_sensor
        self.name = name
        self.engine = engine
        self.instance = ""
        self.last_seq = 0
        self.skew = 0.0
        self.connection: ReceiverProtocol | None = None
        self.packets = self.batches = self.duplicates = self.engine_errors = 0

    def stats(self) -> dict[str, object]:
        return {"name": self.name, "connected": self.connection is not None,
                "packets": self.packets, "batches": self.batches,
                "duplicate_batches": self.duplicates, "engine_errors": self.engine_errors,
                "clock_skew": round(self.skew, 3)}


@implementer(ILegacyReceiver)
class LegacyMirrorReceiver(service.Service):
    """Listens on ``mirror_bind``; feeds each sensor's packets to its own engine."""

    def __init__(self, bind: Destination, *, password: str, max_time_diff: float,
                 engine_factory: EngineFactory, reactor: Any, clock: IReactorTime | None = None,
                 endpoint: IStreamServerEndpoint | None = None,
                 advance_interval: float = ADVANCE_INTERVAL) -> None:
        self.bind = bind
        self.key = handshake.derive_key(password)
        self.max_time_diff = max_time_diff
        self.engine_factory = engine_factory
        self.clock = clock if clock is not None else reactor
        if endpoint is None:
            kind = endpoints.TCP6ServerEndpoint if ":" in bind.host else \
                endpoints.TCP4ServerEndpoint
            endpoint = kind(reactor, bind.port, interface=bind.host)
        self.endpoint = endpoint
        # Connections not through the handshake yet: bounded, idle ones dropped first.
        self.gate = AdmissionGate(f"legacy mirror port {bind.port}", self.clock)
        self.senders: dict[int, SenderState] = {}
        self.connections: set[ReceiverProtocol] = set()
        self.port: Any = None
        self._advance = task.LoopingCall(self.advance)
        self._advance.clock = self.clock
        self.advance_interval = advance_interval

    # -- ILegacyReceiver: the connections' events ----------------------------------------

    def opened(self, channel: ReceiverProtocol) -> None:
        self.connections.add(channel)

    def attach(self, channel: ReceiverProtocol, hello: handshake.Hello,
               skew: float) -> SenderState:
        """A sensor passed the handshake: its state, engine and duplicate tracking."""
        state = self.senders.get(hello.id_sensor)
        if state is not None and state.connection is not None:
            if state.instance != hello.instance:
                raise handshake.Rejection(
                    handshake.ID_IN_USE, f"id_sensor {hello.id_sensor} is already connected "
                    f"from {state.connection.peer}")
            state.connection.transport.abortConnection()  # its own stale connection
        if state is None:
            engine = self.engine_factory(hello.id_sensor, hello.name)
            state = self.senders[hello.id_sensor] = SenderState(hello.id_sensor, hello.name,
                                                                 engine)
        if state.instance != hello.instance:
            state.instance, state.last_seq = hello.instance, 0
        state.name, state.skew, state.connection = hello.name, skew, channel
        log.info("legacy mirror: sensor {id} ({name}) connected from {peer}, clock skew "
                 "{skew:.3f} s (deprecated mode; prefer packetbuffer_sender = yes)",
                 id=hello.id_sensor, name=hello.name, peer=channel.peer, skew=skew)
        return state

    def packets(self, state: SenderState, payload: bytes) -> int:
        seq, linktype, packets = wire.decode_packets(payload)
        if seq <= state.last_seq:
            state.duplicates += 1
            return seq
        try:
            state.engine.feed_all((ts, linktype, frame) for ts, _wirelen, frame in packets)
        except Exception:
            state.engine_errors += 1
            if state.engine_errors == 1 or state.engine_errors % 1000 == 0:
                log.failure("legacy mirror: sensor {id}: the engine failed on a batch "
                            "({count} so far); the rest of that batch is skipped",
                            id=state.id_sensor, count=state.engine_errors)
        state.last_seq = seq
        state.batches += 1
        state.packets += len(packets)
        return seq

    def closed(self, channel: ReceiverProtocol, state: SenderState | None,
               reason: str) -> None:
        self.connections.discard(channel)
        if state is not None and state.connection is channel:
            state.connection = None
            log.info("legacy mirror: sensor {id} ({name}) disconnected: {reason}",
                     id=state.id_sensor, name=state.name, reason=reason)

    def advance(self) -> None:
        """Let each engine time out calls, on its sensor's clock."""
        now = self.clock.seconds()
        for state in list(self.senders.values()):
            try:
                state.engine.advance(now - state.skew)
            except Exception:
                log.failure("legacy mirror: sensor {id}: engine advance failed",
                            id=state.id_sensor)

    # -- lifecycle ---------------------------------------------------------------------------

    def listen(self) -> None:
        """Listen on ``bind`` now; CannotListen (one line) if the port is taken."""
        results: list[Any] = []
        factory = gated(self.gate, protocol.Factory.forProtocol(
            lambda: ReceiverProtocol(self)))
        self.endpoint.listen(factory).addBoth(results.append)
        if not results:
            raise CannotListen(f"mirror_bind {self.bind}: the endpoint did not listen at once")
        if isinstance(results[0], failure.Failure):
            raise CannotListen(f"mirror_bind {self.bind}: cannot listen: "
                               f"{results[0].getErrorMessage()}")
        self.port = results[0]
        log.warn("legacy mirror receiver listening on {bind} (deprecated: plain TCP, "
                 "packets in clear; prefer packetbuffer_sender = yes)", bind=self.bind)

    def privilegedStartService(self) -> None:
        """Listen before twistd drops privileges; a failure ends the process with one line
        (twistd runs this outside its option handling)."""
        if self.port is None:
            try:
                self.listen()
            except CannotListen as exc:
                log.critical("{reason}", reason=str(exc))
                raise SystemExit(f"voipmon-central: {exc}")
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        if self.port is None:
            self.listen()
        service.Service.startService(self)
        self._advance.start(self.advance_interval, now=False)

    def stopService(self) -> Any:
        service.Service.stopService(self)
        if self._advance.running:
            self._advance.stop()
        for channel in list(self.connections):
            channel.close("the receiver is shutting down")
        for state in self.senders.values():
            try:
                state.engine.finish()
            except Exception:
                log.failure("legacy mirror: sensor {id}: engine finish failed",
                            id=state.id_sensor)
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None

    def stats(self) -> dict[str, object]:
        return {"bind": str(self.bind), "connections": len(self.connections),
                "sensors": {sid: state.stats() for sid, state in self.senders.items()}}


def receiver_service(settings: CentralSettings, cdr_queue: CentralCdrQueue,
                     dead_letters: IDeadLetters, reactor: Any) -> LegacyMirrorReceiver | None:
    """The receiver on ``mirror_bind`` for a central, or None when it is not set."""
    bind = settings.legacy_mirror.mirror_bind
    if bind is None:
        return None
    make = mirror_engine_factory(settings.spool.spooldir, dead_letters)

    def engine(id_sensor: int, name: str) -> Any:
        hello = handshake.Hello(id_sensor, name, "", "mirror", "none", 0.0, b"", "")
        return make(hello, cdr_queue.add)

    return LegacyMirrorReceiver(
        bind, password=settings.channel.server_password,
        max_time_diff=settings.legacy_mirror.mirror_connect_maximum_time_diff_s,
        engine_factory=engine, reactor=reactor)
