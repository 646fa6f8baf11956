"""SDP parsing (RFC 4566/8866): the media endpoints and codecs a call announces.

Only what attributes RTP to calls and analyses it is kept: each ``m=`` section's
connection address (media-level ``c=`` over session-level), port, transport, payload
types, ``a=rtpmap`` names and clock rates, ``a=ptime``, ``a=rtcp`` and ``a=rtcp-mux``.
Garbage lines are skipped; ``parse_sdp`` never raises.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

MAX_MEDIA = 16        # more m= sections than this in one SDP are ignored
MAX_FORMATS = 64      # payload types kept per m= line

#: Static payload types (RFC 3551): name and clock rate.
STATIC_PT: dict[int, tuple[str, int]] = {
    0: ("PCMU", 8000), 3: ("GSM", 8000), 4: ("G723", 8000), 5: ("DVI4", 8000),
    6: ("DVI4", 16000), 7: ("LPC", 8000), 8: ("PCMA", 8000), 9: ("G722", 8000),
    10: ("L16", 44100), 11: ("L16", 44100), 12: ("QCELP", 8000), 13: ("CN", 8000),
    14: ("MPA", 90000), 15: ("G728", 8000), 16: ("DVI4", 11025), 17: ("DVI4", 22050),
    18: ("G729", 8000), 19: ("CN", 8000), 25: ("CelB", 90000), 26: ("JPEG", 90000),
    28: ("nv", 90000), 31: ("H261", 90000), 32: ("MPV", 90000), 33: ("MP2T", 90000),
    34: ("H263", 90000),
}


@dataclass(frozen=True)
class Media:
    """One ``m=`` section."""

    kind: str                               # audio, video, image, ...
    ip: bytes | None                        # packed address (4 or 16 bytes) or None
    port: int
    proto: str                              # RTP/AVP, RTP/SAVP, UDPTL, ...
    payloads: tuple[int, ...] = ()
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)
    ptime: float | None = None
    rtcp_port: int | None = None            # a=rtcp:PORT, else port + 1
    rtcp_mux: bool = False
    direction: str = "sendrecv"

    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.proto.upper()

    def codec(self, pt: int) -> tuple[str, int]:
        """(name, clock rate) of payload type ``pt`` for this media; ("", 0) if unknown."""
        known = self.rtpmap.get(pt)
        if known is not None:
            return known
        return STATIC_PT.get(pt, ("", 0))


@dataclass(frozen=True)
class Sdp:
    """A parsed session description."""

    media: tuple[Media, ...] = ()
    origin_ip: bytes | None = None


def pack_ip(text: str) -> bytes | None:
    """Textual IPv4/IPv6 address to packed bytes; None if it is not an address."""
    text = text.strip()
    if "/" in text:              # multicast TTL / count suffix
        text = text.split("/", 1)[0]
    try:
        if ":" in text:
            return socket.inet_pton(socket.AF_INET6, text.strip("[]"))
        return socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        return None


def _connection(value: str) -> bytes | None:
    parts = value.split()
    if len(parts) < 3 or parts[0].upper() != "IN":
        return None
    return pack_ip(parts[2])


def _port(text: str) -> int:
    try:
        port = int(text.split("/", 1)[0])
    except ValueError:
        return 0
    return port if 0 < port < 65536 else 0


class _MediaBuilder:
    __slots__ = ("direction", "formats", "ip", "kind", "port", "proto", "ptime",
                 "rtcp_mux", "rtcp_port", "rtpmap")

    def __init__(self, kind: str, port: int, proto: str, formats: tuple[int, ...]):
        self.kind, self.port, self.proto, self.formats = kind, port, proto, formats
        self.ip: bytes | None = None
        self.rtpmap: dict[int, tuple[str, int]] = {}
        self.ptime: float | None = None
        self.rtcp_port: int | None = None
        self.rtcp_mux = False
        self.direction = ""

    def build(self, session_ip: bytes | None, session_direction: str) -> Media:
        return Media(kind=self.kind, ip=self.ip if self.ip is not None else session_ip,
                     port=self.port, proto=self.proto, payloads=self.formats,
                     rtpmap=self.rtpmap, ptime=self.ptime, rtcp_port=self.rtcp_port,
                     rtcp_mux=self.rtcp_mux, direction=self.direction or session_direction)


def _attribute(target: _MediaBuilder | None, value: str) -> str | None:
    """Apply one a= line to ``target``; returns a direction if the line is one."""
    name, _, rest = value.partition(":")
    name = name.strip().lower()
    if name in ("sendrecv", "sendonly", "recvonly", "inactive"):
        return name
    if target is None:
        return None
    if name == "rtpmap":
        pt_text, _, encoding = rest.strip().partition(" ")
        try:
            pt = int(pt_text)
        except ValueError:
            return None
        bits = encoding.strip().split("/")
        try:
            rate = int(bits[1]) if len(bits) > 1 else 0
        except ValueError:
            rate = 0
        if 0 <= pt < 128 and bits[0] and len(target.rtpmap) < MAX_FORMATS:
            target.rtpmap[pt] = (bits[0][:32], rate if 0 < rate <= 1_000_000 else 0)
    elif name == "ptime":
        try:
            ptime = float(rest.strip())
        except ValueError:
            return None
        if 0 < ptime <= 1000:
            target.ptime = ptime
    elif name == "rtcp":
        port = _port(rest.strip().split(" ", 1)[0])
        if port:
            target.rtcp_port = port
    elif name == "rtcp-mux":
        target.rtcp_mux = True
    return None


def parse_sdp(body: bytes) -> Sdp:
    """Parse an SDP body; unknown or malformed lines are skipped."""
    text = body[:65536].decode("utf-8", "replace")
    session_ip: bytes | None = None
    origin_ip: bytes | None = None
    session_direction = "sendrecv"
    builders: list[_MediaBuilder] = []
    current: _MediaBuilder | None = None
    skipping = False
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            skipping = len(builders) >= MAX_MEDIA
            if skipping:
                current = None
                continue
            parts = value.split()
            if len(parts) < 3:
                current = None
                skipping = True
                continue
            formats = []
            for fmt in parts[3:3 + MAX_FORMATS]:
                if fmt.isdigit() and int(fmt) < 128:
                    formats.append(int(fmt))
            current = _MediaBuilder(parts[0].lower(), _port(parts[1]), parts[2], tuple(formats))
            builders.append(current)
        elif skipping:
            continue
        elif kind == "c":
            ip = _connection(value)
            if current is None:
                session_ip = ip
            elif ip is not None:
                current.ip = ip
        elif kind == "o":
            parts = value.split()
            if len(parts) >= 6:
                origin_ip = pack_ip(parts[5])
        elif kind == "a":
            direction = _attribute(current, value)
            if direction is not None:
                if current is None:
                    session_direction = direction
                else:
                    current.direction = direction
    return Sdp(media=tuple(b.build(session_ip, session_direction) for b in builders),
               origin_ip=origin_ip)
