"""HEP messages into the normal pipeline: a synthesised Ethernet frame per message.

Like VoIPmonitor, each HEP message becomes the frame it describes: Ethernet, IPv4 or IPv6
with the original addresses, UDP, TCP or SCTP with the original ports, and the payload.
The frames go to ``emit(ts, linktype, frame)``, which is ``Engine.feed`` or
``Decoder.feed``: decoding, TCP reassembly, call analysis, per-call pcaps and mirroring
work unchanged. Checksums are real (IPv4 header, UDP over IPv6, TCP), so tools that check
them agree; UDP over IPv4 carries none, which IPv4 allows. The Ethernet header says where
a frame came from: the destination address is ``HEP_MAC`` (02:48:45:50:33:00, locally
administered: "HEP3"), the source address 02:00 and the message's capture agent id (chunk
0x000c, 0 without one) in 32 bits, so the engine keeps the agent on the call
(``voipmon.packet.hep.capture_agent``), the per-call pcap shows it (``eth.src``), and a
mirroring sensor carries it to the central's engine inside the frames.

Per HEP protocol type: SIP (1) and RTP (4) are framed as they are, RTCP as JSON (5) is
rebuilt into binary RTCP first (``rtcpjson``); LOG (100) and every other type are counted
in ``stats.by_type`` and not framed. The inner protocol 22, which Kamailio writes for SIP
it received over TLS or WebSocket (one whole message per HEP message), is framed as UDP,
like VoIPmonitor's ``hep_kamailio_protocol_id_fix``.

TCP: a HEP message is a SIP message (Kamailio) or a TCP segment's data (heplify); either
way it becomes the next segment of its direction. Sequence numbers are kept per
connection (both directions, so every segment acknowledges the other side), and a new
connection starts with a SYN and SYN-ACK, so the reassembler always starts (or restarts,
after this state expired) at the right byte and tshark shows every message without "previous
segment not captured". State is bounded (``max_connections``, oldest dropped first) and
expires after ``idle_timeout`` seconds of capture time without a message; keep that
longer than the reassembler's idle timeout (600 s), so a connection we forget is one the
reassembler forgot too. A payload too big for one segment is split.

SCTP: a HEP message is one SIP message (an SCTP user message), so it becomes one DATA
chunk with B and E set (fragmented if it does not fit), TSNs per direction like TCP
sequence numbers, and its CRC32c. ``voipmon.packet.sctp`` handles it as sniffed SCTP,
and tshark shows SIP over SCTP. (The CRC32c is computed a byte at a time in Python, a few
tens of microseconds per message: SIP over SCTP is rare, and a pcap should verify.)
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from collections.abc import Callable

from voipmon.counters import Counters, family
from voipmon.packet.hep import (
    HEP_MAC,
    LOG,
    Q_CAPTURE_ID,
    Q_DPORT,
    Q_DST,
    Q_SPORT,
    Q_SRC,
    Q_TYPE,
    QUICK_PAYLOAD,
    RTCP_JSON,
    RTP,
    SIP,
    HepError,
    HepMessage,
)
from voipmon.packet.rtcpjson import rtcp_from_json

Emit = Callable[[float, int, bytes], object]

LINKTYPE_ETHERNET = 1
_ZERO_MACS = b"\0" * 12
_IPV4, _IPV6 = b"\x08\x00", b"\x86\xdd"
_IP4 = struct.Struct("!14sBBHHHBBH4s4s")      # Ethernet + IPv4 header
_IP6 = struct.Struct("!14sIHBB16s16s")        # Ethernet + IPv6 header
_UDP = struct.Struct("!HHHH").pack
_TCP = struct.Struct("!HHIIBBHHH").pack
_SCTP = struct.Struct("!HHIIBBHIHHI").pack    # common header + DATA chunk header
_QUICK_FRAME = struct.Struct("!12sHBBHHHBBHIIHHHH").pack  # Ethernet, IPv4, UDP headers
_from = int.from_bytes
_MAX_UDP4, _MAX_UDP6 = 65507, 65527
_MAX_SEG = 65495                              # TCP data per segment (IPv4 bound)
_MAX_SCTP = 65484                             # DATA chunk user data per packet
_SYN, _ACK, _PSH = 0x02, 0x10, 0x08


def _csum(total: int) -> int:
    """The Internet checksum of data whose 16-bit words sum (as a plain integer) to
    ``total``: 2**16 is 1 modulo 0xFFFF, so a big-endian integer of the data is congruent
    to the sum of its words, and one ``%`` replaces the end-around carries."""
    return 0xFFFF - (total % 0xFFFF or 0xFFFF)


def _data_sum(payload: bytes) -> int:
    """``payload`` as a big-endian integer, padded to whole 16-bit words."""
    return _from(payload, "big") << 8 if len(payload) & 1 else _from(payload, "big")


def hep_macs(capture_id: int) -> bytes:
    """The Ethernet destination and source addresses of a frame from agent ``capture_id``."""
    return HEP_MAC + b"\x02\x00" + (capture_id & 0xFFFFFFFF).to_bytes(4, "big")


def ip_frame(src: bytes, dst: bytes, proto: int, l4: bytes, macs: bytes = _ZERO_MACS
             ) -> bytes:
    """Ethernet + IPv4 (4-byte addresses) or IPv6 (16) around the transport bytes ``l4``."""
    n = len(l4)
    if len(src) == 4:
        tot = 20 + n
        c = _csum(0x4500 + tot + 0x4000 + 0x4000 + proto + _from(src, "big")
                  + _from(dst, "big"))
        return _IP4.pack(macs + _IPV4, 0x45, 0, tot, 0, 0x4000, 64, proto, c, src, dst) + l4
    return _IP6.pack(macs + _IPV6, 0x60000000, n, proto, 64, src, dst) + l4


def udp_frame(src: bytes, sport: int, dst: bytes, dport: int, payload: bytes,
              macs: bytes = _ZERO_MACS) -> bytes:
    """One UDP datagram in an Ethernet frame; ``HepError("too_large")`` if it cannot be."""
    ulen = 8 + len(payload)
    if len(src) == 4:
        if ulen > _MAX_UDP4 + 8:
            raise HepError("too_large", f"{len(payload)} bytes of UDP over IPv4")
        tot = 20 + ulen
        c = _csum(0x4500 + tot + 0x4000 + 0x4000 + 17 + _from(src, "big") + _from(dst, "big"))
        return _IP4.pack(macs + _IPV4, 0x45, 0, tot, 0, 0x4000, 64, 17, c, src, dst) \
            + _UDP(sport, dport, ulen, 0) + payload
    if ulen > _MAX_UDP6 + 8:
        raise HepError("too_large", f"{len(payload)} bytes of UDP over IPv6")
    c = _csum(_from(src, "big") + _from(dst, "big") + ulen + 17 + sport + dport + ulen
              + _data_sum(payload)) or 0xFFFF
    return _IP6.pack(macs + _IPV6, 0x60000000, ulen, 17, 64, src, dst) \
        + _UDP(sport, dport, ulen, c) + payload


def tcp_frame(src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int,
              flags: int, payload: bytes = b"", macs: bytes = _ZERO_MACS) -> bytes:
    """One TCP segment (20-byte header, window 65535) with its checksum."""
    tlen = 20 + len(payload)
    ackno = ack if flags & _ACK else 0
    c = _csum(_from(src, "big") + _from(dst, "big") + 6 + tlen + sport + dport + seq + ackno
              + (0x5000 | flags) + 0xFFFF + _data_sum(payload))
    return ip_frame(src, dst, 6, _TCP(sport, dport, seq, ackno, 0x50, flags, 0xFFFF, c, 0)
                    + payload, macs)


def sctp_frame(src: bytes, sport: int, dst: bytes, dport: int, tsn: int, ssn: int,
               flags: int, data: bytes, macs: bytes = _ZERO_MACS) -> bytes:
    """One SCTP packet holding one DATA chunk (stream 0, PPID 0, verification tag 0)."""
    clen = 16 + len(data)
    packet = _SCTP(sport, dport, 0, 0, 0, flags, clen, tsn, 0, ssn, 0) + data \
        + b"\0" * (-clen & 3)
    crc = crc32c(packet)
    return ip_frame(src, dst, 132, packet[:8] + crc.to_bytes(4, "little") + packet[12:],
                    macs)


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as SCTP's checksum (RFC 3309; sent least significant byte
    first, RFC 4960 appendix B)."""
    table = _CRC32C
    c = 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


