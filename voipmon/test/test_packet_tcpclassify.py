"""Tests for voipmon.packet.tcpclassify: the heuristics that spot SIP on a TCP connection,
and the cache of connections that do not carry it (which must never change a result)."""

from __future__ import annotations

import random
import struct
from collections import Counter

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voipmon.counters import nested
from voipmon.packet.decode import Decoder
from voipmon.packet.readers import read_capture
from voipmon.packet.tcpclassify import SIP, WS, WS_HTTP, NotSipFlows, classify, sniff
from voipmon.test.common import public_pcaps
from voipmon.test.test_packet_decode import A4, B4
from voipmon.test.test_packet_tcp import sip, tcp

UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def ws(payload: bytes, op: int = 1) -> bytes:
    """One unmasked WebSocket frame (payloads up to 64 KiB)."""
    if len(payload) < 126:
        return bytes([0x80 | op, len(payload)]) + payload
    return bytes([0x80 | op, 126]) + struct.pack("!H", len(payload)) + payload


def key(src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
    return src + dst + struct.pack("!HH", sport, dport)


def first_byte_may_start(data: bytes) -> bool:
    """The shortcut the fast paths inline before calling sniff."""
    return bool(data) and (65 <= data[0] <= 90 or data[0] & 0x0F in (1, 2))


payloads = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([sip(), UPGRADE, HTTP_OK, ws(sip(n=2)), ws(b"\x00bin", op=2),
                     b"SIP/2.0 200 OK\r\n", b"OPTIONS sip:a@b SIP/2.0\r\n"]),
    st.tuples(st.sampled_from([sip(), UPGRADE, ws(sip(n=3))]), st.integers(0, 40),
              st.binary(min_size=1, max_size=3)).map(
                  lambda t: t[0][:t[1]] + t[2] + t[0][t[1] + 3:]))


class SniffTests(SynchronousTestCase):
    def test_kinds(self) -> None:
        self.assertEqual(sniff(sip()), SIP)
        self.assertEqual(sniff(b"SIP/2.0 486 Busy Here\r\n"), SIP)
        self.assertEqual(sniff(UPGRADE), WS_HTTP)
        self.assertEqual(sniff(ws(sip())), WS)
        for other in (b"", HTTP_OK, b"GET / HTTP/1.1\r\n\r\n", b"hello", b"\x00\x01",
                      ws(b"\x00binary", op=2)):
            self.assertIsNone(sniff(other), other)

    @settings(max_examples=400, deadline=None)
    @given(payloads)
    def test_first_byte_shortcut_is_exact(self, data: bytes) -> None:
        # what lets the fast paths drop a segment without calling sniff
        if not first_byte_may_start(data):
            self.assertIsNone(sniff(data))

    @settings(max_examples=400, deadline=None)
    @given(payloads, st.booleans())
    def test_classify_on_other_ports_is_sniff(self, data: bytes, heuristics: bool) -> None:
        counters: Counter[str] = Counter()
        kind = classify(40000, 8080, data, frozenset({5060}), heuristics, counters)
        self.assertEqual(kind, sniff(data) if heuristics else None)
        self.assertEqual(sum(counters.values()), int(kind is not None))
        # an endpoint on a SIP port is SIP (or its WebSocket upgrade) whatever it holds
        self.assertIn(classify(40000, 5060, data, {5060}, heuristics, counters),
                      (SIP, WS_HTTP))


class NotSipFlowsTests(SynchronousTestCase):
    def test_bounded_oldest_go_first(self) -> None:
        cache = NotSipFlows(max_size=3, ttl=30.0)
        for i in range(5):
            cache.add(b"k%d" % i, 100.0 + i)
        self.assertEqual(list(cache.keys), [b"k2", b"k3", b"k4"])
        self.assertEqual(cache.evicted, 2)
        self.assertEqual(len(cache), 3)

    def test_expiry_by_capture_time(self) -> None:
        cache = NotSipFlows(max_size=10, ttl=30.0)
        cache.add(b"a", 100.0)
        cache.add(b"b", 110.0)
        cache.add(b"a", 125.0)  # already there: keeps its first time
        cache.expire(135.0)
        self.assertEqual(list(cache.keys), [b"b"])
        cache.expire(139.9)
        self.assertIn(b"b", cache)
        cache.expire(140.1)
        self.assertEqual(len(cache), 0)

    def test_clock_going_back_forgets_everything(self) -> None:
        cache = NotSipFlows()
        cache.add(b"a", 1000.0)
        cache.expire(10.0)
        self.assertEqual(len(cache), 0)

    def test_discard_and_disabled(self) -> None:
        cache = NotSipFlows()
        cache.add(b"a", 1.0)
        cache.discard(b"a")
        cache.discard(b"never")
        self.assertNotIn(b"a", cache)
        off = NotSipFlows(max_size=0)
        off.add(b"a", 1.0)
        self.assertEqual(len(off), 0)


