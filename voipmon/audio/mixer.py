"""The call's two directions on one time axis, written out as they become final.

``StereoMixer`` holds a short window of the call's stereo timeline (caller left, callee
right; a stream of unknown direction goes to both): the decoders add PCM at sample
positions, and everything older than the window is final and goes to the ``AudioWriter``,
so a call of any length needs memory for a few seconds of audio. Nothing is written, and
the output is not even opened, until some sound has been placed: a call with nothing to
play is an error for the caller to report, not an empty or broken file.

``AudioWriter`` encodes through PyAV: ``wav`` is 16-bit PCM, ``ogg`` is Opus in Ogg
(libopus, at the mixer's rate when Opus supports it, else 48 kHz).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

import av
import numpy as np

FORMATS = ("wav", "ogg")
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
OPUS_BITRATE = 48000
_BLOCK_SECONDS = 2


class AudioWriter:
    """Stereo float samples in, an encoded WAV or Ogg/Opus file out, as they come."""

    def __init__(self, out: str | BinaryIO, fmt: str, rate: int):
        if fmt not in FORMATS:
            raise ValueError(f"audio format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.rate = rate
        self.samples = 0
        self._container = av.open(out, mode="w", format=fmt)
        if fmt == "wav":
            stream = self._container.add_stream("pcm_s16le", rate=rate, layout="stereo")
        else:
            stream = self._container.add_stream(
                "libopus", rate=rate if rate in OPUS_RATES else 48000, layout="stereo")
            stream.bit_rate = OPUS_BITRATE
        self._stream = stream

    def write(self, stereo: np.ndarray) -> None:
        """``stereo``: float32, shape (2, n), full scale 1.0."""
        n = stereo.shape[1]
        if n == 0:
            return
        pcm = np.clip(np.rint(stereo.T * 32768.0), -32768, 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = self.rate
        frame.pts = self.samples
        self.samples += n
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()


class StereoMixer:
    """A sliding window of the stereo timeline; sample 0 is the call's start."""

    def __init__(self, open_writer: Callable[[int], AudioWriter]):
        self._open_writer = open_writer
        self.rate = 0                    # fixed by ``start``, before the first sound
        self.writer: AudioWriter | None = None
        self.base = 0                    # first sample not written yet
        self.cut = 0                     # samples that came after their place was written
        self.top = 0                     # the end of the latest sound placed
        self._buf = np.zeros((2, 0), dtype=np.float32)

    @property
    def sound(self) -> bool:
        return self.writer is not None

    def start(self, rate: int) -> None:
        """Fix the output rate (the decoders resample to it)."""
        if not self.rate:
            self.rate = rate

    def place(self, channels: tuple[int, ...], start: int, samples: np.ndarray) -> None:
        """Add ``samples`` to ``channels`` (0 left, 1 right) from sample ``start``."""
        if self.writer is None:
            self.writer = self._open_writer(self.rate)
        if start < self.base:
            skip = self.base - start
            self.cut += min(skip, len(samples))
            samples = samples[skip:]
            start = self.base
        if not len(samples):
            return
        self.top = max(self.top, start + len(samples))
        end = start + len(samples) - self.base
        if end > self._buf.shape[1]:
            grown = np.zeros((2, max(end, 2 * self._buf.shape[1])), dtype=np.float32)
            grown[:, :self._buf.shape[1]] = self._buf
            self._buf = grown
        for channel in channels:
            self._buf[channel, start - self.base:end] += samples

    def emit(self, upto: int) -> None:
        """Write every sample before ``upto``: it is final."""
        writer = self.writer
        if writer is None or upto <= self.base:
            return
        block = _BLOCK_SECONDS * self.rate
        while self.base < upto:
            n = min(upto - self.base, block)
            have = min(n, self._buf.shape[1])
            out = self._buf[:, :n] if have == n else np.concatenate(
                (self._buf[:, :have], np.zeros((2, n - have), dtype=np.float32)), axis=1)
            writer.write(out)
            self._buf = self._buf[:, have:]
            self.base += n
        self._buf = self._buf.copy()    # let go of what was written

    def finish(self, end: int) -> None:
        """Write up to sample ``end``, the call's end, and close the output. Sound placed
        after it (the tail of the last packet, which arrived before the end) is left out:
        the audio lasts exactly as long as the call."""
        if self.writer is None:
            return
        self._buf = self._buf[:, :max(0, end - self.base)]
        self.emit(end)
        self.writer.close()
