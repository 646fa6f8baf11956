"""Tests for voipmon.packet.tcp: SIP over TCP and WebSocket reassembly, driven through the
Decoder with frames built by dpkt."""

from __future__ import annotations

import random
import struct
import zlib

import dpkt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voipmon.packet.datagram import Datagram
from voipmon.packet.decode import Decoder
from voipmon.packet.sipframe import unmask
from voipmon.packet.tcp import held_by
from voipmon.test.test_packet_decode import A4, A6, B4, B6, ether, ip4, ip4_fragments, ip6


def sip(method="INVITE", n=1, body=b"", clen=True, compact=False):
    head = (f"{method} sip:bob@example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK{n}\r\n"
            f"Call-ID: call-{n}@example.com\r\nCSeq: {n} {method}\r\n").encode()
    if clen:
        head += (b"l: %d\r\n" if compact else b"Content-Length: %d\r\n") % len(body)
    return head + b"\r\n" + body


SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n" \
      b"m=audio 4000 RTP/AVP 0\r\n"
OK = b"SIP/2.0 200 OK\r\nCall-ID: call-1@example.com\r\nCSeq: 1 INVITE\r\nContent-Length: 0" \
     b"\r\n\r\n"


def tcp(data=b"", seq=1000, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, sport=40000,
        dport=5060, src=A4, dst=B4, v6=False):
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq & 0xFFFFFFFF, ack=1, flags=flags,
                       data=data)
    if v6:
        return ether(ip6(seg, src, dst), et=0x86DD)
    return ether(ip4(seg, src, dst))


class Stream:
    """Feeds frames at increasing capture times and collects the datagrams."""

    def __init__(self, **kw):
        self.out: list[Datagram] = []
        kw.setdefault("sip_ports", (5060,))
        self.decoder = Decoder(self.out.append, **kw)
        self.t = 100.0
        self.fed: list[bytes] = []

    def feed(self, *frames, dt=0.01):
        for f in frames:
            self.t += dt
            self.fed.append(f)
            self.decoder.feed(self.t, 1, f)
        return self

    @property
    def payloads(self):
        return [d.payload for d in self.out]

    @property
    def counters(self):
        return self.decoder.stats.tcp


def segments(data: bytes, sizes, seq=1000, **kw):
    """Cut ``data`` at the given sizes into (seq, frame) pairs."""
    out = []
    off = 0
    for n in sizes:
        out.append(tcp(data[off:off + n], seq + off, **kw))
        off += n
    if off < len(data):
        out.append(tcp(data[off:], seq + off, **kw))
    return out


