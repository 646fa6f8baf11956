"""Deprecated legacy packet mirroring: ``mirror_destination`` (sender) to ``mirror_bind``.

Older VoIPmonitor releases mirrored raw packets from a sender sniffer to a receiver over
plain TCP: the sender first said who it was and what time it had, the receiver refused
clocks too far off, then packet blocks followed, each acknowledged. This is that mode,
kept for sites that run it; ``packetbuffer_sender = yes`` (the TLS channel) replaces it.

On the wire it is the channel without TLS and without compression: the channel's framing,
keepalive and closing (``ChannelProtocol``), its handshake (HELLO with the sensor id, name
and UTC time first; the receiver checks the clock against
``mirror_connect_maximum_time_diff_s`` and refuses with a reason; both sides prove
``server_password``; there is no channel binding, so this keeps strangers from feeding the
receiver but does not protect the packets, which travel in clear) and its packet batches,
each acknowledged with PACKETS_ACK. The sender is the channel's own sensor side: the
mirroring buffer (``voipmon.sensor.mirror.MirrorUplink``) behind an
``AuthenticatingEndpoint`` over plain TCP (``voipmon.sensor.legacy_mirror``).

This module is the receiver's protocol. The receiver (``voipmon.central.legacy_mirror``)
keeps one analysis engine per sending sensor across its reconnects and drops batches it
already has (per sender process), so nothing is lost or doubled over a reconnect.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from voipmon.protocols import handshake
from voipmon.protocols.admission import GREETED, Ticket
from voipmon.protocols.channel import ChannelProtocol
from voipmon.protocols.compression import get_codec
from voipmon.protocols.dispatch import CENTRAL, Dispatcher, raw
from voipmon.protocols.dispatch import DECODERS as CHANNEL_DECODERS
from voipmon.protocols.gated import IGated
from voipmon.protocols.wire import MessageType

HANDSHAKE_TIMEOUT = 30.0
MAX_TIME_KEY = "mirror_connect_maximum_time_diff_s"
COMPRESSION = "none"
#: The sender's batches go to the receiver as they came (it decodes them itself).
DECODERS = {**CHANNEL_DECODERS, MessageType.PACKETS: raw}


def no_binding(transport: object) -> bytes:
    """Plain TCP has no TLS exporter to bind the proofs to."""
    return b""


class ILegacyReceiver(Interface):
    """What a receiver connection needs of the receiver it belongs to."""

    key = Attribute("The HMAC key derived from server_password.")
    max_time_diff = Attribute("mirror_connect_maximum_time_diff_s, in seconds.")
    clock = Attribute("The IReactorTime of the receiver.")

    def opened(channel):
        """A connection is open (not yet authenticated)."""

    def attach(channel, hello, skew):
        """The sender proved the password: the state it keeps (raise Rejection to refuse,
        e.g. its id is in use by another sensor)."""

    def packets(state, payload):
        """A PACKETS batch of that sender; returns the batch's number (to acknowledge)."""

    def closed(channel, state, reason):
        """The connection is gone (``state`` None if it never authenticated)."""


@implementer(IGated)
class ReceiverProtocol(ChannelProtocol):
    """One sender's connection: the handshake, then its batches, each acknowledged."""

    side = "legacy mirror"
    admission: Ticket | None = None   # set by the listener's admission gate

    def __init__(self, receiver: ILegacyReceiver) -> None:
        super().__init__(receiver.clock, no_binding, handshake_timeout=HANDSHAKE_TIMEOUT)
        self.receiver = receiver
        self.shake = handshake.ServerHandshake(receiver.key, receiver.max_time_diff,
                                               receiver.clock.seconds, {COMPRESSION},
                                               skew_key=MAX_TIME_KEY)
        self.state: object = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # The stages, each a table of the channel's one dispatch: HELLO, then PROOF,
        # then the sender's batches and the keepalive.
        self.stage({MessageType.HELLO: self._hello})
        self.receiver.opened(self)

    def stage(self, table: dict[MessageType, Any]) -> None:
        self.dispatcher = Dispatcher(CENTRAL, where="message", decoders=DECODERS,
                                     table={MessageType.CLOSE: self.on_close, **table})

    def _hello(self, body: dict[str, Any]) -> None:
        try:
            challenge = self.shake.receive_hello(body)
            if self.shake.hello is not None and self.shake.hello.mode != "mirror":
                raise handshake.Rejection(handshake.MALFORMED,
                                          "this port takes legacy mirroring only")
        except handshake.Rejection as rejection:
            self.reject(rejection)
            return
        self.send_message(MessageType.CHALLENGE, challenge)
        if self.admission is not None:
            self.admission.progress(GREETED)
        self.stage({MessageType.PROOF: self._proof})

    def _proof(self, body: dict[str, Any]) -> None:
        hello = self.shake.hello
        try:
            self.shake.receive_proof(body, no_binding(self))
            self.state = self.receiver.attach(self, hello, self.shake.skew or 0.0)
        except handshake.Rejection as rejection:
            self.reject(rejection)
            return
        if self.admission is not None:
            self.admission.done()
        self.send_message(MessageType.ACCEPT, self.shake.accept(no_binding(self)))
        self.authenticated_as(get_codec(COMPRESSION))
        self.stage({MessageType.PACKETS: self._packets, **self.keepalive()})

    def _packets(self, payload: bytes) -> None:
        seq = self.receiver.packets(self.state, payload)
        self.send_message(MessageType.PACKETS_ACK, {"upto": seq})

    def reject(self, rejection: handshake.Rejection) -> None:
        self.log.warn("legacy mirror {peer}: refused: {reason}", peer=self.peer,
                      reason=rejection.reason)
        self.send_message(MessageType.REJECT, rejection.to_json())
        self.close(f"refused: {rejection.reason}", tell_peer=False)

    def close(self, reason: str, tell_peer: bool = True) -> None:
        if self.admission is not None and self.state is None:
            self.admission.closing()   # not through the handshake: the first to go for room
        super().close(reason, tell_peer)

    def channel_lost(self, reason: Failure) -> None:
        why = self.close_reason or (reason.getErrorMessage() if reason else "closed")
        self.receiver.closed(self, self.state, why)