class Feeder:
    """A Decoder fed frames at increasing capture times, collecting its datagrams."""

    def __init__(self, **kw: object) -> None:
        self.out: list = []
        self.decoder = Decoder(self.out.append, **kw)  # type: ignore[arg-type]
        self.t = 100.0

    def feed(self, *frames: bytes, dt: float = 0.01) -> Feeder:
        for f in frames:
            self.t += dt
            self.decoder.feed(self.t, 1, f)
        return self

    @property
    def payloads(self) -> list[bytes]:
        return [d.payload for d in self.out]


class DecoderCacheTests(SynchronousTestCase):
    def test_not_sip_flow_is_remembered_and_dropped_early(self) -> None:
        f = Feeder()
        k = key(A4, 40000, B4, 8080)
        f.feed(tcp(b"\x17\x03\x03 tls", seq=1, dport=8080))
        self.assertIn(k, f.decoder.not_sip)
        f.feed(*(tcp(b"\x17\x03\x03 more", seq=10 + i, dport=8080) for i in range(5)),
               tcp(b"", seq=99, dport=8080), tcp(HTTP_OK, seq=100, dport=8080))
        stats = f.decoder.stats
        self.assertEqual(stats.ignored["tcp_not_sip"], 8)
        self.assertEqual(stats.tcp_segments, 8)
        self.assertEqual(stats.frames, 8)
        self.assertEqual(len(f.decoder._tcp), 0)
        self.assertEqual(f.out, [])

    def test_flow_that_turns_sip_is_still_decoded(self) -> None:
        msg = sip("INVITE", n=7, body=b"v=0\r\n")
        cut = msg.index(b"Call-ID") + 2  # the second part starts with a lower-case byte
        frames = [tcp(b"\x00junk", seq=1, dport=8080), tcp(b"", seq=6, dport=8080),
                  tcp(msg[:cut], seq=6, dport=8080),
                  tcp(msg[cut:], seq=6 + cut, dport=8080)]
        for limit in (65536, 0):
            f = Feeder(tcp_not_sip_max=limit).feed(*frames)
            self.assertEqual(f.payloads, [msg])
            self.assertEqual(f.decoder.stats.tcp["heuristic_sip"], 1)
            self.assertEqual(f.decoder.stats.ignored["tcp_not_sip"], 2)
            self.assertNotIn(key(A4, 40000, B4, 8080), f.decoder.not_sip)

    def test_other_direction_turning_sip_uncaches_this_one(self) -> None:
        # A->B looks like nothing, so it is cached; then B->A starts SIP, which makes the
        # reassembler track both directions: A->B segments must reach it from then on,
        # including a continuation that starts with a byte the cache would drop.
        req = sip("OPTIONS", n=3)
        cut = req.index(b"Call-ID") + 2
        frames = [tcp(b"\x00hello", seq=1, sport=40000, dport=9000),
                  tcp(b"SIP/2.0 200 OK\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n", seq=500,
                      src=B4, dst=A4, sport=9000, dport=40000),
                  tcp(req[:cut], seq=7, sport=40000, dport=9000),
                  tcp(req[cut:], seq=7 + cut, sport=40000, dport=9000)]
        f = Feeder().feed(*frames[:1])
        self.assertIn(key(A4, 40000, B4, 9000), f.decoder.not_sip)
        f.feed(*frames[1:])
        self.assertNotIn(key(A4, 40000, B4, 9000), f.decoder.not_sip)
        self.assertEqual(f.payloads[1:], [req])

    def test_cache_expires_and_is_bounded_through_the_decoder(self) -> None:
        f = Feeder(tcp_not_sip_max=4, tcp_not_sip_ttl=30.0)
        for i in range(10):
            f.feed(tcp(b"\x00", sport=41000 + i, dport=8080))
        self.assertEqual(len(f.decoder.not_sip), 4)
        self.assertEqual(f.decoder._tcp.not_sip.evicted, 6)
        f.decoder.expire(f.t + 31.0)
        self.assertEqual(len(f.decoder.not_sip), 0)
        self.assertEqual(f.decoder.stats.ignored["tcp_not_sip"], 10)

    def test_random_traffic_same_with_and_without_cache(self) -> None:
        frames = mixed_traffic(random.Random(7), 3000)

        def run(limit: int, batch: bool) -> tuple[list, dict]:
            out: list = []
            d = Decoder(out.append, tcp_not_sip_max=limit, tcp_not_sip_ttl=20.0)
            if batch:
                d.feed_all(frames)
            else:
                for i, (ts, lt, fr) in enumerate(frames):
                    d.feed(ts, lt, fr)
                    if i % 101 == 0:
                        d.expire(ts)
            self.assertEqual(len(d.not_sip) > 0, limit > 0)
            d.flush()
            return [tuple(x) for x in out], nested(d.counters())

        for batch in (False, True):
            without = run(0, batch)
            # on, and so small that it keeps evicting
            self.assertEqual(run(65536, batch), without)
            self.assertEqual(run(3, batch), without)
        # connections did turn SIP (by each heuristic), and most traffic never did
        counts = without[1]["tcp"]
        self.assertGreater(min(counts["heuristic_sip"], counts["heuristic_websocket"],
                               counts["websocket_upgrade"]), 3)
        self.assertGreater(without[1]["tcp_messages"], 10)
        self.assertGreater(without[1]["ignored"]["tcp_not_sip"], 1000)

    def test_shared_captures_same_with_and_without_cache(self) -> None:
        for path in public_pcaps():
            frames = list(read_capture(path))
            for ports in ((5060,), ()):  # no SIP port: every TCP flow by heuristics
                got = []
                for limit in (65536, 0):
                    out: list = []
                    d = Decoder(out.append, sip_ports=ports, tcp_not_sip_max=limit)
                    d.feed_all(frames)
                    d.flush()
                    got.append(([tuple(x) for x in out], d.counters()))
                self.assertEqual(got[0], got[1], path)


