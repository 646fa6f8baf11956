"""Every codec decoded from RTP: public captures, and tones encoded by real encoders.

Public captures (G.711 µ/A, G.722, G.729, Opus, and SIPp's G.711) are rendered and each
stream must decode without a refused frame; the G.711 one is checked sample for sample
against sox decoding the payloads that tshark extracts. For the other codecs a 1 kHz tone
is encoded by a real encoder (see ``audiosupport``), sent as RTP in a SIP call and must
come back as a 1 kHz tone at its place.
"""

from __future__ import annotations

import io
import os
import subprocess

import numpy as np
from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.replay import replay
from voipmon.audio.codecs import AMR_NB_BITS, AMR_WB_BITS, codec_for
from voipmon.audio.render import render_audio
from voipmon.test.audiosupport import (
    CallCapture,
    amr_bandwidth_efficient,
    amr_storage_frames,
    amr_wb_frames,
    av_encode,
    chunks,
    decode_file,
    g729_frames,
    peak_frequency,
    rms,
    rtp_muxed,
    sox_encode,
    speex_packets,
    tone_pcm,
    tool,
)
from voipmon.test.common import GENERATED_PCAPS, require_tshark, shared_path

START = 1.0     # the tone starts this long after the INVITE


def render(call: CallCapture, seconds: float = 1.5) -> tuple[dict, np.ndarray, int]:
    pcap = call.pcap(call.start + START + seconds)
    out = io.BytesIO()
    info = render_audio(io.BytesIO(pcap), out)
    samples, rate = decode_file(out.getvalue())
    return info, samples, rate


class ToneCase(SynchronousTestCase):
    def check_tone(self, call: CallCapture, freq: float = 1000.0, span: float = 0.8,
                   delta: float = 10.0) -> tuple[dict, np.ndarray, int]:
        info, samples, rate = render(call)
        stream = info["streams"][0]
        self.assertEqual(stream["errors"], 0, stream)
        self.assertEqual(stream["decoded"], stream["packets"])
        left = samples[0]
        tone = left[round((START + 0.2) * rate):round((START + span) * rate)]
        self.assertApproximates(peak_frequency(tone, rate), freq, delta)
        self.assertGreater(rms(tone), 0.05)
        self.assertLess(rms(left[:round((START - 0.05) * rate)]), 1e-6)   # before the tone
        self.assertLess(rms(samples[1]), 1e-6)                          # callee said nothing
        return info, samples, rate


