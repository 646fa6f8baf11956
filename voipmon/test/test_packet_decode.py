"""Tests for voipmon.packet.decode: link types, encapsulations, defragmentation, robustness.

Frames are built with dpkt (and struct for headers dpkt does not know), so the decoder is
checked against an independent encoder.
"""

from __future__ import annotations

import random
import socket
import struct

import dpkt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voipmon.packet.datagram import Datagram
from voipmon.packet.decode import Decoder

A4 = socket.inet_aton("10.0.0.1")
B4 = socket.inet_aton("10.0.0.2")
OUT_A = socket.inet_aton("192.0.2.1")
OUT_B = socket.inet_aton("192.0.2.2")
A6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
B6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
MAC_A = b"\x02\x00\x00\x00\x00\x01"
MAC_B = b"\x02\x00\x00\x00\x00\x02"
SIP = (b"OPTIONS sip:b@example.com SIP/2.0\r\nCall-ID: abc@1\r\nCSeq: 1 OPTIONS\r\n"
       b"Content-Length: 0\r\n\r\n")


# -- frame builders (shared with test_packet_tcp) -------------------------------------

def udp(payload: bytes, sport: int = 5060, dport: int = 5060) -> dpkt.udp.UDP:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = 8 + len(payload)
    return u


def ip4(l4, src: bytes = A4, dst: bytes = B4, p: int | None = None, **kw) -> bytes:
    if p is None:
        p = {dpkt.udp.UDP: 17, dpkt.tcp.TCP: 6}.get(type(l4), 0)
    pkt = dpkt.ip.IP(src=src, dst=dst, p=p, data=l4, **kw)
    pkt.len = 20 + len(bytes(l4))
    return bytes(pkt)


def ip6(l4, src: bytes = A6, dst: bytes = B6, nxt: int | None = None,
        ext: bytes = b"") -> bytes:
    if nxt is None:
        nxt = {dpkt.udp.UDP: 17, dpkt.tcp.TCP: 6}.get(type(l4), 0)
    body = ext + bytes(l4)
    return struct.pack("!IHBB", 6 << 28, len(body), nxt, 64) + src + dst + body


