"""One SIP call: dialog state from its messages, its RTP flows, and its CDR.

A ``Call`` is created by an INVITE and keyed by Call-ID (the engine keeps the table).
It follows the INVITE transaction (provisional, answer, failure), forks (responses with
different To-tags), re-INVITEs, PRACK/UPDATE, BYE and CANCEL, and decides when the call
is over; the engine asks ``due(now, ...)`` every capture-time second.

Who sent a message is decided by tags (the caller's From-tag), falling back to addresses:
requests from the caller and responses to them come from the callee, and so on. It says
which side announced each SDP endpoint, and so which RTP stream is the caller's (``a``)
and which the callee's (``b``).

Closing follows VoIPmonitor: after BYE and its 200 OK, a CANCEL, or a final failure, the
call lingers ``linger`` seconds of capture time (late RTP and retransmissions still belong
to it; an INVITE with credentials after a 401 revives it); a BYE that is never answered
closes it after ``bye_wait``. ``bye`` gets VoIPmonitor's codes.
"""

from __future__ import annotations

import socket
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from voipmon.analysis.rtcp import RtcpTracker
from voipmon.analysis.sip import SipMessage, split_uri
from voipmon.packet.hep import capture_agent
from voipmon.records import cdr as cdrmod
from voipmon.records.cdr import Cdr, RtpStream
from voipmon.records.keys import make_cdr_uid

if TYPE_CHECKING:
    from voipmon.analysis.rtp import RtpFlow
    from voipmon.packet.datagram import Datagram
    from voipmon.spool.writer import PcapSink

CALLER = "caller"
CALLEE = "callee"
#: Close reasons the engine passes to ``to_cdr``.
END = "end"               # end of input, or the call's natural end
ABSOLUTE = "absolute"
RTP_TIMEOUT = "rtp"
SIP_WITHOUT_RTP = "sipwithoutrtp"


def ip_text(packed: bytes) -> str:
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    if len(packed) == 16:
        return socket.inet_ntop(socket.AF_INET6, packed)
    return ""


@dataclass
class Branch:
    """One fork of the INVITE: the responses carrying one To-tag."""

    to_tag: str
    code: int = 0
    answered: bool = False
    src: bytes = b""


@dataclass
class StreamRecord:
    """One analysed stream, ready for the CDR."""

    flow: RtpFlow
    ssrc: int
    stream: RtpStream
    direction: str            # "a" caller -> callee, "b" callee -> caller, "" unknown


