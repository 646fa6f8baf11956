"""Media attribution: which UDP flow is whose RTP, RTCP or T.38.

SDP in a call's messages binds ``ip:port`` endpoints to the call (RTP, its RTCP port, or
T.38). The first packet of an unknown UDP flow is attributed by its destination endpoint,
else its source; from then on the flow is found by its 4-tuple alone (``flows``, the
table the engine's hot path reads), so attribution costs nothing per packet.

Several live calls may announce the same endpoint: one SIPp UAS echoing every call from
one port, a media server or SBC that reuses a port. Each keeps its claim (``claims``,
kept only for such shared endpoints; ``endpoints`` holds the latest claim of each). A
flow to a shared endpoint goes to the call that announced both its ends, the latest such
one; if none did (NAT, RTP proxies, one-sided SDP), to the latest announcement of its
destination, as when nothing is shared. A new claim looks again at the flows it may take:
those between the endpoint and the claiming call's other endpoints (direct lookups), and
those attributed through the endpoint without their other end announced by the same call
(``weak``, rare); it retires those whose call changes. So a claim costs a few lookups
however many calls share the endpoint. A call that gets a flow back (a re-INVITE, a
claim moving back) gets its old one, so one stream stays one stream.

A flow's direction (caller to callee, "a", or back) is the side that announced its
destination, or the side that announced its source (symmetric RTP) when only that was;
two flows to and from one unannounced far end get opposite directions (``_pair``).

RTP-looking flows without SDP become orphans (``tied_to_sip=False``), at most
``max_orphans`` at a time. Flows of no interest are remembered in ``skip`` so their
packets cost one dict lookup; that cache is dropped whenever an endpoint is bound (the
flow may matter now) and by the engine as it grows.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voipmon.analysis.calls import CALLEE, Call, StreamRecord, ip_text
from voipmon.analysis.rtcp import is_rtcp
from voipmon.analysis.rtp import CHUNK, PayloadMap, RtpFlow
from voipmon.analysis.sdp import Sdp
from voipmon.packet.datagram import Datagram
from voipmon.records.cdr import RtpStream

PORT = struct.Struct("!H").pack
RTP, RTCP, T38 = 1, 2, 3
#: UDP ports never taken for orphan RTP (well-known services that can look like it).
NOT_RTP_PORTS = frozenset({53, 67, 68, 69, 123, 137, 138, 161, 162, 500, 514, 520, 1900,
                           3478, 4500, 4789, 5353, 37008})
_EMPTY_PMAP = PayloadMap()


@dataclass(eq=False)
class Endpoint:
    """A call's claim on an ``ip:port`` announced in its SDP."""

    call: Call
    side: str                 # CALLER or CALLEE: who announced it
    kind: int                 # RTP, RTCP or T38
    pmap: PayloadMap | None
    keys: set[bytes] = field(default_factory=set)  # the flows attributed through it


