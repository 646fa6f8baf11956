"""Frame synthesis (voipmon.packet.synth): HEP messages become frames that the packet
Decoder turns back into the same addresses, ports and payloads, with real checksums and
TCP sequence numbers or SCTP TSNs kept per connection."""

from __future__ import annotations

import dpkt
from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.rtcp import parse_rtcp
from voipmon.packet.datagram import IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, Datagram
from voipmon.packet.decode import Decoder
from voipmon.packet.hep import HEP_MAC, LOG, HepMessage, capture_agent, decode_hep
from voipmon.packet.synth import (
    HepFrames,
    crc32c,
    sctp_frame,
    tcp_frame,
    udp_frame,
)
from voipmon.test.callsupport import rtcp_sr
from voipmon.test.hepsupport import hep3_message, packed, rtcp_json

V4 = ("192.0.2.10", "198.51.100.20")
V6 = ("2001:db8::10", "2001:db8:1::20")


def sip(n: int, body: bytes = b"") -> bytes:
    return (f"OPTIONS sip:bob@example.com SIP/2.0\r\nCall-ID: c{n}@x\r\nCSeq: {n} OPTIONS\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def message(src: str, sport: int, dst: str, dport: int, payload: bytes, ip_proto: int = 17,
            proto_type: int = 1, ts: float = 1000.0) -> HepMessage:
    return HepMessage(ts, proto_type, ip_proto, packed(src), sport, packed(dst), dport,
                      payload, 0, None, None, None, 3)


class Pipeline:
    """HepFrames -> frames (kept) -> Decoder -> datagrams (kept)."""

    def __init__(self, sip_ports: tuple[int, ...] = (5060,), **limits: object) -> None:
        self.frames: list[bytes] = []
        self.datagrams: list[Datagram] = []
        self.decoder = Decoder(self.datagrams.append, sip_ports=sip_ports)
        self.synth = HepFrames(self.emit, **limits)  # type: ignore[arg-type]

    def emit(self, ts: float, linktype: int, frame: bytes) -> None:
        self.frames.append(frame)
        self.decoder.feed(ts, linktype, frame)

    def tcp_segments(self) -> list[dpkt.tcp.TCP]:
        out = []
        for frame in self.frames:
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip.data, dpkt.tcp.TCP):
                out.append(ip.data)
        return out


class RoundTripTests(SynchronousTestCase):
    def test_udp_tcp_sctp_both_families(self) -> None:
        for src, dst in (V4, V6):
            for proto in (IPPROTO_UDP, IPPROTO_TCP, IPPROTO_SCTP):
                with self.subTest(src=src, proto=proto):
                    p = Pipeline()
                    msgs = [message(src, 5060, dst, 5060, sip(1), proto, ts=1000.5),
                            message(dst, 5060, src, 5060, sip(2), proto, ts=1001.25),
                            message(src, 40000, dst, 40002, b"\x80\x08" + bytes(170), proto,
                                    proto_type=4, ts=1002.0)]
                    for m in msgs:
                        self.assertGreater(p.synth.feed(m, m.ts), 0)  # type: ignore[arg-type]
                    got = [(d.ts, d.proto, d.src, d.sport, d.dst, d.dport, d.payload)
                           for d in p.datagrams]
                    want = [(m.ts, proto, m.src, m.sport, m.dst, m.dport, m.payload)
                            for m in msgs]
                    if proto != IPPROTO_UDP:  # the stream decoders keep only SIP
                        want = want[:2]
                    self.assertEqual(got, want)
                    self.assertEqual(p.decoder.stats.undecodable, {})

    def test_decoded_hep_message(self) -> None:
        p = Pipeline()
        data = hep3_message("10.0.0.1", 5062, "10.0.0.2", 5060, sip(1), ts=(1600000000, 7))
        msg = decode_hep(data)
        p.synth.feed(msg, msg.ts)  # type: ignore[arg-type]
        [d] = p.datagrams
        self.assertEqual((d.ts, d.src, d.sport, d.payload),
                         (1600000000.000007, packed("10.0.0.1"), 5062, sip(1)))

    def test_checksums(self) -> None:
        """dpkt recomputes every checksum we set: they must be what we sent."""
        payload = sip(3) + b"x"  # odd length
        frames = [udp_frame(packed(V6[0]), 5060, packed(V6[1]), 5060, payload),
                  udp_frame(packed(V4[0]), 5060, packed(V4[1]), 5060, payload)]
        for src, dst in (V4, V6):
            frames.append(tcp_frame(packed(src), 5060, packed(dst), 5061, 0xFFFFFFF0,
                                    0x12345678, 0x18, payload))
            frames.append(tcp_frame(packed(src), 1, packed(dst), 2, 7, 0, 0x02))
        for frame in frames:
            ip = dpkt.ethernet.Ethernet(frame).data
            l4 = ip.data
            sent, l4.sum = l4.sum, 0
            v4 = isinstance(ip, dpkt.ip.IP)
            if v4:
                sent_ip, ip.sum = ip.sum, 0
            rebuilt = type(ip)(bytes(ip))
            if v4:
                self.assertEqual(sent_ip, rebuilt.sum)
                if isinstance(l4, dpkt.udp.UDP):
                    self.assertEqual(sent, 0)  # UDP over IPv4 may go without one
                    continue
            self.assertEqual(sent, rebuilt.data.sum, f"{type(l4).__name__} over "
                                                     f"{type(ip).__name__}")

    def test_sctp_crc32c(self) -> None:
        self.assertEqual(crc32c(b"123456789"), 0xE3069283)  # RFC 3720 B.4 check value
        frame = sctp_frame(packed(V4[0]), 5060, packed(V4[1]), 5060, 1, 0, 3, sip(1))
        packet = bytearray(frame[34:])
        sent = int.from_bytes(packet[8:12], "little")
        packet[8:12] = bytes(4)
        self.assertEqual(sent, crc32c(bytes(packet)))


