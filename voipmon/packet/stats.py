"""Decoder counters: plain integers on one object, plus two counters keyed by reason, so a
management command can show why frames were not turned into datagrams."""

from __future__ import annotations

from collections import Counter
from typing import Any


class DecodeStats:
    """What the decoder did. ``undecodable[reason]`` counts frames (or parts of them) that
    were malformed; ``ignored[reason]`` counts well-formed traffic that carries no
    datagram for us (ARP, ICMP, TCP on non-SIP ports ...)."""

    def __init__(self) -> None:
        self.frames = 0
        self.datagrams = 0
        self.fragments = 0
        self.reassembled = 0
        self.tcp_segments = 0
        self.tcp_messages = 0
        self.websocket_messages = 0
        self.sctp_messages = 0
        self.undecodable: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.frag: Counter[str] = Counter()
        self.tcp: Counter[str] = Counter()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly snapshot."""
        d: dict[str, Any] = {
            k: v for k, v in vars(self).items() if isinstance(v, int)}
        for k in ("undecodable", "ignored", "frag", "tcp"):
            d[k] = dict(sorted(getattr(self, k).items()))
        return d

    def __repr__(self) -> str:
        return f"DecodeStats({self.as_dict()!r})"