def ether(payload: bytes, et: int = 0x0800, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    head = MAC_B + MAC_A
    for tpid, vid in tags:
        head += struct.pack("!HH", tpid, vid)
    return head + struct.pack("!H", et) + payload


def udp_frame(payload: bytes = SIP, sport: int = 5060, dport: int = 5060) -> bytes:
    return ether(ip4(udp(payload, sport, dport)))


def decode(frames, linktype: int = 1, sip_ports=(5060,), **limits):
    out: list[Datagram] = []
    d = Decoder(out.append, sip_ports, **limits)
    for i, f in enumerate(frames):
        d.feed(100.0 + i, linktype, f)
    return out, d


def ip4_fragments(l4: bytes, ident: int, sizes: list[int], src=A4, dst=B4, p=17):
    """Split a transport payload into IPv4 fragments of the given payload sizes."""
    out = []
    off = 0
    for i, n in enumerate(sizes):
        chunk = l4[off:off + n]
        more = i < len(sizes) - 1
        hdr = dpkt.ip.IP(src=src, dst=dst, p=p, id=ident, mf=int(more), offset=off // 8,
                         data=chunk)
        hdr.len = 20 + len(chunk)
        out.append((off, bytes(hdr)))
        off += n
    return out


class FastPathTests(SynchronousTestCase):
    def test_ethernet_ipv4_udp(self):
        f = udp_frame(b"hello", 4000, 5004)
        out, d = decode([f])
        self.assertEqual(out, [Datagram(100.0, 17, A4, 4000, B4, 5004, b"hello", 1,
                                        ((100.0, f),))])
        self.assertEqual(d.stats.frames, 1)
        self.assertEqual(d.stats.datagrams, 1)

    def test_ethernet_padding_is_trimmed(self):
        f = udp_frame(b"x") + b"\0" * 20
        out, _ = decode([f])
        self.assertEqual(out[0].payload, b"x")

    def test_vlan(self):
        f = ether(ip4(udp(b"rtp", 1, 2)), tags=((0x8100, 42),))
        out, _ = decode([f])
        self.assertEqual((out[0].sport, out[0].dport, out[0].payload), (1, 2, b"rtp"))

    def test_fast_and_slow_paths_agree(self):
        rnd = random.Random(7)
        frames = []
        for _ in range(200):
            payload = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 300)))
            tags = ((0x8100, 5),) if rnd.random() < 0.5 else ()
            f = ether(ip4(udp(payload, rnd.randrange(65536), rnd.randrange(1, 4000))),
                      tags=tags) + b"\0" * rnd.randrange(3)
            frames.append(f)
        fast, _ = decode(frames)
        slow: list[Datagram] = []
        d = Decoder(slow.append)
        for i, f in enumerate(frames):
            d._slow(100.0 + i, 1, f)
        self.assertEqual(fast, slow)
        self.assertEqual(len(fast), 200)

    def test_second_tier_and_slow_path_agree(self):
        rnd = random.Random(8)
        sll = struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", 0x0800)
        sll6 = sll[:-2] + b"\x86\xdd"
        sll2 = struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, MAC_A + b"\0\0")
        sll2_6 = b"\x86\xdd" + sll2[2:]
        cases = []
        for _ in range(300):
            payload = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 200)))
            u = udp(payload, rnd.randrange(65536), rnd.randrange(1, 4000))
            v4, v6 = ip4(u), ip6(u)
            cases += [(1, ether(v6, et=0x86DD)), (1, ether(v6, 0x86DD, ((0x8100, 9),))),
                      (113, sll + v4), (113, sll6 + v6), (276, sll2 + v4),
                      (276, sll2_6 + v6), (101, v4), (101, v6), (228, v4), (229, v6)]
        fast: list[Datagram] = []
        d = Decoder(fast.append)
        for i, (lt, f) in enumerate(cases):
            d.feed(float(i), lt, f)
        self.assertEqual(d._nslow, 0)  # all went through the second tier
        slow: list[Datagram] = []
        d = Decoder(slow.append)
        for i, (lt, f) in enumerate(cases):
            d._slow(float(i), lt, f)
        self.assertEqual(fast, slow)
        self.assertEqual(len(fast), len(cases))

    def test_feed_all_equals_feed(self):
        rnd = random.Random(9)
        frames = [(float(i), rnd.choice((1, 113, 101)),
                   bytes(rnd.randrange(256) for _ in range(rnd.randrange(60))))
                  for i in range(300)]
        frames += [(1000.0 + i, 1, udp_frame(bytes([i]))) for i in range(50)]
        a: list[Datagram] = []
        b: list[Datagram] = []
        da, db = Decoder(a.append), Decoder(b.append)
        for rec in frames:
            da.feed(*rec)
        self.assertEqual(db.feed_all(iter(frames)), len(frames))
        self.assertEqual(a, b)
        self.assertEqual(da.stats.as_dict(), db.stats.as_dict())

    def test_sink_errors_propagate(self):
        def sink(d):
            raise RuntimeError("engine bug")
        d = Decoder(sink)
        self.assertRaises(RuntimeError, d.feed, 1.0, 1, udp_frame())
        self.assertRaises(RuntimeError, d.feed, 1.0, 101, ip4(udp(b"x")))