class TcpTests(SynchronousTestCase):
    def test_handshake_and_sequence_numbers(self) -> None:
        """SYN, SYN-ACK, then each message is the next segment of its direction and
        acknowledges everything the other side sent."""
        p = Pipeline()
        a, b = V4
        sizes = []
        for i, (src, dst) in enumerate([(a, b), (b, a), (a, b), (a, b), (b, a)]):
            payload = sip(i, b"y" * i)
            sizes.append(len(payload))
            p.synth.feed(message(src, 5060 if src == a else 5070, dst,
                                 5070 if src == a else 5060, payload, 6), 1000.0 + i)
        segs = p.tcp_segments()
        self.assertEqual([s.flags for s in segs], [0x02, 0x12, 0x18, 0x18, 0x18, 0x18, 0x18])
        syn, synack, *data = segs
        self.assertEqual(synack.ack, syn.seq + 1)
        nxt = {syn.sport: syn.seq + 1, synack.sport: synack.seq + 1}
        for seg, size in zip(data, sizes, strict=True):
            self.assertEqual(seg.seq, nxt[seg.sport])
            self.assertEqual(seg.ack, nxt[seg.dport])
            nxt[seg.sport] += size
        self.assertEqual([d.payload for d in p.datagrams], [sip(i, b"y" * i) for i in range(5)])
        self.assertEqual((len(p.synth), p.synth.stats.tcp_connections), (1, 1))

    def test_one_message_in_several_hep_messages(self) -> None:
        """heplify sends TCP segments: a SIP message cut in three, and two in one."""
        p = Pipeline()
        whole = sip(1, b"v=0\r\n" * 50)
        parts = [whole[:10], whole[10:200], whole[200:] + sip(2) + sip(3)]
        for i, part in enumerate(parts):
            p.synth.feed(message(*V6[:1], 5060, V6[1], 5060, part, 6), 1000.0 + i)  # type: ignore[misc]
        self.assertEqual([d.payload for d in p.datagrams], [whole, sip(2), sip(3)])
        self.assertEqual(len(p.datagrams[0].frames), 3)

    def test_large_payload_is_split(self) -> None:
        p = Pipeline()
        big = sip(1, b"z" * 100000)
        self.assertEqual(p.synth.feed(message(V4[0], 5060, V4[1], 5060, big, 6), 1.0), 4)
        self.assertEqual([d.payload for d in p.datagrams], [big])
        self.assertEqual(p.synth.feed(message(V4[0], 5060, V4[1], 5060, big, 17), 2.0), 0)
        self.assertEqual(p.synth.stats.dropped["too_large"], 1)

    def test_connections_are_bounded_and_restart_with_a_syn(self) -> None:
        """The oldest connection goes first; used again it starts with a new handshake,
        and the reassembler, which still knows the old stream, takes the new one."""
        p = Pipeline(max_connections=2)
        for port in (6001, 6002, 6001, 6003, 6001):
            p.synth.feed(message(V4[0], port, V4[1], 5060, sip(port), 6), 10.0)
        flags = [s.flags for s in p.tcp_segments() if s.sport == 6001]
        self.assertEqual(flags, [0x02, 0x18, 0x18, 0x02, 0x18])  # evicted by 6003
        self.assertEqual(len(p.synth), 2)
        self.assertEqual([d.sport for d in p.datagrams], [6001, 6002, 6001, 6003, 6001])

    def test_idle_connections_expire(self) -> None:
        p = Pipeline(idle_timeout=100.0)
        p.synth.feed(message(V4[0], 6001, V4[1], 5060, sip(1), 6), 10.0)
        p.synth.feed(message(V4[0], 6002, V4[1], 5060, sip(2), 6), 80.0)
        p.synth.feed(message(V4[0], 6002, V4[1], 5060, sip(3), 6), 150.0)
        self.assertEqual(len(p.synth), 1)
        p.synth.feed(message(V4[0], 6001, V4[1], 5060, sip(4), 6), 160.0)
        self.assertEqual([s.flags for s in p.tcp_segments() if s.sport == 6001],
                         [0x02, 0x18, 0x02, 0x18])
        self.assertEqual([d.payload for d in p.datagrams], [sip(1), sip(2), sip(3), sip(4)])


