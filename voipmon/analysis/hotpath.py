"""The engine's way in for frames: ``feed``, ``feed_all`` and the walk of a classic pcap.

Nearly every packet of a VoIP capture is RTP, so each entry first tries the one shape most
of it has (Ethernet, IPv4 without options, unfragmented UDP) and looks the 4-tuple up in
``_flows``: one slice, one dict lookup, two appends of the raw RTP header and capture time
(and two more when the call's pcap is written). Flows known to be of no interest are
dropped by a second lookup, and so are the segments of TCP connections the decoder
classified as not SIP that cannot change that (``voipmon.packet.tcpclassify``) and
Ethernet frames with an 802.3 length instead of a type (spanning tree, CDP ...): counted
as the decoder would count them, and only when it would have no housekeeping due. A
single 802.1Q tag takes the RTP path in ``_slow``; everything else goes to the
``Decoder``.

The per-frame code is written out three times, because a call per frame is what it
saves: ``feed`` (live capture), ``feed_all`` (any iterable of records, the lookups in
locals) and ``_feed_pcap`` (the records of a classic pcap file walked in the reader's
buffers: no generator step and no tuple per frame). Keep them in step; the tests feed the
same frames through each and compare every counter and CDR.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from twisted.logger import Logger

from voipmon.packet.readers import CaptureReader, PcapWalk
from voipmon.packet.tcpclassify import sniff
from voipmon.spool.writer import FLUSH_FRAMES

if TYPE_CHECKING:
    from voipmon.analysis.engine import EngineStats
    from voipmon.analysis.rtp import RtpFlow
    from voipmon.packet.decode import Decoder

log = Logger()

_ETH_IP4 = b"\x08\x00E"


class HotPath:
    """Mixin of ``Engine``: the frame entry points, over the engine's state below."""

    _flows: dict[bytes, RtpFlow]  # RTP flows by IPv4 src, dst and ports as in the frame
    _skip: dict[bytes, float]     # UDP flows of no interest, same keys
    _tick: float                  # capture time at which ``_on_tick`` is due
    _on_tick: Callable[[float], None]
    _decoder: Decoder
    stats: EngineStats

    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        """One captured frame. Never raises because of what the frame contains."""
        if ts >= self._tick:
            self._on_tick(ts)
        if linktype == 1 and len(frame) >= 54 and frame[12:15] == _ETH_IP4 \
                and frame[23] == 17 and not (frame[20] & 0x3F or frame[21]):
            key = frame[26:38]
            flow = self._flows.get(key)
            if flow is not None:
                if frame[38:40] >= b"\x00\x14" and not 192 <= frame[43] <= 223:
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
                    return
            elif key in self._skip:
                return
        self._slow(ts, linktype, frame)

    def feed_all(self, records: Iterable[tuple[float, int, bytes]]) -> int:
        """``feed`` every ``(ts, linktype, frame)`` of ``records`` (e.g. a capture file);
        returns how many. The same code as ``feed`` with the fast path inlined in one loop
        and the lookups in locals: the call per frame is a fifth of the fast path's cost.
        A ``CaptureReader`` of a classic pcap file is walked here directly (``_feed_pcap``)."""
        if isinstance(records, CaptureReader):
            walk = records.pcap_walk()
            if walk is not None:
                return self._feed_pcap(walk)
        n = 0
        flows_get = self._flows.get
        skip = self._skip
        slow = self._slow
        flush_at = FLUSH_FRAMES
        eth_ip4 = _ETH_IP4
        tick = self._tick
        decoder = self._decoder
        not_sip = decoder.not_sip
        dropped = llc = 0
        try:
            for ts, linktype, frame in records:
                n += 1
                if ts >= tick:
                    self._on_tick(ts)
                    tick = self._tick
                if linktype == 1 and len(frame) >= 54 and frame[12:15] == eth_ip4 \
                        and not (frame[20] & 0x3F or frame[21]):
                    key = frame[26:38]
                    if frame[23] == 17:
                        flow = flows_get(key)
                        if flow is not None:
                            if frame[38:40] >= b"\x00\x14" and not 192 <= frame[43] <= 223:
                                flow.rec += frame[42:54]
                                flow.times.append(ts)
                                sink = flow.pcap1
                                if sink is not None:
                                    sink.ts.append(ts)
                                    sink.frames.append(frame)
                                    if sink.caplens is not None:
                                        sink.caplens.append(54)
                                    if len(sink.frames) >= flush_at:
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
                    llc += 1  # 802.3 length, not a type: STP, CDP ... (the decoder's "llc")
                    continue
                slow(ts, linktype, frame)
        finally:
            self.stats.slow_frames += dropped + llc
            decoder.dropped(dropped, llc)
        return n

    def _feed_pcap(self, walk: PcapWalk) -> int:
        """``feed_all`` of a classic pcap file: its records walked in the reader's buffers,
        which saves a generator step and a tuple per frame (7 % of the analysis of the
        benchmark capture). The loop body is ``feed_all``'s: keep the two in step."""
        chunks, unpack, hlen, scale, linktype = walk
        n = 0
        flows_get = self._flows.get
        skip = self._skip
        slow = self._slow
        flush_at = FLUSH_FRAMES
        eth_ip4 = _ETH_IP4
        tick = self._tick
        decoder = self._decoder
        not_sip = decoder.not_sip
        dropped = llc = 0
        ether = linktype == 1
        try:
            buf = next(chunks)
            while True:
                pos = 0
                size = len(buf)
                last = size - hlen  # where the last record header can start
                start = n
                while pos <= last:
                    sec, frac, incl = unpack(buf, pos)
                    p = pos + hlen
                    end = p + incl
                    if end > size:
                        break
                    ts = sec + frac * scale
                    frame = buf[p:end]
                    pos = end
                    n += 1
                    if ts >= tick:
                        self._on_tick(ts)
                        tick = self._tick
                    if ether and incl >= 54 and frame[12:15] == eth_ip4 \
                            and not (frame[20] & 0x3F or frame[21]):
                        key = frame[26:38]
                        if frame[23] == 17:
                            flow = flows_get(key)
                            if flow is not None:
                                if frame[38:40] >= b"\x00\x14" and not 192 <= frame[43] <= 223:
                                    flow.rec += frame[42:54]
                                    flow.times.append(ts)
                                    sink = flow.pcap1
                                    if sink is not None:
                                        sink.ts.append(ts)
                                        sink.frames.append(frame)
                                        if sink.caplens is not None:
                                            sink.caplens.append(54)
                                        if len(sink.frames) >= flush_at:
                                            sink.flush()
                                    continue
                            elif key in skip:
                                continue
                        elif frame[23] == 6 and key in not_sip:
                            h = 34 + (frame[46] >> 4) * 4
                            e = 14 + (frame[16] << 8 | frame[17])
                            if 54 <= h <= e <= len(frame) and ts - decoder.expired_at <= 1.0 \
                                    and (h == e or not (65 <= frame[h] <= 90
                                                        or frame[h] & 0x0F in (1, 2))
                                         or sniff(frame[h:e]) is None):
                                dropped += 1
                                continue
                    elif ether and incl >= 14 and frame[12] < 6 \
                            and -3600.0 <= ts - decoder.expired_at <= 1.0:
                        llc += 1  # 802.3 length, not a type: STP, CDP ... (as _slow below)
                        continue
                    slow(ts, linktype, frame)
                buf = chunks.send((pos, n - start))
        except StopIteration:
            pass
        finally:
            chunks.close()
            self.stats.slow_frames += dropped + llc
            decoder.dropped(dropped, llc)
        return n

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
        self.stats.slow_frames += 1
        try:
            self._decoder.feed(ts, linktype, frame)
        except Exception:
            self.stats.errors += 1
            log.failure("engine: frame at {ts} could not be processed", ts=ts)
