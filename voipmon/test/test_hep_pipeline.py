"""HEP into the engine, without sockets: decode_hep, then HepFrames, then Engine.feed.

- Every public capture, its SIP, RTP and RTCP encoded as HEP the way agents send it (SIP
  one message per HEP message, RTP as type 4, RTCP as heplify's JSON), gives the very CDRs
  and orphan streams the capture gives analysed directly (at the microsecond resolution
  HEP carries): calls, codes, times, RTP quality, RTCP figures.
- The per-call pcaps the engine writes for a HEP call open in tshark with every SIP
  message and RTP packet, good checksums, and for SIP over TCP (one HEP message per SIP
  message, or heplify's per segment) no retransmission or missing-segment analysis.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import socket
import subprocess
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.engine import Engine
from voipmon.packet.hep import HepMessage, decode_hep
from voipmon.packet.readers import CaptureReader
from voipmon.packet.synth import HepFrames
from voipmon.packet.writers import pcap_global_header, pcap_record
from voipmon.records.cdr import Cdr, RtpStream
from voipmon.spool.writer import SpoolWriter
from voipmon.test.callsupport import rtcp_rr, rtcp_sr, rtp, sdp, sip_message
from voipmon.test.common import public_pcaps, require_tshark
from voipmon.test.hepsupport import capture_as_hep, hep3_message, rtcp_json

Records = tuple[list[Cdr], list[RtpStream]]


def microseconds(path: str) -> Iterator[tuple[float, int, bytes]]:
    """The capture's frames at the resolution HEP carries (what capture_as_hep sends)."""
    with CaptureReader(path) as reader:
        for ts, linktype, frame in reader:
            usec = round(ts * 1e6)
            yield usec // 1000000 + (usec % 1000000) / 1e6, linktype, frame


def engine(**options: object) -> tuple[Engine, list[Cdr], list[RtpStream]]:
    cdrs: list[Cdr] = []
    orphans: list[RtpStream] = []
    e = Engine(id_sensor=1, on_cdr=cdrs.append, on_orphan=orphans.append,
               **options)  # type: ignore[arg-type]
    return e, cdrs, orphans


def as_dicts(records: Records) -> tuple[list[dict], list[dict]]:
    cdrs, orphans = records
    return (sorted((dataclasses.asdict(c) for c in cdrs), key=lambda c: c["callid"]),
            sorted((dataclasses.asdict(o) for o in orphans),
                   key=lambda o: (o["saddr"], o["sport"], o["ssrc"])))


class PublicCaptureTests(SynchronousTestCase):
    def test_captures_through_hep_give_the_same_records(self) -> None:
        compared = {"cdrs": 0, "streams": 0, "messages": 0}
        for path in public_pcaps():
            with self.subTest(capture=os.path.basename(path)):
                direct, cdrs, orphans = engine()
                direct.feed_all(microseconds(path))
                direct.finish()
                via_hep, hep_cdrs, hep_orphans = engine()
                frames = HepFrames(via_hep.feed)
                for record in capture_as_hep(path):
                    msg = decode_hep(record.message)
                    d = record.datagram
                    self.assertEqual((msg.src, msg.sport, msg.dst, msg.dport, msg.ip_proto),
                                     (d.src, d.sport, d.dst, d.dport, d.proto))
                    self.assertGreater(frames.feed(msg, msg.ts), 0)  # type: ignore[arg-type]
                    compared["messages"] += 1
                via_hep.finish()
                self.assertEqual((direct.stats.errors, via_hep.stats.errors), (0, 0))
                # the capture agent is kept on the HEP calls (chunk 0x000c), none sniffed
                self.assertEqual({c.hep_capture_id for c in hep_cdrs},
                                 {2002} if hep_cdrs else set())
                self.assertEqual({c.hep_capture_id for c in cdrs}, {None} if cdrs else set())
                self.assertEqual(as_dicts(([dataclasses.replace(c, hep_capture_id=None)
                                            for c in hep_cdrs], hep_orphans)),
                                 as_dicts((cdrs, orphans)))
                compared["cdrs"] += len(cdrs)
                compared["streams"] += sum(len(c.rtp) for c in cdrs) + len(orphans)
        # the comparison is not empty: calls, their streams, and many messages
        self.assertGreater(compared["cdrs"], 1000)
        self.assertGreater(compared["streams"], 30)
        self.assertGreater(compared["messages"], 20000)


CALLER, CALLEE = ("10.1.0.1", 5060), ("10.2.0.2", 5060)
CALLER6, CALLEE6 = ("2001:db8::1", 5060), ("2001:db8:2::2", 5060)


