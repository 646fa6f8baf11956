"""What both ends of the channel share: framing, compression, keepalive, closing with a reason.

``ChannelProtocol`` sits on the TLS transport. It turns bytes into frames (refusing an
oversized header before buffering its payload), decompresses with the negotiated codec
under a size limit, answers pings and drops a peer that stayed silent too long. Subclasses
(the sensor's ``SensorChannel``, the central's ``CentralChannel``) run the handshake and
hand messages to the logic above them. After the handshake the channel is also the
*message transport* of that logic (``IMessageTransport``): ``send_message`` and
``loseConnection``.

Everything sent goes through the channel's ``OutputScheduler`` (voipmon.protocols.
scheduler), registered as the streaming producer of the transport: control frames at once,
records and the sensor's answer streams in turn while the transport takes data. Every
message received goes through the channel's ``Dispatcher`` (voipmon.protocols.dispatch) of
its current stage, decoded once: during the handshake a table of the subclass's handshake
handlers (HELLO/PROOF on the central, CHALLENGE/ACCEPT/REJECT on the sensor, the legacy
mirror receiver's), then the ``on_<type>`` handlers of the channel itself (PING, PONG,
CLOSE: ``keepalive``), of the session logic above it, or of the request end (the central's
requester, the sensor's responder). ANSWER frames are not compressed
(a pcap does not shrink, and compressing it costs more than sending it: bench/requests_mux).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from voipmon.counters import Counters
from voipmon.protocols.capabilities import Capabilities
from voipmon.protocols.compression import DecompressionError, ICodec
from voipmon.protocols.dispatch import Dispatcher
from voipmon.protocols.scheduler import OutputScheduler
from voipmon.protocols.wire import (
    COMPRESS_MIN,
    FLAG_COMPRESSED,
    MAX_FRAME,
    MAX_HANDSHAKE_FRAME,
    MAX_MESSAGE,
    MAX_TIME,
    FrameDecoder,
    MessageType,
    ProtocolError,
    encode_frame,
    encode_json,
    is_number,
)

PING_INTERVAL = 5.0
PING_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 10.0
ABORT_AFTER = 10.0


class IMessageTransport(Interface):
    """An authenticated channel, as the session logic above it sees it."""

    peer = Attribute("The other end, 'host:port', for logs.")
    accept_info = Attribute("The ACCEPT body (sensor side) or the Hello (central side).")

    def send_message(kind, body):
        """Send one message; ``body`` is a dict (JSON) or bytes (already encoded)."""

    def loseConnection():
        """Close the channel after what was sent is flushed."""

    def fail(reason):
        """Close the channel because the peer broke the protocol (``reason``, told to the
        peer and logged)."""

    def getPeer():
        """The other end's address (a Twisted IAddress)."""