class _Dir:
    """One direction of a synthesised connection: the next sequence number (TCP) or TSN
    and stream sequence (SCTP), and the other direction."""

    __slots__ = ("last_ts", "next", "peer", "ssn")

    def __init__(self, isn: int, ts: float) -> None:
        self.next = isn
        self.ssn = 0
        self.last_ts = ts
        self.peer: _Dir = self


class SynthStats:
    """What ``HepFrames`` did: messages per HEP protocol type, frames made, and messages
    not framed, by reason (``log``, ``type``, a ``HepError`` reason, ``ip_proto``,
    ``empty``)."""

    __slots__ = ("by_type", "dropped", "frames", "sctp_associations", "tcp_connections")

    def __init__(self) -> None:
        self.by_type: Counter[int] = Counter()
        self.dropped: Counter[str] = Counter()
        self.frames = 0
        self.tcp_connections = 0
        self.sctp_associations = 0

    def counters(self) -> Counters:
        return {"frames": self.frames, "tcp_connections": self.tcp_connections,
                "sctp_associations": self.sctp_associations,
                **family("by_type", self.by_type), **family("dropped", self.dropped)}


class HepFrames:
    """Turns ``HepMessage`` objects into frames for ``emit``; see the module docstring."""

    def __init__(self, emit: Emit, max_connections: int = 40000,
                 idle_timeout: float = 900.0) -> None:
        self._emit = emit
        self.max_connections = max(1, max_connections)
        self.idle_timeout = idle_timeout
        self.stats = SynthStats()
        # (src, sport, dst, dport, proto) -> _Dir; both directions of a connection
        self._dirs: dict[tuple, _Dir] = {}
        self._expired_at = 0.0
        self._created = 0
        self._macs: dict[int, bytes] = {}   # capture id -> hep_macs(capture id)

    def __len__(self) -> int:
        """Connections and associations held."""
        return len(self._dirs) // 2

    def counters(self) -> Counters:
        return {**self.stats.counters(), "connections": len(self)}

    def feed(self, msg: HepMessage, ts: float) -> int:
        """Frame ``msg`` at capture time ``ts`` (its own time, or the caller's choice when
        it has none); the number of frames emitted, 0 if it was not framed."""
        stats = self.stats
        pt = msg[1]
        stats.by_type[pt] += 1
        if pt in (RTP, SIP):
            payload = msg[7]
        elif pt == RTCP_JSON:
            try:
                payload = rtcp_from_json(msg[7])
            except HepError as e:
                stats.dropped[e.reason] += 1
                return 0
        else:
            stats.dropped["log" if pt == LOG else "type"] += 1
            return 0
        if not payload:
            stats.dropped["empty"] += 1
            return 0
        proto = msg[2]
        macs = self._macs.get(msg[8])
        if macs is None:
            if len(self._macs) >= 4096:
                self._macs.clear()
            macs = self._macs[msg[8]] = hep_macs(msg[8])
        try:
            if proto in (17, 22):
                self._emit(ts, LINKTYPE_ETHERNET, udp_frame(msg[3], msg[4], msg[5], msg[6],
                                                            payload, macs))
                stats.frames += 1
                return 1
            if ts - self._expired_at > 1.0 or ts < self._expired_at - 3600.0:
                self.expire(ts)
            if proto == 6:
                return self._tcp(msg, ts, payload, macs)
            if proto == 132:
                return self._sctp(msg, ts, payload, macs)
        except HepError as e:
            stats.dropped[e.reason] += 1
            return 0
        stats.dropped["ip_proto"] += 1
        return 0

    def quick(self, t: tuple, data: bytes, ts: float) -> None:
        """Frame a SIP or RTP message over UDP of ``quick_hep3``'s common shape: its
        values ``t`` and the message ``data`` (the payload from ``QUICK_PAYLOAD``), the
        same frame ``feed`` makes of it, built in one ``pack``."""
        stats = self.stats
        stats.by_type[t[Q_TYPE]] += 1
        capture_id = t[Q_CAPTURE_ID]
        macs = self._macs.get(capture_id)
        if macs is None:
            if len(self._macs) >= 4096:
                self._macs.clear()
            macs = self._macs[capture_id] = hep_macs(capture_id)
        src, dst = t[Q_SRC], t[Q_DST]
        ulen = len(data) - QUICK_PAYLOAD + 8
        # the IPv4 header's words: 0x4500, 20 + ulen, 0, 0x4000 (DF), 64 << 8 | 17 ...
        self._emit(ts, LINKTYPE_ETHERNET, _QUICK_FRAME(
            macs, 0x0800, 0x45, 0, ulen + 20, 0, 0x4000, 64, 17,
            _csum(0xC525 + ulen + src + dst), src, dst, t[Q_SPORT], t[Q_DPORT], ulen, 0)
            + data[QUICK_PAYLOAD:])
        stats.frames += 1

    def _direction(self, msg: HepMessage, ts: float, proto: int) -> tuple[_Dir, bool]:
        """The state of ``msg``'s direction, and whether the connection is new."""
        key = (msg[3], msg[4], msg[5], msg[6], proto)
        d = self._dirs.get(key)
        if d is not None:
            d.last_ts = d.peer.last_ts = ts
            return d, False
        if len(self._dirs) >= 2 * self.max_connections:
            self._drop(next(iter(self._dirs)))
        rkey = (msg[5], msg[6], msg[3], msg[4], proto)
        self._created += 1
        d = _Dir(_isn(key, ts, self._created), ts)
        r = _Dir(_isn(rkey, ts, self._created), ts)
        d.peer, r.peer = r, d
        self._dirs[key] = d
        self._dirs[rkey] = r
        return d, True

    def _tcp(self, msg: HepMessage, ts: float, payload: bytes, macs: bytes) -> int:
        src, sport, dst, dport = msg[3], msg[4], msg[5], msg[6]
        d, new = self._direction(msg, ts, 6)
        emit = self._emit
        n = 0
        if new:
            self.stats.tcp_connections += 1
            r = d.peer
            emit(ts, LINKTYPE_ETHERNET, tcp_frame(src, sport, dst, dport, d.next, 0, _SYN,
                                                  b"", macs))
            emit(ts, LINKTYPE_ETHERNET, tcp_frame(dst, dport, src, sport, r.next,
                                                  (d.next + 1) & 0xFFFFFFFF, _SYN | _ACK,
                                                  b"", macs))
            d.next = (d.next + 1) & 0xFFFFFFFF
            r.next = (r.next + 1) & 0xFFFFFFFF
            n = 2
        ack = d.peer.next
        for i in range(0, len(payload), _MAX_SEG):
            part = payload[i:i + _MAX_SEG] if len(payload) > _MAX_SEG else payload
            emit(ts, LINKTYPE_ETHERNET, tcp_frame(src, sport, dst, dport, d.next, ack,
                                                  _PSH | _ACK, part, macs))
            d.next = (d.next + len(part)) & 0xFFFFFFFF
            n += 1
        self.stats.frames += n
        return n

    def _sctp(self, msg: HepMessage, ts: float, payload: bytes, macs: bytes) -> int:
        src, sport, dst, dport = msg[3], msg[4], msg[5], msg[6]
        d, new = self._direction(msg, ts, 132)
        if new:
            self.stats.sctp_associations += 1
        parts = range(0, len(payload), _MAX_SCTP)
        last = parts[-1]
        for i in parts:
            flags = (2 if i == 0 else 0) | (1 if i == last else 0)
            self._emit(ts, LINKTYPE_ETHERNET, sctp_frame(
                src, sport, dst, dport, d.next, d.ssn, flags, payload[i:i + _MAX_SCTP], macs))
            d.next = (d.next + 1) & 0xFFFFFFFF
        d.ssn = (d.ssn + 1) & 0xFFFF
        self.stats.frames += len(parts)
        return len(parts)

    def _drop(self, key: tuple) -> None:
        d = self._dirs.pop(key, None)
        if d is not None:
            src, sport, dst, dport, proto = key
            self._dirs.pop((dst, dport, src, sport, proto), None)

    def expire(self, now: float) -> None:
        """Forget connections idle for ``idle_timeout`` (capture time; all of them if the
        clock went back by more than an hour)."""
        self._expired_at = now
        limit = now - self.idle_timeout
        stale = [k for k, d in self._dirs.items()
                 if d.last_ts < limit or d.last_ts > now + 3600.0]
        for key in stale:
            self._drop(key)


def _isn(key: tuple, ts: float, serial: int) -> int:
    """The initial sequence number (or TSN) of one direction: a hash of its addresses and
    ports, plus a 250 kHz clock (RFC 793's) and the connection's serial number, so that a
    connection started again after its state was dropped starts elsewhere and the
    reassembler, which may still hold the old stream, takes the new SYN as a new stream.
    Deterministic: the same input gives the same frames."""
    src, sport, dst, dport, proto = key
    return (zlib.crc32(src + dst + struct.pack("!HHB", sport, dport, proto))
            + int(ts * 250000) + serial * 0x01000193) & 0xFFFFFFFF