class MediaTable:
    """Endpoints, flows and orphans of one engine; ``stats`` is the engine's counters."""

    def __init__(self, stats: Any, max_orphans: int,
                 on_orphan_flow: Callable[[RtpFlow], None]):
        self.stats = stats
        self.max_orphans = max_orphans
        self._on_orphan_flow = on_orphan_flow
        self.flows: dict[bytes, RtpFlow] = {}
        self.skip: dict[bytes, float] = {}
        self.rtcp_flows: dict[bytes, Call] = {}
        self.endpoints: dict[bytes, Endpoint] = {}      # the latest claim of each endpoint
        self.claims: dict[bytes, dict[str, Endpoint]] = {}  # shared ones: by Call-ID, oldest first
        self.via: dict[bytes, Endpoint] = {}            # the claim each flow came through
        self.weak: dict[bytes, set[bytes]] = {}         # flows by that claim's endpoint, when
        #                                                 its call did not announce their other end
        self.orphan_eps: dict[bytes, set[bytes]] = {}   # orphan flows by both their ends
        self.orphans: dict[bytes, RtpFlow] = {}
        #: Optional ``IAnalysisObserver`` (voipmon.analysis.observe), told of each new
        #: flow of a call before its first packet is taken.
        self.observer: Any = None

    # -- packets -------------------------------------------------------------------------

    def known(self, key: bytes, d: Datagram) -> bool:
        """Handle a packet of a flow seen before; False if the flow is new."""
        flow = self.flows.get(key)
        if flow is not None:
            self.media(flow, d)
            return True
        call = self.rtcp_flows.get(key)
        if call is not None:
            self.rtcp(call, d)
            return True
        return key in self.skip

    def classify(self, key: bytes, d: Datagram) -> None:
        """First packet of an unknown UDP flow: a call's media, an orphan, or nothing."""
        dst_ep = d.dst + PORT(d.dport)
        src_ep = d.src + PORT(d.sport)
        endpoint = self.endpoints.get(dst_ep)
        if endpoint is not None:
            if self.claims and dst_ep in self.claims:
                endpoint = self._shared(dst_ep, src_ep)
            return self._attribute(key, d, endpoint, dst_ep, src_ep, "dst")
        endpoint = self.endpoints.get(src_ep)
        if endpoint is not None:
            return self._attribute(key, d, endpoint, src_ep, dst_ep, "src")
        payload = d.payload
        if len(payload) < 12:
            return None  # keepalives and the like: not worth remembering
        if payload[0] >> 6 == 2 and not is_rtcp(payload) and d.sport >= 1024 \
                and d.dport >= 1024 and d.sport not in NOT_RTP_PORTS \
                and d.dport not in NOT_RTP_PORTS:
            if len(self.orphans) >= self.max_orphans:
                self.stats.orphan_flows_refused += 1
                self.skip[key] = d.ts
                return None
            flow = RtpFlow(key, d.src, d.sport, d.dst, d.dport, None, "", _EMPTY_PMAP,
                           tied=False)
            flow.counts = self.stats
            _index(self.orphan_eps, dst_ep, key)
            _index(self.orphan_eps, src_ep, key)
            self.orphans[key] = flow
            self.flows[key] = flow
            self.stats.orphan_flows += 1
            return self.media(flow, d)
        if not payload[:1].isalpha():  # text may be SIP on a port nobody configured
            self.skip[key] = d.ts
        return None

    def _shared(self, dst_ep: bytes, src_ep: bytes) -> Endpoint:
        """The claim on shared ``dst_ep`` that a flow from ``src_ep`` belongs to: the
        latest of the calls that announced both ends, else the latest claim."""
        claims = self.claims[dst_ep]
        src = self.endpoints.get(src_ep)
        if src is not None:
            if src_ep not in self.claims:  # one call announced the source: is it one of them?
                mine = claims.get(src.call.callid)
                if mine is not None:
                    return mine
            else:
                for endpoint in reversed(claims.values()):
                    if src_ep in endpoint.call.endpoints:
                        return endpoint
        return self.endpoints[dst_ep]

    def _resolve(self, key: bytes) -> Endpoint | None:
        """The claim the next packet of flow ``key`` would be attributed through."""
        dst_ep, src_ep = _epkeys_of(key)
        endpoint = self.endpoints.get(dst_ep)
        if endpoint is None:
            return self.endpoints.get(src_ep)
        if dst_ep in self.claims:
            return self._shared(dst_ep, src_ep)
        return endpoint

    def _attribute(self, key: bytes, d: Datagram, endpoint: Endpoint, epkey: bytes,
                   other: bytes, via: str) -> None:
        if endpoint.kind == T38:
            self.skip[key] = d.ts
            return None
        call = endpoint.call
        endpoint.keys.add(key)
        self.via[key] = endpoint
        if other not in call.endpoints:
            _index(self.weak, epkey, key)
        if endpoint.kind == RTCP:
            self.rtcp_flows[key] = call
            return self.rtcp(call, d)
        direction = "a" if (via == "dst") == (endpoint.side == CALLEE) else "b"
        pmap = endpoint.pmap or _EMPTY_PMAP
        flow = call.retired.pop(key, None)
        if flow is None:  # a new flow; else one this call had before a re-binding
            flow = RtpFlow(key, d.src, d.sport, d.dst, d.dport, call, direction, pmap)
            flow.counts = self.stats
            sink = call.rtp_pcap
            if sink is not None and sink.accepts(d.linktype):
                flow.pcap = sink
                flow.pcap1 = sink if sink.linktype == 1 else None
            self.stats.rtp_flows += 1
            if self.observer is not None:
                self.observer.flow_started(call, flow, d.linktype)
        else:
            flow.direction = direction
            flow.set_payload_map(pmap)
        _pair(call, flow, via)
        call.flows[key] = flow
        self.flows[key] = flow
        return self.media(flow, d)

    def media(self, flow: RtpFlow, d: Datagram) -> None:
        """An RTP (or multiplexed RTCP) packet of a known flow, off the hot path."""
        payload = d.payload
        if len(payload) < 12:
            return
        if is_rtcp(payload):
            if flow.owner is not None:
                self.rtcp(flow.owner, d)  # type: ignore[arg-type]
            return
        flow.rec += payload[:12]
        flow.times.append(d.ts)
        sink = flow.pcap
        if sink is not None:
            save(sink, d, len(payload) - 12)

    def rtcp(self, call: Call, d: Datagram) -> None:
        self.stats.rtcp_packets += 1
        call.rtcp.feed(d.ts, d.payload)
        call.last_ts = max(call.last_ts, d.ts)
        if call.rtp_pcap is not None:
            save(call.rtp_pcap, d, 0)

    # -- SDP -----------------------------------------------------------------------------

    def bind_sdp(self, call: Call, side: str, sdp: Sdp) -> None:
        """Bind the endpoints of an SDP that ``side`` of ``call`` sent."""
        for media in sdp.media:
            ip = media.ip
            if ip is None or not media.port or not any(ip):
                continue  # no address, port 0 (refused) or 0.0.0.0 (hold)
            if media.is_rtp:
                self._bind(ip + PORT(media.port), call, side, RTP, PayloadMap(media.rtpmap))
                if not media.rtcp_mux:
                    port = media.rtcp_port or media.port + 1
                    if port < 65536:
                        self._bind(ip + PORT(port), call, side, RTCP, None)
            elif media.kind == "image" or "udptl" in media.proto.lower():
                self._bind(ip + PORT(media.port), call, side, T38, None)

    def _bind(self, epkey: bytes, call: Call, side: str, kind: int,
              pmap: PayloadMap | None) -> None:
        latest = self.endpoints.get(epkey)
        claims = self.claims.get(epkey)
        mine = latest if latest is not None and latest.call is call else \
            claims.get(call.callid) if claims is not None else None
        if mine is not None:
            if mine.kind == kind:
                if pmap is not None and (mine.pmap is None or pmap.rtpmap != mine.pmap.rtpmap):
                    mine.pmap = pmap
                    for key in mine.keys:
                        flow = self.flows.get(key)
                        if flow is not None:
                            flow.set_payload_map(pmap)
                if mine is not latest:  # announced again: now the latest claim
                    del claims[call.callid]  # type: ignore[union-attr]
                    claims[call.callid] = self.endpoints[epkey] = mine  # type: ignore[index]
                    self._reexamine(epkey, call, True)
                    self.skip.clear()
                return
            if mine.kind == RTP and kind == RTCP:
                return  # this call's RTP endpoint is not also its RTCP one
            self._unclaim(epkey, call)
            latest = self.endpoints.get(epkey)
            claims = self.claims.get(epkey)
        endpoint = self.endpoints[epkey] = Endpoint(call, side, kind, pmap)
        call.endpoints.add(epkey)
        if latest is not None:  # another live call announced it too: shared
            if claims is None:
                claims = self.claims[epkey] = {latest.call.callid: latest}
            claims[call.callid] = endpoint
        self._reexamine(epkey, call, latest is not None)
        self.skip.clear()

    def _reexamine(self, epkey: bytes, call: Call, claimed: bool) -> None:
        """``call`` is now the latest claim on ``epkey``: retire the flows whose call
        changes. Those are orphans through it (when nobody claimed it before), flows that
        came through it on one announced end only (``weak``), and flows between it and
        ``call``'s other endpoints, whose both ends ``call`` now announced."""
        if not claimed:
            for key in list(self.orphan_eps.get(epkey, ())):
                self.retire(key)
        else:
            for key in list(self.weak.get(epkey, ())):
                self._reconsider(key)
        ip, port = epkey[:-2], epkey[-2:]
        flows, rtcp_flows = self.flows, self.rtcp_flows
        for other in list(call.endpoints):
            if other != epkey and len(other) == len(epkey):
                oip, oport = other[:-2], other[-2:]
                for key in (oip + ip + oport + port, ip + oip + port + oport):
                    if key in flows or key in rtcp_flows:
                        self._reconsider(key)

    def _reconsider(self, key: bytes) -> None:
        flow = self.flows.get(key)
        owner = flow.owner if flow is not None else self.rtcp_flows.get(key)
        if owner is not None:
            endpoint = self._resolve(key)
            if endpoint is not None and endpoint.call is owner:
                return
        self.retire(key)

    def _unclaim(self, epkey: bytes, call: Call) -> None:
        """Drop ``call``'s claim on ``epkey`` and retire the flows it got through it."""
        call.endpoints.discard(epkey)
        claims = self.claims.get(epkey)
        if claims is None:
            mine = self.endpoints.get(epkey)
            if mine is None or mine.call is not call:
                return
            del self.endpoints[epkey]
        else:
            mine = claims.pop(call.callid, None)
            if mine is None:
                return
            self.endpoints[epkey] = next(reversed(claims.values()))
            if len(claims) == 1:
                del self.claims[epkey]
        for key in list(mine.keys):
            self.retire(key)

    # -- ending --------------------------------------------------------------------------

    def retire(self, key: bytes) -> None:
        """Stop attributing flow ``key``: analyse what it has and keep it with its owner
        (an orphan is reported)."""
        flow = self.flows.pop(key, None)
        self.rtcp_flows.pop(key, None)
        self.skip.pop(key, None)
        endpoint = self.via.pop(key, None)
        if endpoint is not None:
            endpoint.keys.discard(key)
        for epkey in _epkeys_of(key):
            for index in (self.orphan_eps, self.weak):
                keys = index.get(epkey)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[epkey]
        if flow is None:
            return
        flow.drain()
        owner = flow.owner
        if owner is None:
            self.orphans.pop(key, None)
            self._on_orphan_flow(flow)
        else:
            owner.flows.pop(key, None)  # type: ignore[attr-defined]
            owner.retired[key] = flow  # type: ignore[attr-defined]

    def release(self, call: Call) -> None:
        """The call is over: drop its claims and retire its flows. Other calls keep the
        endpoints they shared with it, and their flows."""
        for epkey in list(call.endpoints):
            self._unclaim(epkey, call)
        for key in list(call.flows):
            self.retire(key)

    def tend_orphans(self, now: float, timeout: float) -> None:
        """Report orphans silent for ``timeout``; analyse full buffers of the others."""
        for key, flow in list(self.orphans.items()):
            if now - flow.last_time() >= timeout:
                self.retire(key)
            elif flow.pending() >= CHUNK:
                flow.drain()


