"""Decoder counters: plain integers on one object, plus counters keyed by reason, so a
management command can show why frames were not turned into datagrams."""

from __future__ import annotations

from collections import Counter

from voipmon.counters import Counters, family


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

    def counters(self) -> Counters:
        """The integers, and each family by reason (``undecodable{reason="llc"}``)."""
        return {
            "frames": self.frames, "datagrams": self.datagrams, "fragments": self.fragments,
            "reassembled": self.reassembled, "tcp_segments": self.tcp_segments,
            "tcp_messages": self.tcp_messages, "websocket_messages": self.websocket_messages,
            "sctp_messages": self.sctp_messages,
            **family("undecodable", dict(sorted(self.undecodable.items()))),
            **family("ignored", dict(sorted(self.ignored.items()))),
            **family("frag", dict(sorted(self.frag.items()))),
            **family("tcp", dict(sorted(self.tcp.items()))),
        }

    def __repr__(self) -> str:
        return f"DecodeStats({self.counters()!r})"
