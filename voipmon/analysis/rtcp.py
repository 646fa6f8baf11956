"""RTCP (RFC 3550 section 6): what the endpoints themselves report about each stream.

``parse_rtcp`` walks a compound packet (SR, RR, SDES, BYE, APP, XR, ... back to back) and
returns the sender and receiver reports; the other packet types are skipped by their
length. ``RtcpTracker`` keeps, per call, the reports about each SSRC: fraction lost and
interarrival jitter (average and maximum), and the round-trip time measured at the
capture point: an RR's LSR names the sender report it answers, we saw that SR go by at
time t_sr, so RTT = t_rr - t_sr - DLSR (RFC 3550 6.4.1, as Wireshark computes it).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

_HEAD = struct.Struct("!BBHI").unpack_from
_SR = struct.Struct("!II4xII").unpack_from         # NTP msw, lsw, (rtp ts), packets, octets
_BLOCK = struct.Struct("!IIIII").unpack_from       # ssrc, fraction+cumulative, seq, jitter, lsr
_U32 = struct.Struct("!I").unpack_from
#: Sender reports remembered per call for RTT matching.
MAX_SR = 64
#: Reported SSRCs tracked per call.
MAX_SOURCES = 64


@dataclass(frozen=True)
class ReportBlock:
    ssrc: int                 # the source this block is about
    fraction_lost: float      # 0..1 since the previous report
    cumulative_lost: int      # may be negative (duplicates)
    highest_seq: int
    jitter: int               # RTP timestamp units
    lsr: int                  # middle 32 bits of the NTP time of the last SR from ``ssrc``
    dlsr: float               # seconds since that SR


@dataclass(frozen=True)
class Report:
    """One SR (``is_sr``) or RR from ``sender``."""

    sender: int
    is_sr: bool
    ntp_mid: int = 0          # SR only: middle 32 bits of its NTP timestamp
    blocks: tuple[ReportBlock, ...] = ()


def is_rtcp(payload: bytes) -> bool:
    """An RTCP packet (version 2, type 192..223, as RFC 5761 demultiplexes)."""
    return len(payload) >= 8 and payload[0] >> 6 == 2 and 192 <= payload[1] <= 223


def parse_rtcp(payload: bytes) -> list[Report]:
    """The SR and RR packets of a compound RTCP packet; stops at the first bad header."""
    reports: list[Report] = []
    off = 0
    n = len(payload)
    while off + 8 <= n:
        b0, pt, length, sender = _HEAD(payload, off)
        size = (length + 1) * 4
        if b0 >> 6 != 2 or off + size > n:
            break
        count = b0 & 0x1F
        body = off + 8
        if pt == 200 and size >= 28:
            msw, lsw, _, _ = _SR(payload, body)
            blocks = _blocks(payload, body + 20, off + size, count)
            reports.append(Report(sender, True, ((msw & 0xFFFF) << 16) | (lsw >> 16), blocks))
        elif pt == 201:
            reports.append(Report(sender, False, 0, _blocks(payload, body, off + size, count)))
        off += size
    return reports


def _blocks(payload: bytes, off: int, end: int, count: int) -> tuple[ReportBlock, ...]:
    out = []
    for _ in range(count):
        if off + 24 > end:
            break
        ssrc, lost, seq, jitter, lsr = _BLOCK(payload, off)
        (dlsr,) = _U32(payload, off + 20)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 1 << 24
        out.append(ReportBlock(ssrc, (lost >> 24) / 256.0, cumulative, seq, jitter, lsr,
                               dlsr / 65536.0))
        off += 24
    return tuple(out)


class _Source:
    __slots__ = ("fraction_max", "fraction_sum", "jitter_max", "jitter_sum", "reports",
                 "rtt_count", "rtt_max", "rtt_sum")

    def __init__(self) -> None:
        self.reports = 0
        self.fraction_sum = self.fraction_max = 0.0
        self.jitter_sum = self.jitter_max = 0
        self.rtt_count = 0
        self.rtt_sum = self.rtt_max = 0.0


@dataclass(frozen=True)
class RtcpSummary:
    """What the RTCP reports said about one SSRC."""

    reports: int
    fraclost: float           # average fraction lost, %
    maxfr: float              # maximum fraction lost, %
    jitter: float             # average jitter, ms
    maxjitter: float          # maximum jitter, ms
    rtt: float | None         # average round trip, ms
    maxrtt: float | None


class RtcpTracker:
    """The RTCP of one call: reports per SSRC and sender reports for RTT matching."""

    def __init__(self) -> None:
        self.packets = 0
        self._sources: dict[int, _Source] = {}
        self._sr: OrderedDict[tuple[int, int], float] = OrderedDict()

    def feed(self, ts: float, payload: bytes) -> None:
        """One captured RTCP datagram at capture time ``ts``."""
        self.packets += 1
        for report in parse_rtcp(payload):
            if report.is_sr:
                self._sr[(report.sender, report.ntp_mid)] = ts
                if len(self._sr) > MAX_SR:
                    self._sr.popitem(last=False)
            for block in report.blocks:
                source = self._sources.get(block.ssrc)
                if source is None:
                    if len(self._sources) >= MAX_SOURCES:
                        continue
                    source = self._sources[block.ssrc] = _Source()
                source.reports += 1
                source.fraction_sum += block.fraction_lost
                source.fraction_max = max(source.fraction_max, block.fraction_lost)
                source.jitter_sum += block.jitter
                source.jitter_max = max(source.jitter_max, block.jitter)
                if block.lsr:
                    sent = self._sr.get((block.ssrc, block.lsr))
                    if sent is not None:
                        rtt = ts - sent - block.dlsr
                        if 0 <= rtt < 60:
                            source.rtt_count += 1
                            source.rtt_sum += rtt
                            source.rtt_max = max(source.rtt_max, rtt)

    def summary(self, ssrc: int, clock_rate: float) -> RtcpSummary | None:
        """Reports about ``ssrc``; jitter converted to ms with the stream's clock rate."""
        source = self._sources.get(ssrc)
        if source is None or not source.reports:
            return None
        per_ms = (clock_rate or 8000.0) / 1000.0
        n = source.reports
        rtt = source.rtt_sum / source.rtt_count * 1000.0 if source.rtt_count else None
        return RtcpSummary(
            reports=n, fraclost=round(source.fraction_sum / n * 100.0, 3),
            maxfr=round(source.fraction_max * 100.0, 3),
            jitter=round(source.jitter_sum / n / per_ms, 3),
            maxjitter=round(source.jitter_max / per_ms, 3),
            rtt=None if rtt is None else round(rtt, 3),
            maxrtt=round(source.rtt_max * 1000.0, 3) if source.rtt_count else None)
