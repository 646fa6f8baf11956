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
        self.assertEqual(da.counters(), db.counters())

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
        snap = d.counters()
        self.assertEqual(snap["frames"], 2)
        self.assertEqual(snap["datagrams"], 1)
        self.assertEqual({k: v for k, v in snap.items() if k.startswith("undecodable")},
                         {"undecodable.ethernet_short": 1})
