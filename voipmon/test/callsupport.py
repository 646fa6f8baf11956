"""Building SIP, SDP, RTP and RTCP traffic for engine tests (dpkt frames, no captures)."""

from __future__ import annotations

import socket
import struct

import dpkt

from voipmon.analysis.engine import Engine
from voipmon.records.cdr import Cdr, RtpStream

CRLF = "\r\n"


def packed(ip: str) -> bytes:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return socket.inet_pton(family, ip)


def udp_frame(src: str, sport: int, dst: str, dport: int, payload: bytes,
              vlan: int | tuple[int, ...] | None = None) -> bytes:
    """An Ethernet frame carrying one UDP datagram, optionally 802.1Q tagged (a tuple of
    VLAN ids stacks tags, QinQ style, outer first)."""
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = len(udp)
    if ":" in src:
        ip: dpkt.Packet = dpkt.ip6.IP6(src=packed(src), dst=packed(dst), nxt=17, hlim=64,
                                      data=udp, plen=len(udp))
        etype = dpkt.ethernet.ETH_TYPE_IP6
    else:
        ip = dpkt.ip.IP(src=packed(src), dst=packed(dst), p=17, ttl=64, data=udp)
        ip.len = len(ip)
        etype = dpkt.ethernet.ETH_TYPE_IP
    eth = dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x01",
                                 dst=b"\x02\x00\x00\x00\x00\x02", type=etype, data=ip)
    frame = bytes(eth)
    if vlan is not None:
        tags = (vlan,) if isinstance(vlan, int) else vlan
        stack = b"".join(struct.pack("!HH", 0x88A8 if i < len(tags) - 1 else 0x8100, tag)
                         for i, tag in enumerate(tags))
        frame = frame[:12] + stack + frame[12:]
    return frame


def sdp(ip: str, port: int, pts: tuple[int, ...] = (0,), rtpmap: dict | None = None,
        extra: tuple[str, ...] = (), kind: str = "audio", proto: str = "RTP/AVP") -> str:
    family = "IP6" if ":" in ip else "IP4"
    lines = ["v=0", f"o=- 1 1 IN {family} {ip}", "s=-", f"c=IN {family} {ip}", "t=0 0",
             f"m={kind} {port} {proto} " + " ".join(str(p) for p in pts)]
    for pt, (name, rate) in (rtpmap or {}).items():
        lines.append(f"a=rtpmap:{pt} {name}/{rate}")
    lines.extend(extra)
    return CRLF.join(lines) + CRLF


def sip_message(first: str, callid: str, cseq: str, from_tag: str, to_tag: str = "",
                body: str = "", headers: tuple[str, ...] = (), compact: bool = False,
                caller: str = "alice", called: str = "bob") -> bytes:
    to = f"<sip:{called}@example.com>" + (f";tag={to_tag}" if to_tag else "")
    names = ("i", "f", "t", "c", "l") if compact else \
        ("Call-ID", "From", "To", "Content-Type", "Content-Length")
    lines = [first, "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK" + callid[:8],
             f"{names[1]}: \"Alice\" <sip:{caller}@example.org>;tag={from_tag}",
             f"{names[2]}: {to}", f"{names[0]}: {callid}", f"CSeq: {cseq}", *headers]
    if body:
        lines.append(f"{names[3]}: application/sdp")
    lines.append(f"{names[4]}: {len(body.encode())}")
    return (CRLF.join(lines) + CRLF + CRLF + body).encode()


def rtp(seq: int, ts: int, ssrc: int, pt: int = 0, marker: bool = False,
        payload: bytes = b"\xff" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc) + payload


