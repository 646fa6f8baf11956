"""The generic walk over link layers, VLAN/MPLS/PPPoE, IPv4/IPv6 and tunnels.

``LayerWalker`` is the slow path of ``Decoder``: every frame the fast paths cannot take
comes here. Each layer is one method taking (buffer, offset, end, depth) so inner packets
are decoded in place, without copies; tunnels add one to ``depth``, bounded by
``max_depth``. Malformed input is counted in ``stats.undecodable`` under a reason, never
raised; traffic that carries nothing for us is counted in ``stats.ignored``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from voipmon.packet.datagram import IPPROTO_UDP
from voipmon.packet.ipfrag import Defragmenter
from voipmon.packet.sctp import SctpReassembler
from voipmon.packet.stats import DecodeStats
from voipmon.packet.tcp import TcpReassembler

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

_VLAN_TYPES = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))
_AF_INET6 = frozenset((10, 23, 24, 28, 30))  # Linux, Windows, BSDs, macOS
_IP6_EXT = frozenset((0, 43, 60, 51))

_U16 = struct.Struct("!H").unpack_from
_IP4 = struct.Struct("!BxHHHxB2x4s4s").unpack_from
_IP6 = struct.Struct("!4xHBx16s16s").unpack_from
_FRAG6 = struct.Struct("!BxHI").unpack_from
_PORTS = struct.Struct("!HHH").unpack_from


class LayerWalker:
    """Decapsulation methods; ``Decoder`` supplies the state declared here."""

    _stats: DecodeStats
    _defrag: Defragmenter
    _tcp: TcpReassembler
    _sctp: SctpReassembler
    _ts: float
    _linktype: int
    _frames: tuple[tuple[float, bytes], ...]
    _tunnel_ports: frozenset[int]
    vxlan_ports: frozenset[int]
    geneve_ports: frozenset[int]
    max_depth: int
    _emit: Callable[[int, bytes, int, bytes, int, bytes], None]

    def _bad(self, reason: str) -> None:
        self._stats.undecodable[reason] += 1

    def _link(self, linktype: int, b: bytes) -> None:
        n = len(b)
        if linktype == LINKTYPE_ETHERNET:
            if n < 14:
                return self._bad("ethernet_short")
            return self._ethertype(b, 14, n, _U16(b, 12)[0], 0)
        if linktype == LINKTYPE_LINUX_SLL:
            if n < 16:
                return self._bad("sll_short")
            return self._ethertype(b, 16, n, _U16(b, 14)[0], 0)
        if linktype == LINKTYPE_LINUX_SLL2:
            if n < 20:
                return self._bad("sll2_short")
            return self._ethertype(b, 20, n, _U16(b, 0)[0], 0)
        if linktype in (LINKTYPE_RAW, 12, 14):
            return self._ip(b, 0, n, 0)
        if linktype == LINKTYPE_IPV4:
            return self._ip4(b, 0, n, 0)
        if linktype == LINKTYPE_IPV6:
            return self._ip6(b, 0, n, 0)
        if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if n < 4:
                return self._bad("loopback_short")
            # DLT_NULL's family is in the writer's byte order, LOOP's in network order.
            fam = b[3] if b[0] == 0 and b[1] == 0 and b[2] == 0 else b[0] if not b[3] else -1
            if fam == 2:
                return self._ip4(b, 4, n, 0)
            if fam in _AF_INET6:
                return self._ip6(b, 4, n, 0)
            self._stats.ignored["loopback_family"] += 1
            return None
        if linktype == LINKTYPE_PPP:
            return self._ppp(b, 0, n, 0)
        self._bad(f"linktype_{linktype}")

    def _ethertype(self, b: bytes, off: int, end: int, et: int, depth: int) -> None:
        while True:
            if et == 0x0800:
                return self._ip4(b, off, end, depth)
            if et == 0x86DD:
                return self._ip6(b, off, end, depth)
            if et in _VLAN_TYPES:
                if off + 4 > end:
                    return self._bad("vlan_short")
                et = _U16(b, off + 2)[0]
                off += 4
                continue
            if et in (0x8847, 0x8848):
                return self._mpls(b, off, end, depth)
            if et == 0x8864:  # PPPoE session: ver/type, code, session, length, PPP
                if off + 8 > end:
                    return self._bad("pppoe_short")
                plen = _U16(b, off + 4)[0]
                return self._ppp(b, off + 6, min(end, off + 6 + plen), depth)
            if et == 0x6558:  # transparent Ethernet bridging (GRE)
                return self._ether(b, off, end, depth + 1)
            if et < 0x0600:  # 802.3 length field: LLC, STP, CDP ...
                self._stats.ignored["llc"] += 1
                return None
            self._stats.ignored[f"ethertype_0x{et:04x}"] += 1
            return None

    def _ether(self, b: bytes, off: int, end: int, depth: int) -> None:
        if depth > self.max_depth:
            return self._bad("too_deep")
        if off + 14 > end:
            return self._bad("ethernet_short")
        return self._ethertype(b, off + 14, end, _U16(b, off + 12)[0], depth)

    def _mpls(self, b: bytes, off: int, end: int, depth: int) -> None:
        while True:
            if off + 4 > end:
                return self._bad("mpls_short")
            bos = b[off + 2] & 1
            off += 4
            if bos:
                break
        if off >= end:
            return self._bad("mpls_short")
        nib = b[off] >> 4
        if nib == 4:
            return self._ip4(b, off, end, depth)
        if nib == 6:
            return self._ip6(b, off, end, depth)
        if nib == 0:  # pseudowire control word, then Ethernet
            return self._ether(b, off + 4, end, depth + 1)
        return self._bad("mpls_payload")

    def _ppp(self, b: bytes, off: int, end: int, depth: int) -> None:
        if off + 2 <= end and b[off] == 0xFF and b[off + 1] == 0x03:
            off += 2  # HDLC address and control
        if off >= end:
            return self._bad("ppp_short")
        if b[off] & 1:  # protocol field compression: one byte
            proto = b[off]
            off += 1
        else:
            if off + 2 > end:
                return self._bad("ppp_short")
            proto = _U16(b, off)[0]
            off += 2
        if proto == 0x21:
            return self._ip4(b, off, end, depth)
        if proto == 0x57:
            return self._ip6(b, off, end, depth)
        self._stats.ignored[f"ppp_0x{proto:04x}"] += 1
        return None

    def _ip(self, b: bytes, off: int, end: int, depth: int) -> None:
        if off >= end:
            return self._bad("ip_short")
        v = b[off] >> 4
        if v == 4:
            return self._ip4(b, off, end, depth)
        if v == 6:
            return self._ip6(b, off, end, depth)
        return self._bad("ip_version")

    def _ip4(self, b: bytes, off: int, end: int, depth: int) -> None:
        if depth > self.max_depth:
            return self._bad("too_deep")
        if off + 20 > end:
            return self._bad("ipv4_short")
        vihl, tot, ident, ff, proto, src, dst = _IP4(b, off)
        hl = (vihl & 15) * 4
        if vihl >> 4 != 4 or hl < 20:
            return self._bad("ipv4_bad_header")
        if tot < hl:
            if tot == 0 and off + hl <= end:  # TSO: length left to the NIC
                tot = end - off
            else:
                return self._bad("ipv4_bad_length")
        pend = off + tot
        if pend > end:
            self._stats.undecodable["ipv4_truncated"] += 1
            pend = end
        if off + hl > pend:
            return self._bad("ipv4_short")
        if ff & 0x3FFF:
            self._stats.fragments += 1
            frames = self._frames
            got = self._defrag.add((4, src, dst, ident, proto), self._ts, (ff & 0x1FFF) * 8,
                                   b[off + hl:pend], bool(ff & 0x2000), frames)
            if got is None:
                return None
            payload, self._frames, _ = got
            self._stats.reassembled += 1
            try:
                return self._transport(proto, payload, 0, len(payload), src, dst, depth)
            finally:
                self._frames = frames
        return self._transport(proto, b, off + hl, pend, src, dst, depth)

    def _ip6(self, b: bytes, off: int, end: int, depth: int) -> None:
        if depth > self.max_depth:
            return self._bad("too_deep")
        if off + 40 > end:
            return self._bad("ipv6_short")
        plen, nh, src, dst = _IP6(b, off)
        if b[off] >> 4 != 6:
            return self._bad("ipv6_bad_header")
        pend = off + 40 + plen
        if plen == 0:  # jumbogram (hop-by-hop option) or TSO: take what we have
            pend = end
        elif pend > end:
            self._stats.undecodable["ipv6_truncated"] += 1
            pend = end
        return self._ip6_ext(nh, b, off + 40, pend, src, dst, depth)

    def _ip6_ext(self, nh: int, b: bytes, off: int, end: int, src: bytes, dst: bytes,
                 depth: int) -> None:
        for _ in range(16):
            if nh in _IP6_EXT:
                if off + 8 > end:
                    return self._bad("ipv6_ext_short")
                hlen = (b[off + 1] + 2) * 4 if nh == 51 else (b[off + 1] + 1) * 8
                nh = b[off]
                off += hlen
                continue
            if nh == 44:
                if off + 8 > end:
                    return self._bad("ipv6_ext_short")
                inner, fo, ident = _FRAG6(b, off)
                off += 8
                if not fo & 0xFFF9:  # atomic fragment (RFC 6946): not really fragmented
                    nh = inner
                    continue
                self._stats.fragments += 1
                frames = self._frames
                got = self._defrag.add((6, src, dst, ident), self._ts, fo & 0xFFF8,
                                       b[off:end], bool(fo & 1), frames,
                                       inner if not fo & 0xFFF8 else None)
                if got is None:
                    return None
                payload, self._frames, head = got
                self._stats.reassembled += 1
                if head is None:
                    return self._bad("ipv6_frag_no_header")
                try:
                    return self._ip6_ext(head, payload, 0, len(payload), src, dst,  # type: ignore[arg-type]
                                         depth)
                finally:
                    self._frames = frames
            return self._transport(nh, b, off, end, src, dst, depth)
        return self._bad("ipv6_ext_chain")

    def _transport(self, proto: int, b: bytes, off: int, end: int, src: bytes, dst: bytes,
                   depth: int) -> None:
        if proto == 17:
            if off + 8 > end:
                return self._bad("udp_short")
            sport, dport, ulen = _PORTS(b, off)
            if ulen < 8:
                self._stats.undecodable["udp_bad_length"] += 1
                ulen = end - off
            elif off + ulen > end:
                self._stats.undecodable["udp_truncated"] += 1
                ulen = end - off
            if dport in self._tunnel_ports and self._tunnel(dport, b, off + 8, off + ulen,
                                                           depth):
                return None
            return self._emit(IPPROTO_UDP, src, sport, dst, dport, b[off + 8:off + ulen])
        if proto == 6:
            return self._tcp.segment(self._ts, b, off, end, src, dst, self._linktype,
                                     self._frames)
        if proto == 132:
            return self._sctp.packet(self._ts, b, off, end, src, dst, self._linktype,
                                     self._frames)
        if proto == 4:
            return self._ip4(b, off, end, depth + 1)
        if proto == 41:
            return self._ip6(b, off, end, depth + 1)
        if proto == 47:
            return self._gre(b, off, end, depth + 1)
        if proto == 51 and len(src) == 4:  # IPv4 AH; IPv6 AH is an extension header
            if off + 8 > end:
                return self._bad("ah_short")
            return self._transport(b[off], b, off + (b[off + 1] + 2) * 4, end, src, dst,
                                   depth)
        self._stats.ignored[f"ipproto_{proto}"] += 1
        return None

    def _gre(self, b: bytes, off: int, end: int, depth: int) -> None:
        if depth > self.max_depth:
            return self._bad("too_deep")
        if off + 4 > end:
            return self._bad("gre_short")
        flags, proto = _U16(b, off)[0], _U16(b, off + 2)[0]
        ver = flags & 7
        if ver > 1 or flags & 0x4000:  # routing present (RFC 1701): obsolete, refuse
            return self._bad("gre_unsupported")
        hl = 4 + 4 * bool(flags & 0x8000) + 4 * bool(flags & 0x2000) \
            + 4 * bool(flags & 0x1000)
        if ver == 1:
            hl += 4 * bool(flags & 0x0080)  # PPTP acknowledgment number
        off += hl
        if off > end:
            return self._bad("gre_short")
        if proto == 0x880B:  # PPP (PPTP)
            return self._ppp(b, off, end, depth)
        if proto == 0x88BE:  # ERSPAN type II, or type I when no sequence number
            if flags & 0x1000:
                off += 8
            return self._ether(b, off, end, depth + 1)
        if proto == 0x22EB:  # ERSPAN type III, optional 8-byte platform subheader
            if off + 12 > end:
                return self._bad("erspan_short")
            frame_type = (b[off + 10] >> 2) & 0x1F  # 0: Ethernet, 2: IP
            inner = off + 12 + (8 if b[off + 11] & 1 else 0)
            if frame_type == 2:
                return self._ip(b, inner, end, depth + 1)
            return self._ether(b, inner, end, depth + 1)
        return self._ethertype(b, off, end, proto, depth)

    def _tunnel(self, port: int, b: bytes, off: int, end: int, depth: int) -> bool:
        """Decapsulate VXLAN, GENEVE or TZSP; False means "not that after all": emit the
        outer datagram as plain UDP."""
        if depth >= self.max_depth:
            self._bad("too_deep")
            return True
        if port in self.vxlan_ports:
            if off + 8 + 14 > end or not b[off] & 0x08:
                return False
            self._ether(b, off + 8, end, depth + 1)
            return True
        if port in self.geneve_ports:  # version 0, options length, protocol type
            if off + 8 > end or b[off] >> 6:
                return False
            self._ethertype(b, off + 8 + (b[off] & 0x3F) * 4, end, _U16(b, off + 2)[0],
                            depth + 1)
            return True
        # TZSP: version 1, type 0 (received) or 1 (to transmit), encapsulation, tags
        if off + 4 > end or b[off] != 1 or b[off + 1] > 1:
            return False
        encap = _U16(b, off + 2)[0]
        p = off + 4
        while p < end:
            tag = b[p]
            if tag == 1:  # end of tags
                p += 1
                break
            if tag == 0:  # padding
                p += 1
                continue
            if p + 2 > end:
                self._bad("tzsp_tags")
                return True
            p += 2 + b[p + 1]
        else:
            self._bad("tzsp_tags")
            return True
        if encap != 1:
            self._stats.ignored[f"tzsp_encap_{encap}"] += 1
            return True
        self._ether(b, p, end, depth + 1)
        return True