class TcpTests(SynchronousTestCase):
    def test_one_message(self):
        s = Stream().feed(tcp(sip(body=SDP)))
        self.assertEqual(s.payloads, [sip(body=SDP)])
        d = s.out[0]
        self.assertEqual((d.proto, d.src, d.sport, d.dst, d.dport, d.linktype),
                         (6, A4, 40000, B4, 5060, 1))
        self.assertEqual(d.frames, ((s.t, s.fed[0]),))
        self.assertEqual(s.decoder.stats.tcp_messages, 1)

    def test_split_header_and_body(self):
        msg = sip(body=SDP)
        hend = msg.index(b"\r\n\r\n")
        s = Stream().feed(*segments(msg, [20, hend - 20, 2, 10]))
        self.assertEqual(s.payloads, [msg])
        self.assertEqual([f for _, f in s.out[0].frames], s.fed)
        self.assertEqual(s.out[0].ts, s.t)

    def test_two_messages_in_one_segment_and_straddling(self):
        a, b, c = sip(n=1, body=SDP), sip("BYE", 2), OK
        s = Stream().feed(*segments(a + b + c, [len(a) + len(b) + 5]))
        self.assertEqual(s.payloads, [a, b, c])
        self.assertEqual(s.out[0].frames, s.out[1].frames)
        self.assertEqual(len(s.out[2].frames), 2)  # straddles both segments

    def test_retransmission_is_not_duplicated(self):
        msg = sip(body=SDP)
        first, second = segments(msg, [100])
        s = Stream().feed(first, first, second, second, tcp(msg, 1000))
        self.assertEqual(s.payloads, [msg])
        self.assertEqual(s.counters["retransmission"], 3)

    def test_overlapping_retransmission(self):
        a, b = sip(n=1), sip("BYE", 2)
        data = a + b
        s = Stream().feed(tcp(data[:50], 1000), tcp(data[30:len(a) + 10], 1030),
                          tcp(data[len(a):], 1000 + len(a)))
        self.assertEqual(s.payloads, [a, b])
        self.assertEqual(s.counters["overlap"], 2)

    def test_out_of_order(self):
        a, b = sip(n=1, body=SDP), sip("ACK", 2)
        syn = tcp(b"", 999, flags=dpkt.tcp.TH_SYN)
        segs = segments(a + b, [60, 60, 60, 60])
        s = Stream().feed(syn, *reversed(segs))
        self.assertEqual(s.payloads, [a, b])
        self.assertGreaterEqual(s.counters["out_of_order"], 1)
        s = Stream().feed(segs[0], segs[2], segs[1], *segs[3:])
        self.assertEqual(s.payloads, [a, b])

    def test_capture_starts_with_reordered_segments(self):
        # no SYN seen, and the first segment captured is the second one sent
        a, b = sip(n=1, body=SDP), sip("ACK", 2)
        segs = segments(a + b, [60, 60])
        s = Stream().feed(segs[1], segs[0], segs[2])
        self.assertEqual(s.payloads, [a, b])
        self.assertEqual(s.counters["rewind"], 1)

    def test_rewind_across_a_hole_waits_for_it(self):
        a, b = sip(n=1, body=SDP), sip("ACK", 2)
        segs = segments(a + b, [60, 60, 60])
        s = Stream(tcp_gap_timeout=5.0)
        s.feed(segs[2], dt=100.0)  # long after start: the gap timer must start anew
        s.feed(segs[0], segs[1], segs[3])
        self.assertEqual(s.payloads, [a, b])
        self.assertEqual(s.counters["gap_timeout"], 0)

    def test_gap_timeout_skips_lost_bytes(self):
        a, b, c = sip(n=1, body=SDP), sip("ACK", 2), sip("BYE", 3)
        segs = segments(a + b + c, [40, len(a) - 40, len(b)])  # a1 a2 b c
        s = Stream(tcp_gap_timeout=5.0).feed(segs[0], segs[2], segs[3])
        self.assertEqual(s.payloads, [])
        s.decoder.expire(s.t + 6)
        self.assertEqual(s.payloads, [b, c])
        self.assertEqual(s.counters["gap_timeout"], 1)
        self.assertEqual(s.counters["discarded_bytes"], 40)
        # later data flows normally
        d = sip("INFO", 4)
        s.feed(tcp(d, 1000 + len(a + b + c)))
        self.assertEqual(s.payloads, [b, c, d])

    def test_gap_skipped_on_later_segment(self):
        a, b, c = sip(n=1), sip("ACK", 2), sip("BYE", 3)
        segs = segments(a + b + c, [len(a), len(b)])
        s = Stream(tcp_gap_timeout=1.0).feed(segs[0], segs[2])
        s.feed(tcp(sip("INFO", 9), 1000 + len(a + b + c)), dt=2.0)
        self.assertEqual(s.payloads, [a, c, sip("INFO", 9)])

    def test_ooo_bytes_bounded(self):
        s = Stream(tcp_max_ooo_bytes=5000)
        s.feed(tcp(sip(n=0)[:10], 1000))
        for i in range(100):
            s.feed(tcp(sip("BYE", i), 100000 + i * 1000))
        flow = next(iter(s.decoder._tcp._flows.values()))
        self.assertLessEqual(flow.ooo_bytes, 5000)
        self.assertGreater(s.counters["gap_overflow"], 0)

    def test_missing_content_length_means_empty_body(self):
        a = sip("ACK", 1, clen=False)
        b = sip("BYE", 2)
        s = Stream().feed(tcp(a + b))
        self.assertEqual(s.payloads, [a, b])

    def test_keepalives_between_messages(self):
        a, b = sip(n=1), sip("BYE", 2)
        s = Stream().feed(tcp(b"\r\n\r\n" + a + b"\r\n\r\n\r\n" + b))
        self.assertEqual(s.payloads, [a, b])

    def test_join_mid_stream(self):
        a, b = sip(n=1, body=SDP), sip("BYE", 2)
        s = Stream().feed(tcp((a + b)[30:], 5000))
        self.assertEqual(s.payloads, [b])
        self.assertGreater(s.counters["resync_bytes"], 0)

    def test_garbage_then_sip(self):
        s = Stream().feed(tcp(b"\x00\x01garbage without line ends" * 10), tcp(
            b"\r\n" + sip(n=5), 1000 + 270))
        self.assertEqual(s.payloads, [sip(n=5)])

    def test_absurd_content_length_resyncs(self):
        bad = sip(n=1).replace(b"Content-Length: 0", b"Content-Length: 999999999")
        s = Stream().feed(tcp(bad + sip("BYE", 2)))
        self.assertEqual(s.payloads, [sip("BYE", 2)])

    def test_sequence_wraparound(self):
        a, b = sip(n=1, body=SDP), sip("BYE", 2)
        isn = 0xFFFFFFFF - 50
        syn = tcp(b"", isn, flags=dpkt.tcp.TH_SYN)
        s = Stream().feed(syn, *segments(a + b, [30, 40, 100], seq=isn + 1))
        self.assertEqual(s.payloads, [a, b])

    def test_new_connection_on_same_ports(self):
        a = sip(n=1)
        s = Stream().feed(tcp(a[:40], 1000))
        s.feed(tcp(b"", 777, flags=dpkt.tcp.TH_SYN), tcp(sip("BYE", 2), 778))
        self.assertEqual(s.payloads, [sip("BYE", 2)])
        self.assertEqual(s.counters["reused"], 1)
        self.assertEqual(s.counters["incomplete_at_close"], 1)

    def test_retransmission_after_fin(self):
        a = sip(n=1)
        fin = dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK
        s = Stream().feed(tcp(a, 1000, flags=fin), tcp(a, 1000, flags=fin))
        self.assertEqual(s.payloads, [a])

    def test_segment_in_ip_fragments(self):
        msg = sip(body=SDP * 40)
        seg = bytes(dpkt.tcp.TCP(sport=40000, dport=5060, seq=1000, ack=1,
                                 flags=dpkt.tcp.TH_ACK, data=msg))
        frags = [ether(f) for _, f in ip4_fragments(seg, 77, [1480, 1480, len(seg) - 2960],
                                                    p=6)]
        s = Stream().feed(frags[1], frags[0], frags[2])
        self.assertEqual(s.payloads, [msg])
        self.assertEqual([f for _, f in s.out[0].frames], [frags[1], frags[0], frags[2]])

    def test_ipv6(self):
        s = Stream().feed(tcp(sip(), v6=True, src=A6, dst=B6))
        self.assertEqual((s.out[0].src, s.out[0].dst), (A6, B6))

    def test_both_directions(self):
        s = Stream().feed(tcp(sip(n=1)), tcp(OK, 5000, sport=5060, dport=40000, src=B4,
                                               dst=A4))
        self.assertEqual(s.payloads, [sip(n=1), OK])
        self.assertEqual(s.out[1].sport, 5060)

    def test_heuristic_on_other_ports(self):
        s = Stream().feed(tcp(sip(n=1), dport=5090),
                          tcp(OK, 9, sport=5090, dport=40000, src=B4, dst=A4))
        self.assertEqual(s.payloads, [sip(n=1), OK])
        s = Stream(tcp_heuristics=False).feed(tcp(sip(n=1), dport=5090))
        self.assertEqual(s.payloads, [])
        s = Stream().feed(tcp(b"GET / HTTP/1.1\r\n\r\n", dport=80))
        self.assertEqual(s.payloads, [])
        self.assertEqual(len(s.decoder._tcp), 0)  # no state kept for non-SIP traffic
        s = Stream(sip_ports=(6060,)).feed(tcp(sip(n=1)[:20], dport=6060),
                                           tcp(sip(n=1)[20:], 1020, dport=6060))
        self.assertEqual(s.payloads, [sip(n=1)])

    def test_flows_bounded(self):
        s = Stream(tcp_max_flows=100)
        for port in range(1000, 1500):
            s.feed(tcp(sip(n=port)[:30], sport=port))
        self.assertLessEqual(len(s.decoder._tcp), 100)
        self.assertGreater(s.counters["evicted"], 300)

    def test_total_memory_bounded(self):
        s = Stream(tcp_max_total=200000, tcp_max_buffer=50000)
        head = b"INVITE sip:a@b SIP/2.0\r\nX: " + b"y" * 5000
        for port in range(1000, 1100):  # 100 connections, each holding a partial message
            s.feed(tcp(head, sport=port))
        tcp_ = s.decoder._tcp
        self.assertLessEqual(tcp_._held, 200000)
        self.assertEqual(tcp_._held, sum(held_by(f) for f in tcp_._flows.values()))
        self.assertGreater(s.counters["memory_shed"], 0)
        # the newest connections still work
        s.feed(tcp(b"\r\n\r\n", 1000 + len(head), sport=1099))
        self.assertEqual(len(s.out), 1)

    def test_buffer_bounded(self):
        s = Stream(tcp_max_buffer=100000)
        head = b"INVITE sip:a@b SIP/2.0\r\n"
        s.feed(tcp(head, 1000))
        seq = 1000 + len(head)
        for _ in range(200):
            chunk = b"X-Junk: " + b"y" * 1000 + b"\r\n"
            s.feed(tcp(chunk, seq))
            seq += len(chunk)
        flow = s.decoder._tcp._flows[(A4, 40000, B4, 5060)]
        self.assertLessEqual(len(flow.buf), 100000)
        s.feed(tcp(b"\r\n" + sip("BYE", 3), seq))
        self.assertEqual(s.payloads, [sip("BYE", 3)])

    def test_idle_flows_expire_and_flush(self):
        s = Stream(tcp_idle_timeout=60.0).feed(tcp(sip(n=1)[:30]))
        s.decoder.expire(s.t + 61)
        self.assertEqual(len(s.decoder._tcp), 0)
        s.feed(tcp(sip(n=1)[:30], 5))
        s.decoder.flush()
        self.assertEqual(len(s.decoder._tcp), 0)
        self.assertEqual(s.counters["incomplete_at_close"], 2)

    def test_flush_delivers_after_hole(self):
        a, b = sip(n=1), sip("BYE", 2)
        s = Stream().feed(tcp(a[:20]), tcp(b, 1000 + len(a)))
        s.decoder.flush()
        self.assertEqual(s.payloads, [b])

    def test_random_segmentation_property(self):
        rnd = random.Random(3)
        msgs = [sip(m, i, SDP if i % 2 else b"", compact=bool(i % 3 == 0))
                for i, m in enumerate(["INVITE", "ACK", "BYE", "INFO", "UPDATE"] * 4)]
        data = b"".join(msgs)
        for _ in range(30):
            cuts = sorted(rnd.sample(range(1, len(data)), 25))
            pieces = [(a, data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)],
                                                       strict=True)]
            order = pieces[:]
            for i in range(len(order) - 1):  # local reordering and duplicates
                if rnd.random() < 0.3:
                    order[i], order[i + 1] = order[i + 1], order[i]
            order += rnd.sample(pieces, 5)
            rnd.shuffle(order[-8:])
            s = Stream()
            s.feed(tcp(b"", 999, flags=dpkt.tcp.TH_SYN), *[tcp(p, 1000 + a) for a, p in order])
            s.decoder.flush()
            self.assertEqual(s.payloads, msgs)


