"""The contract between packet decoding and call analysis.

A ``Decoder`` (voipmon.packet.decode) turns link-layer frames into ``Datagram`` objects and
hands each one to a sink callable. The analysis engine is such a sink.
"""

from __future__ import annotations

from typing import NamedTuple

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132


class Datagram(NamedTuple):
    """One transport payload, decapsulated from every tunnel and reassembled.

    ``payload`` is the UDP payload; for SIP over TCP, WebSocket or SCTP it is exactly one
    complete SIP message. ``frames`` are the original link-layer frames (capture time, bytes)
    that carried it, in order: usually one, several after IP defragmentation or TCP
    reassembly. They are what a per-call pcap stores, with ``linktype`` as its link type.
    """

    ts: float            # capture time of the last frame, epoch seconds
    proto: int           # IPPROTO_UDP, IPPROTO_TCP or IPPROTO_SCTP
    src: bytes           # packed source address: 4 bytes IPv4, 16 bytes IPv6
    sport: int
    dst: bytes           # packed destination address
    dport: int
    payload: bytes
    linktype: int        # pcap LINKTYPE_* of the frames
    frames: tuple[tuple[float, bytes], ...]