def _epkeys_of(key: bytes) -> tuple[bytes, bytes]:
    """The destination and source endpoint keys of a 4-tuple key (src + dst + ports)."""
    half = (len(key) - 4) // 2
    src, dst = key[:half], key[half:2 * half]
    return (dst + key[-2:], src + key[-4:-2])


_FLIP = {"a": "b", "b": "a"}


def _pair(call: Call, flow: RtpFlow, via: str) -> None:
    """Give opposite directions to the two flows of ``call`` between a far end it did not
    announce (NAT, a relay) and the endpoints it did: one to that far end, one from it.

    A flow found by its destination goes where SDP said that side receives: its direction
    is certain. A flow found by its source alone is assumed to be sent by the side that
    announced its source (symmetric RTP); when the call has the reverse flow, found by its
    destination and given the same direction, that assumption is wrong (both ends of the
    call on one host bridged to a third, as in a PBX's hairpin call), so the flow found by
    its source takes the other direction. Observers read ``flow.direction`` when they
    report, so they see the settled one."""
    dst_ep, src_ep = _epkeys_of(flow.key)
    announced = call.endpoints
    if via == "src":        # this flow goes to the unannounced far end
        for other in call.flows.values():
            o_dst, o_src = _epkeys_of(other.key)
            if o_src == dst_ep and o_dst in announced and other.direction == flow.direction:
                flow.direction = _FLIP.get(flow.direction, flow.direction)
                return
    elif src_ep not in announced:   # this flow comes from the unannounced far end
        for other in call.flows.values():
            o_dst, o_src = _epkeys_of(other.key)
            if o_dst == src_ep and o_src in announced and other.direction == flow.direction:
                other.direction = _FLIP.get(other.direction, other.direction)


