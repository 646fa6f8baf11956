"""HEP (the HOMER encapsulation protocol) decoding: HEP3 messages, legacy HEPv1/v2 datagrams,
and HEP3 over a TCP stream.

A HEP3 message is ``"HEP3"`` (or ``"EEP3"``), a 16-bit total length, then chunks: 16-bit
vendor id, 16-bit type, 16-bit length (header included), value; all big-endian. Chunks may
come in any order (Kamailio sends addresses before ports, sngrep ports before addresses);
each is read or skipped by its length, vendor chunks (vendor id not 0) are skipped, and a
chunk seen twice counts once, the last time. ``decode_hep`` also takes:

- the whole-frame gzip that heplify's ``payload_zip`` really sends (a gzip member holding
  one HEP3 message, on UDP and TCP alike);
- the payload compressed in chunk 0x0010, gzip or zlib (captagent) or raw deflate;
- HEPv1/v2 datagrams (no magic, no length: version 1 or 2, header length 16 for IPv4 or
  40 for IPv6, then the addresses; v2 adds a time header: seconds, microseconds and a
  16-bit capture id, in the sender's byte order, little-endian from Kamailio and captagent
  on x86, read big-endian when only that gives a valid microsecond count (else no time),
  and 12 bytes long as their C struct is, padding included; 10 only when the SIP message
  plainly starts there).

Malformed input of any kind raises ``HepError``, whose ``reason`` is one of ``REASONS``:
short words fit for a metric label. Nothing else is ever raised for any input bytes.

``decode_hep`` returns a ``HepMessage``, a tuple built without calling its class, so the
hot path makes one small object per message besides the payload.
"""

from __future__ import annotations

import operator
import re
import struct
import zlib
from collections.abc import Callable
from typing import NamedTuple

#: Every ``HepError.reason``, for metric labels and tests.
REASONS = frozenset({
    "truncated",        # shorter than its header, or than the length it declares
    "bad_length",       # a declared total length below 6, or not the datagram's size
    "bad_magic",        # neither HEP3/EEP3, heplify's gzip, nor a plausible HEPv1/v2
    "bad_chunk",        # a chunk length below 6 or beyond the end of the message
    "bad_chunk_size",   # a fixed-size chunk (address, port, time, ...) of another size
    "no_address",       # no source and destination address of one family
    "no_port",          # a source or destination port is missing
    "no_payload",       # neither chunk 0x000f nor 0x0010 (a keep-alive, for example)
    "bad_compression",  # chunk 0x0010 or a gzip frame that does not inflate
    "too_large",        # inflates beyond the bound, or cannot be carried in one frame
    "bad_rtcp_json",    # a type 5 payload that is not usable RTCP JSON (rtcpjson)
})

#: HEP protocol types (chunk 0x000b) with a meaning here.
SIP, RTP, RTCP_JSON, LOG = 1, 4, 5, 100
#: Largest inflated payload (chunk 0x0010, or a gzip frame) accepted by default: what an
#: uncompressed chunk 0x000f can carry.
MAX_PAYLOAD = 65535


#: The Ethernet destination address of every frame synthesised from HEP
#: (``voipmon.packet.synth``): 02:48:45:50:33:00, "HEP3", locally administered. The source
#: address is 02:00 and the capture agent id (chunk 0x000c) in 32 bits.
HEP_MAC = b"\x02HEP3\x00"


def capture_agent(linktype: int, frame: bytes) -> int | None:
    """The capture agent id of a frame synthesised from HEP; None for any other frame."""
    if linktype == 1 and frame[:6] == HEP_MAC and len(frame) >= 14:
        return int.from_bytes(frame[8:12], "big")
    return None


