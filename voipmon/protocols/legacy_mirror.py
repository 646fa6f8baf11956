"""Deprecated legacy packet mirroring: ``mirror_destination`` (sender) to ``mirror_bind``.

Older VoIPmonitor releases mirrored raw packets from a sender sniffer to a receiver over
plain TCP: the sender first said who it was and what time it had, the receiver refused
clocks too far off, then packet blocks followed, each acknowledged. This is that mode,
kept for sites that run it; ``packetbuffer_sender = yes`` (the TLS channel) replaces it.

On the wire it is the channel's framing and handshake (``wire``, ``handshake``) without
TLS and without compression: HELLO carries the sensor id, name and UTC time first;
the receiver checks the clock against ``mirror_connect_maximum_time_diff_s`` and refuses
with a reason; both sides prove ``server_password`` (there is no channel binding, so
this keeps strangers from feeding the receiver but does not protect the packets, which
travel in clear). Then PACKETS batches flow, each acknowledged with PACKETS_ACK.

The sender buffers in memory up to ``max_buffer_mem``; beyond it new packets are dropped
and counted. Unacknowledged batches are resent after a reconnect, and the receiver
drops batches it already has (per sender process), so nothing is lost or doubled over
a reconnect. The receiver runs one analysis engine per sending sensor, kept across
reconnects, and advances it on the sender's clock. The services that assemble this are
in ``voipmon.protocols.legacy_mirror_service``; this module is the buffer and protocols.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.python import failure
from zope.interface import implementer

from voipmon import __version__
from voipmon.protocols import handshake, wire
from voipmon.protocols.admission import GREETED, Ticket
from voipmon.protocols.gated import IGated
from voipmon.protocols.wire import MessageType as T

if TYPE_CHECKING:
    from voipmon.protocols.legacy_mirror_service import LegacyMirrorReceiver, LegacyMirrorSender

log = Logger()

BATCH_BYTES = 256 * 1024          # seal a batch at this size ...
FLUSH_INTERVAL = 0.2              # ... or after this many seconds
WINDOW_BYTES = 4 * 1024 * 1024    # unacknowledged bytes on the wire
ADVANCE_INTERVAL = 1.0            # receiver: engine timeouts
HANDSHAKE_TIMEOUT = 30.0
NO_BINDING = b""                  # plain TCP has no TLS exporter to bind the proofs to
MAX_TIME_KEY = "mirror_connect_maximum_time_diff_s"

# -- sender side: the pure buffer --------------------------------------------------------


class MirrorBuffer:
    """Packets -> numbered batches, bounded by ``max_bytes``, kept until acknowledged."""

    def __init__(self, max_bytes: int, batch_bytes: int = BATCH_BYTES) -> None:
        self.max_bytes = max_bytes
        self.batch_bytes = batch_bytes
        self.batches: collections.deque[tuple[int, bytes, int]] = collections.deque()
        self.unsent = 0                  # index in ``batches`` of the first batch not sent
        self.in_flight = 0               # bytes of the batches sent and not acknowledged
        self.current: wire.PacketBatch | None = None
        self.next_seq = 1
        self.bytes = 0
        self.packets = 0                 # accepted into the buffer
        self.dropped = 0                 # refused because the buffer was full
        self.acked_packets = 0
        self.acked_batches = 0

    def add(self, ts: float, linktype: int, frame: bytes) -> bool:
        """Buffer one packet; False (and counted) when the buffer is full."""
        size = wire.PACKET_RECORD.size + len(frame)
        if self.bytes + size > self.max_bytes:
            self.dropped += 1
            return False
        current = self.current
        if current is not None and current.linktype != linktype:
            self.seal()
            current = None
        if current is None:
            current = self.current = wire.PacketBatch(linktype)
            self.bytes += wire.PACKETS_HEADER.size
        self.bytes += current.add(ts, frame)
        self.packets += 1
        if len(current) >= self.batch_bytes:
            self.seal()
        return True

    def seal(self) -> bool:
        """Close the batch being filled; True if there was one."""
        current, self.current = self.current, None
        if current is None or not current.count:
            return False
        self.batches.append((self.next_seq, current.seal(self.next_seq), current.count))
        self.next_seq += 1
        return True

    def take(self, window: int) -> list[bytes]:
        """Batches to send now, keeping at most ``window`` unacknowledged bytes in flight
        (but always at least one batch when nothing is in flight)."""
        out = []
        while self.unsent < len(self.batches):
            payload = self.batches[self.unsent][1]
            if self.in_flight and self.in_flight + len(payload) > window:
                break
            out.append(payload)
            self.in_flight += len(payload)
            self.unsent += 1
        return out

    def ack(self, upto: int) -> None:
        """The receiver has every batch numbered up to ``upto``."""
        while self.unsent > 0 and self.batches[0][0] <= upto:
            _seq, payload, count = self.batches.popleft()
            self.unsent -= 1
            self.in_flight -= len(payload)
            self.bytes -= len(payload)
            self.acked_packets += count
            self.acked_batches += 1

    def rewind(self) -> None:
        """A new connection: everything not acknowledged is sent again."""
        self.unsent = 0
        self.in_flight = 0

    @property
    def unacknowledged(self) -> int:
        return sum(count for _seq, _payload, count in self.batches) + \
            (self.current.count if self.current is not None else 0)


# -- framing shared by both ends --------------------------------------------------------


class _Framed(protocol.Protocol):
    def __init__(self) -> None:
        self.decoder = wire.FrameDecoder(wire.MAX_HANDSHAKE_FRAME)

    def send(self, kind: T, body: dict[str, Any] | bytes) -> None:
        payload = body if isinstance(body, bytes) else wire.encode_json(body)
        self.transport.write(wire.encode_frame(kind, payload))

    def dataReceived(self, data: bytes) -> None:
        try:
            for frame in self.decoder.feed(data):
                if self.transport.disconnecting:
                    return
                self.frameReceived(frame)
        except wire.ProtocolError as exc:
            self.fail(str(exc))

    def fail(self, reason: str) -> None:
        log.warn("legacy mirror {peer}: {reason}; closing", peer=self.peer(), reason=reason)
        self.send(T.CLOSE, {"reason": reason})
        self.transport.loseConnection()

    def keepalive(self) -> None:
        """TCP keepalive: a sender that vanished without a FIN is noticed eventually."""
        setter = getattr(self.transport, "setTcpKeepAlive", None)
        if setter is not None:
            setter(True)

    def peer(self) -> str:
        address = self.transport.getPeer()
        return f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}"

    def frameReceived(self, frame: wire.Frame) -> None:
        raise NotImplementedError


class SenderProtocol(_Framed):
    def __init__(self, sender: LegacyMirrorSender) -> None:
        super().__init__()
        self.sender = sender
        self.shake = handshake.ClientHandshake(
            sender.key, id_sensor=sender.id_sensor, name=sender.name, version=__version__,
            mode="mirror", compression="none", instance=sender.instance,
            seconds=sender.clock.seconds)
        self.ready = False

    def connectionMade(self) -> None:
        self.keepalive()
        self.send(T.HELLO, self.shake.hello())

    def frameReceived(self, frame: wire.Frame) -> None:
        kind = frame.kind
        if kind == T.PACKETS_ACK and self.ready:
            upto = wire.number_field(wire.decode_json(kind, frame.payload), "upto",
                                     "PACKETS_ACK", 0, wire.MAX_INT, integer=True)
            self.sender.acknowledged(upto)
        elif kind == T.CHALLENGE and not self.ready:
            body = wire.decode_json(kind, frame.payload)
            self.send(T.PROOF, self.shake.receive_challenge(body, NO_BINDING))
        elif kind == T.ACCEPT and not self.ready:
            try:
                self.shake.receive_accept(wire.decode_json(kind, frame.payload), NO_BINDING)
            except handshake.CentralProofFailed as exc:
                self.fail(str(exc))
                return
            self.ready = True
            self.decoder.max_frame = wire.MAX_FRAME
            self.sender.connected(self)
        elif kind == T.REJECT:
            rejection = handshake.Rejection.from_json(wire.decode_json(kind, frame.payload))
            log.error("legacy mirror: {peer} refused this sensor: {reason}",
                      peer=self.peer(), reason=rejection.reason)
            self.sender.last_error = rejection.reason
            self.transport.loseConnection()
        elif kind == T.CLOSE:
            reason = wire.decode_json(kind, frame.payload).get("reason", "")
            log.warn("legacy mirror: {peer} closed: {reason}", peer=self.peer(), reason=reason)
            self.transport.loseConnection()
        elif kind != T.PONG:
            self.fail(f"unexpected {kind.name} message")

    def connectionLost(self, reason: failure.Failure = protocol.connectionDone) -> None:
        if self.ready:
            self.sender.disconnected(self, reason.getErrorMessage())


# -- receiver side ----------------------------------------------------------------------


class SenderState:
    """What the receiver keeps per sending sensor, across its reconnects."""

    def __init__(self, id_sensor: int, name: str, engine: Any) -> None:
        self.id_sensor = id_sensor
        self.name = name
        self.engine = engine
        self.instance = ""
        self.last_seq = 0
        self.skew = 0.0
        self.connection: ReceiverProtocol | None = None
        self.packets = self.batches = self.duplicates = self.engine_errors = 0

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, "connected": self.connection is not None,
                "packets": self.packets, "batches": self.batches,
                "duplicate_batches": self.duplicates, "engine_errors": self.engine_errors,
                "clock_skew": round(self.skew, 3)}


@implementer(IGated)
class ReceiverProtocol(_Framed):
    admission: Ticket | None = None   # set by the listener's admission gate

    def __init__(self, receiver: LegacyMirrorReceiver) -> None:
        super().__init__()
        self.receiver = receiver
        self.shake = handshake.ServerHandshake(receiver.key, receiver.max_time_diff,
                                               receiver.clock.seconds, {"none"})
        self.state: SenderState | None = None
        self._timeout: Any = None

    def connectionMade(self) -> None:
        self.keepalive()
        self.receiver.connections.add(self)
        self._timeout = self.receiver.clock.callLater(HANDSHAKE_TIMEOUT, self.fail,
                                                      "no handshake within "
                                                      f"{HANDSHAKE_TIMEOUT:g} s")

    def reject(self, rejection: handshake.Rejection) -> None:
        if self.admission is not None:
            self.admission.closing()
        log.warn("legacy mirror {peer}: refused: {reason}", peer=self.peer(),
                 reason=rejection.reason)
        self.send(T.REJECT, rejection.to_json())
        self.transport.loseConnection()

    def frameReceived(self, frame: wire.Frame) -> None:
        kind = frame.kind
        if kind == T.PACKETS and self.state is not None:
            self.receiver.packets(self.state, frame.payload)
            self.send(T.PACKETS_ACK, {"upto": self.state.last_seq})
        elif kind == T.HELLO:
            try:
                challenge = self.shake.receive_hello(wire.decode_json(kind, frame.payload))
                hello = self.shake.hello
                if hello.mode != "mirror":
                    raise handshake.Rejection(handshake.MALFORMED,
                                              "this port takes legacy mirroring only")
            except handshake.Rejection as exc:
                if exc.code == handshake.CLOCK_SKEW:
                    skew = self.shake.skew or 0.0
                    exc = handshake.Rejection(
                        exc.code, f"clock skew of {abs(skew):.1f} s exceeds {MAX_TIME_KEY} "
                        f"= {self.receiver.max_time_diff:g} s ({handshake.describe_skew(skew)})")
                self.reject(exc)
                return
            self.send(T.CHALLENGE, challenge)
            if self.admission is not None:
                self.admission.progress(GREETED)
        elif kind == T.PROOF and self.state is None:
            try:
                self.shake.receive_proof(wire.decode_json(kind, frame.payload), NO_BINDING)
                self.state = self.receiver.attach(self, self.shake.hello, self.shake.skew or 0.0)
            except handshake.Rejection as exc:
                self.reject(exc)
                return
            if self._timeout is not None and self._timeout.active():
                self._timeout.cancel()
            self.decoder.max_frame = wire.MAX_FRAME
            if self.admission is not None:
                self.admission.done()
            self.send(T.ACCEPT, self.shake.accept(NO_BINDING))
        elif kind == T.PING:
            self.send(T.PONG, frame.payload)
        elif kind == T.CLOSE:
            self.transport.loseConnection()
        else:
            self.fail(f"unexpected {kind.name} message")

    def connectionLost(self, reason: failure.Failure = protocol.connectionDone) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self.receiver.connections.discard(self)
        if self.state is not None and self.state.connection is self:
            self.state.connection = None
            log.info("legacy mirror: sensor {id} ({name}) disconnected: {reason}",
                     id=self.state.id_sensor, name=self.state.name,
                     reason=reason.getErrorMessage())

