"""Tests for voipmon.packet.ipfrag: IPv4 and IPv6 reassembly through the Decoder, out of
order, duplicated, overlapping, bounded and timed out."""

from __future__ import annotations

import struct

import dpkt
from twisted.trial.unittest import SynchronousTestCase

from voipmon.packet.datagram import Datagram
from voipmon.packet.decode import Decoder
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
    ip4_fragments,
    udp,
)


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
