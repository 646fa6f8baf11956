"""Drive SIPp on 127.0.0.1 beside tcpdump: the real traffic of the live-capture tests.

``SippCalls.run`` starts tcpdump on ``lo`` and waits until it says it is listening. It
starts one UAS per call answering with RTP echo (SIPp's built-in ``uas`` with
``-rtp_echo``) and one answering 486 (``uas_486.xml``), and waits until each prints its
first screen: its sockets are bound by then (they run on a pty, since SIPp buffers a
piped stdout). Then it runs the callers: SIPp's ``uac_pcap`` (G.711 audio and RFC 2833
DTMF replayed from a pcap) and ``uac_486.xml``. Every wait is on a process event; the
callers carry SIPp's own ``-timeout``. When all have exited, tcpdump is stopped with
SIGINT and its capture read back.
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import dpkt
from twisted.internet import defer

from voipmon.packet.bpf import port_expression
from voipmon.test.common import data_path
from voipmon.test.live_support import ToolProcess, free_udp_port, live_unavailable

SIPP_MEDIA = "/usr/share/sip-tester"   # Debian's sip-tester: g711a.pcap, dtmf_2833_*.pcap
HOST = "127.0.0.1"

RtpKey = tuple[str, int, str, int, int]  # saddr, sport, daddr, dport, ssrc


@dataclass
class Ports:
    """Per answered call k: its own UAS and UAC, each with its own media ports, so every
    call has distinct RTP endpoints (one SIPp UAS echoes every call from a single port)."""

    uas: list[int]
    uac: list[int]
    uas_media: list[int]     # -mp of the echoing UAS k (it uses a few ports from there)
    uac_media: list[int]     # -mp of uac_pcap k
    uas486: int
    uac486: int
    uac486_media: int

    @property
    def media(self) -> frozenset[int]:
        bases = [*self.uas_media, *self.uac_media, self.uac486_media]
        return frozenset(p for base in bases for p in range(base, base + 4))

    @property
    def sip(self) -> tuple[int, ...]:
        return (*self.uas, self.uas486)

    def capture_filter(self) -> str:
        """A BPF filter for this run's traffic only (other tests may use ``lo`` too)."""
        ports = [*self.sip, *self.uac, self.uac486, *self.media]
        return f"udp and ({port_expression(ports)})"


@dataclass
class TcpdumpResult:
    path: str
    captured: int
    kernel_dropped: int
    rtp: Counter = field(default_factory=Counter)
    sip_callids: set[str] = field(default_factory=set)


def media_source() -> str:
    if not os.path.exists(os.path.join(SIPP_MEDIA, "g711a.pcap")):
        raise live_unavailable(f"{SIPP_MEDIA}/g711a.pcap is missing (Debian sip-tester)")
    return SIPP_MEDIA


