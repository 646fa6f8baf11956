"""Calls with known audio for the audio and quality tests, built with real encoders.

Audio comes from real programs and libraries, never from the code under test: ``sox``
synthesises tones and encodes G.711, GSM and AMR-NB; FFmpeg (through PyAV, or its command
line for Speex) encodes G.722, G.726, G.723.1 and Opus and packetises AMR as RTP; Debian's
``libbcg729`` encodes G.729 with Annex B (VAD/SID) and ``libvo-amrwbenc`` AMR-WB, through
ctypes. The packets go into a pcap with a SIP call (INVITE with SDP, 180, 200, ACK, BYE)
that the engine analyses like any capture. A tool that is missing fails the test in CI
(``common.missing_tool``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from voipmon.packet.writers import pcap_global_header, pcap_record
from voipmon.test.callsupport import rtp, sdp, sip_message, udp_frame
from voipmon.test.common import missing_tool

CALLER_SIP = ("10.1.0.1", 5060)
CALLEE_SIP = ("10.1.0.2", 5060)
CALLER_RTP = ("10.1.0.1", 40000)
CALLEE_RTP = ("10.1.0.2", 50000)


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise missing_tool(f"{name} is not installed (Debian package {package})")
    return path


def library(name: str, package: str) -> ctypes.CDLL:
    path = ctypes.util.find_library(name)
    if path is None:
        raise missing_tool(f"lib{name} is not installed (Debian package {package})")
    return ctypes.CDLL(path)


def sox(*args: str) -> bytes:
    """Run sox writing to stdout; its output bytes."""
    return subprocess.run([tool("sox", "sox"), *args], check=True, capture_output=True).stdout


def tone_pcm(freq: float, seconds: float, rate: int = 8000) -> np.ndarray:
    """A sine tone at half scale from sox, as int16."""
    raw = sox("-n", "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer",
              "-t", "raw", "-", "synth", str(seconds), "sine", str(freq), "vol", "0.5")
    return np.frombuffer(raw, dtype="<i2")


def sox_encode(pcm: np.ndarray, rate: int, *out: str) -> bytes:
    """Encode int16 ``pcm`` with sox; ``out`` are its output format options."""
    return subprocess.run(
        [tool("sox", "sox"), "-t", "raw", "-r", str(rate), "-c", "1", "-b", "16",
         "-e", "signed-integer", "-", *out, "-"],
        input=pcm.astype("<i2").tobytes(), check=True, capture_output=True).stdout


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data) - size + 1, size)]


def av_encode(codec: str, pcm: np.ndarray, rate: int, **options: str) -> list[bytes]:
    """Encode int16 mono ``pcm`` with an FFmpeg encoder through PyAV: its packets."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.sample_rate = rate
    ctx.layout = "mono"
    ctx.format = ctx.codec.audio_formats[0].name if ctx.codec.audio_formats else "s16"
    ctx.options = options
    if "bit_rate" in options:
        ctx.bit_rate = int(options.pop("bit_rate"))
        ctx.options = options
    ctx.time_base = Fraction(1, rate)
    ctx.open()
    frame_size = ctx.frame_size or 160
    resampler = av.AudioResampler(ctx.format.name, "mono", rate, frame_size=frame_size)
    packets: list[bytes] = []
    frame = av.AudioFrame.from_ndarray(pcm.astype(np.int16).reshape(1, -1), format="s16",
                                       layout="mono")
    frame.sample_rate = rate
    frame.pts = 0
    for part in [*resampler.resample(frame), *resampler.resample(None)]:
        packets.extend(bytes(p) for p in ctx.encode(part))
    packets.extend(bytes(p) for p in ctx.encode(None))
    return packets


