"""Data-driven decoding checks against tshark on the shared real captures.

For every capture with a ``FILE.tshark.txt`` reference, the SIP messages we decode (UDP,
TCP reassembled, WebSocket, SCTP; through GRE, ERSPAN, PPPoE, IPIP, IPv6 fragments ...)
must be exactly the messages tshark lists, in the same order: Call-ID and method or status
code. And every RTP stream tshark reports must have exactly its packet count of UDP
datagrams with that address/port 4-tuple and SSRC.
"""

from __future__ import annotations

import collections
import os
import re
import socket

from twisted.trial.unittest import SynchronousTestCase

from voipmon.packet.decode import Decoder
from voipmon.packet.readers import read_capture
from voipmon.packet.sipframe import looks_like_sip_start
from voipmon.test.common import shared_path

PCAPS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "pcaps")
_CALLID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_DECODE_AS = re.compile(r"(?:tcp|udp|sctp)\.port==(\d+),sip")
_RTP_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)\s+(0x[0-9A-Fa-f]+)"
                      r"\s+.+?\s+(\d+)\s+-?\d+\s")

# Where we differ from tshark on purpose: file -> (stream, reason). The count we give must
# then be at least tshark's.
RTP_DIFFERENCES = {
    "heplify__FAX-Call-t38-CA-TDM-SIP-FB-1.pcap": (
        ("10.35.60.100", 15580, "10.23.1.52", 16756, 0x0EAF0EAF),
        "after the T.38 re-INVITE tshark dissects this port as UDPTL and stops counting the "
        "RTP packets that keep arriving with the same SSRC; the decoder hands over every "
        "datagram and leaves that decision to the engine"),
}


def captures() -> list[str]:
    found = []
    for sub in ("public", "generated"):
        d = os.path.join(PCAPS, sub)
        if os.path.isdir(d):
            found += [os.path.join(d, n[:-len(".tshark.txt")]) for n in sorted(os.listdir(d))
                      if n.endswith(".tshark.txt")]
    return found


def sip_ports(path: str) -> list[int]:
    ports = [5060]
    if os.path.exists(path + ".decode_as"):
        with open(path + ".decode_as") as f:
            ports += [int(m.group(1)) for m in map(_DECODE_AS.search, f) if m]
    return ports


def reference(path: str) -> tuple[list[tuple[str, str, str]], list[tuple]]:
    with open(path + ".tshark.txt") as f:
        text = f.read()
    rtp_part, rest = text.split("## tshark -q -r FILE -z sip,stat", 1)
    fields = rest.split("## tshark -r FILE -Y sip", 1)[1].split("\n", 1)[1]
    msgs = [tuple((line.split("\t") + ["", ""])[:3]) for line in fields.splitlines()
            if line.strip()]
    streams = []
    for line in rtp_part.splitlines():
        m = _RTP_ROW.match(line)
        if m:
            src, sport, dst, dport, ssrc, pkts = m.groups()
            streams.append(((src, int(sport), dst, int(dport), int(ssrc, 16)), int(pkts)))
    return msgs, streams


def summarise(payload: bytes) -> tuple[str, str, str]:
    first = payload.split(b"\r\n", 1)[0].split()
    m = _CALLID.search(payload)
    callid = m.group(1).strip().decode("utf-8", "replace") if m else ""
    if first[0] == b"SIP/2.0":
        return (callid, "", first[1].decode())
    return (callid, first[0].decode(), "")


def text_addr(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(packed) == 16 else socket.AF_INET, packed)


class CaptureTests(SynchronousTestCase):
    def setUp(self):
        self.paths = captures()
        if not self.paths:
            shared_path("pcaps", "public")  # skips, or fails in CI
            self.fail("no captures with a tshark reference in ../shared/pcaps")

    def decode(self, path):
        out = []
        d = Decoder(out.append, sip_ports(path))
        d.feed_all(read_capture(path))
        d.flush()
        return out, d

    def test_sip_messages_match_tshark(self):
        checked = 0
        for path in self.paths:
            name = os.path.basename(path)
            out, d = self.decode(path)
            ours = [summarise(x.payload) for x in out if looks_like_sip_start(x.payload)]
            want, _ = reference(path)
            self.assertEqual(ours, want, name)
            self.assertFalse([k for k in d.stats.undecodable if k.startswith("error:")], name)
            checked += len(want)
        self.assertGreater(checked, 10000)

    def test_rtp_packet_counts_match_tshark(self):
        checked = 0
        for path in self.paths:
            name = os.path.basename(path)
            _, streams = reference(path)
            if not streams:
                continue
            out, _ = self.decode(path)
            count: collections.Counter = collections.Counter()
            for x in out:
                p = x.payload
                if x.proto == 17 and len(p) >= 12 and p[0] >> 6 == 2:
                    count[(text_addr(x.src), x.sport, text_addr(x.dst), x.dport,
                           int.from_bytes(p[8:12], "big"))] += 1
            for key, pkts in streams:
                if name in RTP_DIFFERENCES and RTP_DIFFERENCES[name][0] == key:
                    self.assertGreater(count[key], pkts, name)
                else:
                    self.assertEqual(count[key], pkts, (name, key))
                checked += 1
        self.assertGreater(checked, 30)

    def test_encapsulations_were_exercised(self):
        """The captures really went through the paths the SIP comparison vouches for."""
        seen = {}
        for path in self.paths:
            _, d = self.decode(path)
            seen[os.path.basename(path)] = d.stats
        self.assertEqual(seen["sngrep__ipv6frag.pcap"].reassembled, 2)
        self.assertGreater(seen["heplify__sip_ipv4_tcp_fragmented.pcap"].tcp_messages, 400)
        self.assertGreater(seen["heplify__sip_tcp_websocket.pcap"].websocket_messages, 10)
        self.assertEqual(seen["heplify__sip_sctp.pcap"].sctp_messages, 4)
        self.assertGreater(seen["heplify__sip_ipv4_tcp_retrans.pcap"].tcp["retransmission"], 0)

    def test_heuristics_find_tcp_sip_without_decode_as(self):
        path = next((p for p in self.paths if p.endswith("tcp_fragmented.pcap")), None)
        if path is None:
            shared_path("pcaps", "public", "heplify__sip_ipv4_tcp_fragmented.pcap")
        out = []
        d = Decoder(out.append, (5060,))
        d.feed_all(read_capture(path))
        self.assertEqual(len([x for x in out if x.proto == 6]), len(reference(path)[0]))
