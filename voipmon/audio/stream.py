"""One RTP stream to PCM placed on the call's time axis.

Packets come in arrival order. They wait ``REORDER_HOLD`` seconds of capture time so that
reordered ones find their place, then are decoded in sequence-number order (decoders such
as G.722's ADPCM carry state from one packet to the next) and placed by RTP timestamp:
sample position = where the stream's first packet arrived + its timestamp distance from
that packet. A lost packet, a silence-suppression gap or a comfort-noise stretch leaves its
stretch of the timeline empty, that is silent. A packet later than the hold is dropped
(counted), as a phone's jitter buffer would. When timestamps and arrival disagree by more
than ``REANCHOR`` seconds (a sender that restarts its timestamps) the stream is anchored
again on the packet's arrival.

Consecutive frames of a codec that allows it are decoded as one packet (a run), which
keeps long G.711 calls cheap; each run is resampled to the output rate (libswresample
through PyAV) and handed to the mixer as ``(start sample, float32 samples)``.
"""

from __future__ import annotations

from collections.abc import Callable

import av
import numpy as np

from voipmon.audio.codecs import Codec

REORDER_HOLD = 0.5      # seconds a packet waits for reordered ones
REANCHOR = 1.0          # seconds of disagreement between timestamps and arrival
MAX_HELD = 4096         # packets held at most (a burst of traffic, not seconds)

Place = Callable[[int, np.ndarray], None]


def _nearest(value: int, previous_raw: int, previous_ext: int, bits: int) -> int:
    """Extend a ``bits``-bit counter by the nearest signed step (like ``rtp._unwrap``)."""
    half = 1 << (bits - 1)
    return previous_ext + (value - previous_raw + half) % (1 << bits) - half


class StreamDecoder:
    """Decodes one stream (one SSRC, one codec) of a flow; ``place`` gets the PCM."""

    def __init__(self, codec: Codec, t0: float, out_rate: Callable[[], int], place: Place):
        self.codec = codec
        self.t0 = t0
        self._out_rate = out_rate   # asked at the first sound: the mixer fixes it then
        self.out_rate = 0
        self.place = place
        self.packets = 0
        self.decoded = 0            # packets that gave sound
        self.late = 0               # dropped: later than the hold, or duplicates
        self.errors = 0             # frames the decoder refused
        self.error: str | None = None
        self._held: list[tuple[int, float, int, bytes]] = []  # ext seq, arrival, ext ts
        self._seq: tuple[int, int] | None = None      # raw, extended
        self._ts: tuple[int, int] | None = None
        self._done = -1 << 62                         # highest sequence decoded
        self._anchor: tuple[int, float] | None = None   # ext ts, seconds since t0
        self._ctx: av.AudioCodecContext | None = None
        self._resampler: av.AudioResampler | None = None
        self._run: list[bytes] = []
        self._run_start = 0          # ext ts of the run's first frame
        self._run_end = 0            # ext ts just after its last frame

    def add(self, t: float, seq: int, ts: int, payload: bytes) -> None:
        """One packet (header already parsed), in arrival order."""
        self.packets += 1
        if self._seq is None:
            ext_seq, ext_ts = seq, ts
        else:
            ext_seq = _nearest(seq, *self._seq, 16)
            ext_ts = _nearest(ts, *self._ts, 32)  # type: ignore[misc]
        self._seq, self._ts = (seq, ext_seq), (ts, ext_ts)
        if ext_seq <= self._done:
            self.late += 1
            return
        self._held.append((ext_seq, t, ext_ts, payload))
        if len(self._held) > MAX_HELD:
            self.release(t)

    def release(self, upto: float) -> None:
        """Decode the held packets that arrived at or before ``upto`` (and those before
        them in sequence order)."""
        held = self._held
        if not held:
            return
        ready = [p for p in held if p[1] <= upto]
        if not ready and len(held) <= MAX_HELD:
            return
        cut = max(p[0] for p in ready) if ready else max(p[0] for p in held)
        held.sort(key=lambda p: p[0])
        keep = []
        last = None
        for packet in held:
            if packet[0] > cut:
                keep.append(packet)
            elif packet[0] == last:
                self.late += 1           # a duplicate
            else:
                last = packet[0]
                self._packet(packet[1], packet[2], packet[3])
        self._done = max(self._done, cut)
        self._held = keep
        self._flush_run()

    def finish(self) -> None:
        """Decode everything held."""
        self.release(float("inf"))
        self._flush_run()

    # -- decoding -----------------------------------------------------------------------

    def _packet(self, t: float, ext_ts: int, payload: bytes) -> None:
        codec = self.codec
        since = t - self.t0
        anchor = self._anchor
        if anchor is None or abs(anchor[1] + (ext_ts - anchor[0]) / codec.clock - since) \
                > REANCHOR:
            self._flush_run()
            self._anchor = (ext_ts, since)
        try:
            frames = codec.split(payload)
        except (IndexError, ValueError):
            frames = []
        sound = False
        offset = 0
        for ticks, data in frames:
            start = ext_ts + offset
            if data is not None:
                sound = True
                if not codec.joinable or ticks is None or start != self._run_end \
                        or not self._run:
                    self._flush_run()
                    self._run_start = start
                self._run.append(data)
                self._run_end = start + (ticks or 0)
                if not codec.joinable or ticks is None:
                    self._flush_run()
            if ticks is None:
                break
            offset += ticks
        if sound:
            self.decoded += 1

    def _flush_run(self) -> None:
        if not self._run:
            return
        data, start = self._run, self._run_start
        self._run = []
        try:
            pcm = self._decode(data)
        except (av.FFmpegError, ValueError) as e:
            self.errors += 1
            self.error = str(e)
            return
        if pcm is None or not len(pcm):
            return
        anchor_ts, anchor_at = self._anchor  # type: ignore[misc]
        seconds = anchor_at + (start - anchor_ts) / self.codec.clock
        self.place(round(seconds * self.out_rate), pcm)

    def _context(self, first: bytes) -> av.AudioCodecContext:
        codec = self.codec
        ctx = av.CodecContext.create(codec.decoder, "r")
        ctx.sample_rate = codec.rate
        ctx.layout = "stereo" if codec.channels == 2 else "mono"
        options = dict(codec.options)
        if codec.frame_options is not None:
            options.update(codec.frame_options(first))
        ctx.options = options
        ctx.open()
        return ctx  # type: ignore[return-value]

    def _decode(self, data: list[bytes]) -> np.ndarray | None:
        if self._ctx is None:
            self._ctx = self._context(data[0])
            self.out_rate = self._out_rate()
        ctx = self._ctx
        blob = data[0] if len(data) == 1 else b"".join(data)
        parts = []
        for frame in ctx.decode(av.Packet(blob)):
            parts.extend(self._resample(frame))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _resample(self, frame: av.AudioFrame) -> list[np.ndarray]:
        """Mono float32 at the output rate. Rate and channel changes go through one
        libswresample context per stream, which keeps the filter's state from run to run."""
        if frame.sample_rate == self.out_rate and frame.layout.nb_channels == 1:
            samples = frame.to_ndarray().reshape(-1)
            if samples.dtype == np.int16:
                return [samples.astype(np.float32) / 32768.0]
            if samples.dtype == np.float32:
                return [samples]
        if self._resampler is None:
            self._resampler = av.AudioResampler("flt", "mono", self.out_rate)
        return [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
