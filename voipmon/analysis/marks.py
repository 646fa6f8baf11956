"""Marks on a call's time axis: SIP events and DTMF, for quality over time.

From the SIP messages the engine handled for the call (``IAnalysisObserver.sip_message``):

- ``invite`` (the first INVITE), ``ringing`` (each 18x code once), ``answer`` (the first
  2xx to the INVITE), ``failure`` (a final 3xx-6xx to it), ``cancel``;
- ``reinvite`` (an INVITE after the answer), ``hold`` and ``resume`` (an in-dialog offer,
  INVITE or UPDATE, whose audio goes ``sendonly``/``inactive`` or to 0.0.0.0, and back);
- ``bye``; ``dtmf`` from SIP INFO (``application/dtmf-relay`` ``Signal=`` or
  ``application/dtmf``).

Retransmissions make one mark. RFC 4733 telephone-events give ``dtmf`` marks too: one per
event (the packets of an event share their RTP timestamp), at its first packet, with the
digit and the duration the sender reported. Their payloads come from an ``RtpTap`` on
flows whose SDP announced telephone-event.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from voipmon.analysis.calls import CALLER, Call, ip_text
from voipmon.analysis.rtp import PayloadMap, RtpFlow
from voipmon.analysis.rtptap import RtpTap
from voipmon.analysis.sdp import parse_sdp

MAX_MARKS = 5000
EVENT_NAMES = "0123456789*#ABCD"
_EVENT = struct.Struct("!IIBBH")   # timestamp, ssrc, event, E/R/volume, duration
_SIGNAL = re.compile(rb"signal\s*=\s*([0-9A-Da-d*#]|1[0-6])", re.I)


def event_name(code: int) -> str:
    """RFC 4733 event code to its DTMF name ("flash" for 16, "event N" otherwise)."""
    if 0 <= code < len(EVENT_NAMES):
        return EVENT_NAMES[code]
    return "flash" if code == 16 else f"event {code}"


def _on_hold(msg: Any) -> bool | None:
    """Does this offer put audio on hold (True), take it off (False), or say nothing?"""
    if not msg.sdp:
        return None
    audio = [m for m in parse_sdp(msg.sdp).media if m.kind == "audio"]
    if not audio:
        return None
    return all(m.direction in ("sendonly", "inactive") or (m.ip is not None and not any(m.ip))
               for m in audio)


def _info_digit(msg: Any) -> str | None:
    """The DTMF digit of a SIP INFO (RFC 2976 with application/dtmf-relay or /dtmf)."""
    kind = msg.header("content-type").split(";")[0].strip().lower()
    body = msg.body or b""
    if kind == "application/dtmf-relay":
        match = _SIGNAL.search(body)
        if match is None:
            return None
        value = match.group(1).decode().upper()
        return event_name(int(value)) if len(value) > 1 else value
    if kind == "application/dtmf":
        value = body.strip().decode("ascii", "replace").upper()
        if value.isdigit() and int(value) <= 16:
            return event_name(int(value))
        return value if len(value) == 1 and value in EVENT_NAMES else None
    return None


class CallMarks:
    """The marks of one call, collected as its messages and events come."""

    def __init__(self, call: Call):
        self._call = call
        self._marks: list[dict[str, Any]] = []
        self._seen: set[tuple] = set()
        self._held = False
        self._events: dict[tuple[bytes, int, int], dict[str, Any]] = {}
        self._taps: list[RtpTap] = []

    def _add(self, key: tuple, ts: float, kind: str, label: str, side: str,
             **extra: Any) -> None:
        if key in self._seen or len(self._marks) >= MAX_MARKS:
            return
        self._seen.add(key)
        self._marks.append({"ts": ts, "kind": kind, "label": label,
                            "side": "caller" if side == CALLER else "callee", **extra})

    def sip(self, ts: float, msg: Any, side: str) -> None:
        """One SIP message of the call, sent by ``side``."""
        call = self._call
        if msg.is_request:
            method = msg.method
            key = (method, msg.cseq, side)
            if method == "INVITE":
                answered = call.connect_time is not None and ts > call.connect_time
                self._add(key, ts, "reinvite" if answered else "invite", method, side)
                if answered:
                    self._hold(ts, msg, side)
            elif method == "UPDATE":
                self._hold(ts, msg, side)
            elif method in ("BYE", "CANCEL"):
                self._add(key, ts, method.lower(), method, side)
            elif method == "INFO":
                digit = _info_digit(msg)
                if digit is not None:
                    self._add(key, ts, "dtmf", f"DTMF {digit} (INFO)", side, digit=digit)
            return
        if msg.cseq_method != "INVITE":
            return
        code = msg.status
        label = f"{code} {msg.reason}".strip()
        initial = msg.cseq == call.invite_cseq or call.connect_time is None or \
            ts <= call.connect_time
        if 180 <= code < 190:
            self._add(("18x", code, msg.cseq), ts, "ringing", label, side)
        elif 200 <= code < 300 and initial:
            self._add(("answer",), ts, "answer", label, side)
        elif code >= 300 and initial and call.connect_time is None:
            self._add(("final", msg.cseq, code), ts, "failure", label, side)

    def _hold(self, ts: float, msg: Any, side: str) -> None:
        held = _on_hold(msg)
        if held is None or held == self._held:
            return
        self._held = held
        kind = "hold" if held else "resume"
        self._add((kind, msg.method, msg.cseq, side), ts, kind, kind.upper(), side)

    # -- RFC 4733 events ------------------------------------------------------------------

    def watch_dtmf(self, flow: RtpFlow, pmap: PayloadMap | None = None) -> None:
        """Tap ``flow`` for telephone-events if its SDP announced them."""
        pmap = pmap or flow.pmap
        types = frozenset(int(pt) for pt in pmap.events.nonzero()[0])
        tap = flow.pcap
        if isinstance(tap, RtpTap):
            tap.payload_types = types
        elif tap is None and types:
            tap = flow.pcap = flow.pcap1 = RtpTap(
                lambda times, payloads: self._events_of(flow, times, payloads),
                payload_types=types)
            self._taps.append(tap)

    def _events_of(self, flow: RtpFlow, times: list[float],
                   payloads: list[bytes | None]) -> None:
        for ts, payload in zip(times, payloads, strict=True):
            if payload is not None and len(payload) >= 16:
                self._event(flow, ts, payload)

    def _event(self, flow: RtpFlow, ts: float, payload: bytes) -> None:
        stamp, ssrc, code, _flags, duration = _EVENT.unpack_from(payload, 4)
        key = (flow.key, ssrc, stamp)
        mark = self._events.get(key)
        if mark is None:
            if len(self._events) >= MAX_MARKS:
                return
            digit = event_name(code)
            mark = self._events[key] = {
                "ts": ts, "kind": "dtmf", "label": f"DTMF {digit}", "digit": digit,
                "duration": 0.0, "rtp": flow,   # its side when the marks are read
                "flow": (ip_text(flow.src), flow.sport, ip_text(flow.dst), flow.dport, ssrc)}
        rate = float(flow.pmap.rates[payload[1] & 0x7F]) or 8000.0
        mark["duration"] = max(mark["duration"], round(duration / rate, 3))

    def close(self) -> None:
        """Hand over what the taps still hold (the call is over: nothing more comes)."""
        for tap in self._taps:
            tap.flush()

    def result(self, t0: float, streams: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The marks in time order, ``t`` in seconds since ``t0``; a DTMF event names the
        index of its stream in ``streams``."""
        index = {(s["saddr"], s["sport"], s["daddr"], s["dport"], int(s["ssrc"], 16)): s["index"]
                 for s in streams}
        out = []
        for mark in [*self._marks, *self._events.values()]:
            item = {k: v for k, v in mark.items() if k not in ("ts", "flow", "rtp")}
            if "flow" in mark:
                item["side"] = "caller" if mark["rtp"].direction == "a" else "callee"
                item["stream"] = index.get(mark["flow"])
            item["t"] = round(mark["ts"] - t0, 3)
            out.append(item)
        out.sort(key=lambda m: m["t"])
        return out