class LinkTypeTests(SynchronousTestCase):
    def one(self, frame, linktype, payload=SIP):
        out, d = decode([frame], linktype)
        self.assertEqual(len(out), 1, d.stats)
        self.assertEqual(out[0].payload, payload)
        self.assertEqual(out[0].linktype, linktype)
        self.assertEqual(out[0].frames, ((100.0, frame),))
        return out[0]

    def test_linux_sll(self):
        hdr = struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", 0x0800)
        self.one(hdr + ip4(udp(SIP)), 113)

    def test_linux_sll_ipv6(self):
        hdr = struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", 0x86DD)
        self.assertEqual(self.one(hdr + ip6(udp(SIP)), 113).src, A6)

    def test_linux_sll2(self):
        hdr = struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, MAC_A + b"\0\0")
        self.one(hdr + ip4(udp(SIP)), 276)

    def test_null_little_and_big_endian(self):
        self.one(struct.pack("<I", 2) + ip4(udp(SIP)), 0)
        self.one(struct.pack(">I", 2) + ip4(udp(SIP)), 0)
        for fam in (10, 24, 28, 30):
            self.one(struct.pack("<I", fam) + ip6(udp(SIP)), 0)

    def test_openbsd_loop(self):
        self.one(struct.pack(">I", 2) + ip4(udp(SIP)), 108)
        self.one(struct.pack(">I", 24) + ip6(udp(SIP)), 108)

    def test_raw_ip_aliases(self):
        for lt in (101, 12, 14):
            self.one(ip4(udp(SIP)), lt)
            self.one(ip6(udp(SIP)), lt)

    def test_ipv4_and_ipv6_linktypes(self):
        self.one(ip4(udp(SIP)), 228)
        self.one(ip6(udp(SIP)), 229)

    def test_ppp(self):
        self.one(b"\xff\x03\x00\x21" + ip4(udp(SIP)), 9)
        self.one(b"\x00\x57" + ip6(udp(SIP)), 9)

    def test_unknown_linktype_counted(self):
        out, d = decode([b"\0" * 60], 147)
        self.assertEqual(out, [])
        self.assertEqual(d.stats.undecodable["linktype_147"], 1)


