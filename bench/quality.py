#!/usr/bin/env python3
"""Benchmark: quality over time and audio of a 1-hour G.711 call, beside reading its pcap.

Synthesises one call in a temporary pcap: INVITE with SDP (PCMU and telephone-event),
180, 200, ACK, then an hour of RTP at 50 packets/s each way (the caller's a 1 kHz tone
from a µ-law table, a few packets lost, a DTMF digit every minute), BYE. Then, in the
same process, each as the median of ``--runs`` runs, interleaved:

- read: iterate the file with ``CaptureReader`` (every frame, nothing else);
- engine: the CDR alone (``replay`` without observer), for reference;
- chart: ``quality_timeline`` (per-second series and marks) and its SVG;
- audio: ``render_audio`` to a stereo WAV, the output rate given as the API gives it
  from the stored CDR (one pass over the file).

Target: the chart in at most 2x the read time.

    .venv/bin/python bench/quality.py [--runs 3] [--minutes 60]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import struct
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from voipmon.analysis.replay import replay  # noqa: E402
from voipmon.analysis.timeline import quality_timeline  # noqa: E402
from voipmon.audio.render import render_audio  # noqa: E402
from voipmon.packet.readers import CaptureReader  # noqa: E402
from voipmon.packet.writers import pcap_global_header, pcap_record  # noqa: E402
from voipmon.test.callsupport import rtp, sdp, sip_message, udp_frame  # noqa: E402
from voipmon.web.quality_svg import quality_svg  # noqa: E402

TARGET = 2.0
A, B = ("10.0.0.1", 5060), ("10.0.0.2", 5060)
AM, BM = ("10.0.0.1", 40000), ("10.0.0.2", 50000)


def _ulaw(sample: int) -> int:
    """G.711 µ-law of one 16-bit sample (the table the tone is made from)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | exponent << 4 | mantissa) & 0xFF


def build(path: str, minutes: float) -> int:
    """Write the call; returns its frame count."""
    t0 = 1_700_000_000.0
    cid = "bench-quality@example.org"
    offer = sdp(AM[0], AM[1], (0, 101), {101: ("telephone-event", 8000)})
    answer = sdp(BM[0], BM[1], (0, 101), {101: ("telephone-event", 8000)})
    tone = bytes(_ulaw(round(12000 * math.sin(2 * math.pi * 1000 * i / 8000)))
                 for i in range(160))
    quiet = b"\xff" * 160
    packets = int(minutes * 60 * 50)
    head = struct.Struct("!BBHII")
    fa = udp_frame(AM[0], AM[1], BM[0], BM[1], rtp(0, 0, 1, 0, payload=tone))
    fb = udp_frame(BM[0], BM[1], AM[0], AM[1], rtp(0, 0, 2, 0, payload=quiet))
    frames = 0
    with open(path, "wb") as out:
        out.write(pcap_global_header(1))

        def sip(ts: float, src: tuple, dst: tuple, message: bytes) -> None:
            out.write(pcap_record(ts, udp_frame(src[0], src[1], dst[0], dst[1], message)))

        sip(t0, A, B, sip_message("INVITE sip:bob@example.com SIP/2.0", cid, "1 INVITE", "f",
                                  body=offer))
        sip(t0 + 0.5, B, A, sip_message("SIP/2.0 180 Ringing", cid, "1 INVITE", "f", "t"))
        sip(t0 + 2.0, B, A, sip_message("SIP/2.0 200 OK", cid, "1 INVITE", "f", "t",
                                        body=answer))
        sip(t0 + 2.001, A, B, sip_message("ACK sip:bob@x SIP/2.0", cid, "1 ACK", "f", "t"))
        frames += 4
        start = t0 + 2.02
        parts = []
        for i in range(packets):
            t = start + i * 0.02
            if i % 3000 == 1500:                     # a DTMF digit every minute
                event = bytes([i // 3000 % 10, 0x8A]) + (160).to_bytes(2, "big")
                parts.append(pcap_record(t, udp_frame(AM[0], AM[1], BM[0], BM[1], rtp(
                    i, i * 160, 1, 101, True, event))))
            elif i % 997 != 500:                     # about 0.1 % lost
                parts.append(pcap_record(t, fa[:42] + head.pack(0x80, 0, i & 0xFFFF,
                                                                i * 160 & 0xFFFFFFFF, 1)
                                         + fa[54:]))
            parts.append(pcap_record(t + 0.005, fb[:42] + head.pack(
                0x80, 0, i & 0xFFFF, i * 160 & 0xFFFFFFFF, 2) + fb[54:]))
            if len(parts) >= 20000:
                frames += len(parts)
                out.write(b"".join(parts))
                parts = []
        frames += len(parts)
        out.write(b"".join(parts))
        end = start + packets * 0.02
        sip(end, A, B, sip_message("BYE sip:bob@x SIP/2.0", cid, "2 BYE", "f", "t"))
        sip(end + 0.01, B, A, sip_message("SIP/2.0 200 OK", cid, "2 BYE", "f", "t"))
        frames += 2
    return frames


def timed(fn: object) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()  # type: ignore[operator]
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "call.pcap")
        frames = build(path, args.minutes)
        wav = os.path.join(tmp, "call.wav")
        print(f"capture: one {args.minutes:g}-minute G.711 call, {frames} frames, "
              f"{os.path.getsize(path) / 1e6:.1f} MB; median of {args.runs} runs; "
              f"{os.cpu_count()} CPUs")

        def read() -> int:
            with CaptureReader(path) as reader:
                return sum(1 for _ in reader)

        def chart() -> tuple[dict, str]:
            timeline = quality_timeline(path)
            return timeline, quality_svg(timeline)

        tasks = {"read": read, "engine": lambda: replay(path, None),
                 "chart": chart, "audio": lambda: render_audio(path, wav, rate=8000)}
        samples: dict[str, list[float]] = {k: [] for k in tasks}
        results: dict[str, object] = {}
        for _ in range(args.runs):
            for name, task in tasks.items():
                seconds, results[name] = timed(task)
                samples[name].append(seconds)
        times = {k: statistics.median(v) for k, v in samples.items()}
        timeline, svg = results["chart"]  # type: ignore[misc]
        info = results["audio"]
        streams = timeline["streams"]
        print(f"chart: {len(streams)} streams x {len(streams[0]['packets'])} intervals, "
              f"{len(timeline['marks'])} marks, SVG {len(svg) / 1e3:.0f} kB; audio: "
              f"{info['duration']:.0f} s at {info['rate']} Hz, "  # type: ignore[index]
              f"{os.path.getsize(wav) / 1e6:.0f} MB WAV")
        print(f"{'what':46} {'seconds':>8} {'x read':>7} {'target':>8}")
        rows = [("read the pcap (CaptureReader)", "read", None),
                ("engine alone (the CDR), for reference", "engine", None),
                ("chart data + SVG (quality_timeline)", "chart", TARGET),
                ("audio: stereo WAV (render_audio)", "audio", None)]
        for label, key, target in rows:
            ratio = times[key] / times["read"]
            verdict = "" if target is None else f"{'<=' if ratio <= target else '>'}{target:.0f}x"
            print(f"{label:46} {times[key]:8.3f} {ratio:6.2f}x {verdict:>8}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process (all of the above): {peak:.0f} MB")
        met = times["chart"] / times["read"] <= TARGET
        print("target met" if met else "target NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
