"""The channel's wire format: frames, message types and payload codecs. Pure, no Twisted.

Every message is one frame::

    u32 payload length (big-endian) | u8 type | u8 flags | payload

Flag bit 0 says the payload is compressed with the codec negotiated in the hello. The
length is checked against the limit as soon as the 6-byte header has arrived, before any
payload is buffered, so a header announcing 4 GiB costs the receiver nothing: the
connection is closed with the reason. Control messages carry a JSON object; mirrored
packets travel as a binary batch (``encode_packets``/``decode_packets``) whose records are
pcap record headers, so no per-packet object is built on either side.

Message flow (design section 3)::

    sensor                                   central
    HELLO {protocol, id_sensor, name, version, mode, compression,
           time, nonce, instance, probe, manager}  ->
                                        <-   CHALLENGE {nonce, time}   (or REJECT)
    PROOF {proof}                        ->
                                        <-   ACCEPT {proof, ...}       (or REJECT)
    CDRS {first, cdrs: [...]}            ->                  (local processing)
                                        <-   CDR_ACK {upto, stored}
    PACKETS <binary batch>               ->                  (packet mirroring)
                                        <-   PACKETS_ACK {upto}
    END {dropped}                        ->                  (end of a replayed capture)
                                        <-   END_ACK {cdrs}    (calls closed, CDRs durable)
    CLOCK {t}                            ->                  (live mirroring: capture clock)
    STATS {...}                          ->
                                        <-   REQUEST {id, command, args, window, chunk}
    ANSWER <binary: id, flags, head|error, data>  ->    (bounded chunks, within credit)
                                        <-   CREDIT <binary: id, bytes>
                                        <-   CANCEL <binary: id, reason>
    PING {t} / PONG {t}                 <->  every 5 s; silence for 30 s drops the peer
    CLOSE {reason}                      <->  said before closing on purpose

REQUEST, ANSWER, CREDIT and CANCEL carry the central's requests to a sensor over the
sensor's own connection (layouts and rules: voipmon.protocols.rpc.messages); they travel
only when both sides announced the ``requests`` capability (voipmon.protocols.capabilities).

CLOCK carries a live mirroring sensor's capture clock (its latest packet's capture time plus
the time since), so the central's engine for that sensor closes calls (BYE + linger,
rtptimeout, ...) while the line is quiet, as a local-processing sensor's engine does. It is
sent once a second, only when every packet the sensor has seen went out before it (the
central applies it after them), and only when both sides announced the ``capture_clock``
capability: an older central would close the connection on an unknown type.
"""

from __future__ import annotations

import enum
import json
import math
import struct
from typing import Any, NamedTuple

import orjson

HEADER = struct.Struct(">IBB")
FLAG_COMPRESSED = 0x01
_KNOWN_FLAGS = FLAG_COMPRESSED

# Before authentication a peer may send only small frames; afterwards a frame may carry
# a full packet batch. The decompressed size has its own limit (bombs).
MAX_HANDSHAKE_FRAME = 64 * 1024
MAX_FRAME = 16 * 1024 * 1024
MAX_MESSAGE = 64 * 1024 * 1024
# Payloads smaller than this are sent uncompressed: not worth the codec's overhead.
COMPRESS_MIN = 256


class MessageType(enum.IntEnum):
    HELLO = 1
    CHALLENGE = 2
    PROOF = 3
    ACCEPT = 4
    REJECT = 5
    PING = 6
    PONG = 7
    CDRS = 8
    CDR_ACK = 9
    PACKETS = 10
    PACKETS_ACK = 11
    END = 12
    END_ACK = 13
    STATS = 14
    CLOSE = 15
    CLOCK = 16
    REQUEST = 17
    ANSWER = 18
    CREDIT = 19
    CANCEL = 20


_KNOWN_TYPES = frozenset(int(t) for t in MessageType)


class ProtocolError(Exception):
    """The peer broke the protocol; the message is the reason logged and sent in CLOSE."""


class FrameTooLarge(ProtocolError):
    pass


class Frame(NamedTuple):
    kind: MessageType
    flags: int
    payload: bytes


def encode_frame(kind: int, payload: bytes, flags: int = 0) -> bytes:
    """One frame's bytes; the payload must already be compressed if flags say so."""
    return HEADER.pack(len(payload), kind, flags) + payload