def call_messages(callid: str, caller: tuple[str, int], callee: tuple[str, int],
                  t: float, rtp_packets: int = 50
                  ) -> list[tuple[float, tuple[str, int], tuple[str, int], int, bytes]]:
    """(time, source, destination, HEP type, payload) of one call: the SIP dialogue,
    ``rtp_packets`` RTP packets each way (20 ms apart) and an RTCP SR and RR as JSON."""
    cm, em = (caller[0], 40000), (callee[0], 50000)
    offer, answer = sdp(cm[0], cm[1]), sdp(em[0], em[1])

    def sip(first: str, cseq: str, to_tag: str = "", body: str = "") -> bytes:
        return sip_message(first, callid, cseq, "ft1", to_tag, body=body)

    out = [(t, caller, callee, 1, sip("INVITE sip:bob@example.com SIP/2.0", "1 INVITE",
                                      body=offer)),
           (t + 0.01, callee, caller, 1, sip("SIP/2.0 100 Trying", "1 INVITE")),
           (t + 0.5, callee, caller, 1, sip("SIP/2.0 180 Ringing", "1 INVITE", "tt1")),
           (t + 1.0, callee, caller, 1, sip("SIP/2.0 200 OK", "1 INVITE", "tt1", answer)),
           (t + 1.01, caller, callee, 1, sip("ACK sip:bob@example.com SIP/2.0", "1 ACK",
                                             "tt1"))]
    for i in range(rtp_packets):
        seq = (100 + i) & 0xFFFF, (900 + i) & 0xFFFF
        out.append((t + 1.02 + 0.02 * i, cm, em, 4, rtp(seq[0], 160 * i, 0x1111)))
        out.append((t + 1.03 + 0.02 * i, em, cm, 4, rtp(seq[1], 160 * i, 0x2222)))
    end = max(t + 3.0, t + 1.1 + 0.02 * rtp_packets)
    ntp = 3912345678.5
    out.append((t + 1.5, (cm[0], 40001), (em[0], 50001), 5,
                rtcp_json(rtcp_sr(0x1111, ntp, ((0x2222, 0, 0, 920, 40, 0, 0),)))))
    out.append((t + 1.6, (em[0], 50001), (cm[0], 40001), 5,
                rtcp_json(rtcp_rr(0x2222, ((0x1111, 0, 0, 140, 30, 0, 0),)))))
    out.append((end, caller, callee, 1, sip("BYE sip:bob@example.com SIP/2.0", "2 BYE",
                                            "tt1")))
    out.append((end + 0.01, callee, caller, 1, sip("SIP/2.0 200 OK", "2 BYE", "tt1")))
    return sorted(out, key=lambda m: m[0])


SIP_LINES = ["INVITE", "100", "180", "200", "ACK", "BYE", "200"]


