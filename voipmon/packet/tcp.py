"""TCP stream reassembly for SIP: whole messages out of segments.

Each direction of a connection is a ``_Flow`` with the next expected sequence number, a
buffer of in-order bytes not yet framed, and a bounded map of segments that arrived early.
Retransmitted and overlapping bytes are trimmed against the next expected sequence number,
so each byte enters the buffer once. A hole that stays open for ``gap_timeout`` seconds of
capture time (or whose early segments exceed ``max_ooo_bytes``) is skipped: the message it
cut is lost and counted, and framing resynchronises on the next start line. A stream joined
without its SYN starts at the first segment seen; until it delivers a message, a segment
from before that point (capture began amid reordering) rewinds the stream to it.

Which connections: any with an endpoint on a SIP port; with ``heuristics`` also those whose
first data looks like SIP, and WebSocket connections on any port: an HTTP Upgrade whose
first segment names websocket, or, joined later, frames whose payload starts like SIP
(``voipmon.packet.tcpclassify``). Everything else is ignored, remembered only in the bounded
``not_sip`` cache that lets the fast paths drop its later segments early.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Collection

from voipmon.packet.datagram import IPPROTO_TCP, Datagram
from voipmon.packet.sipframe import (
    GARBAGE,
    INCOMPLETE,
    looks_like_sip_start,
    resync,
    sip_message_length,
    strip_keepalive,
    unmask,
    ws_frame,
)
from voipmon.packet.stats import DecodeStats
from voipmon.packet.tcpclassify import DEAD, SIP, WS, WS_HTTP, NotSipFlows, classify

Frames = tuple[tuple[float, bytes], ...]
_TCP = struct.Struct("!HHIIBB").unpack_from
_PORTS = struct.Struct("!HH").pack
_new = tuple.__new__

FIN, SYN, RST = 1, 2, 4


class _Flow:
    __slots__ = ("buf", "closed", "fin_at", "frames", "inflate", "isn", "key", "kind",
                 "last_ts", "next", "ooo", "ooo_bytes", "ooo_since", "pre", "pre_bytes",
                 "segs", "ws_bytes", "ws_frames", "ws_parts", "ws_rsv")

    def __init__(self, key: tuple, kind: int, ts: float) -> None:
        self.key = key
        self.kind = kind
        self.next: int | None = None
        self.buf = bytearray()
        self.segs: list[tuple[int, Frames]] = []  # (end offset in buf, frames)
        self.ooo: dict[int, tuple[bytes, Frames, bool]] = {}
        self.ooo_bytes = 0
        self.ooo_since = 0.0
        self.last_ts = ts
        self.fin_at: int | None = None
        self.isn: int | None = None
        self.closed = False
        # Until a SYN or a first delivered message shows where the stream starts, the
        # accepted segments are kept so that an earlier one arriving late can rewind.
        self.pre: list[tuple[int, bytes, Frames]] | None = []
        self.pre_bytes = 0
        self.frames: Frames = ()
        self.ws_parts: list[bytes] = []
        self.ws_bytes = 0
        self.ws_frames: list[tuple[float, bytes]] = []
        self.ws_rsv = 0
        self.inflate: zlib._Decompress | None = None


def held_by(flow: _Flow) -> int:
    """Bytes a flow keeps: its buffer, early segments, replay list and WebSocket parts."""
    return len(flow.buf) + flow.ooo_bytes + flow.pre_bytes + flow.ws_bytes


class TcpReassembler:
    """Turn TCP segments into ``Datagram`` objects holding one SIP message each."""

    def __init__(self, emit: Callable[[Datagram], None], sip_ports: Collection[int],
                 stats: DecodeStats, tcp_max_flows: int = 20000,
                 tcp_max_buffer: int = 1 << 20, tcp_max_ooo_bytes: int = 1 << 20,
                 tcp_gap_timeout: float = 5.0, tcp_idle_timeout: float = 600.0,
                 tcp_max_message: int = 1 << 20, tcp_heuristics: bool = True,
                 tcp_max_total: int = 64 << 20, tcp_not_sip_max: int = 65536,
                 tcp_not_sip_ttl: float = 30.0) -> None:
        self._emit = emit
        self.sip_ports = frozenset(sip_ports)
        self.stats = stats
        self.counters = stats.tcp
        self.max_flows = max(2, tcp_max_flows)  # a connection is two flows
        self.max_total = tcp_max_total
        self.max_buffer = tcp_max_buffer
        self.max_ooo = tcp_max_ooo_bytes
        self.gap_timeout = tcp_gap_timeout
        self.idle_timeout = tcp_idle_timeout
        self.max_message = tcp_max_message
        self.heuristics = tcp_heuristics
        self._flows: dict[tuple, _Flow] = {}
        self.not_sip = NotSipFlows(tcp_not_sip_max, tcp_not_sip_ttl)
        self._linktype = 0
        self._held = 0  # bytes buffered over all flows: held_by() summed

    def __len__(self) -> int:
        return len(self._flows)

    def segment(self, ts: float, b: bytes, off: int, end: int, src: bytes, dst: bytes,
                linktype: int, frames: Frames) -> None:
        if off + 20 > end:
            self.stats.undecodable["tcp_short"] += 1
            return
        sport, dport, seq, _ack, doff, flags = _TCP(b, off)
        hl = (doff >> 4) * 4
        if hl < 20 or off + hl > end:
            self.stats.undecodable["tcp_bad_header"] += 1
            return
        self.stats.tcp_segments += 1
        data = b[off + hl:end]
        key = (src, sport, dst, dport)
        flow = self._flows.get(key)
        if flow is None:
            kind = classify(sport, dport, data, self.sip_ports, self.heuristics, self.counters)
            if kind is None:
                self.stats.ignored["tcp_not_sip"] += 1
                self.not_sip.add(src + dst + _PORTS(sport, dport), ts)
                return
            flow = self._new_flow(key, kind, ts)
            rkey = (dst, dport, src, sport)
            if rkey not in self._flows:
                self._new_flow(rkey, kind, ts)
        before = held_by(flow)
        try:
            self._segment(flow, ts, seq, flags, data, linktype, frames)
        finally:
            self._held += held_by(flow) - before
        if self._held > self.max_total:
            self._shed(flow)

    def _segment(self, flow: _Flow, ts: float, seq: int, flags: int, data: bytes,
                 linktype: int, frames: Frames) -> None:
        self._linktype = linktype
        flow.last_ts = ts
        if flags & RST:
            self._close(flow, "reset")
            return
        if flags & SYN:
            if flow.isn != seq:
                if flow.next is not None and flow.next != (seq + 1) & 0xFFFFFFFF:
                    self.counters["reused"] += 1
                    self._reset(flow)
                flow.isn = seq
                flow.next = (seq + 1) & 0xFFFFFFFF
                flow.pre, flow.pre_bytes = None, 0
            seq = (seq + 1) & 0xFFFFFFFF
        elif flow.next is None:
            flow.next = seq  # joined mid-stream: framing resynchronises
        if flags & FIN:
            flow.fin_at = (seq + len(data)) & 0xFFFFFFFF
        if data:
            self._data(flow, seq, data, frames, ts)
        if flow.fin_at is not None and flow.fin_at == flow.next and not flow.closed:
            self._close(flow, "closed")

    def _new_flow(self, key: tuple, kind: int, ts: float) -> _Flow:
        if len(self._flows) >= self.max_flows:
            old = next(iter(self._flows))
            self.counters["evicted"] += 1
            self._drop(self._flows[old])
        flow = self._flows[key] = _Flow(key, kind, ts)
        src, sport, dst, dport = key
        self.not_sip.discard(src + dst + _PORTS(sport, dport))
        return flow

    def _data(self, flow: _Flow, seq: int, data: bytes, frames: Frames, ts: float) -> None:
        d = (seq - flow.next) & 0xFFFFFFFF  # type: ignore[operator]
        if d >= 0x80000000:  # starts before what we expect: retransmission or overlap
            if flow.pre and (flow.pre[0][0] - seq) & 0xFFFFFFFF < self.max_buffer \
                    and seq != flow.pre[0][0]:
                return self._rewind(flow, seq, data, frames, ts)
            overlap = 0x100000000 - d
            if overlap >= len(data):
                self.counters["retransmission"] += 1
                return
            self.counters["overlap"] += 1
            data = data[overlap:]
        elif d:
            if d > self.max_buffer:
                self.counters["out_of_window"] += 1
                return
            if seq in flow.ooo:
                self.counters["retransmission"] += 1
                if len(data) <= len(flow.ooo[seq][0]):
                    return
                flow.ooo_bytes -= len(flow.ooo[seq][0])
            if not flow.ooo:
                flow.ooo_since = ts
            flow.ooo[seq] = (data, frames, False)
            flow.ooo_bytes += len(data)
            self.counters["out_of_order"] += 1
            if flow.ooo_bytes > self.max_ooo:
                self._skip_gap(flow, "gap_overflow")
            return
        self._append(flow, data, frames)
        if flow.ooo:
            self._drain_ooo(flow)
            if flow.ooo and ts - flow.ooo_since > self.gap_timeout:
                self._skip_gap(flow, "gap_timeout")

    def _rewind(self, flow: _Flow, seq: int, data: bytes, frames: Frames, ts: float) -> None:
        """A segment from before the first one we saw of an unsynchronised stream: start
        the stream there and replay what was accepted (nothing was delivered yet)."""
        self.counters["rewind"] += 1
        pre = flow.pre or []
        flow.pre, flow.pre_bytes = [], 0
        flow.buf, flow.segs, flow.ws_parts, flow.ws_frames = bytearray(), [], [], []
        flow.ws_bytes = 0
        if not flow.ooo:
            flow.ooo_since = ts
        for s, d, f in pre:
            if s not in flow.ooo:
                flow.ooo[s] = (d, f, False)
                flow.ooo_bytes += len(d)
        flow.next = seq
        self._data(flow, seq, data, frames, ts)

    def _append(self, flow: _Flow, data: bytes, frames: Frames) -> None:
        if flow.pre is not None:
            flow.pre.append((flow.next, data, frames))  # type: ignore[arg-type]
            flow.pre_bytes += len(data)
            if flow.pre_bytes > self.max_buffer:
                flow.pre, flow.pre_bytes = None, 0
        flow.next = (flow.next + len(data)) & 0xFFFFFFFF  # type: ignore[operator]
        if flow.kind == DEAD:
            return
        buf = flow.buf
        buf += data
        flow.segs.append((len(buf), frames))
        if flow.kind == SIP:
            self._frame_sip(flow)
        else:
            self._frame_ws(flow)
        if len(flow.buf) > self.max_buffer:
            self.counters["buffer_overflow"] += 1
            self._discard(flow)

    def _drain_ooo(self, flow: _Flow) -> None:
        """Append early segments that the stream has now reached."""
        ooo = flow.ooo
        while ooo:
            nxt = flow.next
            for seq in ooo:
                d = (seq - nxt) & 0xFFFFFFFF  # type: ignore[operator]
                if not d or d >= 0x80000000:
                    break
            else:
                return  # still a hole before every one of them
            data, frames, _ = ooo.pop(seq)
            flow.ooo_bytes -= len(data)
            overlap = (0x100000000 - d) if d else 0
            if overlap < len(data):
                self._append(flow, data[overlap:], frames)
            else:
                self.counters["retransmission"] += 1

    def _skip_gap(self, flow: _Flow, reason: str) -> None:
        """Give up on the missing bytes: drop the partial message, continue after the hole."""
        self.counters[reason] += 1
        self._discard(flow)
        nxt = flow.next
        first = min(flow.ooo, key=lambda s: (s - nxt) & 0xFFFFFFFF)  # type: ignore[operator]
        flow.next = first
        flow.ooo_since = flow.last_ts
        self._drain_ooo(flow)
        if flow.fin_at is not None and flow.fin_at == flow.next and not flow.closed:
            self._close(flow, "closed")

    def _discard(self, flow: _Flow) -> None:
        if flow.buf:
            self.counters["discarded_bytes"] += len(flow.buf)
        flow.buf = bytearray()
        flow.segs = []
        flow.ws_parts = []
        flow.ws_frames = []
        flow.ws_bytes = 0

    def _take(self, flow: _Flow, n: int) -> tuple[bytes, Frames]:
        """Cut ``n`` bytes off the front of the buffer, with the frames that carried them."""
        buf = flow.buf
        msg = bytes(buf[:n])
        del buf[:n]
        segs = flow.segs
        frames: list[tuple[float, bytes]] = []
        keep = len(segs)
        start = 0
        for i, (e, f) in enumerate(segs):
            if start >= n:
                keep = i
                break
            frames.extend(f)
            if e > n:
                keep = i
                break
            start = e
        flow.segs = [(e - n, f) for e, f in segs[keep:]]
        return msg, tuple(frames)

    def _frame_sip(self, flow: _Flow) -> None:
        buf = flow.buf
        while buf:
            if buf[0] in (13, 10):
                k = strip_keepalive(buf)
                self._shift(flow, k)
                continue
            n = sip_message_length(buf, self.max_message)
            if n == INCOMPLETE:
                return
            if n == GARBAGE:
                k = resync(buf)
                self.counters["resync_bytes"] += k
                self._shift(flow, k)
                if not k:
                    return
                continue
            msg, frames = self._take(flow, n)
            self._deliver(flow, msg, frames)

    def _shift(self, flow: _Flow, n: int) -> None:
        if n:
            flow.segs = [(e - n, f) for e, f in flow.segs if e > n]

    def _deliver(self, flow: _Flow, msg: bytes, frames: Frames) -> None:
        src, sport, dst, dport = flow.key
        ts = max(t for t, _ in frames) if frames else flow.last_ts
        flow.pre, flow.pre_bytes = None, 0
        self.stats.tcp_messages += 1
        self._emit(_new(Datagram, (ts, IPPROTO_TCP, src, sport, dst, dport, msg,
                                   self._linktype, frames)))

    def _frame_ws(self, flow: _Flow) -> None:
        buf = flow.buf
        while buf:
            if flow.kind == WS_HTTP:
                hend = buf.find(b"\r\n\r\n")
                if hend < 0:
                    if len(buf) > 65536:
                        self._dead(flow, "websocket_bad_http")
                    return
                head = bytes(buf[:hend])
                if head.startswith(b"HTTP/") and head[9:12] != b"101":
                    self._dead(flow, "websocket_refused")
                    rev = self._flows.get(self._reverse(flow))
                    if rev is not None:
                        before = held_by(rev)
                        self._dead(rev, "websocket_refused")
                        self._held += held_by(rev) - before
                    return
                self._take(flow, hend + 4)
                flow.kind = WS
                continue
            if flow.kind != WS:
                return
            got = ws_frame(buf, self.max_message)
            if got == INCOMPLETE:
                return
            if isinstance(got, int):
                self._dead(flow, "websocket_bad_frame")
                return
            n, b0, p, mask = got
            raw, frames = self._take(flow, n)
            op = b0 & 0x0F
            if op >= 8:
                continue  # close, ping, pong
            if not op and not flow.ws_frames:
                self.counters["websocket_orphan_continuation"] += 1
                continue
            if op:
                if flow.ws_parts:
                    self.counters["websocket_unfinished"] += 1
                flow.ws_parts = []
                flow.ws_frames = []
                flow.ws_bytes = 0
                flow.ws_rsv = b0 & 0x40
            part = unmask(raw[p:], mask)
            flow.ws_parts.append(part)
            flow.ws_bytes += len(part)
            flow.ws_frames.extend(frames)
            if flow.ws_bytes > self.max_message:
                self._dead(flow, "websocket_too_big")
                return
            if b0 & 0x80:
                self._ws_message(flow)

    def _ws_message(self, flow: _Flow) -> None:
        msg = b"".join(flow.ws_parts)
        frames = tuple(dict.fromkeys(flow.ws_frames))
        flow.ws_parts = []
        flow.ws_frames = []
        flow.ws_bytes = 0
        if flow.ws_rsv:  # permessage-deflate (RFC 7692)
            if flow.inflate is None:
                flow.inflate = zlib.decompressobj(-15)
            try:
                msg = flow.inflate.decompress(msg + b"\x00\x00\xff\xff", self.max_message)
            except zlib.error:
                self.counters["websocket_bad_deflate"] += 1
                return
        msg = msg.lstrip(b"\r\n")
        if not msg:
            return  # keep-alive
        if not looks_like_sip_start(msg):
            self.stats.ignored["websocket_not_sip"] += 1
            return
        self.stats.websocket_messages += 1
        self._deliver(flow, msg, frames)

    @staticmethod
    def _reverse(flow: _Flow) -> tuple:
        src, sport, dst, dport = flow.key
        return (dst, dport, src, sport)

    def _dead(self, flow: _Flow, reason: str) -> None:
        self.counters[reason] += 1
        self._discard(flow)
        flow.kind = DEAD

    def _reset(self, flow: _Flow) -> None:
        self._leftover(flow)
        self._discard(flow)
        flow.ooo = {}
        flow.ooo_bytes = 0
        flow.fin_at = None
        flow.closed = False
        flow.inflate = None
        if flow.kind == WS:
            flow.kind = WS_HTTP

    def _leftover(self, flow: _Flow) -> None:
        if flow.buf.strip(b"\r\n") or flow.ooo or flow.ws_parts:
            self.counters["incomplete_at_close"] += 1

    def _close(self, flow: _Flow, reason: str) -> None:
        """FIN reached or RST: keep the flow (so retransmissions are recognised) but no data."""
        self.counters[reason] += 1
        self._leftover(flow)
        self._discard(flow)
        flow.ooo = {}
        flow.ooo_bytes = 0
        flow.closed = True

    def _drop(self, flow: _Flow) -> None:
        self._leftover(flow)
        if self._flows.pop(flow.key, None) is not None:
            self._held -= held_by(flow)

    def _shed(self, keep: _Flow) -> None:
        """Over the total budget: drop buffered data of the oldest flows (not ``keep``)."""
        target = self.max_total * 3 // 4
        for flow in list(self._flows.values()):
            if self._held <= target:
                return
            if flow is keep or not held_by(flow):
                continue
            self.counters["memory_shed"] += 1
            before = held_by(flow)
            self._leftover(flow)
            self._discard(flow)
            flow.ooo, flow.ooo_bytes = {}, 0
            flow.pre, flow.pre_bytes = None, 0
            self._held += held_by(flow) - before

    def expire(self, now: float) -> None:
        self.not_sip.expire(now)
        gap = self.gap_timeout
        idle = now - self.idle_timeout
        for flow in list(self._flows.values()):
            if flow.ooo and now - flow.ooo_since > gap:
                before = held_by(flow)
                self._skip_gap(flow, "gap_timeout")
                self._held += held_by(flow) - before
            if flow.last_ts < idle or (flow.fin_at is not None and flow.fin_at == flow.next
                                       and flow.last_ts < now - 60):
                self.counters["expired"] += 1
                self._drop(flow)

    def flush(self) -> None:
        """End of input: skip remaining holes (delivering what follows them), forget flows."""
        self.not_sip.clear()
        for flow in list(self._flows.values()):
            before = held_by(flow)
            while flow.ooo:
                self._skip_gap(flow, "gap_at_end")
            self._held += held_by(flow) - before
            self._drop(flow)