def describe_peer(transport: ITransport) -> str:
    try:
        address = transport.getPeer()
    except Exception:
        return "?"
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IMessageTransport)
class ChannelProtocol(protocol.Protocol):
    """Framing, compression and keepalive for one connection."""

    log = Logger()
    side = "channel"

    def __init__(self, clock: IReactorTime, binding: Callable[[object], bytes],
                 ping_interval: float = PING_INTERVAL, ping_timeout: float = PING_TIMEOUT,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.clock = clock
        self.binding = binding
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.handshake_timeout = handshake_timeout
        self.decoder = FrameDecoder(MAX_HANDSHAKE_FRAME)
        self.codec: ICodec | None = None
        self.peer = "?"
        self.accept_info: Any = None
        self.authenticated = False
        self.closing = False
        self.close_reason: str | None = None
        self.last_received = 0.0
        self.rtt: float | None = None
        self.frames_sent = self.frames_received = 0
        self.payload_bytes_sent = self.wire_bytes_sent = 0
        self.wire_bytes_received = 0
        self._keepalive: task.LoopingCall | None = None
        self.lost: defer.Deferred = defer.Deferred()   # fires when the connection is gone
        self._handshake_timer: IDelayedCall | None = None
        self._abort_timer: IDelayedCall | None = None
        self.output = OutputScheduler(self._write_frame)
        self._producing = False
        self.dispatcher: Dispatcher | None = None   # each stage's (set by subclasses)
        self.agreed: Capabilities | None = None     # the capabilities agreed on this channel

    # -- connection life ---------------------------------------------------------

    def counters(self) -> Counters:
        return {"frames_sent": self.frames_sent, "frames_received": self.frames_received,
                "payload_bytes_sent": self.payload_bytes_sent,
                "wire_bytes_sent": self.wire_bytes_sent,
                "wire_bytes_received": self.wire_bytes_received}

    def connectionMade(self) -> None:
        self.peer = describe_peer(self.transport)
        self.transport.registerProducer(self.output, True)
        self._producing = True
        self.last_received = self.clock.seconds()
        if self.handshake_timeout:   # 0: someone else keeps the deadline (an admission gate)
            self._handshake_timer = self.clock.callLater(self.handshake_timeout,
                                                         self._handshake_expired)

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        self.fail(f"handshake not completed within {self.handshake_timeout:g} s")

    def authenticated_as(self, codec: ICodec) -> None:
        """The handshake succeeded: big frames, compression and keepalive from now on."""
        self.authenticated = True
        self.codec = codec
        self.decoder.max_frame = MAX_FRAME
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self._keepalive = task.LoopingCall(self._tick)
        self._keepalive.clock = self.clock
        self._keepalive.start(self.ping_interval, now=False)

    def _tick(self) -> None:
        silent = self.clock.seconds() - self.last_received
        if silent >= self.ping_timeout:
            self.fail(f"peer silent for {silent:.0f} s (limit {self.ping_timeout:g} s)")
            return
        self.send_message(MessageType.PING, {"t": self.clock.seconds()})

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """Stop the timers, let the subclass clean up (``channel_lost``), then fire ``lost``."""
        self.closing = True
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None
        self.output.stopProducing()
        try:
            self.channel_lost(reason)
        finally:
            if not self.lost.called:
                self.lost.callback(None)

    def channel_lost(self, reason: Failure) -> None:
        """The connection is gone (timers already stopped); subclasses tell their logic."""

    # -- receiving ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return  # closing: whatever else the peer sends is dropped unread
        self.wire_bytes_received += len(data)
        self.last_received = self.clock.seconds()
        try:
            frames = self.decoder.feed(data)
            for frame in frames:
                if self.closing:
                    return
                payload = frame.payload
                if frame.flags & FLAG_COMPRESSED:
                    if self.codec is None:
                        raise ProtocolError("compressed frame before the handshake")
                    try:
                        payload = self.codec.decompress(payload, MAX_MESSAGE)
                    except DecompressionError as exc:
                        raise ProtocolError(f"bad {frame.kind.name} payload: {exc}")
                self.frames_received += 1
                self._dispatch(frame.kind, payload)
        except ProtocolError as exc:
            self.fail(str(exc))
        except Exception:
            self.log.failure("{side}: error handling a message from {peer}", side=self.side,
                             peer=self.peer)
            self.fail("internal error while handling a message")

    def _dispatch(self, kind: MessageType, payload: bytes) -> None:
        if self.dispatcher is None:
            raise ProtocolError(f"unexpected {kind.name}")
        self.dispatcher.dispatch(kind, payload)

    def keepalive(self) -> dict[MessageType, Callable[[Any], None]]:
        """The channel's own handlers, for a stage's table: PING, PONG and CLOSE."""
        return {MessageType.PING: self.on_ping, MessageType.PONG: self.on_pong,
                MessageType.CLOSE: self.on_close}

    def dispatch_to(self, side: str, *owners: object, agreed: Capabilities,
                    peer: str) -> None:
        """From now on every message goes, decoded, to the ``on_<type>`` handler of this
        channel or of one of ``owners``, if ``agreed`` allows its type."""
        self.agreed = agreed
        self.dispatcher = Dispatcher(side, self, *owners, agreed=agreed, peer=peer)

    def on_ping(self, payload: bytes) -> None:
        self.send_message(MessageType.PONG, payload)

    def on_pong(self, body: dict[str, Any]) -> None:
        sent = body.get("t")
        if is_number(sent, 0.0, MAX_TIME):
            self.rtt = max(0.0, self.clock.seconds() - sent)

    def on_close(self, body: dict[str, Any]) -> None:
        reason = body.get("reason")
        self.peer_closed(str(reason)[:1000] if reason is not None else "no reason given")

    def peer_closed(self, reason: str) -> None:
        """The peer said why it closes; log it and close our side."""
        self.log.info("{side}: {peer} closed the channel: {reason}", side=self.side,
                      peer=self.peer, reason=reason)
        self.close(f"peer closed: {reason}", tell_peer=False)

    # -- sending and closing -----------------------------------------------------

    def send_message(self, kind: MessageType, body: dict[str, Any] | bytes) -> None:
        """Send one message through the output scheduler (by its lane)."""
        if self.transport is None or (self.closing and kind != MessageType.CLOSE):
            return
        payload = encode_json(body) if isinstance(body, dict) else body
        self.output.send(kind, payload)

    def _write_frame(self, kind: MessageType, payload: bytes) -> None:
        """The scheduler's writer: one frame on the transport, compressed if it pays."""
        if self.transport is None:
            return
        self.payload_bytes_sent += len(payload)
        flags = 0
        if (self.codec is not None and len(payload) >= COMPRESS_MIN
                and kind != MessageType.ANSWER):
            packed = self.codec.compress(payload)
            if len(packed) < len(payload):
                payload, flags = packed, FLAG_COMPRESSED
        frame = encode_frame(kind, payload, flags)
        self.frames_sent += 1
        self.wire_bytes_sent += len(frame)
        self.transport.write(frame)

    def fail(self, reason: str) -> None:
        """Close the connection because of ``reason``, telling the peer and the log."""
        if self.closing:
            return
        self.log.error("{side}: closing connection with {peer}: {reason}", side=self.side,
                       peer=self.peer, reason=reason)
        self.close(reason)

    def close(self, reason: str, tell_peer: bool = True) -> None:
        """Say why, then close; whatever the peer sends afterwards is ignored."""
        if self.closing:
            return
        self.close_reason = reason
        if tell_peer:
            self.send_message(MessageType.CLOSE, {"reason": reason})
        self.closing = True
        self.output.stopProducing()
        if self._producing:
            # TLS shuts down only once no producer is registered.
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        # A peer that never finishes the TLS close must not keep the connection alive.
        self._abort_timer = self.clock.callLater(ABORT_AFTER, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        self.transport.abortConnection()

    def loseConnection(self) -> None:
        """IMessageTransport: a normal close (shutdown, end of a probe)."""
        self.close(f"closed by the {self.side}")

    def getPeer(self) -> IAddress:
        return self.transport.getPeer()

    def getHost(self) -> IAddress:
        return self.transport.getHost()
