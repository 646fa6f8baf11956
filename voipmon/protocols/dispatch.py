"""One dispatch by message type: decode once, hand the message to ``on_<type>``. Pure.

A :class:`Dispatcher` serves one end (``side``: the sensor or the central) of one channel
in one stage of its life. It is built from the objects that handle messages (the channel's
keepalive, the session, the requester or responder...): each handles a type by having a
method named after it, ``on_cdrs``, ``on_cdr_ack``, ``on_packets_ack``, ``on_request``...;
or from a ``table`` of handlers by type (the handshake's stages: HELLO and PROOF on the
central, CHALLENGE, ACCEPT and REJECT on the sensor, then a failback probe's keepalive).
A type has at most one handler. ``dispatch(kind, payload)`` then:

1. refuses a message in the wrong direction (``SENT_BY``): a sensor cannot send requests
   to the central, a central cannot send CDRs;
2. refuses a message whose capability the channel did not agree (voipmon.protocols.
   capabilities), naming what was agreed;
3. decodes the payload once, by type (``DECODERS``: JSON objects through the one safe JSON
   parser, mirrored packets and answers from their binary layouts, PING raw so that PONG
   echoes it), and calls the handler with the result;
4. a type nobody here handles is a ProtocolError "unexpected X from <peer>" (or "unexpected
   X <where>": "before authentication"), unless the dispatcher was told to ``ignore`` it
   (counted in ``ignored``).

A channel replaces its dispatcher as it moves from one stage to the next.

Each refusal is a ProtocolError: the channel closes with it as the reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from voipmon.protocols.capabilities import Capabilities, check_frame
from voipmon.protocols.rpc.messages import DECODERS as RPC_DECODERS
from voipmon.protocols.wire import MessageType, ProtocolError, decode_json, decode_packets

SENSOR = "sensor"
CENTRAL = "central"
BOTH = "both"

#: Who may send each type (by name, so a type may be listed before its number exists).
SENT_BY: dict[str, str] = {
    "HELLO": SENSOR, "CHALLENGE": CENTRAL, "PROOF": SENSOR, "ACCEPT": CENTRAL,
    "REJECT": CENTRAL, "PING": BOTH, "PONG": BOTH, "CDRS": SENSOR, "CDR_ACK": CENTRAL,
    "PACKETS": SENSOR, "PACKETS_ACK": CENTRAL, "END": SENSOR, "END_ACK": CENTRAL,
    "STATS": SENSOR, "CLOSE": BOTH, "CLOCK": SENSOR, "REQUEST": CENTRAL, "ANSWER": SENSOR,
    "CREDIT": CENTRAL, "CANCEL": CENTRAL,
}


def raw(kind: MessageType, payload: bytes) -> bytes:
    """The payload as it came (PING: the PONG echoes it)."""
    return payload


def packets(kind: MessageType, payload: bytes) -> tuple[int, int, list[Any]]:
    return decode_packets(payload)


Decoder = Callable[[MessageType, bytes], Any]
#: How each type's payload is decoded; JSON objects (``decode_json``) unless listed.
DECODERS: dict[MessageType, Decoder] = {
    MessageType.PING: raw,
    MessageType.CDRS: raw,          # read where the session says (voipmon.central.cdrbatch)
    MessageType.PACKETS: packets,
    **RPC_DECODERS,
}


def handler_name(kind: MessageType) -> str:
    return "on_" + kind.name.lower()


class Dispatcher:
    """Hands each message of one channel end, decoded, to its ``on_<type>`` handler.

    ``side`` is this end (SENSOR or CENTRAL); ``owners`` the objects whose ``on_<type>``
    methods handle messages; ``agreed`` the capabilities agreed on this channel (None:
    not checked, e.g. during the handshake); ``peer`` how errors name the other end ("a
    local-processing sensor"); ``where`` how an unexpected message is placed ("before
    authentication"; by default "from <peer>"); ``table`` handlers by type, beside those of
    ``owners``; ``ignore`` types dropped when nobody handles them; ``decoders`` how each
    type is decoded (a stage may take a payload raw to decode it itself).
    """

    def __init__(self, side: str, *owners: object, agreed: Capabilities | None = None,
                 peer: str | None = None, where: str | None = None,
                 table: Mapping[MessageType, Callable[[Any], Any]] | None = None,
                 ignore: Iterable[MessageType] = (),
                 decoders: Mapping[MessageType, Decoder] = DECODERS) -> None:
        if side not in (SENSOR, CENTRAL):
            raise ValueError(f"side must be {SENSOR!r} or {CENTRAL!r}, not {side!r}")
        self.side = side
        self.other = CENTRAL if side == SENSOR else SENSOR
        self.peer = peer or f"the {self.other}"
        self.where = where or f"from {self.peer}"
        self.agreed = agreed
        self.ignore = frozenset(ignore)
        self.ignored: Counter[MessageType] = Counter()
        self.handlers: dict[MessageType, tuple[Decoder, Callable[[Any], Any]]] = {}
        table = table or {}
        for kind in MessageType:
            found = [getattr(owner, handler_name(kind)) for owner in owners
                     if callable(getattr(owner, handler_name(kind), None))]
            if kind in table:
                found.append(table[kind])
            if len(found) > 1:
                raise ValueError(f"{kind.name} has {len(found)} handlers; one type, one "
                                 "handler")
            if found:
                self.handlers[kind] = (decoders.get(kind, decode_json), found[0])

    def handles(self, kind: MessageType) -> bool:
        return kind in self.handlers

    def dispatch(self, kind: MessageType, payload: bytes) -> None:
        """Check, decode once, handle; ProtocolError for anything the peer got wrong."""
        sender = SENT_BY.get(kind.name, BOTH)
        if sender == self.side:
            raise ProtocolError(f"a {self.other} cannot send {kind.name} to the {self.side} "
                                f"(it goes from the {sender} to the {self.other} only)")
        if self.agreed is not None:
            check_frame(kind, self.agreed)
        entry = self.handlers.get(kind)
        if entry is None:
            if kind in self.ignore:
                self.ignored[kind] += 1
                return
            raise ProtocolError(f"unexpected {kind.name} {self.where}")
        decode, handle = entry
        handle(decode(kind, payload))
