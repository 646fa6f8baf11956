"""A call's audio from its capture: both directions decoded, aligned, mixed to stereo.

``render_audio`` replays the call's pcap through the engine (``analysis.replay``) with an
``AudioObserver``. The engine attributes each RTP flow to the call and to a direction
exactly as it did for the CDR; the observer puts an ``RtpTap`` on each flow, so it gets the
payloads of the packets the engine took, in capture order, a batch at a time. Each stream
(flow, SSRC, codec) has a ``StreamDecoder``; the caller's streams go left, the callee's
right (``StereoMixer``). The output covers the call from its first INVITE to its end, the
same time axis as the CDR and the quality timeline, and is written while the capture is
read.

What cannot be played is said, never hidden in a broken file: a codec without a decoder
is named; a pcap saved with ``savertp = header`` has no payloads. When nothing at all can
be played, ``AudioUnavailable`` carries the reasons and nothing is written.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from functools import partial
from typing import Any, BinaryIO

import numpy as np

from voipmon.analysis.calls import Call, ip_text
from voipmon.analysis.replay import CallNotFound, Source, replay, select_call
from voipmon.analysis.rtp import PayloadMap, RtpFlow
from voipmon.analysis.rtptap import RtpTap
from voipmon.audio.codecs import Codec, Unsupported, codec_for
from voipmon.audio.mixer import AudioWriter, StereoMixer
from voipmon.audio.stream import REORDER_HOLD, StreamDecoder
from voipmon.records.cdr import Cdr
from voipmon.records.keys import make_cdr_uid
from voipmon.records.times import iso_ms

#: Seconds of capture time behind the newest packet before the audio is final.
EMIT_LAG = 2.5
_HEADER = struct.Struct("!BBHII")
_CHANNELS = {"a": (0,), "b": (1,), "": (0, 1)}
HEADER_ONLY = ("the call's pcap keeps RTP headers only (savertp = header): "
               "there is no audio to play")


class AudioUnavailable(Exception):
    """Nothing of the call can be played; the message says why."""


class _CallAudio:
    """The audio of one call being rendered."""

    def __init__(self, call: Call, output: str | BinaryIO, fmt: str, rate: int | None):
        self.call = call
        self.t0 = call.first_ts
        self.now = call.first_ts
        self.mixer = StereoMixer(lambda rate: AudioWriter(output, fmt, rate))
        if rate:
            self.mixer.start(rate)
        self.taps: list[RtpTap] = []
        self.decoders: dict[tuple[bytes, int, str], tuple[RtpFlow, int, StreamDecoder]] = {}
        self.codecs: dict[tuple[int, int], Codec | str | None] = {}
        self.unsupported: dict[str, int] = {}
        self.rtp_packets = 0
        self.no_payload = 0
        self._flushing = False

    # -- packets ------------------------------------------------------------------------

    def packets(self, flow: RtpFlow, times: list[float], payloads: list[bytes | None]) -> None:
        for t, payload in zip(times, payloads, strict=True):
            self.rtp_packets += 1
            if payload is None:
                self.no_payload += 1
                continue
            if len(payload) < 12 or payload[0] >> 6 != 2:
                continue
            b0, b1, seq, ts, ssrc = _HEADER.unpack_from(payload)
            pt = b1 & 0x7F
            if 72 <= pt <= 76:
                continue             # RTCP on the RTP port
            start = 12 + 4 * (b0 & 0x0F)
            if b0 & 0x10 and len(payload) >= start + 4:
                start += 4 + 4 * (payload[start + 2] << 8 | payload[start + 3])
            end = len(payload) - (payload[-1] if b0 & 0x20 else 0)
            if start >= end:
                self.no_payload += 1     # a header without payload (or cut to its header)
                continue
            codec = self._codec(flow.pmap, pt)
            if codec is None:
                continue
            if isinstance(codec, str):
                self.unsupported[codec] = self.unsupported.get(codec, 0) + 1
                continue
            self._decoder(flow, ssrc, codec).add(t, seq, ts, payload[start:end])
        if times:
            self.now = max(self.now, times[-1])
        self.advance()

    def _codec(self, pmap: PayloadMap, pt: int) -> Codec | str | None:
        key = (id(pmap), pt)
        known = self.codecs.get(key, False)
        if known is False:
            try:
                known = codec_for(pt, pmap.rtpmap)
            except Unsupported as e:
                known = str(e)
            self.codecs[key] = known
        return known  # type: ignore[return-value]

    def _decoder(self, flow: RtpFlow, ssrc: int, codec: Codec) -> StreamDecoder:
        key = (flow.key, ssrc, codec.name)
        entry = self.decoders.get(key)
        if entry is None:
            decoder = StreamDecoder(codec, self.t0, self._rate, partial(self._place, flow))
            entry = self.decoders[key] = (flow, ssrc, decoder)
        return entry[2]

    def _place(self, flow: RtpFlow, start: int, samples: np.ndarray) -> None:
        # the flow's direction as it is now: the engine may settle it after its first
        # packets (media._pair), before anything was decoded
        self.mixer.place(_CHANNELS.get(flow.direction, (0, 1)), start, samples)

    def _rate(self) -> int:
        """The output rate; unless given, fixed when the first sound is decoded: the
        highest rate of the streams the call has by then (later ones are resampled)."""
        if not self.mixer.rate:
            self.mixer.start(max(d.codec.rate for _, _, d in self.decoders.values()))
        return self.mixer.rate

    def advance(self) -> None:
        """Decode what is ready on every flow and write what is final."""
        if self._flushing:
            return
        self._flushing = True
        try:
            for tap in self.taps:
                tap.flush()
        finally:
            self._flushing = False
        for _, _, decoder in self.decoders.values():
            decoder.release(self.now - REORDER_HOLD)
        if self.mixer.rate:
            self.mixer.emit(int((self.now - EMIT_LAG - self.t0) * self.mixer.rate))

    def finish(self, cdr: Cdr) -> dict[str, Any]:
        """The call is over: write the rest (to the end of the call) and describe it."""
        self._flushing = True
        for tap in self.taps:
            tap.flush()
        for _, _, decoder in self.decoders.values():
            decoder.finish()
        duration = max(0.0, cdr.callend - cdr.calldate)
        if self.mixer.rate:
            self.mixer.finish(round(duration * self.mixer.rate))
        streams = [{
            "ssrc": f"0x{ssrc:08x}", "saddr": ip_text(flow.src), "sport": flow.sport,
            "daddr": ip_text(flow.dst), "dport": flow.dport,
            "side": {"a": "caller", "b": "callee"}.get(flow.direction, ""),
            "codec": decoder.codec.name, "packets": decoder.packets,
            "decoded": decoder.decoded, "late": decoder.late, "errors": decoder.errors,
            **({"error": decoder.error} if decoder.error else {}),
        } for flow, ssrc, decoder in self.decoders.values()]
        return {
            "callid": cdr.callid, "sensor_cdr_uid": cdr.sensor_cdr_uid,
            "start": cdr.calldate, "start_iso": iso_ms(cdr.calldate),
            "duration": round(self.mixer.base / self.mixer.rate, 6) if self.mixer.sound
            else 0.0,
            "rate": self.mixer.rate, "channels": 2, "streams": streams,
            "notes": self.notes(), "written": self.mixer.sound,
        }

    def notes(self) -> list[str]:
        """What could not be played, in words."""
        notes = [f"{reason}: {count} packets left silent"
                 for reason, count in sorted(self.unsupported.items())]
        if self.no_payload:
            notes.append(HEADER_ONLY if self.no_payload == self.rtp_packets else
                         f"{self.no_payload} RTP packets without their payload left silent")
        if not self.rtp_packets:
            notes.append("the call has no RTP in this capture")
        if self.mixer.cut:
            notes.append(f"{self.mixer.cut / max(self.mixer.rate, 1):.3f} s of audio "
                         "arrived too late and was left out")
        return notes


class AudioObserver:
    """Renders the audio of the calls of a replay (``IAnalysisObserver``,
    ``IFlowObserver``). ``output(call)`` names where each call's audio goes (a path or a
    binary file), or None to skip the call."""

    def __init__(self, output: Callable[[Call], str | BinaryIO | None], fmt: str = "wav",
                 rate: Callable[[Call], int | None] | None = None):
        self._output = output
        self._fmt = fmt
        self._rate = rate
        self._calls: dict[str, _CallAudio | None] = {}

    def _state(self, call: Call) -> _CallAudio | None:
        uid = make_cdr_uid(call.callid, call.first_ts)
        if uid not in self._calls:
            target = self._output(call)
            rate = self._rate(call) if self._rate is not None else None
            self._calls[uid] = None if target is None else \
                _CallAudio(call, target, self._fmt, rate)
        return self._calls[uid]

    def sip_message(self, call: Call, datagram: Any, msg: Any, side: str) -> None:
        self._state(call)

    def flow_started(self, call: Call, flow: RtpFlow, linktype: int) -> None:
        state = self._state(call)
        if state is None or flow.pcap is not None:
            return
        tap = RtpTap(partial(state.packets, flow))
        flow.pcap = flow.pcap1 = tap
        flow.observer = self
        state.taps.append(tap)

    def stream_started(self, flow: RtpFlow, ssrc: int, analyzer: Any) -> None:
        pass

    def payload_map_changed(self, flow: RtpFlow, pmap: PayloadMap) -> None:
        if isinstance(flow.pcap, RtpTap):
            flow.pcap.flush()     # what came before is decoded with the old map

    def finish(self, cdr: Cdr) -> dict[str, Any] | None:
        """Write the rest of the call of ``cdr``; its description (None if skipped)."""
        state = self._calls.pop(cdr.sensor_cdr_uid, None)
        return None if state is None else state.finish(cdr)


def output_rate(cdr: Cdr) -> int:
    """The sample rate that keeps every stream of ``cdr``: the highest of its codecs'
    (G.722 and AMR-WB 16 kHz, Opus 48 kHz, G.711 8 kHz)."""
    rates = [8000]
    for stream in cdr.rtp:
        name, _, clock = stream.codec.partition("/")
        try:
            codec = codec_for(stream.payload, {stream.payload: (name, int(clock or 0))})
        except (Unsupported, ValueError):
            continue
        if codec is not None:
            rates.append(codec.rate)
    return min(max(rates), 48000)


def render_audio(source: Source, out: str | BinaryIO, fmt: str = "wav",
                 cdr_uid: str | None = None, *, rate: int | None = None,
                 sip_ports: tuple[int, ...] = (5060,)) -> dict[str, Any]:
    """Write the audio of the call in ``source`` (one call's pcap; ``cdr_uid`` picks one
    of several) to ``out`` as ``fmt`` (wav or ogg); returns its description. Raises
    ``AudioUnavailable`` (nothing written) or ``replay.CallNotFound``.

    ``rate`` is the output's sample rate; by default ``output_rate`` of the call's CDR,
    which costs a first pass over ``source`` (a caller that has the CDR passes it)."""
    if fmt not in ("wav", "ogg"):
        raise ValueError(f"audio format must be wav or ogg, not {fmt!r}")
    if rate is None:
        if not isinstance(source, str) and not hasattr(source, "seek"):
            source = list(source)  # type: ignore[arg-type]
        rate = output_rate(select_call(replay(source, None, sip_ports=sip_ports), cdr_uid))
        if hasattr(source, "seek"):
            source.seek(0)  # type: ignore[union-attr]
    chosen: list[str] = []

    def output(call: Call) -> str | BinaryIO | None:
        uid = make_cdr_uid(call.callid, call.first_ts)
        if (cdr_uid is not None and uid != cdr_uid) or (cdr_uid is None and chosen):
            return None
        chosen.append(uid)
        return out

    observer = AudioObserver(output, fmt, lambda call: rate)
    cdrs = replay(source, observer, sip_ports=sip_ports)
    try:
        cdr = select_call(cdrs, cdr_uid)
    except CallNotFound:
        for other in cdrs:
            observer.finish(other)     # closes what was begun
        if chosen and isinstance(out, str) and os.path.exists(out):
            os.unlink(out)
        raise
    info = observer.finish(cdr)
    assert info is not None
    if not info["written"]:
        raise AudioUnavailable("; ".join(info["notes"]) or "nothing to play")
    return info