class FrameDecoder:
    """Incremental frame parser. ``feed`` returns complete frames or raises ProtocolError.

    At most one partial frame is buffered, and only after its header passed the size
    check, so memory per connection is bounded by ``max_frame``. A frame's payload is
    copied once: a frame whole in the data fed is sliced out of it; one that spans several
    feeds keeps their pieces and joins them when it is complete (not appended to a buffer
    and cut out of it again).
    """

    def __init__(self, max_frame: int = MAX_HANDSHAKE_FRAME) -> None:
        self.max_frame = max_frame
        self._head = b""                   # a partial header
        self._parts: list[bytes] = []      # the payload so far of the frame being read
        self._have = 0
        self._need: int | None = None      # payload length of the frame being read
        self._kind = 0
        self._flags = 0

    @property
    def buffered(self) -> int:
        return len(self._head) + self._have

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        if self._need is not None:
            missing = self._need - self._have
            if len(data) < missing:
                self._parts.append(data)
                self._have += len(data)
                return frames
            self._parts.append(data[:missing] if missing < len(data) else data)
            frames.append(Frame(MessageType(self._kind), self._flags,
                                b"".join(self._parts)))
            self._parts, self._have, self._need = [], 0, None
            if missing == len(data):
                return frames
            data = data[missing:]
        if self._head:
            data, self._head = self._head + data, b""
        offset, size = 0, len(data)
        while size - offset >= HEADER.size:
            length, kind, flags = HEADER.unpack_from(data, offset)
            if length > self.max_frame:
                self._fail()
                raise FrameTooLarge(
                    f"frame header announces {length} bytes, over the {self.max_frame}-byte"
                    " limit"
                )
            if kind not in _KNOWN_TYPES:
                self._fail()
                raise ProtocolError(f"unknown frame type {kind}")
            if flags & ~_KNOWN_FLAGS:
                self._fail()
                raise ProtocolError(f"unknown frame flags 0x{flags:02x}")
            offset += HEADER.size
            end = offset + length
            if end > size:
                # the payload goes on in the next feeds
                self._need, self._kind, self._flags = length, kind, flags
                if offset < size:
                    self._parts = [data[offset:]]
                    self._have = size - offset
                return frames
            frames.append(Frame(MessageType(kind), flags,
                                data[offset:end] if offset or end < size else data))
            offset = end
        if offset < size:
            self._head = data[offset:]
        return frames

    def _fail(self) -> None:
        # Drop whatever was buffered: the connection is going away.
        self._head, self._parts, self._have, self._need = b"", [], 0, None


# -- JSON control messages ---------------------------------------------------------

#: Arrays and objects in a received JSON text nest at most this deep (a CDRS batch of
#: real CDRs nests 6 deep).
MAX_JSON_DEPTH = 32
#: The largest integer a numeric field of a message may hold (a signed 64-bit one).
MAX_INT = (1 << 63) - 1
#: Times on the wire are epoch seconds up to the end of year 9999 (what a date can show).
MAX_TIME = 253402300799.0
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"')
_SAME_BRACKETS = bytes.maketrans(b"{}", b"[]")


def _too_deep(data: bytes) -> bool:
    """Whether the arrays and objects of the UTF-8 JSON text ``data`` nest deeper than
    MAX_JSON_DEPTH, found before parsing at C speed. The text is cut down to its brackets
    outside strings (escapes dropped first, then everything but brackets and quotes, then
    the strings: runs of quotes, and what lies between quotes if brackets do), and one
    level of innermost pairs is removed per pass. Text that does not balance is not JSON:
    the parser says why."""
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = data.translate(_SAME_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in skeleton:  # a string with brackets in it
        skeleton = b"".join(skeleton.split(b'"')[::2])
    for _ in range(MAX_JSON_DEPTH):
        shorter = skeleton.replace(b"[]", b"")
        if len(shorter) == len(skeleton):
            return False
        skeleton = shorter
    return b"[]" in skeleton


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def parse_json(data: bytes) -> Any:
    """Parse a JSON text received from a peer: UTF-8 only, nesting at most MAX_JSON_DEPTH
    deep, no NaN or Infinity (nor a number too large for a float). Anything else raises
    ValueError saying what is wrong; never RecursionError. Every JSON that comes from the
    network (channel, management port, HTTP API) is parsed here.

    orjson reads it (3.5x the standard library on CDR batches, bench/encoding.py); what
    orjson refuses goes to the standard library, which says why, or reads what orjson
    does not: the escapes of lone surrogates that records use for non-UTF-8 header bytes
    (voipmon.records.codec). Either refuses NaN, Infinity and unbalanced text alike."""
    if _too_deep(data):
        raise ValueError(f"arrays or objects nested more than {MAX_JSON_DEPTH} deep")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return _DECODER.decode(data.decode("utf-8"))
    except RecursionError:  # only for text that is not JSON anyway (unbalanced)
        raise ValueError("arrays or objects nested too deep") from None


def encode_json(body: dict[str, Any]) -> bytes:
    """A control message's payload; NaN or an infinity in ``body`` is a ValueError, since
    the peer would refuse it."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def decode_json(kind: MessageType, payload: bytes) -> dict[str, Any]:
    """A control message's JSON object (``parse_json``); ProtocolError if it is not one."""
    try:
        body = parse_json(payload)
    except ValueError as exc:  # UnicodeDecodeError too
        raise ProtocolError(f"malformed {kind.name} message: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"malformed {kind.name} message: not a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], message: str) -> Any:
    """``body[name]`` checked to be of ``kind``; a JSON true/false never passes as a number."""
    value = body.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(f"malformed {message} message: bad or missing {name!r}")
    return value