def _index(index: dict[bytes, set[bytes]], epkey: bytes, key: bytes) -> None:
    keys = index.get(epkey)
    if keys is None:
        keys = index[epkey] = set()
    keys.add(key)


def save(sink: Any, d: Datagram, drop: int) -> None:
    """Buffer a datagram's frames in ``sink``; ``drop`` payload bytes are left out of the
    last frame when the sink keeps headers only."""
    header_only = sink.caplens is not None
    for ts, frame in d.frames:
        cap = len(frame) - drop if header_only and len(d.frames) == 1 else None
        sink.add(ts, frame, d.linktype, cap)


def stream_records(flow: RtpFlow, connected: bool, call: Call | None) -> list[StreamRecord]:
    """The analysed streams of ``flow`` as CDR streams (drains it first)."""
    flow.drain()
    out = []
    saddr, daddr = ip_text(flow.src), ip_text(flow.dst)
    for ssrc, analyzer in flow.streams.items():
        result = analyzer.result(connected)
        rate = float(flow.pmap.rates[result.payload]) if result.payload < 128 else 0.0
        summary = call.rtcp.summary(ssrc, rate) if call is not None else None
        stream = RtpStream(
            saddr=saddr, sport=flow.sport, daddr=daddr, dport=flow.dport, ssrc=ssrc,
            payload=result.payload, received=result.received, lost=result.lost,
            avgjitter=round(result.avgjitter, 6), maxjitter=round(result.maxjitter, 6),
            mos_f1=result.mos_f1, mos_f2=result.mos_f2, mos_adapt=result.mos_adapt,
            codec=flow.pmap.name(result.payload), duplicates=result.duplicates,
            reordered=result.reordered, sl=result.sl, delay=result.delay,
            firsttime=result.firsttime, lasttime=result.lasttime,
            rtcp_fraclost=summary.fraclost if summary else None,
            rtcp_jitter=summary.jitter if summary else None,
            rtcp_rtt=summary.rtt if summary else None,
            tied_to_sip=flow.tied, payloads=result.payloads,
            rtcp_maxfr=summary.maxfr if summary else None,
            rtcp_maxjitter=summary.maxjitter if summary else None,
            rtcp_reports=summary.reports if summary else 0)
        out.append(StreamRecord(flow, ssrc, stream, flow.direction))
    return out
