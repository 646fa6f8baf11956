"""Framing of SIP messages in a byte stream (RFC 3261 §18.3) and of WebSocket frames
(RFC 6455, as RFC 7118 uses them for SIP).

Pure functions over a ``bytearray`` so the TCP reassembler can cut messages off the front
of its buffer. A stream that does not start with a plausible start line is resynchronised
to the next line that does, so one corrupt message cannot wedge a connection.
"""

from __future__ import annotations

import re

#: A SIP request line ("METHOD uri SIP/2.0") or status line ("SIP/2.0 NNN ").
START_LINE = re.compile(
    rb"(?:SIP/2\.0 [1-6][0-9][0-9][ \r]|[A-Za-z][A-Za-z0-9.!%*_+`'~-]{0,31} [^ \r\n]{1,4096} "
    rb"SIP/2\.0\r\n)")
_LOOSE_START = re.compile(rb"(?:SIP/2\.0 [1-6][0-9][0-9]|[A-Z]{3,16} (?:sips?|tel|urn):)")
_CLEN = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([0-9]{1,12})", re.IGNORECASE)
_LINE_HEAD = 4160  # a start line is never longer than this
MAX_HEADER = 65536

INCOMPLETE = -1
GARBAGE = -2


def looks_like_sip(data: bytes | bytearray, start: int = 0) -> bool:
    """True if ``data[start:]`` begins with a complete SIP start line."""
    return START_LINE.match(data, start) is not None


def looks_like_sip_start(data: bytes | bytearray) -> bool:
    """The looser test used to spot SIP on an unknown connection from its first bytes."""
    return _LOOSE_START.match(data) is not None


def strip_keepalive(buf: bytearray) -> int:
    """Remove leading CR/LF (RFC 5626 keep-alives, stray line ends); return how many."""
    n = 0
    while n < len(buf) and buf[n] in (13, 10):
        n += 1
    if n:
        del buf[:n]
    return n


def sip_message_length(buf: bytearray | bytes, max_message: int) -> int:
    """Length of the first complete SIP message in ``buf``, ``INCOMPLETE`` if more bytes
    are needed, or ``GARBAGE`` if ``buf`` does not start with a usable message.

    A message without Content-Length has an empty body (what a stream sender must mean,
    RFC 3261 §18.3 makes the header mandatory there).
    """
    if START_LINE.match(buf) is None:
        eol = buf.find(b"\r\n", 0, _LINE_HEAD)
        if eol < 0 and len(buf) < _LINE_HEAD and not _prefix_garbage(buf):
            return INCOMPLETE
        return GARBAGE
    hend = buf.find(b"\r\n\r\n")
    if hend < 0:
        return INCOMPLETE if len(buf) < MAX_HEADER else GARBAGE
    m = _CLEN.search(buf, 0, hend + 2)
    clen = int(m.group(1)) if m else 0
    total = hend + 4 + clen
    if total > max_message:
        return GARBAGE
    return total if len(buf) >= total else INCOMPLETE


def _prefix_garbage(buf: bytearray | bytes) -> bool:
    """A partial first line that can already not become a start line."""
    if not buf:
        return False
    c = buf[0]
    return not (65 <= c <= 90 or 97 <= c <= 122)


def resync(buf: bytearray) -> int:
    """Drop bytes up to the next line that starts a SIP message; return how many.

    Keeps a possibly partial last line so a start line split across segments is not lost.
    """
    pos = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            keep = max(pos, len(buf) - _LINE_HEAD)
            del buf[:keep]
            return keep
        pos = eol + 2
        if START_LINE.match(buf, pos) is not None:
            del buf[:pos]
            return pos
        # a start line cut by the end of the buffer: keep it and wait for more
        if buf.find(b"\r\n", pos) < 0 and len(buf) - pos < _LINE_HEAD \
                and not _prefix_garbage(buf[pos:pos + 1]):
            del buf[:pos]
            return pos


# -- WebSocket ------------------------------------------------------------------------

def ws_frame(buf: bytearray | bytes, max_message: int) -> tuple[int, int, int, bytes] | int:
    """Parse the first WebSocket frame of ``buf``.

    Returns (length consumed, first header byte, payload offset, 4-byte mask or b""), or
    ``INCOMPLETE`` / ``GARBAGE``.
    """
    n = len(buf)
    if n < 2:
        return INCOMPLETE
    b0, b1 = buf[0], buf[1]
    op = b0 & 0x0F
    if op not in (0, 1, 2, 8, 9, 10) or b0 & 0x30:  # RSV2/RSV3 are never negotiated
        return GARBAGE
    ln = b1 & 0x7F
    p = 2
    if ln == 126:
        if n < 4:
            return INCOMPLETE
        ln = buf[2] << 8 | buf[3]
        p = 4
    elif ln == 127:
        if n < 10:
            return INCOMPLETE
        ln = int.from_bytes(buf[2:10], "big")
        p = 10
    if ln > max_message:
        return GARBAGE
    mask = b""
    if b1 & 0x80:
        if n < p + 4:
            return INCOMPLETE
        mask = bytes(buf[p:p + 4])
        p += 4
    if n < p + ln:
        return INCOMPLETE
    return p + ln, b0, p, mask


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the repeating 4-byte ``mask`` (one big-int operation)."""
    n = len(data)
    if not mask or not n:
        return data
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def looks_like_ws_sip(data: bytes) -> bool:
    """A WebSocket data frame whose (unmasked) payload begins like a SIP message."""
    n = len(data)
    if n < 2 or data[0] & 0x0F not in (1, 2) or data[0] & 0x30:
        return False
    b1 = data[1]
    ln = b1 & 0x7F
    p = 2 + (2 if ln == 126 else 8 if ln == 127 else 0)
    mask = data[p:p + 4] if b1 & 0x80 else b""
    p += len(mask)
    if b1 & 0x80 and len(mask) < 4:
        return False
    return looks_like_sip_start(unmask(bytes(data[p:p + 64]), mask))