def is_number(value: Any, low: float, high: float, integer: bool = False) -> bool:
    """A JSON number (an integer if ``integer``) from ``low`` to ``high``: never true or
    false, NaN or an infinity (both bounds are finite), nor an integer of a thousand digits."""
    return (isinstance(value, int if integer else (int, float))
            and not isinstance(value, bool) and low <= value <= high)


def number_field(body: dict[str, Any], name: str, message: str, low: float, high: float,
                 integer: bool = False) -> Any:
    """``body[name]``, a number from ``low`` to ``high`` (``is_number``); ProtocolError if not."""
    value = body.get(name)
    if not is_number(value, low, high, integer):
        raise ProtocolError(f"malformed {message} message: bad or missing {name!r} "
                            f"({'an integer' if integer else 'a number'} from {low:g} to "
                            f"{high:g})")
    return value


def encode_cdr_batch(first: int, raw_cdrs: list[bytes]) -> bytes:
    """A CDRS payload from CDR JSON texts already serialised (as the queue keeps them)."""
    return b'{"first":%d,"cdrs":[' % first + b",".join(raw_cdrs) + b"]}"


# -- mirrored packet batches -------------------------------------------------------

PACKETS_HEADER = struct.Struct("<QHI")   # batch sequence, link type, packet count
PACKET_RECORD = struct.Struct("<IIII")   # ts seconds, ts microseconds, caplen, wire length


class PacketBatch:
    """Packets of one link type being gathered into a PACKETS payload (sensor side)."""

    __slots__ = ("buffer", "count", "linktype")

    def __init__(self, linktype: int) -> None:
        self.linktype = linktype
        self.count = 0
        self.buffer = bytearray(PACKETS_HEADER.size)

    def add(self, ts: float, data: bytes, wirelen: int | None = None) -> int:
        """Append one packet; returns the bytes it added."""
        sec = int(ts)
        usec = round((ts - sec) * 1_000_000)
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        caplen = len(data)
        self.buffer += PACKET_RECORD.pack(sec, usec, caplen,
                                          caplen if wirelen is None else wirelen)
        self.buffer += data
        self.count += 1
        return PACKET_RECORD.size + caplen

    def __len__(self) -> int:
        return len(self.buffer)

    def seal(self, seq: int) -> bytes:
        """The finished payload, numbered ``seq``."""
        PACKETS_HEADER.pack_into(self.buffer, 0, seq, self.linktype, self.count)
        return bytes(self.buffer)


def packets_seq(payload: bytes) -> int:
    """The batch sequence number of a PACKETS payload (for acks and resends)."""
    return PACKETS_HEADER.unpack_from(payload)[0]


def decode_packets(payload: bytes) -> tuple[int, int, list[tuple[float, int, bytes]]]:
    """``(seq, linktype, [(ts, linktype, frame), ...])``; ProtocolError if malformed.

    The records come out in the shape an engine's ``feed_all`` takes. The wire length of
    each packet is checked to be at least its captured length and otherwise not kept.
    """
    if len(payload) < PACKETS_HEADER.size:
        raise ProtocolError("malformed PACKETS message: truncated header")
    seq, linktype, count = PACKETS_HEADER.unpack_from(payload)
    records = []
    append = records.append
    offset = PACKETS_HEADER.size
    end = len(payload)
    view = memoryview(payload)
    unpack = PACKET_RECORD.unpack_from
    record = PACKET_RECORD.size
    if count > (end - offset) // record:
        raise ProtocolError("malformed PACKETS message: more packets announced than sent")
    for _ in range(count):
        if offset + record > end:
            raise ProtocolError("malformed PACKETS message: truncated record")
        sec, usec, caplen, wirelen = unpack(payload, offset)
        offset += record
        if offset + caplen > end or usec >= 1_000_000 or wirelen < caplen:
            raise ProtocolError("malformed PACKETS message: bad record")
        append((sec + usec / 1_000_000, linktype, bytes(view[offset:offset + caplen])))
        offset += caplen
    if offset != end:
        raise ProtocolError("malformed PACKETS message: trailing bytes")
    return seq, linktype, records