class PerCallPcapTests(SynchronousTestCase):
    """A HEP call through the engine into its spool, read back by tshark."""

    def setUp(self) -> None:
        self.tshark = require_tshark()
        self.spool = self.mktemp()

    def run_call(self, callid: str, caller: tuple[str, int], callee: tuple[str, int],
                 ip_proto: int, split: bool = False) -> tuple[str, str]:
        e, cdrs, _ = engine(spool=SpoolWriter(self.spool))
        frames = HepFrames(e.feed)
        pending = b""
        for ts, src, dst, kind, payload in call_messages(callid, caller, callee, 1.7e9):
            proto = ip_proto if kind == 1 else 17
            parts = [payload]
            if split and kind == 1:  # heplify: TCP segments, not SIP messages
                if payload.startswith(b"SIP/2.0 180"):
                    pending = payload  # sent together with the 200 that follows
                    continue
                payload, pending = pending + payload, b""
                parts = [payload[:7], payload[7:300], payload[300:]]
            for part in filter(None, parts):
                msg = decode_hep(hep3_message(src[0], src[1], dst[0], dst[1], part,
                                              ts=(int(ts), round(ts % 1 * 1e6)),
                                              proto_type=kind, ip_proto=proto))
                frames.feed(msg, msg.ts)  # type: ignore[arg-type]
        e.finish()
        [cdr] = cdrs
        self.assertEqual((cdr.callid, cdr.lastSIPresponseNum), (callid, 200))
        self.assertEqual(sorted((s.received, s.lost) for s in cdr.rtp), [(50, 0), (50, 0)])
        self.assertEqual(sorted(s.rtcp_reports for s in cdr.rtp), [1, 1])
        [sip_pcap] = glob.glob(os.path.join(self.spool, "**", "SIP", "*.pcap"),
                               recursive=True)
        [rtp_pcap] = glob.glob(os.path.join(self.spool, "**", "RTP", "*.pcap"),
                               recursive=True)
        return sip_pcap, rtp_pcap

    def tshark_fields(self, path: str, display: str, *fields: str,
                      options: tuple[str, ...] = ()) -> list[list[str]]:
        argv = [self.tshark, "-n", "-r", path, "-o", "ip.check_checksum:TRUE",
                "-o", "udp.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
                "-o", "sctp.checksum:CRC 32c", *options, "-Y", display, "-T", "fields",
                "-E", "separator=|"]
        for f in fields:
            argv += ["-e", f]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
        return [line.split("|") for line in out.stdout.splitlines()]

    def check(self, sip_pcap: str, rtp_pcap: str) -> None:
        rows = self.tshark_fields(sip_pcap, "sip", "sip.Method", "sip.Status-Code",
                                  "sip.Call-ID")
        self.assertEqual([r[0] or r[1] for r in rows], SIP_LINES)
        self.assertEqual({r[2] for r in rows}, {self.callid})
        noise = self.tshark_fields(sip_pcap, "tcp.analysis.flags || _ws.expert.severity "
                                   ">= warning || ip.checksum.status == 0 || "
                                   "udp.checksum.status == 0 || tcp.checksum.status == 0 "
                                   "|| sctp.checksum.status == 0", "frame.number",
                                   "_ws.expert.message")
        self.assertEqual(noise, [])
        rtp_rows = self.tshark_fields(rtp_pcap, "rtp || rtcp", "rtp.ssrc", "rtcp.pt",
                                      options=("-o", "rtp.heuristic_rtp:TRUE"))
        self.assertEqual(sorted(r[0] or r[1] for r in rtp_rows),
                         ["0x00001111"] * 50 + ["0x00002222"] * 50 + ["200", "201"])

    def test_udp_ipv4(self) -> None:
        self.callid = "udp4@hep"
        self.check(*self.run_call(self.callid, CALLER, CALLEE, 17))

    def test_tcp_ipv4_one_message_each(self) -> None:
        """Kamailio: one HEP message per SIP message."""
        self.callid = "tcp4@hep"
        self.check(*self.run_call(self.callid, CALLER, CALLEE, 6))

    def test_tcp_ipv6_per_segment(self) -> None:
        """heplify: messages cut across HEP messages, and two in one."""
        self.callid = "tcp6@hep"
        self.check(*self.run_call(self.callid, CALLER6, CALLEE6, 6, split=True))

    def test_sctp_ipv4(self) -> None:
        self.callid = "sctp4@hep"
        self.check(*self.run_call(self.callid, CALLER, CALLEE, 132))


class WholeStreamTests(SynchronousTestCase):
    def test_calls_sharing_a_tcp_connection(self) -> None:
        """Three calls interleaved on one TCP connection between two proxies, both ways:
        tshark shows all 21 messages in one clean stream."""
        tshark = require_tshark()
        path = self.mktemp()
        out: list[tuple[float, bytes]] = []
        frames = HepFrames(lambda ts, _lt, frame: out.append((ts, frame)))
        messages = sorted((m for k in range(3) for m in call_messages(
            f"shared{k}@hep", CALLER, CALLEE, 1.7e9 + 0.3 * k) if m[3] == 1),
            key=lambda m: m[0])
        for ts, src, dst, _kind, payload in messages:
            frames.feed(HepMessage(ts, 1, 6, *_addr(src), *_addr(dst), payload, 0, None,
                                   None, None, 3), ts)
        with open(path, "wb") as f:
            f.write(pcap_global_header(1))
            for ts, frame in out:
                f.write(pcap_record(ts, frame))
        argv = [tshark, "-n", "-r", path, "-o", "tcp.check_checksum:TRUE", "-T", "fields",
                "-e", "sip.Call-ID", "-e", "tcp.analysis.flags", "-e", "tcp.flags"]
        rows = subprocess.run(argv, capture_output=True, text=True, check=True,
                              timeout=60).stdout.splitlines()
        self.assertEqual(len(rows), 2 + 21)  # the synthesised handshake, then the messages
        self.assertEqual(sum(1 for r in rows if r.split("\t")[0]), 21)
        self.assertEqual([r.split("\t")[1] for r in rows], [""] * 23)


def _addr(endpoint: tuple[str, int]) -> tuple[bytes, int]:
    family = socket.AF_INET6 if ":" in endpoint[0] else socket.AF_INET
    return socket.inet_pton(family, endpoint[0]), endpoint[1]
