"""Tests for voipmon.audio: a call with known audio, built with real tools, decoded back.

The acceptance test: sox makes a 1 kHz tone for the caller and a 2 kHz one for the callee,
G.711-encoded by sox and sent as RTP with packets dropped, reordered and a silence
suppression gap; the WAV must last as long as the call (within 20 ms), have each tone in
its channel (FFT), and be silent exactly where packets are missing.
"""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.engine import Engine
from voipmon.analysis.replay import CallNotFound, replay
from voipmon.audio.render import HEADER_ONLY, AudioUnavailable, render_audio
from voipmon.manager.pcapmerge import plan_merge
from voipmon.packet.readers import CaptureReader
from voipmon.spool.writer import SpoolWriter
from voipmon.test.audiosupport import (
    CallCapture,
    chunks,
    decode_file,
    peak_frequency,
    rms,
    sox_encode,
    tone_pcm,
)
from voipmon.test.common import shared_path

TONE_START = 1.0          # seconds after the INVITE (the 200 OK comes at 0.5)
DROPPED = frozenset({50, 51, 52, 53, 54, 120})
SWAPPED = (80, 81)        # the caller's packets 80 and 81 arrive in reverse order
GAP = (60, 85)            # the callee suppresses packets 60..84: 500 ms of silence


def tone_call() -> tuple[CallCapture, float]:
    """The call; returns it and the time of its BYE."""
    call = CallCapture(offer_pts=(0,))
    caller = chunks(sox_encode(tone_pcm(1000, 3.0), 8000, "-t", "raw", "-e", "u-law"), 160)
    callee = chunks(sox_encode(tone_pcm(2000, 3.0), 8000, "-t", "raw", "-e", "u-law"), 160)
    start = call.start + TONE_START
    call.caller.send(caller, 0, 160, start, drop=DROPPED)
    packets = call.caller.packets
    i, j = (next(n for n, p in enumerate(packets) if p[1] == 100 + k) for k in SWAPPED)
    packets[i], packets[j] = (packets[j][0] - 0.001, *packets[j][1:]), \
        (packets[i][0] + 0.001, *packets[i][1:])
    call.callee.send(callee, 0, 160, start + 0.005,
                     drop=frozenset(range(*GAP)))
    return call, start + 3.2


class ToneCallTests(SynchronousTestCase):
    def setUp(self) -> None:
        call, self.bye = tone_call()
        self.call = call
        self.pcap = call.pcap(self.bye)
        out = io.BytesIO()
        self.info = render_audio(io.BytesIO(self.pcap), out)
        self.samples, self.rate = decode_file(out.getvalue())
        self.cdr = replay(io.BytesIO(self.pcap), None)[0]

    def at(self, seconds: float) -> int:
        return round(seconds * self.rate)

    def test_duration_is_the_calls(self) -> None:
        self.assertEqual(self.rate, 8000)
        duration = self.samples.shape[1] / self.rate
        self.assertApproximates(duration, self.cdr.duration, 0.020)
        self.assertApproximates(self.info["duration"], duration, 0.001)

    def test_each_direction_in_its_channel(self) -> None:
        left, right = self.samples
        tone = slice(self.at(TONE_START + 0.1), self.at(TONE_START + 0.9))
        self.assertApproximates(peak_frequency(left[tone], self.rate), 1000.0, 2.0)
        self.assertApproximates(peak_frequency(right[tone], self.rate), 2000.0, 2.0)
        self.assertGreater(rms(left[tone]), 0.3)
        self.assertEqual([s["side"] for s in self.info["streams"]], ["caller", "callee"])
        self.assertEqual(self.info["notes"], [])

    def test_silence_exactly_where_packets_are_missing(self) -> None:
        left, right = self.samples
        start = self.at(TONE_START)
        for first, last in ((50, 55), (120, 121)):
            hole = left[start + first * 160:start + last * 160]
            self.assertTrue((hole == 0).all(), f"packets {first}..{last - 1}")
            self.assertGreater(rms(left[start + (first - 1) * 160:start + first * 160]), 0.3)
            self.assertGreater(rms(left[start + last * 160:start + (last + 1) * 160]), 0.3)
        # reordered packets are placed by timestamp: no hole there
        self.assertGreater(rms(left[start + 80 * 160:start + 82 * 160]), 0.3)
        # nothing before the first packet, nothing after the last
        self.assertTrue((self.samples[:, :start] == 0).all())
        self.assertTrue((left[start + 150 * 160 + 8:] == 0).all())
        gap = right[self.at(TONE_START + 0.005) + GAP[0] * 160:
                    self.at(TONE_START + 0.005) + GAP[1] * 160]
        self.assertTrue((gap == 0).all())
        self.assertEqual(self.info["streams"][0]["packets"], 150 - len(DROPPED))

    def test_ogg_opus(self) -> None:
        out = io.BytesIO()
        info = render_audio(io.BytesIO(self.pcap), out, "ogg")
        samples, rate = decode_file(out.getvalue())
        self.assertEqual(info["rate"], 8000)
        self.assertApproximates(samples.shape[1] / rate, self.cdr.duration, 0.020)
        tone = slice(round((TONE_START + 0.1) * rate), round((TONE_START + 0.9) * rate))
        self.assertApproximates(peak_frequency(samples[0][tone], rate), 1000.0, 3.0)
        self.assertApproximates(peak_frequency(samples[1][tone], rate), 2000.0, 3.0)

    def test_call_pcap_from_the_spool(self) -> None:
        # the central renders from the sensor's SIP and RTP pcaps of the call, merged
        root = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, root)
        cdrs = []
        engine = Engine(id_sensor=1, on_cdr=cdrs.append, spool=SpoolWriter(root))
        with CaptureReader(io.BytesIO(self.pcap)) as reader:
            engine.feed_all(reader)
        engine.finish()
        paths = [os.path.join(root, cdrs[0].sip_pcap), os.path.join(root, cdrs[0].rtp_pcap)]
        merged = b"".join(plan_merge(paths).chunks())
        out = io.BytesIO()
        info = render_audio(io.BytesIO(merged), out, cdr_uid=cdrs[0].sensor_cdr_uid)
        self.assertEqual(decode_file(out.getvalue())[0].tolist(), self.samples.tolist())
        self.assertEqual(info["sensor_cdr_uid"], cdrs[0].sensor_cdr_uid)


