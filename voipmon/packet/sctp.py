"""SIP over SCTP (RFC 4168): one SIP message per SCTP user message.

DATA (and I-DATA) chunks of associations with an endpoint on a SIP port are collected per
direction and stream; an unfragmented chunk is a whole message, fragmented ones are joined
by TSN from the B(eginning) to the E(nd) fragment. Retransmitted chunks are recognised by
TSN and dropped. Memory per direction is bounded, and stale state expires.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Collection

from voipmon.packet.datagram import IPPROTO_SCTP, Datagram
from voipmon.packet.sipframe import looks_like_sip_start
from voipmon.packet.stats import DecodeStats

Frames = tuple[tuple[float, bytes], ...]
_COMMON = struct.Struct("!HHII").unpack_from
_CHUNK = struct.Struct("!BBH").unpack_from
_DATA = struct.Struct("!IHH").unpack_from
_new = tuple.__new__
_RECENT = 4096  # TSNs remembered per direction for duplicate detection


class _Assoc:
    __slots__ = ("bytes", "frags", "last_ts", "recent", "recent_set")

    def __init__(self, ts: float) -> None:
        self.recent: deque[int] = deque()
        self.recent_set: set[int] = set()
        # stream id -> {tsn: (flags, data, frames)}
        self.frags: dict[int, dict[int, tuple[int, bytes, Frames]]] = {}
        self.bytes = 0
        self.last_ts = ts


class SctpReassembler:
    """Turn SCTP packets on SIP ports into ``Datagram`` objects holding one SIP message."""

    def __init__(self, emit: Callable[[Datagram], None], sip_ports: Collection[int],
                 stats: DecodeStats, max_assocs: int = 4096, max_bytes: int = 1 << 20,
                 timeout: float = 60.0, max_total: int = 16 << 20) -> None:
        self._emit = emit
        self.sip_ports = frozenset(sip_ports)
        self.stats = stats
        self.max_assocs = max_assocs
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_total = max_total
        self._assocs: dict[tuple, _Assoc] = {}
        self._held = 0  # fragment bytes over all associations

    def packet(self, ts: float, b: bytes, off: int, end: int, src: bytes, dst: bytes,
               linktype: int, frames: Frames) -> None:
        if off + 12 > end:
            self.stats.undecodable["sctp_short"] += 1
            return
        sport, dport, _vtag, _crc = _COMMON(b, off)
        if sport not in self.sip_ports and dport not in self.sip_ports:
            self.stats.ignored["sctp_not_sip"] += 1
            return
        key = (src, sport, dst, dport)
        p = off + 12
        while p + 4 <= end:
            ctype, flags, clen = _CHUNK(b, p)
            if clen < 4 or p + clen > end:
                self.stats.undecodable["sctp_bad_chunk"] += 1
                return
            if ctype == 0 and clen >= 16:  # DATA: TSN, stream, SSN, PPID
                tsn, stream, _ = _DATA(b, p + 4)
                data = b[p + 16:p + clen]
            elif ctype == 64 and clen >= 20:  # I-DATA: TSN, stream, MID, PPID/FSN
                tsn, stream, _ = _DATA(b, p + 4)
                data = b[p + 20:p + clen]
            else:
                p += (clen + 3) & ~3
                continue
            self._chunk(key, ts, tsn, stream, flags, data, linktype, frames)
            p += (clen + 3) & ~3

    def _assoc(self, key: tuple, ts: float) -> _Assoc:
        a = self._assocs.get(key)
        if a is None:
            if len(self._assocs) >= self.max_assocs:
                self.stats.ignored["sctp_evicted"] += 1
                self._held -= self._assocs.pop(next(iter(self._assocs))).bytes
            a = self._assocs[key] = _Assoc(ts)
        a.last_ts = ts
        return a

    def _chunk(self, key: tuple, ts: float, tsn: int, stream: int, flags: int, data: bytes,
               linktype: int, frames: Frames) -> None:
        a = self._assoc(key, ts)
        if tsn in a.recent_set:
            self.stats.ignored["sctp_duplicate"] += 1
            return
        a.recent.append(tsn)
        a.recent_set.add(tsn)
        if len(a.recent) > _RECENT:
            a.recent_set.discard(a.recent.popleft())
        if flags & 3 == 3:
            return self._message(key, ts, data, linktype, frames)
        frags = a.frags.setdefault(stream, {})
        frags[tsn] = (flags, data, frames)
        a.bytes += len(data)
        self._held += len(data)
        if a.bytes > self.max_bytes:
            self.stats.undecodable["sctp_reassembly_overflow"] += 1
            self._clear(a)
            return None
        if self._held > self.max_total:
            for other in self._assocs.values():
                if other is not a and other.bytes:
                    self.stats.undecodable["sctp_memory_shed"] += 1
                    self._clear(other)
                    if self._held <= self.max_total:
                        break
        # find a B..E run of consecutive TSNs that includes this chunk
        start = tsn
        while not frags[start][0] & 2:
            start = (start - 1) & 0xFFFFFFFF
            if start not in frags:
                return None
        parts = []
        fr: list[tuple[float, bytes]] = []
        t = start
        while True:
            got = frags.get(t)
            if got is None:
                return None
            parts.append(got[1])
            fr.extend(got[2])
            if got[0] & 1:
                break
            t = (t + 1) & 0xFFFFFFFF
        for k in range(len(parts)):
            n = len(frags.pop((start + k) & 0xFFFFFFFF)[1])
            a.bytes -= n
            self._held -= n
        return self._message(key, ts, b"".join(parts), linktype, tuple(fr))

    def _message(self, key: tuple, ts: float, data: bytes, linktype: int,
                 frames: Frames) -> None:
        if not looks_like_sip_start(data):
            self.stats.ignored["sctp_not_sip"] += 1
            return
        src, sport, dst, dport = key
        self.stats.sctp_messages += 1
        self._emit(_new(Datagram, (ts, IPPROTO_SCTP, src, sport, dst, dport, data, linktype,
                                   frames)))

    def _clear(self, a: _Assoc) -> None:
        self._held -= a.bytes
        a.frags.clear()
        a.bytes = 0

    def expire(self, now: float) -> None:
        limit = now - self.timeout
        for key in [k for k, a in self._assocs.items() if a.last_ts < limit]:
            self._held -= self._assocs.pop(key).bytes

    def flush(self) -> None:
        self._assocs.clear()
        self._held = 0