_PIECES = [sip(n=1, body=SDP), sip("ACK", 2), OK, b"\r\n\r\n", b"\x00\xffgarbage",
           b"Content-Length: 99999999\r\n", b"INVITE sip:x SIP/2.0\r\n",
           b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n",
           b"\x81\x7f" + b"\xff" * 8]


class TcpFuzzTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.integers(0, 2), st.integers(-3000, 3000),
                              st.lists(st.sampled_from(_PIECES), max_size=4),
                              st.integers(0, 200), st.sampled_from([0x10, 0x18, 0x02, 0x11,
                                                                    0x04, 0x12])),
                    max_size=40))
    def test_random_streams_never_raise_and_stay_bounded(self, steps):
        s = Stream(tcp_max_buffer=20000, tcp_max_ooo_bytes=20000, tcp_max_flows=4,
                   tcp_max_total=30000)
        reasm = s.decoder._tcp
        seqs = [1000, 50000, 0xFFFFFF00]
        for port, delta, pieces, cut, flags in steps:
            self.assertEqual(reasm._held, sum(held_by(f) for f in reasm._flows.values()))
            self.assertLessEqual(reasm._held, 30000 + 20000 * 3)
            data = b"".join(pieces)
            data = data[cut:] if cut < len(data) else data
            seq = (seqs[port] + delta) & 0xFFFFFFFF
            s.feed(tcp(data, seq, flags=flags, sport=40000 + port,
                       dport=(5060, 8080, 5090)[port]))
            if delta > 0:
                seqs[port] = (seqs[port] + len(data)) & 0xFFFFFFFF
        s.decoder.flush()
        self.assertFalse([k for k in s.decoder.stats.undecodable if k.startswith("error:")])
        self.assertEqual(reasm._held, 0)  # flush forgot every flow
        self.assertEqual(len(reasm), 0)
        for d in s.out:
            self.assertEqual(d.proto, 6)
            self.assertTrue(d.frames)