class HepError(ValueError):
    """A malformed HEP message; ``reason`` (one of ``REASONS``) says how."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class HepMessage(NamedTuple):
    """One decoded HEP message. Absent optional chunks are None (or 0 for numbers)."""

    ts: float | None          # 0x0009 + 0x000a / 1e6, epoch seconds; None without 0x0009
    proto_type: int           # 0x000b: 1 SIP, 4 RTP, 5 RTCP JSON, 100 LOG, ...; 0 if absent
    ip_proto: int             # 0x0002 as sent: 17 UDP, 6 TCP, 132 SCTP, 22 (Kamailio TLS/WS)
    src: bytes                # packed address: 4 bytes IPv4, 16 bytes IPv6
    sport: int
    dst: bytes
    dport: int
    payload: bytes            # captured payload, inflated if it came compressed
    capture_id: int           # 0x000c as sent (sngrep and sipgrep byte-swap it); 0 if absent
    auth_key: bytes | None    # 0x000e
    correlation_id: bytes | None  # 0x0011 (a Call-ID for RTCP and LOG)
    node_name: bytes | None   # 0x0013, the capture agent's name
    version: int              # 3, or 1/2 for the legacy format


_new = tuple.__new__
_HEAD = struct.Struct("!4sH").unpack_from
_CHUNK = struct.Struct("!HHH").unpack_from
_U16 = struct.Struct("!H").unpack_from
_U32 = struct.Struct("!I").unpack_from
_V2_HEAD = struct.Struct("!BBBBHH").unpack_from
_LE_TIME = struct.Struct("<IIH").unpack_from
_BE_TIME = struct.Struct("!IIH").unpack_from
_MAGICS = (b"HEP3", b"EEP3")
_SIP_START = re.compile(rb"(?:SIP/2\.0 |(?:INVITE|ACK|BYE|CANCEL|REGISTER|OPTIONS|PRACK|"
                        rb"SUBSCRIBE|NOTIFY|PUBLISH|INFO|REFER|MESSAGE|UPDATE) )")
_GZIP = b"\x1f\x8b"
# chunk type -> exact value size, for the fixed-size generic chunks we read
_SIZES = {1: 1, 2: 1, 3: 4, 4: 4, 5: 16, 6: 16, 7: 2, 8: 2, 9: 4, 10: 4, 11: 1, 12: 4}


def decode_hep(data: bytes, max_payload: int = MAX_PAYLOAD) -> HepMessage:
    """Decode one HEP datagram (or a frame cut by ``HepStreamFramer``)."""
    if data[:4] in _MAGICS:
        return decode_hep3(data, max_payload)
    if data[:2] == _GZIP:
        return decode_hep3(gunzip_frame(data, max_payload), max_payload)
    if data[:1] in (b"\x01", b"\x02"):
        return decode_hep2(data)
    if len(data) < 4:
        raise HepError("truncated", f"{len(data)} bytes")
    raise HepError("bad_magic", repr(data[:4]))


def decode_hep3(data: bytes, max_payload: int = MAX_PAYLOAD) -> HepMessage:
    """Decode one HEP3 message that fills ``data`` exactly."""
    n = len(data)
    if n < 6:
        raise HepError("truncated", f"{n} bytes")
    magic, length = _HEAD(data, 0)
    if magic not in _MAGICS:
        raise HepError("bad_magic", repr(magic))
    if length > n:
        raise HepError("truncated", f"{n} of {length} bytes")
    if length != n or length < 6:
        raise HepError("bad_length", f"declares {length} bytes in {n}")
    for unpack, end, types, lengths, pick in _LAYOUTS.get(data[20:24], ()):
        if n >= end:
            t = unpack(data, 6)
            if t[0::3] == types and t[1::3] == lengths:
                msg = _tail(data, n, end, pick(t), max_payload)
                if msg is not None:
                    return msg
    return _decode_chunks(data, n, max_payload)


class _Layout(NamedTuple):
    """The fixed-size chunks a sender always writes first, in its order: one ``unpack``
    (vendor and type as one 32-bit word, length, value per chunk) and two tuple compares
    check a message against it, instead of a loop turn per chunk."""

    unpack: Callable[[bytes, int], tuple]
    end: int                       # offset after the last of these chunks
    types: tuple[int, ...]         # vendor << 16 | type of each chunk (vendor 0)
    lengths: tuple[int, ...]
    pick: Callable[[tuple], tuple]  # -> (family, ip_proto, src, dst, sport, dport, sec,
    #                                    usec, proto_type, capture_id)


_VALUE = {1: "B", 2: "B", 3: "4s", 4: "4s", 5: "16s", 6: "16s", 7: "H", 8: "H", 9: "I",
          10: "I", 11: "B", 12: "I"}
_CANON = (1, 2, 3, 4, 7, 8, 9, 10, 11, 12)  # the order of ``_Layout.pick``'s values


def _layout(types: tuple[int, ...]) -> _Layout:
    s = struct.Struct("!" + "".join("IH" + _VALUE[t] for t in types))
    where = {(t if t not in (5, 6) else t - 2): 3 * i + 2 for i, t in enumerate(types)}
    return _Layout(s.unpack_from, 6 + s.size, types,
                   tuple(6 + _SIZES[t] for t in types),
                   operator.itemgetter(*(where[t] for t in _CANON)))


# Kamailio (and heplify, the spec's example): family, proto, addresses, ports, time, type,
# capture id; sngrep: the addresses last. Keyed by the vendor and type of the third chunk.
_KAM4 = _layout((1, 2, 3, 4, 7, 8, 9, 10, 11, 12))
_KAM6 = _layout((1, 2, 5, 6, 7, 8, 9, 10, 11, 12))
_SNG4 = _layout((1, 2, 7, 8, 9, 10, 11, 12, 3, 4))
_SNG6 = _layout((1, 2, 7, 8, 9, 10, 11, 12, 5, 6))
_LAYOUTS = {b"\0\0\0\x03": (_KAM4,), b"\0\0\0\x05": (_KAM6,), b"\0\0\0\x07": (_SNG4, _SNG6)}


def _tail(data: bytes, n: int, p: int, fixed: tuple, max_payload: int) -> HepMessage | None:
    """The message from a layout's values and the chunks after them, or None when those
    are anything but variable-size chunks (then the general walk decides)."""
    payload = zipped = auth = cid = name = None
    while p < n:
        if p + 6 > n:
            return None
        vendor, ctype, clen = _CHUNK(data, p)
        e = p + clen
        if clen < 6 or e > n:
            return None
        if vendor:
            pass
        elif ctype == 15:
            payload = data[p + 6:e]
        elif ctype <= 12:
            return None
        elif ctype == 16:
            zipped = data[p + 6:e]
        elif ctype == 14:
            auth = data[p + 6:e]
        elif ctype == 17:
            cid = data[p + 6:e]
        elif ctype == 19:
            name = data[p + 6:e]
        p = e
    if zipped is not None:
        payload = inflate(zipped, max_payload)
    elif payload is None:
        return None
    _, ip_proto, src, dst, sport, dport, sec, usec, proto_type, capture_id = fixed
    return _new(HepMessage, (sec + usec / 1e6, proto_type, ip_proto, src, sport, dst, dport,
                             payload, capture_id, auth, cid, name, 3))


def _decode_chunks(data: bytes, n: int, max_payload: int) -> HepMessage:
    """The general walk over the chunks of a HEP3 message whose header is checked."""
    family = ip_proto = proto_type = sport = dport = capture_id = 0
    src4 = dst4 = src6 = dst6 = payload = zipped = None
    auth = cid = name = None
    sec: int | None = None
    usec = 0
    have = 0  # bit per fixed-size chunk seen
    p = 6
    while p < n:
        if p + 6 > n:
            raise HepError("bad_chunk", f"{n - p} bytes left at {p}")
        vendor, ctype, clen = _CHUNK(data, p)
        e = p + clen
        if clen < 6 or e > n:
            raise HepError("bad_chunk", f"chunk {ctype:#06x} of {clen} bytes at {p}")
        v = p + 6
        if vendor:
            pass
        elif ctype == 15:
            payload = data[v:e]
        elif ctype <= 12:
            size = _SIZES.get(ctype)
            if size is not None:
                if clen - 6 != size:
                    raise HepError("bad_chunk_size", f"chunk {ctype:#06x}: {clen - 6} bytes")
                have |= 1 << ctype
                if ctype == 7:
                    sport = _U16(data, v)[0]
                elif ctype == 8:
                    dport = _U16(data, v)[0]
                elif ctype == 3:
                    src4 = data[v:e]
                elif ctype == 4:
                    dst4 = data[v:e]
                elif ctype == 9:
                    sec = _U32(data, v)[0]
                elif ctype == 10:
                    usec = _U32(data, v)[0]
                elif ctype == 11:
                    proto_type = data[v]
                elif ctype == 12:
                    capture_id = _U32(data, v)[0]
                elif ctype == 2:
                    ip_proto = data[v]
                elif ctype == 1:
                    family = data[v]
                elif ctype == 5:
                    src6 = data[v:e]
                else:
                    dst6 = data[v:e]
        elif ctype == 16:
            zipped = data[v:e]
        elif ctype == 14:
            auth = data[v:e]
        elif ctype == 17:
            cid = data[v:e]
        elif ctype == 19:
            name = data[v:e]
        p = e
    # addresses: the pair the family names, else whichever complete pair there is
    if src4 is not None and dst4 is not None and (family == 2 or src6 is None or dst6 is None):
        src, dst = src4, dst4
    elif src6 is not None and dst6 is not None:
        src, dst = src6, dst6
    else:
        raise HepError("no_address", "no source and destination of one family")
    if have & 0x180 != 0x180:
        raise HepError("no_port")
    if zipped is not None:
        payload = inflate(zipped, max_payload)
    elif payload is None:
        raise HepError("no_payload")
    if not have & 4:
        ip_proto = 17
    return _new(HepMessage, (None if sec is None else sec + usec / 1e6, proto_type, ip_proto,
                             src, sport, dst, dport, payload, capture_id, auth, cid, name,
                             3))


#: The one shape most HEP messages have (Kamailio's and heplify's chunk order, IPv4, the
#: payload in one chunk 0x000f, last): magic and length, then vendor << 16 | type,
#: length and value of each chunk (addresses as numbers), then the payload chunk's header.
_QUICK = struct.Struct("!4sH" + "IHB" * 2 + "IHI" * 2 + "IHH" * 2 + "IHI" * 2 + "IHBIHIIH")
QUICK_PAYLOAD = _QUICK.size     # where the payload starts: 99
_QUICK_CHUNKS = operator.itemgetter(*range(2, 32, 3), *range(3, 33, 3), 32)
_QUICK_EXPECT = (1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 7, 7, 10, 10, 8, 8, 10, 10, 7, 10, 15)
#: indices into ``quick_hep3``'s values
Q_IP_PROTO, Q_SRC, Q_DST, Q_SPORT, Q_DPORT, Q_SEC, Q_USEC, Q_TYPE, Q_CAPTURE_ID = \
    7, 10, 13, 16, 19, 22, 25, 28, 31


def quick_hep3(data: bytes) -> tuple | None:
    """The chunk values of a HEP3 message of the one common shape (``_QUICK``) carrying
    SIP or RTP over UDP (or 22, Kamailio's TLS/WS), with a payload; None for any other
    message, which ``decode_hep`` then decodes. One unpack and a few compares, no
    ``HepMessage``: the HEP source's hot path (``voipmon.sources.hepintake``)."""
    n = len(data)
    if n <= QUICK_PAYLOAD or data[20:24] != b"\0\0\0\x03":
        return None
    t = _QUICK.unpack_from(data)
    if t[1] != n or t[33] != n - QUICK_PAYLOAD + 6 or t[0] not in _MAGICS \
            or _QUICK_CHUNKS(t) != _QUICK_EXPECT or t[Q_TYPE] not in (SIP, RTP) \
            or t[Q_IP_PROTO] not in (17, 22):
        return None
    return t


def decode_hep2(data: bytes) -> HepMessage:
    """Decode a legacy HEPv1/v2 datagram (SIP only; its payload runs to the end)."""
    n = len(data)
    if n < 8:
        raise HepError("truncated", f"{n} bytes")
    version, hlen, family, ip_proto, sport, dport = _V2_HEAD(data, 0)
    if version not in (1, 2) or hlen not in (16, 40) or (family == 2) != (hlen == 16) \
            or family == 0:
        raise HepError("bad_magic", f"not HEPv1/2: {data[:4].hex()}")
    end = hlen
    if version == 2:
        # the C struct of the time header is 12 bytes (10 and 2 of padding) as Kamailio
        # and captagent send it; 10 only where a SIP start line plainly begins
        end += 10 if _SIP_START.match(data, hlen + 10) else 12
    if n < end:
        raise HepError("truncated", f"{n} of {end} header bytes")
    half = (hlen - 8) // 2
    src, dst = data[8:8 + half], data[8 + half:hlen]
    ts = None
    capture_id = 0
    if version == 2:
        sec, usec, capture_id = _LE_TIME(data, hlen)
        if usec >= 1000000:
            bsec, busec, bcapt = _BE_TIME(data, hlen)
            if busec < 1000000:
                sec, usec, capture_id = bsec, busec, bcapt
        if usec < 1000000:
            ts = sec + usec / 1e6
    if n == end:
        raise HepError("no_payload")
    return _new(HepMessage, (ts, SIP, ip_proto, src, sport, dst, dport, data[end:],
                             capture_id, None, None, None, version))


def inflate(data: bytes, max_size: int = MAX_PAYLOAD) -> bytes:
    """Chunk 0x0010: gzip, zlib or raw deflate, at most ``max_size`` bytes out."""
    wbits = 47 if data[:2] == _GZIP or (len(data) >= 2 and data[0] & 0x0F == 8
                                         and (data[0] << 8 | data[1]) % 31 == 0) else -15
    return _inflate(data, wbits, max_size)


def gunzip_frame(data: bytes, max_size: int = MAX_PAYLOAD) -> bytes:
    """The HEP3 message in a gzip member (heplify ``payload_zip``)."""
    return _inflate(data, 31, max_size)


def _inflate(data: bytes, wbits: int, max_size: int) -> bytes:
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(data, max_size + 1)
    except zlib.error as e:
        raise HepError("bad_compression", str(e)) from None
    if len(out) > max_size:
        raise HepError("too_large", f"inflates beyond {max_size} bytes")
    if not d.eof:
        raise HepError("bad_compression", "incomplete compressed data")
    return out


class HepStreamFramer:
    """Cuts a TCP byte stream into HEP3 messages, each handed to ``emit`` as bytes.

    The stream is back-to-back HEP3 messages framed by their length, or heplify's gzip
    members (one HEP3 message each, or several, inflated here as they arrive). Anything
    else is garbage: ``feed`` raises ``HepError`` after emitting the messages before it, and
    keeps raising, since a stream cannot be resynchronised on a magic that payloads may
    contain; the caller drops the connection. Memory is bounded: a partial HEP3 message is
    at most 64 KiB, a gzip member at most ``max_buffer`` bytes in and ``max_payload`` out.
    Every byte is copied a bounded number of times, however the stream is cut.
    """

    __slots__ = ("_buf", "_emit", "_error", "_need", "_z", "_zin", "_zout", "_zsize",
                 "max_buffer", "max_payload", "messages")

    def __init__(self, emit: Callable[[bytes], object], max_buffer: int = 1 << 17,
                 max_payload: int = MAX_PAYLOAD) -> None:
        self._emit = emit
        self._buf = bytearray()
        self._need = 6               # bytes the buffer must reach before we look again
        self._error: HepError | None = None
        self._z: zlib._Decompress | None = None  # inside a gzip member
        self._zin = 0
        self._zout: list[bytes] = []
        self._zsize = 0
        self.max_buffer = max_buffer
        self.max_payload = max_payload
        self.messages = 0

    @property
    def buffered(self) -> int:
        """Bytes held of a message not complete yet."""
        return len(self._buf) + self._zsize

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        try:
            while data:
                data = self._inflate(data) if self._z is not None else self._frames(data)
        except HepError as e:
            self._error = e
            self._buf = bytearray()
            self._z, self._zout, self._zsize = None, [], 0
            raise

    def _frames(self, data: bytes) -> bytes:
        """Emit the whole HEP3 messages, keep a partial one; the data from a gzip member
        on is returned (else b"")."""
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return b""
            data = bytes(buf)
            buf.clear()
        n = len(data)
        p = 0
        emit = self._emit
        while n - p >= 6:
            magic, length = _HEAD(data, p)
            if magic in _MAGICS:
                if length < 6:
                    raise HepError("bad_length", f"declares {length} bytes")
                if p + length > n:
                    break
                self.messages += 1
                emit(data[p:p + length])
                p += length
            elif data[p:p + 2] == _GZIP:
                self._z = zlib.decompressobj(31)
                self._zin = 0
                return data[p:]
            else:
                raise HepError("bad_magic", f"stream bytes {data[p:p + 4]!r}")
        if p < n:
            buf += data[p:] if p else data
            self._need = _HEAD(buf, 0)[1] if len(buf) >= 6 else 6
        return b""

    def _inflate(self, data: bytes) -> bytes:
        """More of a gzip member; the bytes after its end are returned (else b"")."""
        z = self._z
        assert z is not None
        try:
            out = z.decompress(data, self.max_payload + 1 - self._zsize)
        except zlib.error as e:
            raise HepError("bad_compression", str(e)) from None
        self._zsize += len(out)
        self._zout.append(out)
        if self._zsize > self.max_payload:
            raise HepError("too_large", f"a gzip frame inflates beyond {self.max_payload}")
        if not z.eof:
            self._zin += len(data)
            if self._zin > self.max_buffer:
                raise HepError("too_large", f"a gzip frame beyond {self.max_buffer} bytes")
            return b""
        rest = z.unused_data
        msg = b"".join(self._zout)
        self._z, self._zout, self._zsize = None, [], 0
        q = 0
        while q < len(msg):  # one member may hold several messages back to back
            if len(msg) - q < 6 or msg[q:q + 4] not in _MAGICS:
                raise HepError("bad_magic", "a gzip frame without a HEP3 message")
            length = _U16(msg, q + 4)[0]
            if length < 6 or q + length > len(msg):
                raise HepError("bad_length", "in a gzip frame")
            self.messages += 1
            self._emit(msg[q:q + length])
            q += length
        if not msg:
            raise HepError("bad_magic", "an empty gzip frame")
        return rest
