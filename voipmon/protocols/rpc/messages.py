"""Layouts of the request messages and their codecs. Pure, no Twisted.

The central asks a sensor to run a command of the management registry over the channel the
sensor opened; the sensor answers in bounded chunks, as the central's credit allows::

    central                                               sensor
    REQUEST {id, command, args, window, chunk}     ->          (JSON)
                                                   <-   ANSWER first chunk (FIRST)
                                                   <-   ANSWER data ...
    CREDIT  id, bytes                              ->          (binary)
                                                   <-   ANSWER ... (LAST)
    CANCEL  id, reason                             ->          (binary; the client left)

``id`` numbers requests on one connection from 1 up, never reused. ``args`` is the text
that follows the command's name on a management-port line, so a command means exactly
the same on both transports. ``window`` is the request's first credit in bytes and
``chunk`` the largest ANSWER data the central takes in one frame.

ANSWER is binary so a pcap crosses unescaped (all integers big-endian)::

    u32 id | u8 flags | [u64 size | u8 n | n bytes content type]   if FIRST and not ERROR
                      | [u8 n | n bytes code | message, UTF-8]     if ERROR (always LAST)
                      | data                                       otherwise (may be empty)

The first frame (FIRST) carries the body's size and content type, and may carry data; the
frame with the body's last bytes is marked LAST (a first frame of an empty body is
FIRST|LAST). An ERROR frame ends the answer with a code of the management port's
(``not_found``, ``refused``...) and a message: FIRST|ERROR|LAST when the command was
refused, ERROR|LAST when reading failed midway. Exactly one frame per request is LAST.
Data never exceeds the credit: the sum of ``window`` and every CREDIT of that request.

CREDIT is ``u32 id | u32 bytes``: that many more bytes of data may come. CANCEL is
``u32 id | reason, UTF-8``: the sensor stops reading and forgets the request, sending
nothing more for it (frames already on their way are ignored by the central). Neither is
answered, and either may name a request that just ended: the receiver ignores it.
"""

from __future__ import annotations

import re
import struct
from typing import Any, NamedTuple

from voipmon.protocols.wire import (
    MAX_FRAME,
    MessageType,
    ProtocolError,
    decode_json,
    encode_json,
    field,
    number_field,
)

ID_MAX = 0xFFFFFFFF
CHUNK = 64 * 1024                  # the default largest ANSWER data
MIN_CHUNK = 1024
MAX_CHUNK = 1024 * 1024            # well under a frame, whatever a peer asks
WINDOW = 1024 * 1024               # the default credit of one request
MAX_CREDIT = 0x7FFFFFFF
MAX_COMMAND = 64
MAX_ARGS = 4096                    # a management-port line is at most this long
MAX_REASON = 200

FIRST = 0x01
LAST = 0x02
ERROR = 0x04
_FLAGS = FIRST | LAST | ERROR

ANSWER_HEAD = struct.Struct(">IB")
_SIZE = struct.Struct(">QB")
CREDIT_LAYOUT = struct.Struct(">II")
CANCEL_HEAD = struct.Struct(">I")
_COMMAND = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TOKEN = re.compile(rb"[\x21-\x7e]{1,255}")        # an error code
_CONTENT_TYPE = re.compile(rb"[\x20-\x7e]{1,255}")  # printable ASCII

assert MAX_CHUNK + ANSWER_HEAD.size + _SIZE.size + 255 < MAX_FRAME


class Request(NamedTuple):
    id: int
    command: str
    args: str
    window: int
    chunk: int


class Answer(NamedTuple):
    id: int
    flags: int
    data: bytes
    size: int = 0            # FIRST only
    content_type: str = ""   # FIRST only
    code: str = ""           # ERROR only
    message: str = ""        # ERROR only

    @property
    def first(self) -> bool:
        return bool(self.flags & FIRST)

    @property
    def last(self) -> bool:
        return bool(self.flags & LAST)

    @property
    def error(self) -> bool:
        return bool(self.flags & ERROR)


class Credit(NamedTuple):
    id: int
    bytes: int


class Cancel(NamedTuple):
    id: int
    reason: str


# -- REQUEST -------------------------------------------------------------------------

def encode_request(request: Request) -> bytes:
    return encode_json({"id": request.id, "command": request.command, "args": request.args,
                        "window": request.window, "chunk": request.chunk})


def decode_request(kind: MessageType, payload: bytes) -> Request:
    """A REQUEST; ProtocolError if malformed. What the command and its arguments say is
    the registry's business (an unknown command is an answer, not a protocol error)."""
    body = decode_json(kind, payload)
    ident = number_field(body, "id", "REQUEST", 1, ID_MAX, integer=True)
    command = field(body, "command", str, "REQUEST")
    if not _COMMAND.fullmatch(command):
        raise ProtocolError("malformed REQUEST message: bad 'command' (a name of at most "
                            f"{MAX_COMMAND} letters, digits, '_', '.' or '-')")
    args = body.get("args", "")
    if not isinstance(args, str) or len(args) > MAX_ARGS:
        raise ProtocolError(f"malformed REQUEST message: bad 'args' (text of at most "
                            f"{MAX_ARGS} characters)")
    window = number_field(body, "window", "REQUEST", 0, MAX_CREDIT, integer=True)
    chunk = number_field(body, "chunk", "REQUEST", MIN_CHUNK, MAX_CHUNK, integer=True)
    return Request(ident, command, args, window, chunk)