class SctpTests(SynchronousTestCase):
    def test_tsn_per_direction_and_fragments(self) -> None:
        p = Pipeline()
        big = sip(9, b"w" * 70000)
        for i, payload in enumerate([sip(1), big, sip(2)]):
            p.synth.feed(message(V6[0], 5060, V6[1], 5060, payload, 132), 1.0 + i)
        p.synth.feed(message(V6[1], 5060, V6[0], 5060, sip(3), 132), 5.0)
        self.assertEqual([d.payload for d in p.datagrams], [sip(1), big, sip(2), sip(3)])
        tsns = []
        for frame in p.frames:  # Ethernet, IPv6, SCTP common header, DATA chunk header
            tsns.append(int.from_bytes(frame[70:74], "big"))
        self.assertEqual([t - tsns[0] for t in tsns[:4]], [0, 1, 2, 3])
        self.assertEqual(p.synth.stats.sctp_associations, 1)


class TypeTests(SynchronousTestCase):
    def test_rtcp_json_becomes_binary_rtcp(self) -> None:
        p = Pipeline()
        sr = rtcp_sr(0x1234, 3912345678.5, ((0x99, 3, 4, 5, 6, 7, 8),))
        p.synth.feed(message(V4[0], 40001, V4[1], 40003, rtcp_json(sr) or b"",
                             proto_type=5), 1.0)
        [d] = p.datagrams
        self.assertEqual((d.sport, d.payload), (40001, sr))
        self.assertEqual(parse_rtcp(d.payload)[0].sender, 0x1234)

    def test_what_is_not_framed(self) -> None:
        p = Pipeline()
        feed = p.synth.feed
        self.assertEqual(feed(message(*V4[:1], 1, V4[1], 2, b"log line",  # type: ignore[misc]
                                      proto_type=LOG), 1.0), 0)
        self.assertEqual(feed(message(V4[0], 1, V4[1], 2, b"{}", proto_type=53), 1.0), 0)
        self.assertEqual(feed(message(V4[0], 1, V4[1], 2, b"{}", proto_type=5), 1.0), 0)
        self.assertEqual(feed(message(V4[0], 1, V4[1], 2, b"", proto_type=1), 1.0), 0)
        self.assertEqual(feed(message(V4[0], 1, V4[1], 2, b"esp", 50), 1.0), 0)
        self.assertEqual(p.frames, [])
        self.assertEqual(dict(p.synth.stats.by_type), {100: 1, 53: 1, 5: 1, 1: 2})
        self.assertEqual(dict(p.synth.stats.dropped), {"log": 1, "type": 1, "empty": 1,
                                                      "bad_rtcp_json": 1, "ip_proto": 1})

    def test_kamailio_tls_and_websocket_as_udp(self) -> None:
        p = Pipeline(sip_ports=(5061,))
        p.synth.feed(message(V4[0], 5061, V4[1], 5061, sip(1), 22), 1.0)
        [d] = p.datagrams
        self.assertEqual((d.proto, d.payload), (IPPROTO_UDP, sip(1)))
        self.assertEqual(p.synth.counters()["frames"], 1)


class CaptureAgentTests(SynchronousTestCase):
    """The capture agent id rides in the Ethernet header of every synthesised frame."""

    def test_every_frame_names_its_agent(self) -> None:
        p = Pipeline()
        for n, (proto, agent) in enumerate(((17, 4242), (6, 77 << 16), (132, 0),
                                            (6, 0xFFFFFFFF))):
            msg = message(V4[0], 5060 + n, V4[1], 5060, sip(n), ip_proto=proto)
            before = len(p.frames)
            p.synth.feed(msg._replace(capture_id=agent), 1000.0)
            for frame in p.frames[before:]:   # the TCP handshake's too
                self.assertEqual(frame[:6], HEP_MAC)
                self.assertEqual(frame[6:8], b"\x02\x00")
                self.assertEqual(capture_agent(1, frame), agent)
        self.assertEqual(len(p.datagrams), 4)

    def test_other_frames_have_no_agent(self) -> None:
        frame = udp_frame(packed(V4[0]), 5060, packed(V4[1]), 5060, sip(1))
        self.assertEqual(frame[:12], bytes(12))
        self.assertIsNone(capture_agent(1, frame))
        self.assertIsNone(capture_agent(113, HEP_MAC + bytes(20)))   # Linux cooked capture
        self.assertIsNone(capture_agent(1, HEP_MAC + b"\x02\x00\x01"))  # cut short