def mixed_traffic(rng: random.Random, n: int) -> list[tuple[float, int, bytes]]:
    """TCP connections on non-SIP ports, most never carrying SIP, the others with segments
    that are empty, binary, text, HTTP, SIP or WebSocket; both directions, some 802.1Q
    tagged, some malformed, with capture-time gaps longer than the cache's time to live."""
    conns = []
    for i in range(60):
        a, b = bytes([10, 0, 0, 1 + i]), bytes([10, 0, 1, 1 + i % 5])
        conns.append([a, b, 30000 + i, rng.choice([80, 8080, 9000, 443]), rng.randrange(1 << 32),
                      rng.randrange(1 << 32), rng.random() < 0.25, rng.random() < 0.3])
    choices = [b"", b"\x17\x03\x03\x00\x10tls", b"hello there", HTTP_OK, UPGRADE,
               ws(sip("MESSAGE", n=5)), ws(b"\x00bin", op=2), b"\x81\x05hello", b"Zebra"]
    out = []
    ts = 1000.0
    for k in range(n):
        c = rng.choice(conns)
        back = rng.random() < 0.4
        src, dst, sport, dport = (c[1], c[0], c[3], c[2]) if back else c[:4]
        i = 5 if back else 4
        r = rng.random()
        if not c[7]:  # a connection that never carries SIP
            data = rng.choice(choices[:4]) if r < 0.5 else rng.randbytes(rng.randrange(1, 80))
        elif r < 0.08:
            data = sip(rng.choice(["INVITE", "BYE", "OPTIONS"]), n=k)
        else:
            data = rng.randbytes(rng.randrange(1, 80)) if r < 0.3 else rng.choice(choices)
        flags = dpkt.tcp.TH_ACK | (dpkt.tcp.TH_SYN if rng.random() < 0.01 else 0)
        seq = c[i] if rng.random() > 0.05 else c[i] - rng.randrange(1, 300)
        frame = tcp(data, seq=seq, flags=flags, src=src, dst=dst, sport=sport, dport=dport)
        c[i] = (c[i] + len(data)) & 0xFFFFFFFF
        if c[6]:
            frame = frame[:12] + b"\x81\x00\x00\x07" + frame[12:]
        if rng.random() < 0.03:  # a TCP header length that cannot be right
            at = (18 if c[6] else 14) + 32
            frame = frame[:at] + bytes([rng.choice([0x10, 0x40, 0xF0])]) + frame[at + 1:]
        if rng.random() < 0.02:
            frame = frame[:-rng.randrange(1, 20)]
        ts += rng.expovariate(20.0) + (45.0 if rng.random() < 0.003 else 0.0)
        out.append((ts, 1, frame))
    return out
