"""Building non-call SIP (REGISTER, OPTIONS, ...) for tracker tests, and running trackers
over captures the way the engine will: decode, parse, hand over, tick once a second."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from voipmon.analysis.sip import looks_like_sip, parse_sip
from voipmon.packet.datagram import IPPROTO_UDP, Datagram
from voipmon.packet.decode import Decoder
from voipmon.packet.readers import CaptureReader
from voipmon.test.callsupport import CRLF, packed

REGISTRAR = "10.0.0.100:5060"


def register(callid: str, cseq: int, user: str = "alice", domain: str = "example.com",
             contacts: Iterable[str] = ("<sip:alice@10.0.0.1:5060>",),
             expires: int | None = 3600, branch: str | None = None,
             auth: str | None = None, proxy_auth: str | None = None,
             ua: str = "TestPhone/1.0", vias: Iterable[str] = (),
             method: str = "REGISTER", headers: Iterable[str] = ()) -> bytes:
    """A REGISTER (or another request) from ``user``; ``vias`` are put above the
    originator's Via, as proxies on the way add theirs."""
    branch = branch or f"z9hG4bK-{callid}-{cseq}"
    lines = [f"{method} sip:{domain} SIP/2.0", *vias,
             f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch={branch};rport",
             f"From: <sip:{user}@{domain}>;tag=from-{callid}",
             f"To: <sip:{user}@{domain}>", f"Call-ID: {callid}", f"CSeq: {cseq} {method}",
             *(f"Contact: {c}" for c in contacts)]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if auth is not None:
        lines.append(f'Authorization: Digest username="{auth}", realm="{domain}", '
                     f'nonce="n1", uri="sip:{domain}", response="0123456789abcdef"')
    if proxy_auth is not None:
        lines.append(f'Proxy-Authorization: Digest username="{proxy_auth}", '
                     f'realm="proxy", nonce="p1", uri="sip:{domain}", response="ab"')
    if ua:
        lines.append(f"User-Agent: {ua}")
    lines.extend(headers)
    lines.append("Content-Length: 0")
    return (CRLF.join(lines) + CRLF + CRLF).encode()


_ECHO = re.compile(r"^(via|v|from|f|to|t|call-id|i|cseq):", re.IGNORECASE)


def reply(request: bytes, status: int, reason: str = "", contacts: Iterable[str] = (),
          expires: int | None = None, challenge: str | None = None, stale: bool = False,
          drop_vias: int = 0, headers: Iterable[str] = ()) -> bytes:
    """The answer to ``request``: its Via, From, To (tagged), Call-ID and CSeq, plus
    Contact bindings, Expires, and a WWW-/Proxy-Authenticate challenge. ``drop_vias``
    removes that many top Vias (the copy a proxy forwards back down)."""
    lines = [f"SIP/2.0 {status} {reason or _REASONS.get(status, 'Whatever')}"]
    dropped = 0
    for line in request.decode().split(CRLF)[1:]:
        if not _ECHO.match(line):
            continue
        if line.lower().startswith("via:") and dropped < drop_vias:
            dropped += 1
            continue
        if line.lower().startswith("to:") and ";tag=" not in line:
            line += ";tag=registrar"
        lines.append(line)
    lines.extend(f"Contact: {c}" for c in contacts)
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if challenge is not None:
        name = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
        lines.append(f'{name}: Digest realm="{challenge}", nonce="n-{status}", qop="auth"'
                     + (", stale=true" if stale else ""))
    lines.extend(headers)
    lines.append("Content-Length: 0")
    return (CRLF.join(lines) + CRLF + CRLF).encode()


_REASONS = {100: "Trying", 200: "OK", 202: "Accepted", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 407: "Proxy Authentication Required", 423: "Interval Too Brief",
            500: "Server Internal Error"}


class Wire:
    """Hands messages to trackers as the engine will: ``advance(ts)`` first, then
    ``on_message`` with the Datagram and the parsed message."""

    def __init__(self, *trackers: Any) -> None:
        self.trackers = trackers

    def send(self, ts: float, src: str, dst: str, payload: bytes) -> None:
        sip, sport = src.rsplit(":", 1)
        dip, dport = dst.rsplit(":", 1)
        d = Datagram(ts, IPPROTO_UDP, packed(sip), int(sport), packed(dip), int(dport),
                     payload, 1, ())
        msg = parse_sip(payload)
        assert msg is not None, payload
        for tracker in self.trackers:
            tracker.advance(ts)
            tracker.on_message(d, msg)

    def advance(self, now: float) -> None:
        for tracker in self.trackers:
            tracker.advance(now)


def latest(records: Iterable[Any], kind: type) -> list[Any]:
    """The last revision of each record of ``kind`` (by uid), in first-emitted order."""
    out: dict[str, Any] = {}
    for record in records:
        if isinstance(record, kind):
            out[record.uid] = record
    return list(out.values())


def of(records: Iterable[Any], kind: type) -> list[Any]:
    return [r for r in records if isinstance(r, kind)]


def run_capture(path: str, *trackers: Any, sip_ports: Iterable[int] = (5060,),
                finish: bool = True) -> float:
    """Read ``path`` (CaptureReader), decode it (Decoder) and hand every SIP message to
    ``trackers``, ticking them once a capture-time second; the last capture time."""
    ports = frozenset(sip_ports)
    state = {"tick": float("-inf"), "last": 0.0}

    def datagram(d: Datagram) -> None:
        if not (d.sport in ports or d.dport in ports or looks_like_sip(d.payload)):
            return
        msg = parse_sip(d.payload)
        if msg is None:
            return
        for tracker in trackers:
            tracker.on_message(d, msg)

    decoder = Decoder(datagram, ports)
    with CaptureReader(path) as reader:
        for ts, linktype, frame in reader:
            if ts >= state["tick"]:
                state["tick"] = ts + 1.0
                for tracker in trackers:
                    tracker.advance(ts)
            decoder.feed(ts, linktype, frame)
            state["last"] = ts
    decoder.flush()
    if finish:
        for tracker in trackers:
            tracker.finish()
    return state["last"]
