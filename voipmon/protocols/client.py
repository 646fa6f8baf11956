"""The sensor's end of the channel: an endpoint that connects *and authenticates*.

``AuthenticatingEndpoint.connect(factory)`` opens the TLS connection, runs the handshake
(hello, challenge, proofs), and only once the central has proved the password builds the
session protocol from ``factory`` and fires with it. A central that refuses us, fails its
proof, or hangs counts as a failed connection attempt, so ``FailoverEndpoint`` moves on to
the next one and ``ClientService`` never sees a half-open channel.

The session protocol is message-level: the channel is its transport (``send_message``,
``loseConnection``), and its ``handlers()`` (the uplink) get the central's messages from
the channel's dispatcher, as ``on_<type>``. When both ends agreed on ``requests`` and the
sensor has a command registry (the management port's, ``ICommands``), a ``Responder``
answers the central's requests on this channel: only this central, the one that proved
the password on this very connection, can send them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from voipmon.manager.commands import ICommands
from voipmon.protocols.capabilities import parse
from voipmon.protocols.channel import ChannelProtocol
from voipmon.protocols.compression import get_codec
from voipmon.protocols.dispatch import SENSOR, Dispatcher
from voipmon.protocols.handshake import CentralProofFailed, ClientHandshake, Rejection
from voipmon.protocols.rpc.responder import Responder
from voipmon.protocols.wire import MessageType


class ISessionProtocol(Interface):
    """The sensor's session protocol above an authenticated channel."""

    def handlers():
        """The objects whose ``on_<type>`` methods take the central's messages."""


class HandshakeFailed(Exception):
    """The connection closed or broke before the central accepted us."""


class SensorChannel(ChannelProtocol):
    """Runs the sensor's half of the handshake, then carries the session's messages."""

    side = "sensor"

    def __init__(self, handshake: ClientHandshake, compression: str,
                 session_factory: IProtocolFactory,
                 ready: defer.Deferred, clock: IReactorTime,
                 binding: Callable[[object], bytes], commands: ICommands | None = None,
                 **timeouts: float) -> None:
        super().__init__(clock, binding, **timeouts)
        self.handshake = handshake
        self.compression = compression
        self.session_factory = session_factory
        self.ready = ready
        self.commands = commands
        self.session: IProtocol | None = None
        self.responder: Responder | None = None
        self._error: Failure | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # The handshake's stage (the ClientHandshake keeps the order of its messages);
        # ACCEPT moves the channel on to the session's dispatcher.
        self.dispatcher = Dispatcher(
            SENSOR, where="during the handshake",
            table={MessageType.CHALLENGE: self._challenge, MessageType.ACCEPT: self._accepted,
                   MessageType.REJECT: self._rejected, MessageType.CLOSE: self.on_close})
        self.send_message(MessageType.HELLO, self.handshake.hello())

    def _challenge(self, body: dict[str, Any]) -> None:
        self.send_message(MessageType.PROOF,
                          self.handshake.receive_challenge(body, self.binding(self.transport)))

    def _rejected(self, body: dict[str, Any]) -> None:
        rejection = Rejection.from_json(body)
        self.log.error("central {peer} refused this sensor: {reason}", peer=self.peer,
                       reason=rejection.reason, code=rejection.code)
        self._error = Failure(rejection)
        self.close(f"refused: {rejection.reason}", tell_peer=False)

    def _accepted(self, body: dict[str, Any]) -> None:
        try:
            self.handshake.receive_accept(body, self.binding(self.transport))
        except CentralProofFailed as exc:
            self.log.error("central {peer}: {problem}; sending nothing", peer=self.peer,
                           problem=str(exc))
            self._error = Failure(exc)
            self.close(str(exc))
            return
        agreed = self.handshake.capabilities.negotiate(parse(body, "ACCEPT"))
        self.accept_info = body
        self.authenticated_as(get_codec(self.compression))
        session = self.session_factory.buildProtocol(self.transport.getPeer())
        if session is None:
            self.close("no session")
            return
        # A session protocol that handles nothing (a probe's, a test's) takes no message.
        owners: list[object] = (list(session.handlers())
                                if ISessionProtocol.providedBy(session) else [])
        if self.commands is not None and "requests" in agreed:
            self.responder = Responder(self.commands, self.output, self._authorised)
            owners.append(self.responder)
        self.dispatch_to(SENSOR, *owners, agreed=agreed, peer=f"the central {self.peer}")
        self.session = session
        session.makeConnection(self)
        ready, self.ready = self.ready, None
        ready.callback(session)

    def _authorised(self) -> bool:
        """Requests come only from the central that proved the password on this
        connection, while it is open."""
        return self.handshake.accepted and self.authenticated and not self.closing

    def fail(self, reason: str) -> None:
        if self.session is None and self._error is None:
            self._error = Failure(HandshakeFailed(reason))
        super().fail(reason)

    def channel_lost(self, reason: Failure) -> None:
        if self.responder is not None:
            self.responder.connection_lost()
        if self.session is not None:
            session, self.session = self.session, None
            session.connectionLost(reason)
        elif self.ready is not None:
            ready, self.ready = self.ready, None
            if self._error is None:
                detail = reason.getErrorMessage() if reason is not None else "closed"
                self._error = Failure(HandshakeFailed(
                    f"connection closed during the handshake ({detail})"))
            if not ready.called:  # a cancelled attempt has been failed already
                ready.errback(self._error)


class _ChannelFactory(protocol.Factory):
    noisy = False

    def __init__(self, build: Callable[[], SensorChannel]) -> None:
        self.build = build

    def buildProtocol(self, addr: object) -> SensorChannel:
        channel = self.build()
        channel.factory = self
        return channel


@implementer(IStreamClientEndpoint)
class AuthenticatingEndpoint:
    """Connect through ``endpoint`` (TLS) and complete the handshake before firing."""

    def __init__(self, endpoint: IStreamClientEndpoint,
                 make_handshake: Callable[[], ClientHandshake], compression: str,
                 clock: IReactorTime, binding: Callable[[object], bytes],
                 commands: ICommands | None = None, **timeouts: float) -> None:
        self.endpoint = endpoint
        self.make_handshake = make_handshake
        self.compression = compression
        self.clock = clock
        self.binding = binding
        self.commands = commands
        self.timeouts = timeouts

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred:
        channels: list[SensorChannel] = []
        connecting: list[defer.Deferred | None] = [None]

        def cancel(_: defer.Deferred) -> None:
            if connecting[0] is not None:
                connecting[0].cancel()
            for channel in channels:
                if channel.transport is not None:
                    channel.closing = True
                    channel.transport.abortConnection()

        ready: defer.Deferred = defer.Deferred(cancel)

        def build() -> SensorChannel:
            channel = SensorChannel(self.make_handshake(), self.compression, protocolFactory,
                                    ready, self.clock, self.binding, self.commands,
                                    **self.timeouts)
            channels.append(channel)
            return channel

        d = self.endpoint.connect(_ChannelFactory(build))
        connecting[0] = d

        def connected(_channel: object) -> None:
            connecting[0] = None

        def not_connected(failure: Failure) -> None:
            connecting[0] = None
            if not ready.called:
                ready.errback(failure)

        d.addCallbacks(connected, not_connected)
        return ready
