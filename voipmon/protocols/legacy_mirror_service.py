"""The legacy mirror's services: ``LegacyMirrorSender`` (sensor) and ``LegacyMirrorReceiver``.

Deprecated mode; see ``voipmon.protocols.legacy_mirror`` for the protocol. The sender is
the LiveCapture sink of a sensor with ``mirror_destination``: it buffers packets and a
``ClientService`` delivers them, reconnecting with backoff. The receiver listens on a
central's ``mirror_bind`` and keeps one analysis engine per sending sensor.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, endpoints, protocol, task
from twisted.logger import Logger
from twisted.python import failure, usage

from voipmon.config import Destination
from voipmon.config.settings import (
    ChannelClientSettings,
    MirroringSettings,
    MirrorReceiverSettings,
)
from voipmon.protocols import handshake, wire
from voipmon.protocols.admission import AdmissionGate
from voipmon.protocols.gated import gated
from voipmon.protocols.legacy_mirror import (
    ADVANCE_INTERVAL,
    FLUSH_INTERVAL,
    WINDOW_BYTES,
    MirrorBuffer,
    ReceiverProtocol,
    SenderProtocol,
    SenderState,
)
from voipmon.protocols.wire import MessageType as T

log = Logger()

#: engine_factory(id_sensor, name) -> an engine as voipmon.analysis.engine.Engine:
#: feed_all(records) (or feed(ts, linktype, frame)), advance(now) and finish().
EngineFactory = Callable[[int, str], Any]


class CannotListen(usage.UsageError):
    """mirror_bind cannot be listened on; one line saying why."""


# -- the services --------------------------------------------------------------------------


class _Factory(protocol.Factory):
    def __init__(self, make: Callable[[], protocol.Protocol]) -> None:
        self.make = make

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        proto = self.make()
        proto.factory = self
        return proto


class LegacyMirrorSender(service.Service):
    """A sensor's packet sink in legacy mirror mode: ``feed`` buffers, a ClientService sends.

    Use ``feed`` as the LiveCapture sink. Stopping waits (up to ``stop_timeout`` seconds,
    connecting if need be) for the receiver to acknowledge what is buffered, then reports
    what it could not send.
    """

    def __init__(self, destination: Destination, *, id_sensor: int, name: str, password: str,
                 max_buffer_mb: int, reactor: Any, clock: Any = None, endpoint: Any = None,
                 retry_policy: Callable[[int], float] | None = None,
                 stop_timeout: float = 5.0) -> None:
        self.destination = destination
        self.id_sensor = id_sensor
        self.name = name or f"sensor {id_sensor}"
        self.key = handshake.derive_key(password)
        self.clock = clock if clock is not None else reactor
        self.instance = secrets.token_hex(16)
        self.buffer = MirrorBuffer(max_buffer_mb << 20)
        self.stop_timeout = stop_timeout
        self.last_error = ""
        if endpoint is None:
            endpoint = endpoints.HostnameEndpoint(reactor, destination.host, destination.port)
        self._client = ClientService(endpoint, _Factory(lambda: SenderProtocol(self)),
                                     retryPolicy=retry_policy or backoffPolicy(1.0, 30.0),
                                     clock=self.clock)
        self._protocol: SenderProtocol | None = None
        self._flush = task.LoopingCall(self.flush)
        self._flush.clock = self.clock
        self._full = False
        self._drained: list[Any] = []

    @classmethod
    def from_config(cls, channel: ChannelClientSettings, mirroring: MirroringSettings,
                    reactor: Any, **kwargs: Any) -> LegacyMirrorSender:
        if mirroring.mirror_destination is None:
            raise ValueError("a legacy mirror sender needs mirror_destination")
        return cls(mirroring.mirror_destination, id_sensor=channel.id_sensor,
                   name=channel.name_sensor, password=channel.server_password,
                   max_buffer_mb=mirroring.max_buffer_mem, reactor=reactor, **kwargs)

    # -- the sink -------------------------------------------------------------------------

    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        if not self.buffer.add(ts, linktype, frame):
            if not self._full:
                self._full = True
                log.warn("legacy mirror: buffer full ({mb} MB, max_buffer_mem); dropping "
                         "packets until {dest} catches up", mb=self.buffer.max_bytes >> 20,
                         dest=self.destination)
            return
        if self._full:
            self._full = False
            log.info("legacy mirror: buffering again; {dropped} packets dropped so far",
                     dropped=self.buffer.dropped)
        if self.buffer.unsent < len(self.buffer.batches):
            self._pump()

    def feed_all(self, records: Iterable[tuple[float, int, bytes]]) -> int:
        before = self.buffer.packets
        for ts, linktype, frame in records:
            self.feed(ts, linktype, frame)
        return self.buffer.packets - before

    def flush(self) -> None:
        """Send the batch being filled now (runs every FLUSH_INTERVAL seconds)."""
        self.buffer.seal()
        self._pump()

    def _pump(self) -> None:
        if self._protocol is not None:
            for payload in self.buffer.take(WINDOW_BYTES):
                self._protocol.send(T.PACKETS, payload)

    # -- connection events ----------------------------------------------------------------

    def connected(self, proto: SenderProtocol) -> None:
        self._protocol = proto
        self.last_error = ""
        self.buffer.rewind()
        log.info("legacy mirror: connected to {dest} (deprecated mode: plain TCP; prefer "
                 "packetbuffer_sender = yes); {count} packets to resend",
                 dest=self.destination, count=self.buffer.unacknowledged)
        self._pump()

    def disconnected(self, proto: SenderProtocol, reason: str) -> None:
        if self._protocol is proto:
            self._protocol = None
            if not self.running:
                log.info("legacy mirror: disconnected from {dest}", dest=self.destination)
                return
            self.last_error = reason
            log.warn("legacy mirror: connection to {dest} broke: {reason}; reconnecting",
                     dest=self.destination, reason=reason)

    def acknowledged(self, upto: int) -> None:
        self.buffer.ack(upto)
        if not self.buffer.batches and self._drained:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)
        self._pump()

    # -- lifecycle and counters ------------------------------------------------------------

    def startService(self) -> None:
        service.Service.startService(self)
        self._client.startService()
        self._flush.start(FLUSH_INTERVAL, now=False)

    def stopService(self) -> Any:
        service.Service.stopService(self)
        if self._flush.running:
            self._flush.stop()
        self.buffer.seal()
        self._pump()
        drained: defer.Deferred[None] = defer.Deferred()
        if self.buffer.batches:  # connected or still connecting: give it stop_timeout
            self._drained.append(drained)
            timer = self.clock.callLater(self.stop_timeout, drained.callback, None)
            drained.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        else:
            drained.callback(None)

        def stop(_: object) -> Any:
            if self._drained:
                self._drained = []
            lost = self.buffer.unacknowledged
            if lost:
                log.warn("legacy mirror: stopping with {count} packets not acknowledged by "
                         "{dest}; they are lost", count=lost, dest=self.destination)
            return self._client.stopService()

        return drained.addCallback(stop)

    def stats(self) -> dict[str, Any]:
        buffer = self.buffer
        return {"destination": str(self.destination), "connected": self._protocol is not None,
                "packets": buffer.packets, "dropped": buffer.dropped,
                "acknowledged": buffer.acked_packets, "unacknowledged": buffer.unacknowledged,
                "buffer_bytes": buffer.bytes, "last_error": self.last_error}


class LegacyMirrorReceiver(service.Service):
    """Listens on ``mirror_bind``; feeds each sensor's packets to its own engine."""

    def __init__(self, bind: Destination, *, password: str, max_time_diff: float,
                 engine_factory: EngineFactory, reactor: Any, clock: Any = None,
                 endpoint: Any = None, advance_interval: float = ADVANCE_INTERVAL) -> None:
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

    @classmethod
    def from_config(cls, settings: MirrorReceiverSettings, password: str,
                    engine_factory: EngineFactory, reactor: Any,
                    **kwargs: Any) -> LegacyMirrorReceiver:
        if settings.mirror_bind is None:
            raise ValueError("a legacy mirror receiver needs mirror_bind")
        return cls(settings.mirror_bind, password=password,
                   max_time_diff=settings.mirror_connect_maximum_time_diff_s,
                   engine_factory=engine_factory, reactor=reactor, **kwargs)

    # -- sessions ---------------------------------------------------------------------------

    def attach(self, proto: ReceiverProtocol, hello: handshake.Hello,
               skew: float) -> SenderState:
        """A sensor passed the handshake: its state, engine and duplicate tracking."""
        state = self.senders.get(hello.id_sensor)
        if state is not None and state.connection is not None:
            if state.instance != hello.instance:
                raise handshake.Rejection(
                    handshake.ID_IN_USE, f"id_sensor {hello.id_sensor} is already connected "
                    f"from {state.connection.peer()}")
            state.connection.transport.abortConnection()  # its own stale connection
        if state is None:
            engine = self.engine_factory(hello.id_sensor, hello.name)
            state = self.senders[hello.id_sensor] = SenderState(hello.id_sensor, hello.name,
                                                                 engine)
        if state.instance != hello.instance:
            state.instance, state.last_seq = hello.instance, 0
        state.name, state.skew, state.connection = hello.name, skew, proto
        log.info("legacy mirror: sensor {id} ({name}) connected from {peer}, clock skew "
                 "{skew:.3f} s (deprecated mode; prefer packetbuffer_sender = yes)",
                 id=hello.id_sensor, name=hello.name, peer=proto.peer(), skew=skew)
        return state

    def packets(self, state: SenderState, payload: bytes) -> None:
        seq, linktype, packets = wire.decode_packets(payload)
        if seq <= state.last_seq:
            state.duplicates += 1
            return
        engine = state.engine
        try:
            if hasattr(engine, "feed_all"):
                engine.feed_all((ts, linktype, frame) for ts, _wirelen, frame in packets)
            else:
                for ts, _wirelen, frame in packets:
                    engine.feed(ts, linktype, frame)
        except Exception:
            state.engine_errors += 1
            if state.engine_errors == 1 or state.engine_errors % 1000 == 0:
                log.failure("legacy mirror: sensor {id}: the engine failed on a batch "
                            "({count} so far); the rest of that batch is skipped",
                            id=state.id_sensor, count=state.engine_errors)
        state.last_seq = seq
        state.batches += 1
        state.packets += len(packets)

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
        factory = gated(self.gate, _Factory(lambda: ReceiverProtocol(self)))
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
        for proto in list(self.connections):
            proto.transport.loseConnection()
        for state in self.senders.values():
            try:
                state.engine.finish()
            except Exception:
                log.failure("legacy mirror: sensor {id}: engine finish failed",
                            id=state.id_sensor)
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None

    def stats(self) -> dict[str, Any]:
        return {"bind": str(self.bind), "connections": len(self.connections),
                "sensors": {sid: state.stats() for sid, state in self.senders.items()}}
