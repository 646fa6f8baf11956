"""A frame tap on one RTP flow: the payloads the engine attributed to it, in batches.

The engine already hands every RTP frame of a call to a sink, the call's pcap
(``voipmon.spool.writer.PcapSink``): the hot path appends Ethernet frames to the sink's
``ts``/``frames`` lists and calls ``flush`` every ``FLUSH_FRAMES`` of them, and everything
else goes through ``add``. ``RtpTap`` takes that sink's place on one flow (set by an
``IAnalysisObserver.flow_started``), so whoever needs payloads (the DTMF digits of the
quality timeline, the audio decoder) gets exactly the packets the engine counted, with no
second attribution of flows to calls.

Frames that took the hot path are Ethernet + IPv4 without options + UDP, checked there, so
the payload is at offset 42 and the UDP length says how long it is. Other frames (802.1Q,
IPv6, Linux cooked, tunnels, fragments) go through a private ``Decoder``, the project's one
way of decoding. A payload cut short by the capture (``savertp = header``) is handed over
as ``None``.
"""

from __future__ import annotations

from collections.abc import Callable

from voipmon.packet.datagram import Datagram
from voipmon.packet.decode import Decoder

#: ``consumer(times, payloads)``: capture times and UDP payloads (None when not captured).
Consumer = Callable[[list[float], list[bytes | None]], None]


class RtpTap:
    """A ``PcapSink`` look-alike that hands a flow's RTP payloads to ``consumer``; with
    ``payload_types``, only the packets of those RTP payload types (the others cost a
    look at one byte)."""

    __slots__ = ("_decoded", "_decoder", "caplens", "consumer", "frames", "linktype",
                 "payload_types", "ts")

    def __init__(self, consumer: Consumer, sip_ports: tuple[int, ...] = (5060,),
                 payload_types: frozenset[int] | None = None):
        self.consumer = consumer
        self.payload_types = payload_types
        self.ts: list[float] = []
        self.frames: list[bytes] = []
        self.caplens: list[int] | None = None   # the engine keeps whole frames here
        self.linktype: int | None = None
        self._decoded: list[Datagram] = []
        self._decoder = Decoder(self._decoded.append, sip_ports=sip_ports)

    def accepts(self, linktype: int) -> bool:
        return True

    @property
    def has_frames(self) -> bool:
        return bool(self.frames)

    def flush(self) -> None:
        """Hand over the frames the hot path appended (Ethernet/IPv4/UDP, checked there)."""
        if not self.frames:
            return
        times, frames = self.ts, self.frames
        self.ts, self.frames = [], []
        types = self.payload_types
        if types is not None:   # the RTP payload type is at byte 43 of these frames
            kept = [(t, f) for t, f in zip(times, frames, strict=True) if f[43] & 0x7F in types]
            if not kept:
                return
            times, frames = [t for t, _ in kept], [f for _, f in kept]
        payloads: list[bytes | None] = []
        append = payloads.append
        for frame in frames:
            end = 34 + (frame[38] << 8 | frame[39])
            append(frame[42:end] if len(frame) >= end else None)
        self.consumer(times, payloads)

    def add(self, ts: float, frame: bytes, linktype: int, caplen: int | None = None) -> None:
        """A frame that did not take the hot path: decoded here, after what came before."""
        self.flush()
        decoded = self._decoded
        self._decoder.feed(ts, linktype, frame)
        if decoded:
            types = self.payload_types
            kept = [d for d in decoded if types is None or
                    (len(d.payload) > 1 and d.payload[1] & 0x7F in types)]
            decoded.clear()
            if kept:
                payloads: list[bytes | None] = [d.payload for d in kept]
                self.consumer([d.ts for d in kept], payloads)
        elif self._decoder.stats.undecodable:
            self.consumer([ts], [None])  # cut short by the capture
            self._decoder.stats.undecodable.clear()

    def close(self) -> None:
        self.flush()