class EncapsulationTests(SynchronousTestCase):
    def one(self, frame, linktype=1, payload=SIP, **kw):
        out, d = decode([frame], linktype, **kw)
        self.assertEqual([o.payload for o in out], [payload], d.stats)
        self.assertEqual(out[0].frames, ((100.0, frame),))
        return out[0]

    def test_qinq_and_stacked_tags(self):
        self.one(ether(ip4(udp(SIP)), tags=((0x88A8, 100), (0x8100, 200))))
        self.one(ether(ip4(udp(SIP)), tags=((0x9100, 1), (0x9100, 2), (0x8100, 3))))

    def test_mpls(self):
        stack = struct.pack("!II", 100 << 12 | 64, 200 << 12 | 1 << 8 | 64)
        self.one(ether(stack + ip4(udp(SIP)), et=0x8847))
        self.assertEqual(self.one(ether(stack + ip6(udp(SIP)), et=0x8848)).dst, B6)

    def test_mpls_pseudowire_ethernet(self):
        stack = struct.pack("!I", 300 << 12 | 1 << 8 | 64) + b"\0\0\0\0"
        self.one(ether(stack + ether(ip4(udp(SIP))), et=0x8847))

    def test_pppoe(self):
        for proto, inner in ((0x0021, ip4(udp(SIP))), (0x0057, ip6(udp(SIP)))):
            ppp = struct.pack("!H", proto) + inner
            pppoe = struct.pack("!BBHH", 0x11, 0, 0x1234, len(ppp)) + ppp
            self.one(ether(pppoe, et=0x8864))

    def test_vlan_pppoe(self):
        ppp = b"\x00\x21" + ip4(udp(SIP))
        pppoe = struct.pack("!BBHH", 0x11, 0, 1, len(ppp)) + ppp
        self.one(ether(pppoe, et=0x8864, tags=((0x8100, 7),)))

    def test_ipv6_extension_headers(self):
        hbh = bytes([60, 0]) + b"\x01\x04\0\0\0\0"        # -> dest opts
        dopt = bytes([43, 0]) + b"\x01\x04\0\0\0\0"       # -> routing
        rt = bytes([17, 2, 0, 0]) + b"\0\0\0\0" + A6      # type 0, one address
        frame = ether(ip6(udp(SIP), nxt=0, ext=hbh + dopt + rt), et=0x86DD)
        d = self.one(frame)
        self.assertEqual((d.src, d.dst), (A6, B6))

    def test_ipip(self):
        self.one(ether(ip4(ip4(udp(SIP)), OUT_A, OUT_B, p=4)))
        self.one(ether(ip4(ip6(udp(SIP)), OUT_A, OUT_B, p=41)))
        self.one(ether(ip6(ip4(udp(SIP)), nxt=4), et=0x86DD))
        inner = self.one(ether(ip6(ip6(udp(SIP)), nxt=41), et=0x86DD))
        self.assertEqual(inner.src, A6)

    def test_inner_addresses_are_reported(self):
        d = self.one(ether(ip4(ip4(udp(SIP, 1111, 5060)), OUT_A, OUT_B, p=4)))
        self.assertEqual((d.src, d.sport, d.dst), (A4, 1111, B4))

    def gre(self, proto, inner, flags=0, extra=b""):
        return struct.pack("!HH", flags, proto) + extra + inner

    def test_gre_plain_and_flags(self):
        self.one(ether(ip4(self.gre(0x0800, ip4(udp(SIP))), OUT_A, OUT_B, p=47)))
        # checksum + key + sequence present
        g = self.gre(0x0800, ip4(udp(SIP)), 0xB000, b"\0\0\0\0" + b"\0\0\0\x07" + b"\0\0\0\x01")
        self.one(ether(ip4(g, OUT_A, OUT_B, p=47)))
        self.one(ether(ip4(self.gre(0x86DD, ip6(udp(SIP))), OUT_A, OUT_B, p=47)))

    def test_vlan_gre_ipv4(self):
        g = self.gre(0x0800, ip4(udp(SIP)))
        self.one(ether(ip4(g, OUT_A, OUT_B, p=47), tags=((0x8100, 10),)))

    def test_gre_transparent_ethernet_and_mpls(self):
        g = self.gre(0x6558, ether(ip4(udp(SIP)), tags=((0x8100, 3),)))
        self.one(ether(ip4(g, OUT_A, OUT_B, p=47)))
        mpls = struct.pack("!I", 16 << 12 | 1 << 8 | 64)
        self.one(ether(ip4(self.gre(0x8847, mpls + ip4(udp(SIP))), OUT_A, OUT_B, p=47)))

    def test_gre_over_ipv6(self):
        self.one(ether(ip6(self.gre(0x0800, ip4(udp(SIP))), nxt=47), et=0x86DD))

    def test_pptp_gre_v1_ppp(self):
        # version 1, key (payload length + call id) present, sequence and ack present
        extra = struct.pack("!HH", 0, 7) + b"\0\0\0\x05" + b"\0\0\0\x04"
        for ppp in (b"\xff\x03\x00\x21", b"\x00\x21", b"\x21"):
            g = self.gre(0x880B, ppp + ip4(udp(SIP)), 0x3081, extra)
            self.one(ether(ip4(g, OUT_A, OUT_B, p=47)))

    def test_erspan_type_1_2_3(self):
        inner = ether(ip4(udp(SIP)), tags=((0x8100, 99),))
        self.one(ether(ip4(self.gre(0x88BE, inner), OUT_A, OUT_B, p=47)))  # type I
        e2 = struct.pack("!HHI", 0x1000 | 99, 0x0001, 0)
        g2 = self.gre(0x88BE, e2 + inner, 0x1000, b"\0\0\0\x01")
        self.one(ether(ip4(g2, OUT_A, OUT_B, p=47)))
        e3 = struct.pack("!HHIHH", 0x2000 | 99, 1, 12345, 0, 0)
        g3 = self.gre(0x22EB, e3 + inner, 0x1000, b"\0\0\0\x01")
        self.one(ether(ip4(g3, OUT_A, OUT_B, p=47)))
        e3o = struct.pack("!HHIHH", 0x2000 | 99, 1, 12345, 0, 1) + b"\x08" + b"\0" * 7
        g3o = self.gre(0x22EB, e3o + inner, 0x1000, b"\0\0\0\x01")
        self.one(ether(ip4(g3o, OUT_A, OUT_B, p=47)))

    def test_vxlan(self):
        vx = struct.pack("!II", 0x08000000, 5000 << 8) + ether(ip4(udp(SIP)))
        d = self.one(ether(ip4(udp(vx, 55555, 4789), OUT_A, OUT_B)))
        self.assertEqual(d.src, A4)

    def test_vxlan_without_i_flag_is_plain_udp(self):
        vx = b"\0" * 8 + ether(ip4(udp(SIP)))
        d = self.one(ether(ip4(udp(vx, 55555, 4789), OUT_A, OUT_B)), payload=vx)
        self.assertEqual(d.dport, 4789)

    def test_tzsp(self):
        tags = b"\x00" + bytes([10, 1, 0x2a]) + b"\x01"  # padding, signal tag, end
        tz = struct.pack("!BBH", 1, 0, 1) + tags + ether(ip4(udp(SIP)))
        self.one(ether(ip4(udp(tz, 40000, 37008), OUT_A, OUT_B)))

    def test_tzsp_non_ethernet_ignored(self):
        tz = struct.pack("!BBH", 1, 0, 18) + b"\x01" + b"\0" * 40
        out, d = decode([ether(ip4(udp(tz, 40000, 37008)))])
        self.assertEqual(out, [])
        self.assertEqual(d.stats.ignored["tzsp_encap_18"], 1)

    def test_custom_tunnel_ports(self):
        vx = struct.pack("!II", 0x08000000, 1 << 8) + ether(ip4(udp(SIP)))
        self.one(ether(ip4(udp(vx, 1, 8472))), vxlan_ports=(8472,))

    def test_depth_is_bounded(self):
        pkt = ip4(udp(SIP))
        for _ in range(30):
            pkt = ip4(pkt, OUT_A, OUT_B, p=4)
        out, d = decode([ether(pkt)])
        self.assertEqual(out, [])
        self.assertEqual(d.stats.undecodable["too_deep"], 1)
        out, d = decode([ether(pkt)], max_depth=40)
        self.assertEqual(len(out), 1)

    def test_ignored_traffic_is_counted(self):
        arp = ether(b"\0" * 28, et=0x0806)
        icmp = ether(ip4(b"\x08\0\0\0\0\0\0\0", p=1))
        out, d = decode([arp, icmp])
        self.assertEqual(out, [])
        self.assertEqual(d.stats.ignored["ethertype_0x0806"], 1)
        self.assertEqual(d.stats.ignored["ipproto_1"], 1)
        self.assertEqual(d.stats.datagrams, 0)
        self.assertEqual(d.stats.frames, 2)


