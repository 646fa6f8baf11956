"""The central's end of the channel: handshake, one session per sensor id, hand-off to logic.

``CentralChannel`` answers the hello with a challenge (or a rejection), checks the
sensor's proof, claims the sensor id in the ``SessionRegistry`` and only then proves the
password itself and opens a session through the ``ISessionHandler`` (the CDR store and the
mirroring engines live behind it, in voipmon.central). Every refusal is logged here and
sent to the sensor with the same words. A fault on one connection closes that connection
only. Once a sensor is in, its channel carries the central's requests to it (a
``Requester`` per channel, voipmon.protocols.rpc), and ``SessionRegistry.request`` is how
the rest of the central (the web API) asks a connected sensor anything. The listener's
admission gate (voipmon.protocols.admission) bounds the connections
still in their handshake; the channel reports each one's progress to it (TLS established,
a well-formed hello, authenticated) and the gate's deadline is its handshake deadline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

import voipmon
from voipmon.protocols.admission import GREETED, SECURED, Ticket
from voipmon.protocols.capabilities import SUPPORTED, Capabilities
from voipmon.protocols.channel import PING_INTERVAL, ChannelProtocol
from voipmon.protocols.compression import CODECS, get_codec
from voipmon.protocols.dispatch import CENTRAL, DECODERS, Dispatcher, raw
from voipmon.protocols.gated import IGated
from voipmon.protocols.handshake import (
    ID_IN_USE,
    MALFORMED,
    Hello,
    Rejection,
    ServerHandshake,
)
from voipmon.protocols.rpc.requester import LIMIT, TIMEOUT, Head, Requester, RequestFailed
from voipmon.protocols.wire import MAX_FRAME, MessageType, ProtocolError, decode_json

OFFLINE = "offline"        # RequestFailed code: the sensor is not connected to this central

WINDOW = 16                # batches a sensor may have unacknowledged

HANDSHAKE_DECODERS = {**DECODERS, MessageType.HELLO: raw}


class ISession(Interface):
    """The logic serving one authenticated sensor connection. Its ``on_<type>`` methods
    take the sensor's messages, decoded, from the channel's dispatcher (raise
    ProtocolError to close the channel)."""

    def connectionLost(reason):
        """The channel closed."""


class ISessionHandler(Interface):
    """Opens the session for a sensor that authenticated (voipmon.central.sessions)."""

    def open_session(channel, hello):
        """Return an ISession for ``channel`` (an IMessageTransport) and its Hello."""


class SessionRegistry:
    """At most one channel per id_sensor.

    A second connection with the same id is refused while the first is alive, unless it
    comes from the same sensor process (same ``instance``): then it takes the old session
    over, because the old one is a leftover of a network failure the sensor noticed first.
    A session not heard from for ``stale_after`` seconds (pings come every 5 s) is dead and
    any claimant replaces it.
    """

    def __init__(self, clock: IReactorTime, stale_after: float = 2 * PING_INTERVAL + 1) -> None:
        self.clock = clock
        self.stale_after = stale_after
        self._channels: dict[int, CentralChannel] = {}

    def claim(self, hello: Hello, channel: CentralChannel) -> CentralChannel | None:
        """Register ``channel`` for ``hello.id_sensor``; returns the channel it replaces."""
        current = self._channels.get(hello.id_sensor)
        if current is not None and current.hello.instance != hello.instance:
            silent = self.clock.seconds() - current.last_received
            if silent < self.stale_after:
                raise Rejection(
                    ID_IN_USE,
                    f"id_sensor {hello.id_sensor} is already connected from {current.peer} "
                    f"(name {current.hello.name!r}, heard from {silent:.0f} s ago); two "
                    f"sensors must not share an id_sensor")
        self._channels[hello.id_sensor] = channel
        return current

    def release(self, channel: CentralChannel) -> bool:
        """Forget ``channel`` if it still holds its id; True if it did."""
        hello = channel.hello
        if hello is not None and self._channels.get(hello.id_sensor) is channel:
            del self._channels[hello.id_sensor]
            return True
        return False

    def get(self, id_sensor: int) -> CentralChannel | None:
        return self._channels.get(id_sensor)

    def connected(self, id_sensor: int) -> bool:
        return id_sensor in self._channels

    def request(self, id_sensor: int, command: str, args: str = "", consumer: Any = None,
                on_head: Callable[[Head], None] | None = None) -> defer.Deferred[int]:
        """Run ``command args`` on sensor ``id_sensor`` over its channel, streaming the
        answer into ``consumer`` (see Requester.request). Fails with RequestFailed: code
        ``offline`` when that sensor is not connected to this central."""
        channel = self._channels.get(id_sensor)
        if channel is None or channel.requester is None:
            return defer.fail(RequestFailed(OFFLINE, f"sensor {id_sensor} is not connected "
                                                     "to this central"))
        return channel.requester.request(command, args, consumer, on_head)

    def query(self, id_sensor: int, command: str, args: str = "") -> defer.Deferred[bytes]:
        """A small answer (JSON, text) of sensor ``id_sensor`` as bytes."""
        channel = self._channels.get(id_sensor)
        if channel is None or channel.requester is None:
            return defer.fail(RequestFailed(OFFLINE, f"sensor {id_sensor} is not connected "
                                                     "to this central"))
        return channel.requester.query(command, args)

    def channels(self) -> list[CentralChannel]:
        return list(self._channels.values())

    def __len__(self) -> int:
        return len(self._channels)


@implementer(IGated, IHandshakeListener)
class CentralChannel(ChannelProtocol):
    """One sensor connection on the central."""

    side = "central"
    admission: Ticket | None = None   # set by the listener's gate before connectionMade

    def __init__(self, handshake: ServerHandshake, registry: SessionRegistry,
                 handler: ISessionHandler, clock: IReactorTime,
                 binding: Callable[[object], bytes], accept_extra: dict[str, object],
                 **timeouts: float) -> None:
        super().__init__(clock, binding, **timeouts)
        self.handshake = handshake
        self.registry = registry
        self.handler = handler
        self.accept_extra = accept_extra
        self.hello: Hello | None = None
        self.session: ISession | None = None
        self.probe = False
        self.rejection: Rejection | None = None
        self.connected_at: float | None = None
        self.requester: Requester | None = None

    def connectionMade(self) -> None:
        if self.admission is not None:
            self.handshake_timeout = 0.0   # the gate's deadline (shorter under a flood)
        super().connectionMade()
        # The handshake's stage: HELLO (taken raw: a hello that is not even JSON is
        # refused with a REJECT naming the problem) and PROOF; the ServerHandshake keeps
        # their order.
        self.dispatcher = Dispatcher(
            CENTRAL, where="before authentication", decoders=HANDSHAKE_DECODERS,
            table={MessageType.HELLO: self._hello, MessageType.PROOF: self._proof,
                   MessageType.CLOSE: self.on_close})

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: TLS is established."""
        if self.admission is not None:
            self.admission.progress(SECURED)

    def _hello(self, payload: bytes) -> None:
        try:
            challenge = self.handshake.receive_hello(decode_json(MessageType.HELLO, payload))
        except Rejection as rejection:
            self.reject(rejection, self.handshake_hello_id(payload))
            return
        except ProtocolError as exc:
            # Tell a sensor of ours what is wrong with its hello, as a refusal.
            self.reject(Rejection(MALFORMED, str(exc)), self.handshake_hello_id(payload))
            return
        self.send_message(MessageType.CHALLENGE, challenge)
        if self.admission is not None:
            self.admission.progress(GREETED)

    @staticmethod
    def handshake_hello_id(payload: bytes) -> object:
        try:
            return decode_json(MessageType.HELLO, payload).get("id_sensor")
        except ProtocolError:
            return None

    def _proof(self, body: dict[str, Any]) -> None:
        hello = self.handshake.hello
        binding = self.binding(self.transport)
        try:
            self.handshake.receive_proof(body, binding)
            if not hello.probe:
                replaced = self.registry.claim(hello, self)
        except Rejection as rejection:
            self.reject(rejection, hello.id_sensor if hello else None)
            return
        self.hello = hello
        if self.admission is not None:
            self.admission.done()
        accept = self.handshake.accept(binding, central=self.factory.central_name,
                                       version=voipmon.__version__, probe=hello.probe,
                                       **self.accept_extra)
        self.send_message(MessageType.ACCEPT, accept)
        self.authenticated_as(get_codec(hello.compression))
        if hello.probe:
            self.probe = True
            # A failback probe's stage: keepalive and its close, nothing else.
            self.dispatcher = Dispatcher(CENTRAL, where="on a failback probe",
                                         table=self.keepalive())
            self.log.debug("failback probe from sensor {id_sensor} ({peer}) answered",
                           id_sensor=hello.id_sensor, peer=self.peer)
            return
        self.connected_at = self.clock.seconds()
        if replaced is not None:
            replaced.close(f"replaced by a new connection of the same sensor from {self.peer}")
            self.log.warn("sensor {id_sensor}: new connection from {peer} takes over the "
                          "session from {old}", id_sensor=hello.id_sensor, peer=self.peer,
                          old=replaced.peer)
        self.log.info("sensor {id_sensor} ({name}) connected from {peer}: mode {mode}, "
                      "compression {compression}, version {version}, clock skew {skew:.3f} s",
                      id_sensor=hello.id_sensor, name=hello.name, peer=self.peer,
                      mode=hello.mode, compression=hello.compression, version=hello.version,
                      skew=self.handshake.skew)
        self.factory.accepted += 1
        self.session = self.handler.open_session(self, hello)
        agreed = self.factory.capabilities.negotiate(Capabilities(hello.capabilities))
        label = f"sensor {hello.id_sensor}"
        self.requester = Requester(self, self.clock, label,
                                   supported="requests" in agreed, **self.factory.requests)
        peer = "a mirroring sensor" if hello.mode == "mirror" else "a local-processing sensor"
        self.dispatch_to(CENTRAL, self.session, self.requester, agreed=agreed, peer=peer)

    def reject(self, rejection: Rejection, id_sensor: object = None) -> None:
        self.rejection = rejection
        self.factory.refusals[rejection.code] += 1
        self.log.warn("refused sensor {id_sensor} from {peer}: {reason}",
                      id_sensor=id_sensor if id_sensor is not None else "?", peer=self.peer,
                      reason=rejection.reason, code=rejection.code)
        self.send_message(MessageType.REJECT, rejection.to_json())
        self.close(f"refused: {rejection.reason}", tell_peer=False)

    def close(self, reason: str, tell_peer: bool = True) -> None:
        if self.admission is not None:
            self.admission.closing()   # not authenticated yet: the first to go for room
        super().close(reason, tell_peer)

    def channel_lost(self, reason: Failure) -> None:
        if self.hello is None or self.probe:
            return
        self.registry.release(self)
        why = self.close_reason or (reason.getErrorMessage() if reason else "closed")
        self.log.info("sensor {id_sensor} ({peer}) disconnected: {reason}",
                      id_sensor=self.hello.id_sensor, peer=self.peer, reason=why)
        if self.requester is not None:
            self.requester.connection_lost(why)
        if self.session is not None:
            session, self.session = self.session, None
            session.connectionLost(reason)