class SynthesisedCodecTests(ToneCase):
    def test_pcma_sox(self) -> None:
        call = CallCapture(offer_pts=(8,))
        data = sox_encode(tone_pcm(1000, 1.0), 8000, "-t", "raw", "-e", "a-law")
        call.caller.send(chunks(data, 160), 8, 160, call.start + START)
        self.check_tone(call, delta=2.0)

    def test_g722_ffmpeg(self) -> None:
        call = CallCapture(offer_pts=(9,))
        data = b"".join(av_encode("g722", tone_pcm(1000, 1.0, 16000), 16000))
        call.caller.send(chunks(data, 160), 9, 160, call.start + START)   # 8000 Hz clock
        _, _, rate = self.check_tone(call)
        self.assertEqual(rate, 16000)

    def test_g726_both_bit_orders(self) -> None:
        for name, encoder in (("G726-32", "g726le"), ("AAL2-G726-32", "g726")):
            call = CallCapture(offer_pts=(97,), rtpmap={97: (name, 8000)})
            data = b"".join(av_encode(encoder, tone_pcm(1000, 1.0), 8000, bit_rate="32000"))
            call.caller.send(chunks(data, 80), 97, 160, call.start + START)
            info, _, _ = self.check_tone(call)
            self.assertEqual(info["streams"][0]["codec"], name)

    def test_g723_ffmpeg(self) -> None:
        call = CallCapture(offer_pts=(4,))
        frames = av_encode("g723_1", tone_pcm(1000, 1.0), 8000, bit_rate="6300")
        self.assertEqual({len(f) for f in frames}, {24})
        call.caller.send(frames, 4, 240, call.start + START, ptime=0.03)
        self.check_tone(call, delta=20.0)

    def test_gsm_sox(self) -> None:
        call = CallCapture(offer_pts=(3,))
        data = sox_encode(tone_pcm(1000, 1.0), 8000, "-t", "gsm")
        call.caller.send(chunks(data, 33), 3, 160, call.start + START)
        self.check_tone(call)

    def test_g729_annex_b_bcg729(self) -> None:
        # 1 s of tone, 0.5 s of silence (VAD: SID frames, then nothing), 0.5 s of tone
        pcm = np.concatenate([tone_pcm(1000, 1.0), np.zeros(4000, np.int16),
                              tone_pcm(1000, 0.5)])
        frames = g729_frames(pcm)
        self.assertIn(2, {len(f) for f in frames})           # Annex B SID frames
        call = CallCapture(offer_pts=(18,))
        packets = [frames[i] + frames[i + 1] for i in range(0, len(frames) - 1, 2)]
        sent = [i for i, p in enumerate(packets) if p]
        self.assertLess(len(sent), len(packets))            # DTX: some not sent at all
        for n, i in enumerate(sent):
            call.caller.packets.append((call.start + START + i * 0.02, 100 + n, 1000 + i * 160,
                                        18, False, packets[i]))
        info, samples, rate = render(call, 2.0)
        stream = info["streams"][0]
        self.assertEqual((stream["errors"], stream["decoded"] <= stream["packets"]), (0, True))
        left = samples[0]
        for a, b in ((0.2, 0.9), (1.6, 1.9)):
            tone = left[round((START + a) * rate):round((START + b) * rate)]
            self.assertApproximates(peak_frequency(tone, rate), 1000.0, 10.0)
            self.assertGreater(rms(tone), 0.05)
        quiet = left[round((START + 1.15) * rate):round((START + 1.45) * rate)]
        self.assertEqual(float(np.abs(quiet).max()), 0.0)   # SID and DTX are silence

    def check_amr_modes(self, storage: bytes, name: str, bits: tuple[int, ...],
                        clock: int) -> None:
        """The frames of AMR storage file ``storage`` as octet-aligned RTP (FFmpeg's RFC
        4867 packetiser) and as bandwidth-efficient RTP: the same tone, sample for sample."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(storage)
        octet = rtp_muxed(path)
        efficient = [amr_bandwidth_efficient(f, bits) for f in amr_storage_frames(storage, bits)]
        self.assertIn(len(efficient) - len(octet), (0, 1))    # it may keep the last frame
        decoded = []
        for aligned in (True, False):
            call = CallCapture(offer_pts=(96,), rtpmap={96: (name, clock)})
            if aligned:
                call.caller.send_rtp(octet, 96, clock, call.start + START)
            else:
                call.caller.send(efficient[:len(octet)], 96, clock // 50, call.start + START)
            _, samples, rate = self.check_tone(call)
            self.assertEqual(rate, clock)
            decoded.append(samples)
        self.assertEqual(decoded[0].tolist(), decoded[1].tolist())

    def test_amr_nb_octet_aligned_and_bandwidth_efficient(self) -> None:
        storage = sox_encode(tone_pcm(1000, 1.0), 8000, "-t", "amr-nb", "-C", "7")
        self.check_amr_modes(storage, "AMR", AMR_NB_BITS, 8000)

    def test_amr_wb_both_modes(self) -> None:
        frames = amr_wb_frames(tone_pcm(1000, 1.0, 16000))
        self.check_amr_modes(b"#!AMR-WB\n" + b"".join(frames), "AMR-WB", AMR_WB_BITS, 16000)

    def test_opus_libopus(self) -> None:
        packets = av_encode("libopus", tone_pcm(1000, 1.0, 48000), 48000)
        call = CallCapture(offer_pts=(111,), rtpmap={111: ("opus", 48000)})
        call.caller.send(packets, 111, 960, call.start + START)
        _, _, rate = self.check_tone(call, span=0.9)
        self.assertEqual(rate, 48000)

    def test_speex_ffmpeg(self) -> None:
        packets = speex_packets(tone_pcm(1000, 1.0), 8000)
        call = CallCapture(offer_pts=(97,), rtpmap={97: ("speex", 8000)})
        call.caller.send(packets, 97, 160, call.start + START)
        self.check_tone(call)

    def test_ilbc_modes(self) -> None:
        # no iLBC encoder is packaged: frames of noise check the 20/30 ms modes and placement
        rng = np.random.default_rng(7)
        for size, ticks in ((38, 160), (50, 240)):
            frames = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for _ in range(20)]
            call = CallCapture(offer_pts=(97,), rtpmap={97: ("iLBC", 8000)})
            call.caller.send(frames, 97, ticks, call.start + START, ptime=ticks / 8000)
            info, samples, rate = render(call)
            stream = info["streams"][0]
            self.assertEqual((stream["decoded"], stream["errors"]), (20, 0))
            left = samples[0]
            first = round(START * rate)
            self.assertEqual(float(np.abs(left[:first]).max()), 0.0)
            self.assertGreater(rms(left[first:first + 20 * ticks]), 0.0)
            self.assertEqual(float(np.abs(left[first + 20 * ticks + 8:]).max()), 0.0)

    def test_two_frames_of_ilbc_in_one_packet(self) -> None:
        codec = codec_for(97, {97: ("iLBC", 8000)})
        assert codec is not None
        self.assertEqual([t for t, _ in codec.split(bytes(76))], [160, 160])
        self.assertEqual([t for t, _ in codec.split(bytes(100))], [240, 240])


class PublicCaptureTests(SynchronousTestCase):
    def render_all(self, name: str, folder: str = "public") -> list[tuple[dict, np.ndarray]]:
        path = shared_path("pcaps", folder, name)
        out = []
        for cdr in replay(path, None):
            if not cdr.rtp:
                continue
            buffer = io.BytesIO()
            info = render_audio(path, buffer, cdr_uid=cdr.sensor_cdr_uid)
            samples, rate = decode_file(buffer.getvalue())
            self.assertApproximates(samples.shape[1] / rate, cdr.duration, 0.001)
            for stream in info["streams"]:
                self.assertEqual((stream["errors"], stream["late"]), (0, 0), stream)
                self.assertEqual(stream["decoded"], stream["packets"], stream)
            out.append((info, samples))
        self.assertTrue(out)
        return out

    def test_g711_against_sox(self) -> None:
        tshark = require_tshark()
        path = shared_path("pcaps", "public", "sipnab__sip-rtp-g711.pcap")
        for (info, samples), codec in zip(self.render_all("sipnab__sip-rtp-g711.pcap"),
                                          ("PCMU", "PCMA"), strict=True):
            ssrc = info["streams"][0]["ssrc"]
            self.assertEqual(info["streams"][0]["codec"], codec)
            rows = subprocess.run(
                [tshark, "-r", path, "-Y", f"rtp.ssrc == {ssrc}", "-T", "fields",
                 "-e", "rtp.payload"], check=True, capture_output=True, text=True).stdout
            payload = b"".join(bytes.fromhex(r.replace(":", "")) for r in rows.split())
            sox = subprocess.run(
                [tool("sox", "sox"), "-t", "raw", "-r", "8000", "-c", "1", "-e",
                 "u-law" if codec == "PCMU" else "a-law", "-", "-t", "raw", "-e",
                 "signed-integer", "-b", "16", "-"], input=payload, check=True,
                capture_output=True).stdout
            reference = np.frombuffer(sox, "<i2")
            channel = samples[1] if info["streams"][0]["side"] == "callee" else samples[0]
            ours = np.rint(channel * 32768).astype(np.int16)
            mine, theirs = int(np.flatnonzero(ours)[0]), int(np.flatnonzero(reference)[0])
            reference = reference[theirs:]
            self.assertGreater(len(reference), 8000)
            ours = ours[mine:mine + len(reference)]
            # the audio ends with the call: at most the last packet's tail is past it
            self.assertLessEqual(len(reference) - len(ours), 160)
            self.assertEqual(ours.tolist(), reference[:len(ours)].tolist())

    def test_g722(self) -> None:
        [(info, samples)] = self.render_all("sipnab__sip-rtp-g722.pcap")
        self.assertEqual((info["rate"], info["streams"][0]["codec"]), (16000, "G722"))
        self.assertGreater(rms(samples[1]), 0.005)

    def test_g729(self) -> None:
        [(info, samples)] = self.render_all("sipnab__sip-rtp-g729a.pcap")
        self.assertEqual(info["streams"][0]["codec"], "G729")
        self.assertGreater(rms(samples[1]), 0.005)

    def test_opus(self) -> None:
        [(info, _)] = self.render_all("sipnab__invite-opus-bye.pcap")
        self.assertEqual([s["codec"] for s in info["streams"]], ["opus", "opus"])
        self.assertEqual(info["rate"], 48000)

    def test_codec_change_by_reinvite(self) -> None:
        [(info, samples)] = self.render_all("sipnab__codec-negotiation.pcap")
        self.assertEqual(sorted({s["codec"] for s in info["streams"]}), ["G722", "PCMU"])
        self.assertEqual(info["rate"], 16000)
        self.assertGreater(rms(samples[0]), 0.005)

    def test_sipp_calls(self) -> None:
        for info, samples in self.render_all("sipp_uac_pcap_rtp_echo_lo_3calls.pcap",
                                             os.path.basename(GENERATED_PCAPS)):
            self.assertEqual({s["codec"] for s in info["streams"]}, {"PCMA"})
            self.assertGreater(rms(samples[0]), 0.01)
            self.assertGreater(rms(samples[1]), 0.01)
