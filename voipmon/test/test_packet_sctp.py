"""Tests for voipmon.packet.sctp: SIP over SCTP DATA and I-DATA chunks, fragmented user
messages, retransmissions and bounds."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from voipmon.test.test_packet_decode import A4, B4, ether, ip4
from voipmon.test.test_packet_tcp import SDP, Stream, sip


def sctp_packet(chunks: list[bytes], sport=5060, dport=5060, src=A4, dst=B4) -> bytes:
    body = struct.pack("!HHII", sport, dport, 0x1234, 0) + b"".join(chunks)
    return ether(ip4(body, src, dst, p=132))


def data_chunk(tsn, payload, flags=3, stream=0, ppid=0, idata=False):
    pad = b"\0" * ((-len(payload)) % 4)
    if idata:
        return struct.pack("!BBHIHHII", 64, flags, 20 + len(payload), tsn, stream, 0, 0,
                           ppid) + payload + pad
    return struct.pack("!BBHIHHI", 0, flags, 16 + len(payload), tsn, stream, 0, ppid) \
        + payload + pad


class SctpTests(SynchronousTestCase):
    def test_data_chunks(self):
        init_ack = struct.pack("!BBH", 3, 0, 16) + b"\0" * 12  # SACK: skipped
        s = Stream().feed(sctp_packet([init_ack, data_chunk(1, sip(n=1)),
                                       data_chunk(2, sip("ACK", 2), ppid=99)]))
        self.assertEqual(s.payloads, [sip(n=1), sip("ACK", 2)])
        self.assertEqual([d.proto for d in s.out], [132, 132])
        self.assertEqual(s.decoder.stats.sctp_messages, 2)

    def test_fragmented_out_of_order_and_retransmitted(self):
        m = sip(body=SDP)
        parts = [m[:40], m[40:90], m[90:]]
        s = Stream().feed(sctp_packet([data_chunk(12, parts[2], flags=1)]),
                          sctp_packet([data_chunk(10, parts[0], flags=2)]),
                          sctp_packet([data_chunk(11, parts[1], flags=0)]),
                          sctp_packet([data_chunk(11, parts[1], flags=0)]),
                          sctp_packet([data_chunk(13, sip("ACK", 2))]),
                          sctp_packet([data_chunk(13, sip("ACK", 2))]))
        self.assertEqual(s.payloads, [m, sip("ACK", 2)])
        self.assertEqual(len(s.out[0].frames), 3)
        self.assertEqual(s.decoder.stats.ignored["sctp_duplicate"], 2)

    def test_idata(self):
        s = Stream().feed(sctp_packet([data_chunk(1, sip(n=1), idata=True)]))
        self.assertEqual(s.payloads, [sip(n=1)])

    def test_other_ports_and_garbage(self):
        s = Stream().feed(sctp_packet([data_chunk(1, sip())], 2905, 2905),
                          sctp_packet([b"\0\0\xff\xff"]),
                          sctp_packet([data_chunk(1, b"\x01\x02binary")]))
        self.assertEqual(s.payloads, [])
        self.assertEqual(s.decoder.stats.undecodable["sctp_bad_chunk"], 1)

    def test_reassembly_bounded(self):
        self.assertRaises(TypeError, Stream, sctp_no_such_limit=1)
        s = Stream(sctp_max_bytes=1 << 20)
        for tsn in range(200):
            s.feed(sctp_packet([data_chunk(tsn * 2, b"x" * 8000, flags=2)]))
        a = next(iter(s.decoder._sctp._assocs.values()))
        self.assertLessEqual(a.bytes, 1 << 20)
        self.assertGreater(s.decoder.stats.undecodable["sctp_reassembly_overflow"], 0)

    def test_total_bounded_over_associations(self):
        s = Stream(sctp_max_total=100000)
        for port in range(50):
            for tsn in range(5):
                s.feed(sctp_packet([data_chunk(tsn * 2, b"x" * 1000, flags=2)], sport=port))
        reasm = s.decoder._sctp
        self.assertLessEqual(reasm._held, 100000)
        self.assertEqual(reasm._held, sum(a.bytes for a in reasm._assocs.values()))
        self.assertGreater(s.decoder.stats.undecodable["sctp_memory_shed"], 0)
        s.decoder.expire(s.t + 61)
        self.assertEqual(reasm._held, 0)
