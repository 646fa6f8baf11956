"""The call analysis engine: captured frames in, CDRs (and per-call pcaps) out.

The same engine runs in the sensor (local processing), in the central (one per mirroring
sensor) and in ``voipmon-analyze``. It is pure: no reactor, no wall clock. Time is the
capture time of the frames, so a file replayed offline gives the same calls as the live
traffic did.

Frames come in through ``feed`` and ``feed_all``, both the engine's one fast path
(``fastpath.FastPath``, which it composes): nearly all of them are RTP of known flows and
stop there. Everything else goes through the packet ``Decoder`` (tunnels, IPv6,
defragmentation, TCP/WebSocket/SCTP reassembly), whose datagrams come back to
``_datagram``.

Attribution (``media.MediaTable``). SDP in a call's messages binds ``ip:port`` endpoints
to it; a UDP flow to or from a bound endpoint is that call's RTP, RTCP or T.38, and
RTP-looking flows without SDP become orphan streams (``tied_to_sip=False``, reported
through ``on_orphan``).

SIP that is not a call (``voipmon.analysis.noncall``). Each analyser added with
``add_analyser`` (the REGISTER tracker, the OPTIONS/SUBSCRIBE/NOTIFY/MESSAGE tracker, as
``voipmon.analysis.settings.engine_for`` builds them from the options) gets every parsed
message whose method (a request's own, a response's CSeq method) it follows, the capture
clock once a second and the end of input; the records it makes go out through
``emit_record`` to ``on_record``.

Delivery (``_deliver``): every record goes to its consumer (``on_cdr``, ``on_orphan``,
``on_record``) through one place; a record the consumer cannot take (it raises) is never
dropped: it goes to the ``dead_letters`` (``voipmon.spool.deadletter``), which keeps it in
the spool (the sensor's, or the central's for a mirroring sensor), counts it and logs the
reason once per cause, and ``stats.undelivered`` counts it here.

Memory stays bounded: flows are analysed in chunks (``RtpFlow.drain``), closed calls and
finished orphans are freed, calls are capped at ``max_calls`` and the negative cache is
cleared as it grows.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from zope.interface import implementer

from voipmon.analysis.calls import END, Call, ip_text
from voipmon.analysis.fastpath import FastPath
from voipmon.analysis.live import call_state, durations, streams_now
from voipmon.analysis.media import MediaTable, stream_records
from voipmon.analysis.noncall import INonCallAnalyser
from voipmon.analysis.rtp import CHUNK, RtpFlow
from voipmon.analysis.sdp import parse_sdp
from voipmon.analysis.sip import looks_like_sip, parse_sip
from voipmon.counters import Counters, Counts, family, prefixed
from voipmon.metrics.catalog import method_label, status_class
from voipmon.packet.datagram import IPPROTO_UDP, Datagram
from voipmon.packet.decode import Decoder
from voipmon.packet.readers import Record
from voipmon.records.cdr import Cdr, RtpStream
from voipmon.records.codec import Record as DomainRecord
from voipmon.records.times import iso_ms
from voipmon.sources.interfaces import IFrameSink
from voipmon.spool.deadletter import DeadLetters, IDeadLetters
from voipmon.spool.layout import fbasename, pcap_relpath
from voipmon.spool.writer import SpoolWriter

if TYPE_CHECKING:
    from voipmon.analysis.registers import RegisterTracker
    from voipmon.analysis.sipmsg import SipMsgTracker

log = Logger()

_PORTS = struct.Struct("!HH").pack
_NO_CALL_METHODS = frozenset({"REGISTER", "OPTIONS", "SUBSCRIBE", "PUBLISH"})
_CLASSES = tuple(status_class(k * 100) for k in range(7))   # by status // 100: other, 1xx..


class EngineStats(Counts):
    """Counters of the engine (in ``Engine.counters``)."""

    def __init__(self) -> None:
        self.slow_frames = 0       # frames that took the decoder (not the RTP fast path)
        self.datagrams = 0
        self.sip_messages = 0
        self.sip_unparsed = 0
        self.calls = 0
        self.calls_refused = 0
        self.cdrs = 0
        self.records = 0           # records of SIP that is not a call (registrations, ...)
        self.undelivered = 0       # records their consumer could not take (dead letters)
        self.rtp_flows = 0
        self.rtcp_packets = 0
        self.rtp_packets = 0       # RTP packets analysed (added per drain of a flow's buffer)
        self.orphan_flows = 0
        self.orphan_streams = 0
        self.orphan_flows_refused = 0
        self.errors = 0


@implementer(IFrameSink)
class Engine:
    """Turns captured frames into CDRs; see the module docstring."""

    def __init__(self, *, id_sensor: int, on_cdr: Callable[[Cdr], Any],
                 sip_ports: Iterable[int] = (5060,), spool: SpoolWriter | None = None,
                 rtptimeout: float = 300.0, sipwithoutrtptimeout: float = 3600.0,
                 absolute_timeout: float = 14400.0, savesip: bool = True,
                 savertp: str = "yes", on_orphan: Callable[[RtpStream], Any] | None = None,
                 sip_heuristic: bool = True, linger: float = 5.0, bye_wait: float = 32.0,
                 max_calls: int = 100_000, max_orphan_flows: int = 1024,
                 orphan_min_packets: int = 10, dead_letters: IDeadLetters | None = None,
                 observer: Any = None, on_record: Callable[[DomainRecord], Any] | None = None,
                 **decoder_limits: Any):
        if savertp not in ("yes", "no", "header"):
            raise ValueError(f"savertp must be yes, no or header, not {savertp!r}")
        self.id_sensor = id_sensor
        self._on_cdr = on_cdr
        self._on_orphan = on_orphan
        self._on_record = on_record
        self._noncall: list[INonCallAnalyser] = []
        self._noncall_by_method: dict[str, list[INonCallAnalyser]] = {}
        self.registers: RegisterTracker | None = None  # if any (listregisters)
        self.sip_messages: SipMsgTracker | None = None  # OPTIONS/..., if any
        self.dead_letters = dead_letters if dead_letters is not None else DeadLetters(None)
        self.sip_ports = frozenset(int(p) for p in sip_ports)
        self._spool = spool
        self.rtptimeout = rtptimeout
        self.sipwithoutrtptimeout = sipwithoutrtptimeout
        self.absolute_timeout = absolute_timeout
        self._savesip = savesip
        self._savertp = savertp
        self._sip_heuristic = sip_heuristic
        self._linger = linger
        self._bye_wait = bye_wait
        self._max_calls = max_calls
        self._orphan_min = orphan_min_packets
        self.stats = EngineStats()
        self.sip_requests: dict[str, int] = {}     # by method_label
        # by method label: a count per class, [other, 1xx, 2xx, ... 6xx]
        self._sip_responses: dict[str, list[int]] = {}
        self._decoder = Decoder(self._datagram, self.sip_ports, **decoder_limits)
        self.media = MediaTable(self.stats, max_orphan_flows, self._emit_orphan)
        # an IAnalysisObserver (voipmon.analysis.observe): quality over time, audio
        self._observer = self.media.observer = observer
        self._skip = self.media.skip
        self._fast = FastPath(self.media.flows, self._skip, self._decoder, self.advance,
                              self.stats)
        self._run = self._fast.run
        self._calls: dict[str, Call] = {}
        self._closed: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._now = -math.inf
        self._skip_cleared = 0.0
        self._finished = False

    # -- input -----------------------------------------------------------------------

    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        """One captured frame (a batch of one). Never raises because of what it contains."""
        self._run(((ts, linktype, frame),))

    def feed_all(self, records: Iterable[Record]) -> int:
        """Every ``(ts, linktype, frame)`` of ``records``; returns how many. A
        ``CaptureReader`` is taken in its batches (a classic pcap: buffer by buffer, no
        tuple per frame)."""
        return self._fast.feed_all(records)

    def feed_datagram(self, d: Datagram) -> None:
        """A datagram decoded elsewhere (tests, or a source that decodes itself)."""
        fast = self._fast
        if d.ts >= fast.due:
            fast.tick(d.ts)
        self._datagram(d)

    def _datagram(self, d: Datagram) -> None:
        self.stats.datagrams += 1
        try:
            if d.proto == IPPROTO_UDP:
                self._udp(d)
            else:  # TCP, WebSocket or SCTP: the decoder hands over whole SIP messages
                self._sip(d)
        except Exception:
            self.stats.errors += 1
            log.failure("engine: datagram at {ts} could not be processed", ts=d.ts)

    def _udp(self, d: Datagram) -> None:
        sport, dport = d.sport, d.dport
        if dport in self.sip_ports or sport in self.sip_ports:
            return self._sip(d)
        key = d.src + d.dst + _PORTS(sport, dport)
        if self.media.known(key, d):
            return None
        payload = d.payload
        if self._sip_heuristic and payload[:1].isalpha() and looks_like_sip(payload):
            return self._sip(d)
        return self.media.classify(key, d)

    # -- SIP -------------------------------------------------------------------------

    def _sip(self, d: Datagram) -> None:
        msg = parse_sip(d.payload)
        if msg is None:
            self.stats.sip_unparsed += 1
            return
        self.stats.sip_messages += 1
        if msg.is_request:    # by method (and class): one increment, keys bounded by label
            counts = self.sip_requests
            if msg.method in counts:
                counts[msg.method] += 1
            else:
                label = method_label(msg.method)
                counts[label] = counts.get(label, 0) + 1
        else:
            row = self._sip_responses.get(msg.cseq_method)
            if row is None:
                row = self._sip_responses.setdefault(method_label(msg.cseq_method), [0] * 7)
            klass = msg.status // 100
            row[klass if 0 < klass < 7 else 0] += 1
        analysers = self._noncall_by_method.get(msg.transaction_method)
        if analysers is not None:
            for analyser in analysers:
                analyser.on_message(d, msg)
        callid = msg.call_id
        if not callid:
            return
        call = self._calls.get(callid)
        if call is None:
            if not (msg.is_request and msg.method == "INVITE"):
                return
            closed = self._closed.get(callid)
            if closed is not None and msg.cseq <= closed[1]:
                return  # a retransmission of a call already reported
            if len(self._calls) >= self._max_calls:
                self.stats.calls_refused += 1
                return
            call = self._new_call(d, msg)
        elif msg.transaction_method in _NO_CALL_METHODS:
            return
        side = call.on_message(d, msg, self._linger, self._bye_wait)
        sink = call.sip_pcap
        if sink is not None:
            recent = call.recent_frames
            for ts, frame in d.frames:
                if not any(frame is seen for seen in recent):
                    recent.append(frame)
                    sink.add(ts, frame, d.linktype)
        if msg.sdp:
            self.media.bind_sdp(call, side, parse_sdp(msg.sdp))
        if self._observer is not None:
            self._observer.sip_message(call, d, msg, side)

    def _new_call(self, d: Datagram, msg: Any) -> Call:
        call = Call.from_invite(d, msg)
        call.fbasename = fbasename(call.callid)
        spool = self._spool
        if spool is not None:
            if self._savesip:
                call.sip_pcap = spool.open(pcap_relpath(d.ts, "SIP", call.fbasename))
            if self._savertp != "no":
                call.rtp_pcap = spool.open(pcap_relpath(d.ts, "RTP", call.fbasename),
                                           header_only=self._savertp == "header")
        self._calls[call.callid] = call
        self.stats.calls += 1
        return call

    # -- time --------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The capture clock: where frames (in one-second steps) or ``advance`` last moved
        it; -inf before any."""
        return self._now

    def advance(self, now: float) -> None:
        """Capture-time clock: analyse full buffers and close what timed out."""
        if now > self._now:
            self._now = now
        now = self._now
        try:
            for call in list(self._calls.values()):
                for flow in call.flows.values():
                    if flow.pending() >= CHUNK:
                        flow.drain()
                reason = call.due(now, self.rtptimeout, self.sipwithoutrtptimeout,
                                  self.absolute_timeout)
                if reason is not None:
                    self._close(call, reason)
            self.media.tend_orphans(now, self.rtptimeout)
            for analyser in self._noncall:
                analyser.advance(now)
            if len(self._skip) > 65536 or now - self._skip_cleared > 10.0:
                self._skip.clear()
                self._skip_cleared = now
            while self._closed and now - next(iter(self._closed.values()))[0] > 64.0:
                self._closed.popitem(last=False)
            self._decoder.expire(now)
        except Exception:
            self.stats.errors += 1
            log.failure("engine: housekeeping at {now} failed", now=now)

    def finish(self) -> None:
        """End of input: emit what the decoder still holds, close every call and orphan."""
        if self._finished:
            return
        self._finished = True
        try:
            self._decoder.flush()
        except Exception:
            self.stats.errors += 1
            log.failure("engine: flushing the decoder failed")
        for call in list(self._calls.values()):
            self._close(call, END)
        for key in list(self.media.orphans):
            self.media.retire(key)
        for analyser in self._noncall:
            try:
                analyser.finish()
            except Exception:
                self.stats.errors += 1
                log.failure("engine: finishing {analyser} failed", analyser=analyser)
        if self._spool is not None:
            self._spool.close()

    # -- closing -------------------------------------------------------------------------

    def _close(self, call: Call, reason: str) -> None:
        self._calls.pop(call.callid, None)
        self._closed[call.callid] = (self._now, call.invite_cseq)
        if len(self._closed) > 100_000:
            self._closed.popitem(last=False)
        self.media.release(call)
        records = []
        connected = call.connect_time is not None
        for flow in call.retired.values():
            records.extend(stream_records(flow, connected, call))
        cdr = call.to_cdr(self.id_sensor, reason, records, _finish_pcap(call.sip_pcap),
                          _finish_pcap(call.rtp_pcap))
        call.flows.clear()
        call.retired.clear()
        self.stats.cdrs += 1
        self._deliver(self._on_cdr, "cdr", cdr, call.callid)

    def _deliver(self, consumer: Callable[[Any], Any], kind: str, record: Any,
                 callid: str | None = None) -> None:
        """Hand ``record`` to ``consumer``; if it cannot take it, keep it as a dead letter."""
        try:
            consumer(record)
        except Exception as exc:
            self.stats.undelivered += 1
            self.dead_letters.keep(kind, record, exc, id_sensor=self.id_sensor, callid=callid)

    # -- SIP that is not a call ----------------------------------------------------------

    def add_analyser(self, analyser: INonCallAnalyser) -> None:
        """Hand ``analyser`` the messages of its ``methods`` from now on (it emits its
        records through ``emit_record``)."""
        self._noncall.append(analyser)
        for method in analyser.methods:
            self._noncall_by_method.setdefault(method, []).append(analyser)

    def emit_record(self, record: DomainRecord) -> None:
        """A record of an analyser of SIP that is not a call: to ``on_record`` (or, if it
        cannot take it, to the dead letters)."""
        self.stats.records += 1
        if self._on_record is None:
            self.stats.undelivered += 1
            self.dead_letters.keep(record.KIND, record, "this engine has no record consumer",
                                   id_sensor=self.id_sensor)
            return
        self._deliver(self._on_record, record.KIND, record)

    def _emit_orphan(self, flow: RtpFlow) -> None:
        for record in stream_records(flow, False, None):
            s = record.stream
            if s.received < self._orphan_min or s.lost > s.received:
                continue
            self.stats.orphan_streams += 1
            if self._on_orphan is not None:
                self._deliver(self._on_orphan, "rtp_stream", s)

    # -- views ---------------------------------------------------------------------------

    def active_calls(self) -> list[dict[str, Any]]:
        """The calls in progress (for listcalls), oldest first: with their duration so
        far on the capture clock and each RTP stream's figures up to now (analysis/live)."""
        out = []
        for call in self._calls.values():
            rtp = streams_now(call)   # first: it analyses what the flows have buffered
            out.append({
                "callid": call.callid, "calldate": iso_ms(call.first_ts),
                "caller": call.caller, "called": call.called, "state": call_state(call),
                "lastSIPresponseNum": call.last_code,
                "sipcallerip": ip_text(call.sipcallerip),
                "sipcalledip": ip_text(call.sipcalledip),
                **durations(call, self._now),
                "streams": call.stream_count(),
                "rtp": rtp,
            })
        return out

    def registrations(self, active_only: bool = True) -> list[dict[str, Any]]:
        """The registrations the REGISTER tracker knows (listregisters); none when
        ``sip-register = no``."""
        if self.registers is None:
            return []
        return self.registers.registrations(active_only)

    @property
    def sip_responses(self) -> dict[str, int]:
        """SIP responses by "method.class" (``INVITE.2xx``; ``INVITE.other``)."""
        return {f"{method}.{_CLASSES[klass]}": count
                for method, row in self._sip_responses.items()
                for klass, count in enumerate(row) if count}

    def counters(self) -> Counters:
        """Engine, decoder (``decoder.``) and spool (``spool.``) counters together."""
        data = self.stats.counters()
        data["active_calls"] = len(self._calls)
        data["active_flows"] = len(self.media.flows)
        data["orphan_flows_active"] = len(self.media.orphans)
        data.update(family("sip_requests", self.sip_requests))
        data.update(family("sip_responses", self.sip_responses))
        data.update(prefixed("decoder", self._decoder.counters()))
        if self._spool is not None:
            data.update(prefixed("spool", self._spool.counters()))
        if self.registers is not None:
            data.update(prefixed("register", self.registers.counters()))
        if self.sip_messages is not None:
            data.update(prefixed("sip_msg", self.sip_messages.counters()))
        return data


def _finish_pcap(sink: Any) -> str:
    """Close a call's pcap; its spool-relative path if anything was written to it."""
    if sink is None:
        return ""
    sink.close()
    return sink.relpath if sink.has_frames else ""


__all__ = ["Engine", "EngineStats"]