class FragmentTests(SynchronousTestCase):
    big = SIP + b"x" * 3000

    def frames4(self, order, ident=7, sizes=(1200, 1200, 808), payload=None):
        l4 = bytes(udp(payload or self.big))
        frags = ip4_fragments(l4, ident, list(sizes))
        return [ether(frags[i][1]) for i in order]

    def test_in_order_and_out_of_order(self):
        for order in ((0, 1, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1)):
            frames = self.frames4(order)
            out, d = decode(frames)
            self.assertEqual(len(out), 1, order)
            self.assertEqual(out[0].payload, self.big)
            self.assertEqual(out[0].frames, tuple((100.0 + i, f) for i, f in enumerate(frames)))
            self.assertEqual(out[0].ts, 102.0)
            self.assertEqual(d.stats.fragments, 3)
            self.assertEqual(d.stats.reassembled, 1)

    def test_duplicate_fragment(self):
        frames = self.frames4((0, 0, 1, 2))
        out, _d = decode(frames)
        self.assertEqual([o.payload for o in out], [self.big])

    def test_overlapping_fragments_first_copy_wins(self):
        l4 = bytes(udp(self.big))
        frags = [ether(f) for _, f in ip4_fragments(l4, 9, [1200, 1200, 808])]
        # a fragment overlapping the end of the first and the start of the second
        evil = dpkt.ip.IP(src=A4, dst=B4, p=17, id=9, mf=1, offset=1000 // 8,
                          data=b"E" * 400)
        evil.len = 420
        evil = ether(bytes(evil))
        out, d = decode([frags[0], frags[1], evil, frags[2]])
        self.assertEqual([o.payload for o in out], [self.big])  # nothing rewritten
        self.assertEqual(d._defrag.counters["overlap"], 1)
        out, d = decode([frags[0], evil, frags[1], frags[2]])
        # bytes 1200..1400 came first from the overlapping fragment; 1000..1200 did not
        want = (l4[:1200] + b"E" * 200 + l4[1400:])[8:]
        self.assertEqual([o.payload for o in out], [want])
        self.assertEqual(len(out[0].frames), 4)

    def test_ipv6_fragments(self):
        l4 = bytes(udp(self.big))
        frames = []
        sizes = [1232, 1232, len(l4) - 2464]
        off = 0
        for i, n in enumerate(sizes):
            more = i < 2
            fh = struct.pack("!BBHI", 17, 0, off | more, 0xDEADBEEF)
            frames.append(ether(struct.pack("!IHBB", 6 << 28, 8 + n, 44, 64) + A6 + B6 + fh
                                + l4[off:off + n], et=0x86DD))
            off += n
        for order in ((0, 1, 2), (2, 0, 1)):
            out, _ = decode([frames[i] for i in order])
            self.assertEqual([o.payload for o in out], [self.big])
            self.assertEqual((out[0].src, out[0].dst), (A6, B6))

    def test_ipv6_atomic_fragment(self):
        fh = struct.pack("!BBHI", 17, 0, 0, 1)
        l4 = bytes(udp(SIP))
        frame = ether(struct.pack("!IHBB", 6 << 28, 8 + len(l4), 44, 64) + A6 + B6 + fh + l4,
                      et=0x86DD)
        out, _ = decode([frame])
        self.assertEqual([o.payload for o in out], [SIP])

    def test_fragmented_tunnel(self):
        inner = ip4(udp(self.big))  # the outer IPIP packet is fragmented
        frags = ip4_fragments(inner, 11, [1480, 1480, len(inner) - 2960], OUT_A, OUT_B, p=4)
        out, _ = decode([ether(f) for _, f in reversed(frags)])
        self.assertEqual([o.payload for o in out], [self.big])
        self.assertEqual(len(out[0].frames), 3)

    def test_absurd_offset_and_bad_length(self):
        bad = dpkt.ip.IP(src=A4, dst=B4, p=17, id=1, mf=1, offset=8190, data=b"x" * 80)
        bad.len = 100
        odd = dpkt.ip.IP(src=A4, dst=B4, p=17, id=2, mf=1, offset=0, data=b"x" * 13)
        odd.len = 33
        out, d = decode([ether(bytes(bad)), ether(bytes(odd))])
        self.assertEqual(out, [])
        self.assertEqual(d._defrag.counters["absurd_offset"], 1)
        self.assertEqual(d._defrag.counters["bad_length"], 1)
        self.assertEqual(len(d._defrag), 0)

    def test_memory_is_bounded(self):
        frames = []
        for ident in range(500):
            frames.append(self.frames4((0,), ident=ident)[0])
        out, d = decode(frames, frag_max_datagrams=50, frag_max_bytes=30000)
        self.assertEqual(out, [])
        self.assertLessEqual(len(d._defrag), 50)
        self.assertLessEqual(d._defrag.stored_bytes, 30000)
        self.assertGreater(d._defrag.counters["evicted_bytes"]
                           + d._defrag.counters["evicted_count"], 400)

    def test_timeout_by_capture_time(self):
        first, second, third = self.frames4((0, 1, 2))
        out: list[Datagram] = []
        d = Decoder(out.append, frag_timeout=30.0)
        d.feed(10.0, 1, first)
        d.feed(11.0, 1, second)
        d.expire(45.0)
        self.assertEqual(len(d._defrag), 0)
        d.feed(46.0, 1, third)
        self.assertEqual(out, [])
        self.assertEqual(d._defrag.counters["timeout"], 1)

    def test_housekeeping_without_expire_calls(self):
        first = self.frames4((0,))[0]
        out: list[Datagram] = []
        d = Decoder(out.append, frag_timeout=5.0)
        d.feed(10.0, 1, first)
        d.feed(100.0, 1, self.frames4((0,), ident=99)[0])  # slow path runs housekeeping
        self.assertEqual(len(d._defrag), 1)

    def test_flush_counts_incomplete(self):
        _out, d = decode(self.frames4((0, 1)))
        d.flush()
        self.assertEqual(d._defrag.counters["incomplete_at_end"], 1)
        self.assertEqual(len(d._defrag), 0)