class CentralFactory(protocol.Factory):
    """Builds a CentralChannel per connection; holds what all connections share."""

    noisy = False

    def __init__(self, key: bytes, max_time_diff: float, handler: ISessionHandler,
                 clock: IReactorTime, binding: Callable[[object], bytes], central_name: str = "",
                 registry: SessionRegistry | None = None, window: int = WINDOW,
                 capabilities: Capabilities | None = None,
                 request_limit: int = LIMIT, request_timeout: float = TIMEOUT,
                 **timeouts: float) -> None:
        self.key = key
        self.max_time_diff = max_time_diff
        self.handler = handler
        self.clock = clock
        self.binding = binding
        self.central_name = central_name
        self.registry = registry if registry is not None else SessionRegistry(clock)
        self.window = window
        # what this central offers in ACCEPT
        self.capabilities = capabilities if capabilities is not None else Capabilities(
            SUPPORTED)
        self.requests = {"limit": request_limit, "timeout": request_timeout}
        self.timeouts = timeouts
        self.accepted = 0
        self.refusals: Counter[str] = Counter()

    def buildProtocol(self, addr: object) -> CentralChannel:
        handshake = ServerHandshake(self.key, self.max_time_diff, self.clock.seconds,
                                    frozenset(CODECS))
        # capabilities (and capture_clock also in the flag form older sensors read)
        extra = {"window": self.window, "max_frame": MAX_FRAME,
                 "ping_interval": self.timeouts.get("ping_interval", PING_INTERVAL),
                 **self.capabilities.advertise()}
        channel = CentralChannel(handshake, self.registry, self.handler, self.clock,
                                 self.binding, extra, **self.timeouts)
        channel.factory = self
        return channel
