"""Tests for voipmon.packet.layers: every encapsulation and tunnel, nested ones too,
through the Decoder, with frames built by dpkt and struct."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from voipmon.test.test_packet_decode import (
    A4,
    A6,
    B4,
    B6,
    OUT_A,
    OUT_B,
    SIP,
    decode,
    ether,
    ip4,
    ip6,
    udp,
)


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

    def test_erspan_3_carrying_ip(self):
        e3 = struct.pack("!HHIHH", 0x2000, 1, 0, 0, 2 << 10)  # frame type 2: IP, no Ethernet
        g3 = self.gre(0x22EB, e3 + ip4(udp(SIP)), 0x1000, b"\0\0\0\x01")
        self.one(ether(ip4(g3, OUT_A, OUT_B, p=47)))

    def test_geneve(self):
        opt = struct.pack("!HBB", 0x0102, 3, 1) + b"\0" * 4  # one 8-byte option
        gv = struct.pack("!BBHI", 2, 0, 0x6558, 77 << 8) + opt + ether(ip4(udp(SIP)))
        self.one(ether(ip4(udp(gv, 1234, 6081), OUT_A, OUT_B)))
        gv4 = struct.pack("!BBHI", 0, 0, 0x0800, 77 << 8) + ip4(udp(SIP))
        self.one(ether(ip4(udp(gv4, 1234, 6081), OUT_A, OUT_B)))

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