# -- ANSWER --------------------------------------------------------------------------

def _token(text: str, what: str, pattern: re.Pattern[bytes] = _TOKEN) -> bytes:
    raw = text.encode("ascii", "replace")
    if not text.isascii() or not pattern.fullmatch(raw):
        raise ValueError(f"bad {what} {text[:40]!r}")
    return raw


def answer_head(ident: int, size: int, content_type: str, last: bool) -> bytes:
    """The start of a first frame; its data (if any) follows it in the same payload."""
    kind = _token(content_type, "content type", _CONTENT_TYPE)
    return (ANSWER_HEAD.pack(ident, FIRST | (LAST if last else 0))
            + _SIZE.pack(size, len(kind)) + kind)


def answer_data_head(ident: int, last: bool) -> bytes:
    """The start of a further frame; its data follows it in the same payload."""
    return ANSWER_HEAD.pack(ident, LAST if last else 0)


def answer_error(ident: int, code: str, message: str, first: bool) -> bytes:
    """A whole ERROR frame: the answer ends with ``code`` and ``message``."""
    raw = _token(code, "error code")
    flags = ERROR | LAST | (FIRST if first else 0)
    return ANSWER_HEAD.pack(ident, flags) + bytes((len(raw),)) + raw + message.encode(
        "utf-8", "replace")[:4096]


def decode_answer(kind: MessageType, payload: bytes) -> Answer:
    """An ANSWER; ProtocolError if malformed."""
    end = len(payload)
    if end < ANSWER_HEAD.size:
        raise ProtocolError("malformed ANSWER message: truncated header")
    ident, flags = ANSWER_HEAD.unpack_from(payload)
    if flags & ~_FLAGS or not ident:
        raise ProtocolError(f"malformed ANSWER message: bad id {ident} or flags 0x{flags:02x}")
    offset = ANSWER_HEAD.size
    if flags & ERROR:
        if not flags & LAST or offset >= end or offset + 1 + payload[offset] > end:
            raise ProtocolError("malformed ANSWER message: bad error")
        length = payload[offset]
        code = payload[offset + 1:offset + 1 + length]
        if not _TOKEN.fullmatch(code):
            raise ProtocolError("malformed ANSWER message: bad error code")
        message = payload[offset + 1 + length:].decode("utf-8", "replace")
        return Answer(ident, flags, b"", code=code.decode("ascii"), message=message)
    if not flags & FIRST:
        return Answer(ident, flags, payload[offset:])
    if offset + _SIZE.size > end:
        raise ProtocolError("malformed ANSWER message: truncated first chunk")
    size, length = _SIZE.unpack_from(payload, offset)
    offset += _SIZE.size
    content_type = payload[offset:offset + length]
    if len(content_type) != length or not _CONTENT_TYPE.fullmatch(content_type):
        raise ProtocolError("malformed ANSWER message: bad content type")
    offset += length
    return Answer(ident, flags, payload[offset:], size=size,
                  content_type=content_type.decode("ascii"))


# -- CREDIT and CANCEL ---------------------------------------------------------------

def encode_credit(ident: int, amount: int) -> bytes:
    return CREDIT_LAYOUT.pack(ident, amount)


def decode_credit(kind: MessageType, payload: bytes) -> Credit:
    if len(payload) != CREDIT_LAYOUT.size:
        raise ProtocolError("malformed CREDIT message: not 8 bytes")
    ident, amount = CREDIT_LAYOUT.unpack(payload)
    if not ident or not 0 < amount <= MAX_CREDIT:
        raise ProtocolError(f"malformed CREDIT message: bad id {ident} or amount {amount}")
    return Credit(ident, amount)


def encode_cancel(ident: int, reason: str) -> bytes:
    return CANCEL_HEAD.pack(ident) + reason.encode("utf-8", "replace")[:MAX_REASON]


def decode_cancel(kind: MessageType, payload: bytes) -> Cancel:
    if len(payload) < CANCEL_HEAD.size or len(payload) > CANCEL_HEAD.size + MAX_REASON:
        raise ProtocolError("malformed CANCEL message: bad length")
    (ident,) = CANCEL_HEAD.unpack_from(payload)
    if not ident:
        raise ProtocolError("malformed CANCEL message: id 0")
    reason = payload[CANCEL_HEAD.size:].decode("utf-8", "replace")
    return Cancel(ident, "".join(c if c.isprintable() else "?" for c in reason))


DECODERS: dict[MessageType, Any] = {
    MessageType.REQUEST: decode_request,
    MessageType.ANSWER: decode_answer,
    MessageType.CREDIT: decode_credit,
    MessageType.CANCEL: decode_cancel,
}