class RobustnessTests(SynchronousTestCase):
    linktypes = (0, 1, 9, 12, 14, 101, 108, 113, 228, 229, 276, 999)

    def corpus(self):
        l4 = bytes(udp(SIP))
        g = struct.pack("!HH", 0, 0x6558) + ether(ip4(udp(SIP)))
        tz = struct.pack("!BBH", 1, 0, 1) + b"\x01" + ether(ip4(udp(SIP)))
        return [
            udp_frame(),
            ether(ip4(udp(SIP)), tags=((0x88A8, 1), (0x8100, 2))),
            ether(ip4(g, OUT_A, OUT_B, p=47)),
            ether(ip4(udp(tz, 1, 37008))),
            ether(ip6(udp(SIP)), et=0x86DD),
            ether(ip4_fragments(l4, 3, [8, len(l4) - 8])[0][1]),
            ether(struct.pack("!I", 1 << 8) + ip4(udp(SIP)), et=0x8847),
        ]

    def test_every_truncation(self):
        for frame in self.corpus():
            frames = [frame[:n] for n in range(len(frame))]
            for lt in self.linktypes:
                decode(frames, lt)

    def test_random_mutations(self):
        rnd = random.Random(1)
        corpus = self.corpus()
        out: list[Datagram] = []
        d = Decoder(out.append, frag_max_datagrams=64, frag_max_bytes=100000)
        for i in range(3000):
            f = bytearray(rnd.choice(corpus))
            for _ in range(rnd.randrange(1, 6)):
                f[rnd.randrange(len(f))] = rnd.randrange(256)
            d.feed(float(i), rnd.choice((1, 1, 1, 113, 101)), bytes(f))
        self.assertEqual(d.stats.frames, 3000)
        self.assertLessEqual(len(d._defrag), 64)
        self.assertNotIn("error", " ".join(d.stats.undecodable))

    @settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(linktypes), st.binary(max_size=200))
    def test_arbitrary_bytes(self, linktype, frame):
        _out, d = decode([frame], linktype)
        self.assertFalse([k for k in d.stats.undecodable if k.startswith("error:")])

    def test_stats_snapshot(self):
        _, d = decode([udp_frame(), b"\0" * 5])
        snap = d.stats.as_dict()
        self.assertEqual(snap["frames"], 2)
        self.assertEqual(snap["datagrams"], 1)
        self.assertEqual(snap["undecodable"], {"ethernet_short": 1})