@dataclass
class Call:
    """State of one call (one Call-ID that began with an INVITE)."""

    callid: str
    first_ts: float
    sipcallerip: bytes
    sipcallerport: int
    sipcalledip: bytes
    sipcalledport: int
    caller: str = ""
    caller_domain: str = ""
    callername: str = ""
    called: str = ""
    called_domain: str = ""
    from_tag: str = ""
    invite_cseq: int = 0
    a_ua: str = ""
    b_ua: str = ""
    last_ts: float = 0.0
    last_sip_ts: float = 0.0
    connect_time: float | None = None
    last_code: int = 0
    last_reason: str = ""
    invite_after_487: bool = False
    bye_ts: float | None = None
    bye_cseq: int | None = None
    bye_confirmed: bool = False
    whohanged: str = ""
    cancel_cseq: int | None = None
    responses_seen: bool = False
    close_at: float | None = None
    branches: dict[str, Branch] = field(default_factory=dict)
    proxies: list[str] = field(default_factory=list)
    flows: dict[bytes, RtpFlow] = field(default_factory=dict)
    retired: dict[bytes, RtpFlow] = field(default_factory=dict)
    endpoints: set[bytes] = field(default_factory=set)
    rtcp: RtcpTracker = field(default_factory=RtcpTracker)
    fbasename: str = ""
    sip_pcap: PcapSink | None = None
    rtp_pcap: PcapSink | None = None
    recent_frames: deque = field(default_factory=lambda: deque(maxlen=8))
    messages: int = 0
    hep_capture_id: int | None = None   # HEP: the capture agent of the first INVITE

    @classmethod
    def from_invite(cls, d: Datagram, msg: SipMessage) -> Call:
        called = msg.to.user or split_uri(msg.request_uri)[0]
        call = cls(callid=msg.call_id, first_ts=d.ts, sipcallerip=d.src,
                   sipcallerport=d.sport, sipcalledip=d.dst, sipcalledport=d.dport,
                   caller=msg.from_.user, caller_domain=msg.from_.host,
                   callername=msg.from_.display, called=called,
                   called_domain=msg.to.host or split_uri(msg.request_uri)[1],
                   from_tag=msg.from_.tag, invite_cseq=msg.cseq,
                   a_ua=msg.header("user-agent"), last_ts=d.ts, last_sip_ts=d.ts,
                   hep_capture_id=capture_agent(d.linktype, d.frames[0][1])
                   if d.frames else None)
        return call

    # -- SIP ---------------------------------------------------------------------------

    def sender(self, d: Datagram, msg: SipMessage) -> str:
        """CALLER or CALLEE: which side of the call sent ``msg``."""
        tag = msg.from_.tag
        if self.from_tag and tag:
            ours = tag == self.from_tag
        elif d.src == self.sipcallerip and d.sport == self.sipcallerport:
            return CALLER
        elif d.dst == self.sipcallerip and d.dport == self.sipcallerport:
            return CALLEE
        else:
            ours = d.src == self.sipcallerip
            return CALLER if ours else CALLEE
        if msg.is_request:
            return CALLER if ours else CALLEE
        return CALLEE if ours else CALLER

    def on_message(self, d: Datagram, msg: SipMessage, linger: float,
                   bye_wait: float) -> str:
        """Update the dialog state; returns the sender (CALLER or CALLEE)."""
        ts = d.ts
        self.messages += 1
        self.last_sip_ts = max(self.last_sip_ts, ts)
        self.last_ts = max(self.last_ts, ts)
        side = self.sender(d, msg)
        if msg.is_request:
            self._request(d, msg, side, ts, bye_wait)
        else:
            self._response(d, msg, side, ts, linger)
        return side

    def _request(self, d: Datagram, msg: SipMessage, side: str, ts: float,
                 bye_wait: float) -> None:
        method = msg.method
        if method == "INVITE":
            if side == CALLER and msg.cseq == self.invite_cseq and \
                    d.src == self.sipcalledip and d.dst != self.sipcallerip:
                # the same INVITE forwarded by a proxy: the called side is the next hop
                self.proxies.append(ip_text(self.sipcalledip))
                self.sipcalledip, self.sipcalledport = d.dst, d.dport
            elif side == CALLER and self.connect_time is None and msg.cseq > self.invite_cseq:
                self.invite_cseq = msg.cseq   # new attempt, e.g. with credentials
                if self.last_code == 487:
                    self.invite_after_487 = True
            if self.bye_ts is None:
                self.close_at = None
        elif method == "BYE":
            if self.bye_ts is None:
                self.bye_ts = ts
                self.whohanged = side
            self.bye_cseq = msg.cseq
            if not self.bye_confirmed:
                self.close_at = ts + bye_wait
        elif method == "CANCEL":
            self.cancel_cseq = msg.cseq
            if self.connect_time is None:
                self.close_at = ts + bye_wait

    def _response(self, d: Datagram, msg: SipMessage, side: str, ts: float,
                  linger: float) -> None:
        self.responses_seen = True
        code = msg.status
        method = msg.cseq_method or ("INVITE" if msg.cseq == self.invite_cseq else "")
        if method == "INVITE":
            if side == CALLEE and not self.b_ua:
                self.b_ua = msg.header("server") or msg.header("user-agent")
            tag = msg.to.tag
            if tag:
                branch = self.branches.get(tag)
                if branch is None and len(self.branches) < 32:
                    branch = self.branches[tag] = Branch(tag, src=d.src)
                if branch is not None:
                    branch.code = code
                    branch.answered = branch.answered or 200 <= code < 300
            answered = self.connect_time is not None
            if not answered and (self.last_code != 487 or
                                 (self.invite_after_487 and code == 200)):
                self.last_code = code
                self.last_reason = f"{code} {msg.reason}".strip()
            if 200 <= code < 300:
                if self.connect_time is None:
                    self.connect_time = ts
                    if self.bye_ts is None:
                        self.close_at = None
            elif code >= 300 and not answered and msg.cseq >= self.invite_cseq:
                self.close_at = ts + linger
        elif method == "BYE":
            if 200 <= code < 300 or code == 481:
                self.bye_confirmed = self.bye_confirmed or code < 300
                self.close_at = ts + linger
        elif method == "CANCEL" and 200 <= code < 300 and self.connect_time is None:
            self.close_at = ts + linger

    # -- time ----------------------------------------------------------------------------

    def last_rtp(self) -> float | None:
        """Capture time of the newest RTP packet of the call, None if it had none."""
        last = None
        for flow in self.flows.values():
            t = flow.last_time()
            if t and (last is None or t > last):
                last = t
        for flow in self.retired.values():
            t = flow.last_seen
            if t and (last is None or t > last):
                last = t
        return last

    def stream_count(self) -> int:
        """RTP streams seen so far (a flow not analysed yet counts as one)."""
        flows = [*self.flows.values(), *self.retired.values()]
        return sum(len(f.streams) or (1 if f.pending() else 0) for f in flows)

    def due(self, now: float, rtptimeout: float, sipwithoutrtptimeout: float,
            absolute_timeout: float) -> str | None:
        """Why the call should close at capture time ``now``, or None."""
        if self.close_at is not None and now >= self.close_at:
            return END
        if now - self.first_ts >= absolute_timeout:
            return ABSOLUTE
        last_rtp = self.last_rtp()
        if last_rtp is not None:
            if now - max(last_rtp, self.last_sip_ts) >= rtptimeout:
                return RTP_TIMEOUT
        elif now - self.last_sip_ts >= sipwithoutrtptimeout:
            return SIP_WITHOUT_RTP
        return None

    def bye_code(self, reason: str) -> int:
        """VoIPmonitor's ``bye`` column for a call closed for ``reason``."""
        if reason == ABSOLUTE:
            return cdrmod.BYE_ABSOLUTE_TIMEOUT
        if reason == RTP_TIMEOUT:
            return cdrmod.BYE_RTP_TIMEOUT
        if reason == SIP_WITHOUT_RTP:
            return cdrmod.BYE_SIP_WITHOUT_RTP_TIMEOUT
        if self.connect_time is not None:
            if self.bye_ts is not None:
                return cdrmod.BYE_CONFIRMED if self.bye_confirmed else cdrmod.BYE_SEEN
            return cdrmod.BYE_ANSWERED_NO_BYE
        if not self.responses_seen:
            return cdrmod.BYE_ONE_WAY
        return cdrmod.BYE_NOT_ANSWERED

    # -- CDR ----------------------------------------------------------------------------

    def to_cdr(self, id_sensor: int, reason: str, streams: list[StreamRecord],
               sip_pcap: str, rtp_pcap: str) -> Cdr:
        streams = sorted(streams, key=lambda s: (s.stream.firsttime or 0.0, s.ssrc))
        callend = self.last_ts
        for record in streams:
            if record.stream.lasttime and record.stream.lasttime > callend:
                callend = record.stream.lasttime
        index = {"a": None, "b": None}
        best = {"a": -1, "b": -1}
        for i, record in enumerate(streams):
            side = record.direction
            if side in index and record.stream.tied_to_sip and \
                    record.stream.received > best[side]:
                index[side], best[side] = i, record.stream.received
        extra: dict[str, object] = {}
        if self.proxies:
            extra["proxies"] = list(self.proxies)
        if len(self.branches) > 1:
            extra["branches"] = [{"to_tag": b.to_tag, "lastSIPresponseNum": b.code,
                                  "answered": b.answered, "ip": ip_text(b.src)}
                                 for b in self.branches.values()]
        if self.rtcp.packets:
            extra["rtcp_packets"] = self.rtcp.packets
        return Cdr(
            sensor_cdr_uid=make_cdr_uid(self.callid, self.first_ts), callid=self.callid,
            id_sensor=id_sensor, calldate=self.first_ts, callend=callend,
            duration=round(callend - self.first_ts, 6),
            connect_duration=round(callend - self.connect_time, 6)
            if self.connect_time is not None else 0.0,
            caller=self.caller, called=self.called,
            sipcallerip=ip_text(self.sipcallerip), sipcalledip=ip_text(self.sipcalledip),
            sipcallerport=self.sipcallerport, sipcalledport=self.sipcalledport,
            lastSIPresponseNum=self.last_code, bye=self.bye_code(reason),
            lastSIPresponse=self.last_reason, caller_domain=self.caller_domain,
            called_domain=self.called_domain, callername=self.callername,
            whohanged=self.whohanged, connect_time=self.connect_time, a_ua=self.a_ua,
            b_ua=self.b_ua, a_index=index["a"], b_index=index["b"],
            rtp=tuple(record.stream for record in streams), fbasename=self.fbasename,
            sip_pcap=sip_pcap, rtp_pcap=rtp_pcap, extra=extra,
            hep_capture_id=self.hep_capture_id)