def ws(payload: bytes, opcode=1, fin=True, mask: bytes | None = None, rsv1=False) -> bytes:
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack("!Q", n)
    if mask:
        return head + mask + unmask(payload, mask)
    return head + payload


UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: x\r\nSec-WebSocket-Protocol: sip\r\n\r\n")
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
          b"Connection: Upgrade\r\nSec-WebSocket-Protocol: sip\r\n\r\n")


class WebSocketTests(SynchronousTestCase):
    def client(self, data, seq, **kw):
        return tcp(data, seq, dport=8080, **kw)

    def server(self, data, seq, **kw):
        return tcp(data, seq, sport=8080, dport=40000, src=B4, dst=A4, **kw)

    def test_upgrade_masked_and_unmasked(self):
        inv = sip(body=SDP)
        c1 = UPGRADE + ws(inv, mask=b"\x11\x22\x33\x44")
        s = Stream().feed(self.client(c1, 1000), self.server(SWITCH + ws(OK), 7000))
        self.assertEqual(s.payloads, [inv, OK])
        self.assertEqual([d.proto for d in s.out], [6, 6])
        self.assertEqual(s.out[1].sport, 8080)
        self.assertEqual(s.decoder.stats.websocket_messages, 2)

    def test_fragmented_message_with_ping_and_split_segments(self):
        inv = sip(body=SDP)
        mask = b"\xa0\xb1\xc2\xd3"
        frames = (ws(inv[:50], 1, fin=False, mask=mask) + ws(b"ping", 9, mask=mask)
                  + ws(inv[50:120], 0, fin=False, mask=mask) + ws(inv[120:], 0, mask=mask))
        data = frames + ws(sip("BYE", 2), mask=mask)
        # the upgrade request is recognised from its first segment; the rest is cut finely
        s = Stream().feed(self.client(UPGRADE, 1000))
        seq = 1000 + len(UPGRADE)
        s.feed(*[self.client(data[i:i + 37], seq + i) for i in range(0, len(data), 37)])
        self.assertEqual(s.payloads, [inv, sip("BYE", 2)])
        self.assertEqual(len(s.out[0].frames), -(-len(frames) // 37))

    def test_large_frames(self):
        for size in (1000, 20000):  # 16-bit and 64-bit payload lengths
            big = sip(body=b"a=x\r\n" * size)
            data = UPGRADE + ws(big, mask=b"abcd")
            s = Stream().feed(*[self.client(data[i:i + 1400], 1000 + i)
                                for i in range(0, len(data), 1400)])
            self.assertEqual(s.payloads, [big])

    def test_permessage_deflate(self):
        comp = zlib.compressobj(wbits=-15)
        msgs = [sip(n=1, body=SDP), sip("ACK", 2)]
        data = UPGRADE
        for m in msgs:
            z = comp.compress(m) + comp.flush(zlib.Z_SYNC_FLUSH)
            data += ws(z[:-4], rsv1=True, mask=b"wxyz")
        s = Stream().feed(self.client(data, 1000))
        self.assertEqual(s.payloads, msgs)

    def test_refused_upgrade(self):
        s = Stream().feed(self.client(UPGRADE, 1000),
                          self.server(b"HTTP/1.1 403 Forbidden\r\n\r\n" + ws(OK), 7000),
                          self.client(ws(sip(), mask=b"abcd"), 1000 + len(UPGRADE)))
        self.assertEqual(s.payloads, [])
        self.assertEqual(s.counters["websocket_refused"], 2)

    def test_joined_after_upgrade(self):
        s = Stream().feed(self.client(ws(sip(), mask=b"abcd"), 1000),
                          self.server(ws(OK), 7000))
        self.assertEqual(s.payloads, [sip(), OK])
        self.assertEqual(s.counters["heuristic_websocket"], 1)

    def test_non_sip_websocket_ignored(self):
        s = Stream().feed(self.client(UPGRADE + ws(b'{"json": 1}', mask=b"abcd"), 1000))
        self.assertEqual(s.payloads, [])
        self.assertEqual(s.decoder.stats.ignored["websocket_not_sip"], 1)

    def test_bad_frame_stops_flow(self):
        s = Stream().feed(self.client(UPGRADE + b"\x83\x00" + ws(sip(), mask=b"abcd"), 1000))
        self.assertEqual(s.payloads, [])
        self.assertEqual(s.counters["websocket_bad_frame"], 1)