class SippCalls:
    """``calls`` concurrent answered G.711 calls with RTP echo, and one refused with 486."""

    def __init__(self, reactor: Any, workdir: str, sipp: str, tcpdump: str, calls: int = 3,
                 tcpdump_filter: str = "udp") -> None:
        self.reactor = reactor
        self.workdir = workdir
        self.sipp = sipp
        self.tcpdump = tcpdump
        self.calls = calls
        self.tcpdump_filter = tcpdump_filter
        self.ports = Ports(uas=[free_udp_port() for _ in range(calls)],
                           uac=[free_udp_port() for _ in range(calls)],
                           uas_media=[free_udp_port(span=4) for _ in range(calls)],
                           uac_media=[free_udp_port(span=4) for _ in range(calls)],
                           uas486=free_udp_port(), uac486=free_udp_port(),
                           uac486_media=free_udp_port(span=4))
        self.processes: list[tuple[ToolProcess, Any]] = []
        os.makedirs(workdir, exist_ok=True)
        link = os.path.join(workdir, "pcap")  # uac_pcap plays pcap/g711a.pcap, relative
        if not os.path.islink(link):
            os.symlink(media_source(), link)

    def spawn(self, name: str, argv: list[str], marker: bytes | None = None,
              pty: bool = False) -> ToolProcess:
        proto = ToolProcess(name, marker)
        transport = self.reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ),
                                              path=self.workdir, usePTY=pty)
        self.processes.append((proto, transport))
        return proto

    def sipp_args(self, *args: str) -> list[str]:
        return [self.sipp, *args, "-i", HOST, "-nostdin", "-trace_err",
                "-error_file", os.path.join(self.workdir, f"sipp_errors_{len(self.processes)}")]

    @defer.inlineCallbacks
    def run(self) -> Any:
        """Run everything; fire with the parsed tcpdump capture."""
        p = self.ports
        pcap_path = os.path.join(self.workdir, "tcpdump.pcap")
        tcpdump = self.spawn("tcpdump", [self.tcpdump, "-i", "lo", "-n", "-U", "-B", "16384",
                                         "-w", pcap_path, self.tcpdump_filter],
                             marker=b"listening on")
        yield tcpdump.ready
        answering = [self.spawn(f"sipp uas {k}", self.sipp_args(
            "-sn", "uas", "-p", str(p.uas[k]), "-rtp_echo", "-mp", str(p.uas_media[k]),
            "-m", "1"), marker=b"Scenario Screen", pty=True) for k in range(self.calls)]
        answering.append(self.spawn("sipp uas 486", self.sipp_args(
            "-sf", data_path("uas_486.xml"), "-p", str(p.uas486), "-m", "1"),
            marker=b"Scenario Screen", pty=True))
        yield defer.gatherResults([proc.ready for proc in answering], consumeErrors=True)
        calling = [self.spawn(f"sipp uac_pcap {k}", self.sipp_args(
            "-sn", "uac_pcap", f"{HOST}:{p.uas[k]}", "-p", str(p.uac[k]),
            "-mp", str(p.uac_media[k]), "-m", "1", "-timeout", "60s", "-timeout_error"))
            for k in range(self.calls)]
        calling.append(self.spawn("sipp uac 486", self.sipp_args(
            "-sf", data_path("uac_486.xml"), f"{HOST}:{p.uas486}", "-p", str(p.uac486),
            "-mp", str(p.uac486_media), "-m", "1", "-timeout", "30s", "-timeout_error")))
        everyone = calling + answering
        codes = yield defer.gatherResults([proc.ended for proc in everyone],
                                          consumeErrors=True)
        tcpdump_process = self.processes[0][1]
        tcpdump_process.signalProcess(signal.SIGINT)
        yield tcpdump.ended
        for proc, code in zip(everyone, codes, strict=True):
            if code != 0:
                raise AssertionError(f"{proc.name} exited with {code}: {proc.tail()}")
        return read_tcpdump(pcap_path, tcpdump.err.decode("utf-8", "replace"), p.media)

    @defer.inlineCallbacks
    def kill_leftovers(self) -> Any:
        """Cleanup: kill whatever still runs (a failed test) and wait for it to go."""
        waits = []
        for proto, transport in self.processes:
            if not proto.ended.called:
                try:
                    transport.signalProcess(signal.SIGKILL)
                except OSError:
                    pass
                waits.append(proto.ended)
        yield defer.gatherResults(waits, consumeErrors=True)


def rtp_key(src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> RtpKey | None:
    """The stream key of an RTP packet, or None if the payload is not RTP version 2."""
    if len(payload) < 12 or payload[0] >> 6 != 2 or 72 <= (payload[1] & 0x7F) <= 76:
        return None
    ssrc = int.from_bytes(payload[8:12], "big")
    return (".".join(map(str, src)), sport, ".".join(map(str, dst)), dport, ssrc)


_CALLID = re.compile(rb"^(?:Call-ID|i)\s*:\s*(\S+)", re.M | re.I)


def read_tcpdump(path: str, stderr: str, media: frozenset[int]) -> TcpdumpResult:
    captured = re.search(r"(\d+) packets? captured", stderr)
    dropped = re.search(r"(\d+) packets? dropped by kernel", stderr)
    if not captured or not dropped:
        raise AssertionError(f"tcpdump did not report its counts: {stderr!r}")
    result = TcpdumpResult(path, int(captured.group(1)), int(dropped.group(1)))
    with open(path, "rb") as handle:
        for _ts, frame in dpkt.pcap.Reader(handle):
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.udp.UDP):
                continue
            udp = ip.data
            payload = bytes(udp.data)
            if udp.sport in media and udp.dport in media:
                key = rtp_key(ip.src, udp.sport, ip.dst, udp.dport, payload)
                if key is not None:
                    result.rtp[key] += 1
            else:
                match = _CALLID.search(payload)
                if match and payload[:3] in (b"INV", b"SIP", b"ACK", b"BYE"):
                    result.sip_callids.add(match.group(1).decode())
    return result
