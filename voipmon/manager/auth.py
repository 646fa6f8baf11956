"""The management port's password proof: the channel's handshake, reused as it is.

A connection to 5029 (over TLS) opens with the channel's own frames and messages (HELLO,
CHALLENGE, PROOF, ACCEPT or REJECT; voipmon.protocols.wire and .handshake), then switches
to command lines. The central connects, so it plays the channel's *connecting* part and
proves first; the sensor listens, so it plays the *listening* part and answers with its
proof only to a peer that proved. Proofs are HMACs bound to this TLS connection's exporter
value, so none can be replayed, and the password never crosses the wire. The hello names
the sensor the central means to reach: a sensor refuses a central that asks for another id.

Both classes are pure: they take frames and return the bytes to send.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import voipmon
from voipmon.protocols.handshake import (
    ClientHandshake,
    Rejection,
    ServerHandshake,
)
from voipmon.protocols.wire import (
    Frame,
    FrameDecoder,
    MessageType,
    ProtocolError,
    decode_json,
    encode_frame,
    encode_json,
)

WRONG_SENSOR = "wrong_sensor"
_CODEC = "none"


def _frame(kind: MessageType, body: dict[str, Any]) -> bytes:
    return encode_frame(kind, encode_json(body))


class ManagerAuthServer:
    """The sensor's side: feed it bytes until ``done``; it says what to answer.

    ``feed`` returns bytes to write. It raises Rejection (after which ``reject_bytes`` is
    what to send before closing) or ProtocolError (garbage: close, nothing to say in frames).
    """

    def __init__(self, key: bytes, id_sensor: int, seconds: Callable[[], float]) -> None:
        self.id_sensor = id_sensor
        # The clock check is the channel's concern; on 5029 the nonces give freshness.
        self._handshake = ServerHandshake(key, math.inf, seconds, {_CODEC})
        self._decoder = FrameDecoder()
        self.done = False
        self.peer_name = ""

    def feed(self, data: bytes, binding: Callable[[], bytes]) -> bytes:
        out = b""
        for frame in self._decoder.feed(data):
            if self.done:
                raise ProtocolError("data after the handshake, before its answer was read")
            out += self._frame(frame, binding)
        if self.done and self._decoder.buffered:
            raise ProtocolError("data after the handshake, before its answer was read")
        return out

    def _frame(self, frame: Frame, binding: Callable[[], bytes]) -> bytes:
        body = decode_json(frame.kind, frame.payload)
        if frame.kind is MessageType.HELLO:
            challenge = self._handshake.receive_hello(body)
            hello = self._handshake.hello
            if hello.id_sensor != self.id_sensor:
                raise Rejection(WRONG_SENSOR, f"this is sensor {self.id_sensor}, not sensor "
                                              f"{hello.id_sensor}")
            self.peer_name = hello.name
            return _frame(MessageType.CHALLENGE, challenge)
        if frame.kind is MessageType.PROOF:
            bound = binding()
            self._handshake.receive_proof(body, bound)
            self.done = True
            return _frame(MessageType.ACCEPT, self._handshake.accept(bound))
        raise ProtocolError(f"{frame.kind.name} during the management handshake")

    @staticmethod
    def reject_bytes(rejection: Rejection) -> bytes:
        return _frame(MessageType.REJECT, rejection.to_json())


class ManagerAuthClient:
    """The central's side: ``hello()`` first, then ``feed`` answers until ``done``.

    Raises Rejection when the sensor refuses, CentralProofFailed when the sensor does not
    prove the password (it is not the sensor, or someone is in the middle).
    """

    def __init__(self, key: bytes, id_sensor: int, seconds: Callable[[], float],
                 name: str = "central") -> None:
        self._handshake = ClientHandshake(
            key, id_sensor=id_sensor, name=name, version=voipmon.__version__, mode="local",
            compression=_CODEC, instance=os.urandom(8).hex(), seconds=seconds)
        self._decoder = FrameDecoder()
        self.done = False

    def hello(self) -> bytes:
        return _frame(MessageType.HELLO, self._handshake.hello())

    def feed(self, data: bytes, binding: Callable[[], bytes]) -> bytes:
        """Bytes to write in answer to ``data``."""
        out = b""
        frames = self._decoder.feed(data) if not self.done else []
        for frame in frames:
            body = decode_json(frame.kind, frame.payload)
            if frame.kind is MessageType.REJECT:
                raise Rejection.from_json(body)
            if frame.kind is MessageType.CHALLENGE:
                out += _frame(MessageType.PROOF,
                              self._handshake.receive_challenge(body, binding()))
            elif frame.kind is MessageType.ACCEPT:
                self._handshake.receive_accept(body, binding())
                self.done = True
            else:
                raise ProtocolError(f"{frame.kind.name} during the management handshake")
        if self.done and self._decoder.buffered:
            raise ProtocolError("data after ACCEPT before any command was sent")
        return out