def rtcp_sr(ssrc: int, ntp: float, blocks: tuple[tuple, ...] = ()) -> bytes:
    """An SR; each block is (ssrc, fraction 0..255, cumulative, seq, jitter, lsr, dlsr)."""
    msw = int(ntp)
    lsw = int((ntp - msw) * (1 << 32))
    body = struct.pack("!IIIIII", ssrc, msw, lsw, 0, 10, 1600)
    for block in blocks:
        body += _block(*block)
    return struct.pack("!BBH", 0x80 | len(blocks), 200, (len(body) + 4) // 4 - 1) + body


def rtcp_rr(ssrc: int, blocks: tuple[tuple, ...]) -> bytes:
    body = struct.pack("!I", ssrc) + b"".join(_block(*b) for b in blocks)
    return struct.pack("!BBH", 0x80 | len(blocks), 201, (len(body) + 4) // 4 - 1) + body


def _block(ssrc: int, fraction: int, cumulative: int, seq: int, jitter: int, lsr: int,
           dlsr: int) -> bytes:
    return struct.pack("!IIIIII", ssrc, (fraction << 24) | (cumulative & 0xFFFFFF), seq,
                       jitter, lsr, dlsr)


def ntp_mid(ntp: float) -> int:
    msw = int(ntp)
    lsw = int((ntp - msw) * (1 << 32))
    return ((msw & 0xFFFF) << 16) | (lsw >> 16)


class Harness:
    """An engine with collected CDRs and orphans, and helpers to feed it frames."""

    CALLER = ("10.0.0.1", 5060)
    CALLEE = ("10.0.0.2", 5060)

    def __init__(self, **options: object):
        self.cdrs: list[Cdr] = []
        self.orphans: list[RtpStream] = []
        options.setdefault("id_sensor", 7)
        self.engine = Engine(on_cdr=self.cdrs.append, on_orphan=self.orphans.append,
                             **options)  # type: ignore[arg-type]

    def udp(self, ts: float, src: tuple[str, int], dst: tuple[str, int], payload: bytes,
            vlan: int | tuple[int, ...] | None = None) -> None:
        self.engine.feed(ts, 1, udp_frame(src[0], src[1], dst[0], dst[1], payload, vlan))

    def to_callee(self, ts: float, message: bytes) -> None:
        self.udp(ts, self.CALLER, self.CALLEE, message)

    def to_caller(self, ts: float, message: bytes) -> None:
        self.udp(ts, self.CALLEE, self.CALLER, message)

    def stream(self, t0: float, src: tuple[str, int], dst: tuple[str, int], ssrc: int,
               count: int, pt: int = 0, seq0: int = 1000, ts0: int = 0, step: int = 160,
               interval: float = 0.02, skip: tuple[int, ...] = ()) -> float:
        """``count`` RTP packets every ``interval`` s; returns the time after the last."""
        t = t0
        for i in range(count):
            t = t0 + i * interval
            if i not in skip:
                self.udp(t, src, dst, rtp(seq0 + i, ts0 + i * step, ssrc, pt))
        return t + interval

    def basic_call(self, callid: str = "call-1@test", t: float = 1000.0,
                   caller_media: tuple[str, int] = ("10.0.0.1", 40000),
                   callee_media: tuple[str, int] = ("10.0.0.2", 50000),
                   packets: int = 100, bye: bool = True) -> float:
        """INVITE/100/180/200/ACK, ``packets`` RTP each way, BYE/200; returns the end time."""
        offer = sdp(caller_media[0], caller_media[1], (0, 101),
                    {101: ("telephone-event", 8000)})
        answer = sdp(callee_media[0], callee_media[1], (0,))
        self.to_callee(t, sip_message("INVITE sip:bob@example.com SIP/2.0", callid,
                                      "1 INVITE", "ft1", body=offer,
                                      headers=("User-Agent: CallerUA/1",)))
        self.to_caller(t + 0.01, sip_message("SIP/2.0 100 Trying", callid, "1 INVITE", "ft1"))
        self.to_caller(t + 0.5, sip_message("SIP/2.0 180 Ringing", callid, "1 INVITE", "ft1",
                                            "tt1"))
        self.to_caller(t + 2.0, sip_message("SIP/2.0 200 OK", callid, "1 INVITE", "ft1", "tt1",
                                            body=answer, headers=("Server: CalleeUA/2",)))
        self.to_callee(t + 2.01, sip_message("ACK sip:bob@10.0.0.2 SIP/2.0", callid, "1 ACK",
                                             "ft1", "tt1"))
        self.stream(t + 2.02, caller_media, callee_media, 0x1111, packets)
        end = self.stream(t + 2.03, callee_media, caller_media, 0x2222, packets)
        if bye:
            self.to_callee(end, sip_message("BYE sip:bob@10.0.0.2 SIP/2.0", callid, "2 BYE",
                                            "ft1", "tt1"))
            self.to_caller(end + 0.01, sip_message("SIP/2.0 200 OK", callid, "2 BYE", "ft1",
                                                   "tt1"))
        return end + 0.01
