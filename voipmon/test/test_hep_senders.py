"""What real HEP senders send, captured on plain sockets and decoded by voipmon.packet.hep.

- Debian's Kamailio (siptrace, trace_mode 1) relaying SIPp calls: HEP3 over UDP and over
  TCP, SIP over UDP and over TCP, HEPv2; every message decodes, with the chunks in
  Kamailio's order, its capture id and auth key, and each call's messages on both legs.
- Debian's sngrep replaying public captures: every SIP message of the file arrives and
  decodes to the file's own addresses, ports, times and bytes (sngrep's order: ports
  before addresses; its byte-swapped capture id), and the engine makes the same calls of
  them as of the file.

Needs kamailio, sngrep and SIPp (sip-tester): a missing one skips, or fails in CI.
"""

from __future__ import annotations

import os
import re
import struct
import time
from collections import Counter, defaultdict
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from voipmon.analysis.engine import Engine
from voipmon.packet.datagram import Datagram
from voipmon.packet.decode import Decoder
from voipmon.packet.hep import HepMessage, decode_hep
from voipmon.packet.synth import HepFrames
from voipmon.test.common import shared_path
from voipmon.test.hepsenders import (
    KAMAILIO_MODULES,
    HepCollector,
    Kamailio,
    require_program,
    run_sipp_calls,
    run_sngrep,
)
from voipmon.test.hepsupport import SNGREP, capture_as_hep
from voipmon.test.test_hep_pipeline import microseconds

_CALLID = re.compile(rb"^(?:Call-ID|i)\s*:\s*(\S+)", re.M | re.I)
LOCALHOST = bytes((127, 0, 0, 1))
#: What Kamailio relays of one answered SIPp call, in order: (first word, direction)
#: where "in" is UAC -> proxy -> UAS and "out" the way back; the 100 is the proxy's own.
CALL = [("INVITE", "uac>k"), ("100", "k>uac"), ("INVITE", "k>uas"), ("180", "uas>k"),
        ("180", "k>uac"), ("200", "uas>k"), ("200", "k>uac"), ("ACK", "uac>k"),
        ("ACK", "k>uas"), ("BYE", "uac>k"), ("BYE", "k>uas"), ("200", "uas>k"),
        ("200", "k>uac")]


def chunk_types(data: bytes) -> list[int]:
    """The generic chunk types of a HEP3 message, in the order sent."""
    out, p = [], 6
    while p + 6 <= len(data):
        vendor, ctype, length = struct.unpack_from("!HHH", data, p)
        out.append(ctype if not vendor else -ctype)
        p += max(length, 6)
    return out


def first_word(payload: bytes) -> str:
    line = payload.split(b"\r\n", 1)[0].decode()
    return line.split()[1] if line.startswith("SIP/2.0") else line.split()[0]


class KamailioTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.kamailio = require_program("kamailio", "kamailio", KAMAILIO_MODULES)
        self.sipp = require_program("sipp", "sip-tester")
        self.collector = HepCollector(reactor)
        self.addCleanup(self.collector.stop)

    @defer.inlineCallbacks
    def relay(self, calls: int, **options: Any) -> Any:
        """Run ``calls`` SIPp calls through Kamailio; the HEP messages it sent, raw."""
        workdir = os.path.abspath(self.mktemp())
        hep_port = self.collector.tcp_port if options.get("hep_transport") == "tcp" \
            else self.collector.udp_port
        kam = Kamailio(reactor, workdir, self.kamailio, hep_port, **options)
        self.addCleanup(kam.kill)
        yield kam.start()
        self.started = time.time()
        uac_port = yield run_sipp_calls(reactor, self.sipp, workdir, kam, calls,
                                        options.get("sip_transport", "udp"))
        yield kam.stop()  # all it sent is queued at the collector now
        self.finished = time.time()
        yield self.collector.drained()
        yield self.collector.tcp_closed()
        self.ports = {kam.sip_port: "k", kam.uas_port: "uas", uac_port: "uac"}
        return self.collector.tcp_messages or self.collector.datagrams

    def check_calls(self, raw: list[bytes], calls: int, ip_proto: int,
                    version: int = 3) -> list[HepMessage]:
        """Every message decodes; each call has all 13 messages on both legs, in order."""
        messages = [decode_hep(data) for data in raw]
        by_call: dict[bytes, list[tuple[str, str]]] = defaultdict(list)
        for msg in messages:
            self.assertEqual((msg.version, msg.proto_type, msg.ip_proto, msg.src, msg.dst),
                             (version, 1, ip_proto, LOCALHOST, LOCALHOST))
            self.assertTrue(self.started - 1 <= msg.ts <= self.finished + 1, msg.ts)  # type: ignore[operator]
            # Kamailio reports a message it sent over TCP from its listening port, and
            # the replies to it on the connection's own (ephemeral) port
            src = self.ports.get(msg.sport, "k")
            dst = self.ports.get(msg.dport, "k")
            by_call[_CALLID.search(msg.payload)[1]].append(  # type: ignore[index]
                (first_word(msg.payload), f"{src}>{dst}"))
        self.assertEqual(len(by_call), calls)
        for callid, seen in by_call.items():
            self.assertEqual(seen, CALL, callid)
        return messages

    @defer.inlineCallbacks
    def test_hep3_over_udp(self) -> None:
        raw = yield self.relay(3, auth_key="s3cret")
        messages = self.check_calls(raw, 3, 17)
        self.assertEqual({(m.capture_id, m.auth_key) for m in messages}, {(4242, b"s3cret")})
        self.assertEqual({tuple(chunk_types(d)) for d in raw},
                         {(1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 14, 15)})

    @defer.inlineCallbacks
    def test_hep3_over_tcp_with_sip_over_tcp(self) -> None:
        """One connection of back-to-back HEP3 messages, one per SIP message; through
        the frame synthesis and the packet decoder every SIP message comes back."""
        raw = yield self.relay(3, hep_transport="tcp", sip_transport="tcp")
        self.assertEqual((self.collector.tcp_connections, self.collector.tcp_errors), (1, []))
        self.assertEqual(self.collector.datagrams, [])
        messages = self.check_calls(raw, 3, 6)
        self.assertEqual({tuple(chunk_types(d)) for d in raw},
                         {(1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 15)})
        datagrams: list[Datagram] = []
        decoder = Decoder(datagrams.append, sip_ports=list(self.ports))
        frames = HepFrames(decoder.feed)
        for msg in messages:
            frames.feed(msg, msg.ts)  # type: ignore[arg-type]
        self.assertEqual([d.payload for d in datagrams], [m.payload for m in messages])
        self.assertEqual(decoder.stats.tcp["retransmission"], 0)

    @defer.inlineCallbacks
    def test_hepv2(self) -> None:
        """Kamailio's HEPv2: the time header little-endian, read as such."""
        raw = yield self.relay(1, hep_version=2)
        self.assertEqual({(d[0], d[1]) for d in raw}, {(2, 16)})
        messages = self.check_calls(raw, 1, 17, version=2)
        self.assertEqual({m.capture_id for m in messages}, {4242})


class SngrepTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.sngrep = require_program("sngrep", "sngrep")
        self.collector = HepCollector(reactor)
        self.addCleanup(self.collector.stop)

    @defer.inlineCallbacks
    def replay(self, name: str, **options: Any) -> Any:
        path = shared_path("pcaps", "public", name)
        self.collector.datagrams.clear()
        yield run_sngrep(reactor, self.sngrep, os.path.abspath(self.mktemp()), path,
                         self.collector.udp_port, **options)
        yield self.collector.drained()
        return path, list(self.collector.datagrams)

    @defer.inlineCallbacks
    def test_replays_match_the_captures(self) -> None:
        for name in ("sipnab__sip-rtp-g711.pcap", "heplify__sip_ipv6_udp.pcap",
                     "heplify__sip_ipv4_tcp.pcap", "sngrep__aaa.pcap",
                     "sipnab__register-invite-reinvite-bye.pcap"):
            path, raw = yield self.replay(name)
            expected = [r for r in capture_as_hep(path, order=SNGREP) if r.proto_type == 1]
            with self.subTest(capture=name):
                self.assertEqual(len(raw), len(expected))
                self.assertLessEqual({tuple(chunk_types(d)) for d in raw},
                                     {(1, 2, 7, 8, 9, 10, 11, 12, 3, 4, 15),
                                      (1, 2, 7, 8, 9, 10, 11, 12, 5, 6, 15)})
                got = [decode_hep(d) for d in raw]
                for msg, record in zip(got, expected, strict=True):
                    d = record.datagram
                    self.assertEqual((msg.ts, msg.ip_proto, msg.src, msg.sport, msg.dst,
                                      msg.dport, msg.payload, msg.capture_id, msg.proto_type),
                                     (decode_hep(record.message).ts, d.proto, d.src, d.sport,
                                      d.dst, d.dport, d.payload, 0x07D20000, 1))
                self.assertEqual(self.calls(got), self.calls_of_file(path))

    def calls(self, messages: list[HepMessage]) -> Counter:
        cdrs: list[Any] = []
        engine = Engine(id_sensor=1, on_cdr=cdrs.append)
        frames = HepFrames(engine.feed)
        for msg in messages:
            frames.feed(msg, msg.ts)  # type: ignore[arg-type]
        engine.finish()
        return Counter((c.callid, c.lastSIPresponseNum, c.calldate) for c in cdrs)

    def calls_of_file(self, path: str) -> Counter:
        cdrs: list[Any] = []
        engine = Engine(id_sensor=1, on_cdr=cdrs.append)
        engine.feed_all(microseconds(path))
        engine.finish()
        return Counter((c.callid, c.lastSIPresponseNum, c.calldate) for c in cdrs)

    @defer.inlineCallbacks
    def test_password_and_capture_id(self) -> None:
        """eep.send.pass gives chunk 0x000e before the payload; eep.send.id 77 arrives
        byte-swapped as 0x004D0000 (htons into a 32-bit chunk)."""
        _, raw = yield self.replay("sipnab__sip_call.pcap", capture_id=77, password="s3cret")
        self.assertGreater(len(raw), 0)
        self.assertEqual({(m.capture_id, m.auth_key) for m in map(decode_hep, raw)},
                         {(0x004D0000, b"s3cret")})
        self.assertEqual({tuple(chunk_types(d)) for d in raw},
                         {(1, 2, 7, 8, 9, 10, 11, 12, 3, 4, 14, 15)})
