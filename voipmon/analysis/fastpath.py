"""The engine's one way in for frames: ``FastPath.run`` over a batch of records.

Nearly every packet of a VoIP capture is RTP, so each frame first tries the one shape most
of it has (Ethernet, IPv4 without options, unfragmented UDP) and looks the 4-tuple up in
the RTP flow table: one slice, one dict lookup, two appends of the raw RTP header and
capture time (and two more when the call's pcap is written). Flows known to be of no
interest are dropped by a second lookup (the skip table), and so are the segments of TCP
connections the decoder classified as not SIP that cannot change that
(``voipmon.packet.tcpclassify``) and Ethernet frames with an 802.3 length instead of a
type (spanning tree, CDP ...): counted as the decoder would count them, and only when it
would have no housekeeping due. A single 802.1Q tag takes the RTP path in ``_slow``;
everything else goes to the ``Decoder``.

The per-frame code is written once, as one loop over a batch, because a call per frame is
what it saves. The batches come from ``voipmon.packet.readers.batches``: a classic pcap
file is walked there, in the reader's buffers, and handed over one buffer at a time
without a tuple per frame; any other iterable of ``(ts, linktype, frame)`` is one batch.
A single frame (live capture) is a batch of one.

The fast path holds the tables it reads, not the engine: the flow and skip tables of the
``MediaTable``, the decoder, the engine's counters (``slow_frames``, ``errors``) and the
housekeeping to run once a second of capture time (``Engine.advance``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Protocol

from twisted.logger import Logger

from voipmon.analysis.rtp import RtpFlow
from voipmon.packet.decode import Decoder
from voipmon.packet.readers import Record, batches
from voipmon.packet.tcpclassify import sniff
from voipmon.spool.writer import FLUSH_FRAMES

log = Logger()

_ETH_IP4 = b"\x08\x00E"


class FastPathCounts(Protocol):
    """The counters the fast path adds to (``EngineStats`` has them)."""

    slow_frames: int  # frames that took the decoder (or were dropped as it would drop them)
    errors: int       # frames the decoder failed on


class FastPath:
    """Frames in: RTP of known flows recorded on the spot, the rest to ``decoder``.

    ``flows`` maps the IPv4 source, destination and ports as they are in a frame (12
    bytes) to the ``RtpFlow`` that records them; ``skip`` holds the keys of UDP flows of no
    interest. Both are shared with (and kept by) the engine's media table. ``housekeeping``
    is called with the capture time when a second of it has passed (``due``).
    """

    def __init__(self, flows: dict[bytes, RtpFlow], skip: dict[bytes, float],
                 decoder: Decoder, housekeeping: Callable[[float], None],
                 counts: FastPathCounts) -> None:
        self._flows = flows
        self._skip = skip
        self._decoder = decoder
        self._housekeeping = housekeeping
        self._counts = counts
        self.due = -math.inf  # capture time at which housekeeping is due
        #: The fast path over each ``(ts, linktype, frame)`` of a batch; returns how many.
        #: Never raises because of what a frame contains.
        self.run = self._loop()

    def tick(self, ts: float) -> None:
        """Housekeeping at capture time ``ts``; the next is due a second later."""
        self.due = ts + 1.0
        self._housekeeping(ts)

    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        """One frame (a live capture's): a batch of one."""
        self.run(((ts, linktype, frame),))

    def feed_all(self, records: Iterable[Record]) -> int:
        """Every frame of ``records`` (a ``CaptureReader`` in its batches); how many."""
        n = 0
        run = self.run
        for batch in batches(records):
            n += run(batch)
        return n

    def _loop(self) -> Callable[[Iterable[Record]], int]:
        """``run``, made once: a closure over the tables, so that a batch of one (a live
        frame) does not look them up again (a quarter of the cost of an RTP frame)."""
        flows_get = self._flows.get
        skip = self._skip
        slow = self._slow
        decoder = self._decoder
        not_sip = decoder.not_sip  # changed in place, never replaced
        counts = self._counts
        tick = self.tick
        fast = self

        def run(batch: Iterable[Record]) -> int:
            n = 0
            due = fast.due
            dropped = llc = 0
            try:
                for ts, linktype, frame in batch:
                    n += 1
                    if ts >= due:
                        tick(ts)
                        due = fast.due
                    # the byte tests are frame[12:15] == _ETH_IP4 and frame[38:40] >= b"\0\x14"
                    # (UDP length >= 20), without making a bytes object for each
                    if linktype == 1 and len(frame) >= 54 and frame[14] == 0x45 \
                            and frame[12] == 8 and not (frame[13] or frame[20] & 0x3F
                                                        or frame[21]):
                        key = frame[26:38]
                        if frame[23] == 17:
                            flow = flows_get(key)
                            if flow is not None:
                                if (frame[38] or frame[39] >= 0x14) \
                                        and not 192 <= frame[43] <= 223:
                                    flow.rec += frame[42:54]
                                    flow.times.append(ts)
                                    sink = flow.pcap1
                                    if sink is not None:
                                        sink.ts.append(ts)
                                        sink.frames.append(frame)
                                        if sink.caplens is not None:
                                            sink.caplens.append(54)
                                        if len(sink.frames) >= FLUSH_FRAMES:
                                            sink.flush()
                                    continue
                            elif key in skip:
                                continue
                        elif frame[23] == 6 and key in not_sip:
                            # TCP of a flow known not to be SIP: the decoder's _ipv4_tcp drop
                            h = 34 + (frame[46] >> 4) * 4
                            e = 14 + (frame[16] << 8 | frame[17])
                            if 54 <= h <= e <= len(frame) and ts - decoder.expired_at <= 1.0 \
                                    and (h == e or not (65 <= frame[h] <= 90
                                                        or frame[h] & 0x0F in (1, 2))
                                         or sniff(frame[h:e]) is None):
                                dropped += 1
                                continue
                    elif linktype == 1 and len(frame) >= 14 and frame[12] < 6 \
                            and -3600.0 <= ts - decoder.expired_at <= 1.0:
                        llc += 1  # 802.3 length, not a type: STP, CDP ... (decoder's "llc")
                        continue
                    slow(ts, linktype, frame)
            finally:
                if dropped or llc:
                    counts.slow_frames += dropped + llc
                    decoder.dropped(dropped, llc)
            return n

        return run

    def _slow(self, ts: float, linktype: int, frame: bytes) -> None:
        if linktype == 1 and frame[12:14] == b"\x81\x00" and len(frame) >= 58 \
                and frame[16:19] == _ETH_IP4 and frame[27] == 17 \
                and not (frame[24] & 0x3F or frame[25]):
            # one 802.1Q tag (mirrored traffic often has one): the fast path, 4 bytes on
            key = frame[30:42]
            flow = self._flows.get(key)
            if flow is not None:
                if frame[42:44] >= b"\x00\x14" and not 192 <= frame[47] <= 223:
                    flow.rec += frame[46:58]
                    flow.times.append(ts)
                    if flow.pcap is not None:
                        flow.pcap.add(ts, frame, 1, 58)
                    return
            elif key in self._skip:
                return
        self._counts.slow_frames += 1
        try:
            self._decoder.feed(ts, linktype, frame)
        except Exception:
            self._counts.errors += 1
            log.failure("engine: frame at {ts} could not be processed", ts=ts)


__all__ = ["FastPath", "FastPathCounts"]