def rtp_muxed(path: str) -> list[bytes]:
    """The RTP packets FFmpeg's RTP muxer makes of the audio in ``path`` (stream copy)."""
    packets: list[bytes] = []

    class Sink(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            packets.append(bytes(b))       # one call per RTP packet
            return len(b)

    with av.open(path) as source:
        stream = source.streams.audio[0]
        out = av.open(Sink(), "w", format="rtp", options={"packetsize": "1400"})
        target = out.add_stream_from_template(stream)
        for packet in source.demux(stream):
            if packet.size:
                packet.stream = target
                out.mux(packet)
        out.close()
    return [p for p in packets if not 200 <= p[1] <= 204]   # leave RTCP out


def g729_frames(pcm: np.ndarray, vad: bool = True) -> list[bytes]:
    """bcg729's frames of 10 ms: 10 bytes of speech, 2 of SID, or b"" (not sent)."""
    lib = library("bcg729", "libbcg729-0")
    lib.initBcg729EncoderChannel.restype = ctypes.c_void_p
    lib.initBcg729EncoderChannel.argtypes = [ctypes.c_uint8]
    lib.bcg729Encoder.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int16),
                                  ctypes.POINTER(ctypes.c_uint8),
                                  ctypes.POINTER(ctypes.c_uint8)]
    lib.closeBcg729EncoderChannel.argtypes = [ctypes.c_void_p]
    ctx = lib.initBcg729EncoderChannel(1 if vad else 0)
    out = (ctypes.c_uint8 * 10)()
    size = ctypes.c_uint8()
    frames = []
    for start in range(0, len(pcm) - 79, 80):
        block = np.ascontiguousarray(pcm[start:start + 80], dtype=np.int16)
        lib.bcg729Encoder(ctx, block.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)), out,
                          ctypes.byref(size))
        frames.append(bytes(out[:size.value]))
    lib.closeBcg729EncoderChannel(ctx)
    return frames


def amr_wb_frames(pcm: np.ndarray, mode: int = 8) -> list[bytes]:
    """libvo-amrwbenc's 20 ms frames of 16 kHz ``pcm``, in the storage format."""
    lib = library("vo-amrwbenc", "libvo-amrwbenc0")
    lib.E_IF_init.restype = ctypes.c_void_p
    lib.E_IF_encode.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_short),
                                ctypes.POINTER(ctypes.c_ubyte), ctypes.c_int]
    lib.E_IF_exit.argtypes = [ctypes.c_void_p]
    state = lib.E_IF_init()
    out = (ctypes.c_ubyte * 64)()
    frames = []
    for start in range(0, len(pcm) - 319, 320):
        block = np.ascontiguousarray(pcm[start:start + 320], dtype=np.int16)
        n = lib.E_IF_encode(state, mode, block.ctypes.data_as(ctypes.POINTER(ctypes.c_short)),
                            out, 0)
        frames.append(bytes(out[:n]))
    lib.E_IF_exit(state)
    return frames