class UnavailableTests(SynchronousTestCase):
    def test_header_only_pcap_says_so(self) -> None:
        call, bye = tone_call()
        root = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, root)
        cdrs = []
        engine = Engine(id_sensor=1, on_cdr=cdrs.append, spool=SpoolWriter(root),
                        savertp="header")
        with CaptureReader(io.BytesIO(call.pcap(bye))) as reader:
            engine.feed_all(reader)
        engine.finish()
        paths = [os.path.join(root, cdrs[0].sip_pcap), os.path.join(root, cdrs[0].rtp_pcap)]
        merged = b"".join(plan_merge(paths).chunks())
        out = io.BytesIO()
        with self.assertRaises(AudioUnavailable) as caught:
            render_audio(io.BytesIO(merged), out)
        self.assertIn(HEADER_ONLY, str(caught.exception))
        self.assertEqual(out.getvalue(), b"")

    def test_codec_without_decoder_is_named(self) -> None:
        call = CallCapture(offer_pts=(96,), rtpmap={96: ("SILK", 16000)})
        call.caller.send([b"\x01" * 40] * 50, 96, 320, call.start + 1.0)
        out = io.BytesIO()
        with self.assertRaises(AudioUnavailable) as caught:
            render_audio(io.BytesIO(call.pcap(call.start + 3.0)), out)
        self.assertIn("codec SILK/16000 (payload type 96) cannot be decoded",
                      str(caught.exception))
        self.assertEqual(out.getvalue(), b"")

    def test_several_calls_need_a_uid(self) -> None:
        first, bye = tone_call()
        second = CallCapture(callid="other@example.org", start=first.start + 10)
        pcap = first.pcap(bye) + second.pcap(second.start + 2)[24:]
        path = os.path.join(tempfile.mkdtemp(), "out.wav")
        with self.assertRaises(CallNotFound):
            render_audio(io.BytesIO(pcap), path)
        self.assertFalse(os.path.exists(path))
        uid = replay(io.BytesIO(pcap), None)[0].sensor_cdr_uid
        info = render_audio(io.BytesIO(pcap), path, cdr_uid=uid)
        self.assertTrue(os.path.getsize(path) > 44)
        self.assertEqual(info["sensor_cdr_uid"], uid)


class DirectionTests(SynchronousTestCase):
    def test_sip_dtmf2_each_side_in_its_channel(self) -> None:
        # both of the call's media ends on one PBX, bridged to a phone in no SDP (see
        # test_analysis_media.DirectionTests): the phone's stream (with the DTMF) is
        # the caller's, left; the PBX's to it the callee's, right
        path = shared_path("pcaps", "public", "sipnab__SIP_DTMF2.cap")
        (cdr,) = [c for c in replay(path, None) if c.rtp]
        out = io.BytesIO()
        info = render_audio(path, out, cdr_uid=cdr.sensor_cdr_uid)
        self.assertEqual(sorted((s["saddr"], s["side"]) for s in info["streams"]),
                         [("192.168.105.110", "callee"), ("192.168.105.172", "caller")])
        samples, rate = decode_file(out.getvalue())
        talk = slice(round(25 * rate), round(44 * rate))
        left, right = samples[0][talk], samples[1][talk]
        self.assertGreater(rms(left), 0.001)
        self.assertGreater(rms(right), 0.001)
        self.assertFalse(np.array_equal(left, right))