def amr_storage_frames(data: bytes, bits: tuple[int, ...]) -> list[bytes]:
    """The frames of an AMR storage file (``#!AMR\\n`` or ``#!AMR-WB\\n``)."""
    pos = data.index(b"\n") + 1
    frames = []
    while pos < len(data):
        ft = data[pos] >> 3 & 0x0F
        size = 1 + ((bits[ft] + 7) // 8 if ft < len(bits) else 0)
        frames.append(data[pos:pos + size])
        pos += size
    return frames


def amr_bandwidth_efficient(frame: bytes, bits: tuple[int, ...]) -> bytes:
    """An RFC 4867 bandwidth-efficient payload of one storage-format frame (CMR 15)."""
    ft = frame[0] >> 3 & 0x0F
    q = frame[0] >> 2 & 1
    n = bits[ft] if ft < len(bits) else 0
    speech = int.from_bytes(frame[1:], "big") >> (len(frame[1:]) * 8 - n) if n else 0
    value = (15 << 6 | ft << 1 | q) << n | speech
    total = 10 + n
    pad = (-total) % 8
    return (value << pad).to_bytes((total + pad) // 8, "big")


@dataclass
class Stream:
    """RTP packets of one direction: (arrival, seq, timestamp, payload type, marker,
    payload)."""

    src: tuple[str, int]
    dst: tuple[str, int]
    ssrc: int
    packets: list[tuple[float, int, int, int, bool, bytes]] = field(default_factory=list)

    def send(self, payloads: list[bytes], pt: int, ticks: int, start: float,
             ptime: float = 0.02, seq0: int = 100, ts0: int = 1000,
             drop: frozenset[int] = frozenset()) -> None:
        """One payload every ``ptime`` s from ``start``, ``ticks`` apart on the RTP clock;
        packets whose index is in ``drop`` are lost."""
        for i, payload in enumerate(payloads):
            if i not in drop:
                self.packets.append((start + i * ptime, seq0 + i, ts0 + i * ticks, pt,
                                     i == 0, payload))

    def send_rtp(self, packets: list[bytes], pt: int, clock: int, start: float) -> None:
        """Payloads of RTP ``packets`` made elsewhere, keeping their sequence numbers and
        timestamps, each sent when its timestamp says."""
        _, _, seq0, ts0 = struct.unpack_from("!BBHI", packets[0])
        for packet in packets:
            _, _, seq, ts = struct.unpack_from("!BBHI", packet)
            ticks = (ts - ts0) % (1 << 32)
            self.packets.append((start + ticks / clock, 100 + (seq - seq0) % 65536,
                                 1000 + ticks, pt, False, packet[12:]))


@dataclass
class CallCapture:
    """A SIP call with RTP both ways, written as a pcap."""

    offer_pts: tuple[int, ...] = (0,)
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)
    start: float = 1_700_000_000.0
    answer_after: float = 0.5
    callid: str = "audio-test@example.org"
    caller: Stream = field(default_factory=lambda: Stream(CALLER_RTP, CALLEE_RTP, 0x11111111))
    callee: Stream = field(default_factory=lambda: Stream(CALLEE_RTP, CALLER_RTP, 0x22222222))

    @property
    def answered(self) -> float:
        return self.start + self.answer_after

    def frames(self, end: float) -> list[tuple[float, bytes]]:
        offer = sdp(CALLER_RTP[0], CALLER_RTP[1], self.offer_pts, self.rtpmap)
        answer = sdp(CALLEE_RTP[0], CALLEE_RTP[1], self.offer_pts, self.rtpmap)
        cid, t = self.callid, self.start
        sip = [
            (t, CALLER_SIP, CALLEE_SIP, sip_message("INVITE sip:bob@example.com SIP/2.0",
                                                    cid, "1 INVITE", "ft", body=offer)),
            (t + 0.1, CALLEE_SIP, CALLER_SIP, sip_message("SIP/2.0 180 Ringing", cid,
                                                          "1 INVITE", "ft", "tt")),
            (self.answered, CALLEE_SIP, CALLER_SIP, sip_message(
                "SIP/2.0 200 OK", cid, "1 INVITE", "ft", "tt", body=answer)),
            (self.answered + 0.001, CALLER_SIP, CALLEE_SIP, sip_message(
                "ACK sip:bob@10.1.0.2 SIP/2.0", cid, "1 ACK", "ft", "tt")),
            (end, CALLER_SIP, CALLEE_SIP, sip_message("BYE sip:bob@10.1.0.2 SIP/2.0", cid,
                                                      "2 BYE", "ft", "tt")),
            (end + 0.01, CALLEE_SIP, CALLER_SIP, sip_message("SIP/2.0 200 OK", cid, "2 BYE",
                                                             "ft", "tt")),
        ]
        out = [(ts, udp_frame(s[0], s[1], d[0], d[1], m)) for ts, s, d, m in sip]
        for stream in (self.caller, self.callee):
            for ts, seq, stamp, pt, marker, payload in stream.packets:
                out.append((ts, udp_frame(stream.src[0], stream.src[1], stream.dst[0],
                                          stream.dst[1], rtp(seq, stamp, stream.ssrc, pt,
                                                             marker, payload))))
        out.sort(key=lambda item: item[0])
        return out

    def pcap(self, end: float) -> bytes:
        """The capture, BYE at ``end`` (its 200 OK 10 ms later)."""
        return pcap_global_header(1) + b"".join(pcap_record(ts, f) for ts, f in self.frames(end))


def decode_file(data: bytes) -> tuple[np.ndarray, int]:
    """Decode an audio file (WAV, Ogg) with PyAV: float samples (channels, n) and rate."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        parts = [frame.to_ndarray() for frame in container.decode(stream)]
        rate = stream.rate
    samples = np.concatenate(parts, axis=1) if len(parts[0].shape) == 2 else \
        np.concatenate(parts)
    if samples.dtype == np.int16:
        samples = samples.astype(np.float32) / 32768.0
    if samples.shape[0] != 2:                 # packed: (1, 2n)
        samples = samples.reshape(-1, 2).T
    return samples, rate


def peak_frequency(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency of ``samples`` (Hann window, FFT)."""
    window = np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(samples * window))
    return float(np.fft.rfftfreq(len(samples), 1.0 / rate)[int(np.argmax(spectrum))])


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0


def speex_packets(pcm: np.ndarray, rate: int) -> list[bytes]:
    """Speex packets from FFmpeg's command line (libspeex), one 20 ms frame each."""
    ffmpeg = tool("ffmpeg", "ffmpeg")
    ogg = subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", str(rate),
         "-ac", "1", "-i", "-", "-c:a", "libspeex", "-frames_per_packet", "1",
         "-f", "ogg", "-"], input=pcm.astype("<i2").tobytes(), check=True,
        capture_output=True).stdout
    with av.open(io.BytesIO(ogg)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


