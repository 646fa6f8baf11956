"""``voipmon-analyze --quality`` and ``--audio``: the per-interval table and one audio file
per call, checked against the CDRs of the same captures and against known audio (sox's
tones as G.711 RTP, ``test_audio.tone_call``)."""

from __future__ import annotations

import io
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from voipmon import cli
from voipmon.cli_media import audio_name
from voipmon.test.audiosupport import CallCapture, decode_file, peak_frequency, rms
from voipmon.test.common import data_path
from voipmon.test.test_audio import TONE_START, tone_call

SIPP = "sipp_uac_pcap_rtp_echo_lo_3calls.pcap"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


class QualityTableTests(SynchronousTestCase):
    def setUp(self) -> None:
        call, bye = tone_call()
        self.path = os.path.join(self.mktemp() + ".pcap")
        with open(self.path, "wb") as handle:
            handle.write(call.pcap(bye))

    def test_table(self) -> None:
        status, out, err = run("--quality", self.path)
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0], f"== {self.path}")
        self.assertTrue(lines[1].startswith("quality of audio-test@example.org from "))
        self.assertIn("interval 1 s", lines[1])
        self.assertIn("stream 0 caller 10.1.0.1:40000 -> 10.1.0.2:50000", lines[2])
        self.assertIn("received 144 lost 6", lines[2])
        rows = [line.split() for line in lines[4:]]
        # the tone starts at 1 s: 50 packets a second, packets 50..54 dropped in the 2nd
        self.assertEqual(rows[0][:3], ["1.00", "50", "0"])
        self.assertEqual(rows[1][:3], ["2.00", "45", "5"])
        self.assertIn("marks: 0.000 s INVITE (caller), 0.100 s 180 Ringing (callee)", out)

    def test_json_adds_up_to_the_cdrs(self) -> None:
        path = data_path(SIPP)
        status, out, _ = run("--quality", "--json", "--interval", "0.5", path)
        self.assertEqual(status, 0)
        timelines = [json.loads(line)["quality"] for line in out.splitlines()]
        _, cdr_out, _ = run("--json", path)
        cdrs = [json.loads(line) for line in cdr_out.splitlines()]
        self.assertEqual([t["sensor_cdr_uid"] for t in timelines],
                         [c["sensor_cdr_uid"] for c in cdrs])
        self.assertEqual(len(cdrs), 3)
        for timeline, cdr in zip(timelines, cdrs, strict=True):
            self.assertEqual(timeline["interval"], 0.5)
            for stream, rtp in zip(timeline["streams"], cdr["rtp"], strict=True):
                self.assertEqual(sum(stream["packets"]), rtp["received"])
                self.assertEqual(sum(stream["lost"]), rtp["lost"])

    def test_bad_options(self) -> None:
        status, _, err = run("--quality", "--audio", self.mktemp(), self.path)
        self.assertEqual(status, 2)
        self.assertIn("one at a time", err)
        status, _, err = run("--quality", "--interval", "0", self.path)
        self.assertEqual(status, 2)
        self.assertIn("--interval", err)
        status, _, err = run("--audio", self.mktemp(), "--audio-format", "mp3", self.path)
        self.assertEqual(status, 2)
        self.assertIn("allowed wav, ogg", err)


class AudioFilesTests(SynchronousTestCase):
    def test_one_file_per_call(self) -> None:
        call, bye = tone_call()
        silk = CallCapture(offer_pts=(96,), rtpmap={96: ("SILK", 16000)},
                           callid="silk@example.org", start=call.start + 20)
        silk.caller.send([b"\x01" * 40] * 50, 96, 320, silk.start + 1.0)
        path = self.mktemp() + ".pcap"
        with open(path, "wb") as handle:
            handle.write(call.pcap(bye) + silk.pcap(silk.start + 3.0)[24:])
        directory = self.mktemp()
        status, out, err = run("--audio", directory, path)
        self.assertEqual(status, cli.EXIT_NO_AUDIO)    # the SILK call has no file
        (name,) = os.listdir(directory)
        self.assertTrue(name.startswith("audio-test@example.org-") and name.endswith(".wav"))
        self.assertIn(f"{os.path.join(directory, name)}: ", out)
        self.assertIn("no audio for silk@example.org: codec SILK/16000 (payload type 96) "
                      "cannot be decoded", err)
        with open(os.path.join(directory, name), "rb") as handle:
            samples, rate = decode_file(handle.read())
        _, cdr_out, _ = run("--json", path)
        duration = json.loads(cdr_out.splitlines()[0])["duration"]
        self.assertApproximates(samples.shape[1] / rate, duration, 0.020)
        tone = slice(round((TONE_START + 0.1) * rate), round((TONE_START + 0.9) * rate))
        self.assertApproximates(peak_frequency(samples[0][tone], rate), 1000.0, 2.0)
        self.assertApproximates(peak_frequency(samples[1][tone], rate), 2000.0, 2.0)
        start = round(TONE_START * rate)
        self.assertTrue((samples[0][start + 50 * 160:start + 55 * 160] == 0).all())
        self.assertGreater(rms(samples[0][start + 55 * 160:start + 56 * 160]), 0.3)

    def test_sipp_calls_as_ogg(self) -> None:
        directory = self.mktemp()
        status, out, err = run("--audio", directory, "--audio-format", "ogg", data_path(SIPP))
        self.assertEqual(len(out.splitlines()), 4)     # the file's line, and each call's
        self.assertEqual((status, err), (0, ""))
        _, cdr_out, _ = run("--json", data_path(SIPP))
        cdrs = [json.loads(line) for line in cdr_out.splitlines()]
        self.assertEqual(sorted(os.listdir(directory)), sorted(
            audio_name(c["callid"], c["sensor_cdr_uid"], "ogg") for c in cdrs))
        for cdr in cdrs:
            name = os.path.join(directory, audio_name(cdr["callid"], cdr["sensor_cdr_uid"],
                                                      "ogg"))
            with open(name, "rb") as handle:
                samples, rate = decode_file(handle.read())
            self.assertApproximates(samples.shape[1] / rate, cdr["duration"], 0.020)
            self.assertGreater(rms(samples), 0.0)


class AudioExitStatusTests(SynchronousTestCase):
    """0 when every call's audio was written, 3 when one call's could not be (named on
    stderr), 1 (a file could not be read) over 3."""

    def setUp(self) -> None:
        call, bye = tone_call()
        self.played = self.mktemp() + ".pcap"
        with open(self.played, "wb") as handle:
            handle.write(call.pcap(bye))
        silent = CallCapture(callid="no-rtp@example.org")    # answered, no RTP at all
        self.silent = self.mktemp() + ".pcap"
        with open(self.silent, "wb") as handle:
            handle.write(silent.pcap(silent.start + 2.0))

    def test_every_call_written(self) -> None:
        directory = self.mktemp()
        status, out, err = run("--audio", directory, self.played)
        self.assertEqual((status, err), (cli.EXIT_OK, ""))
        (name,) = os.listdir(directory)
        self.assertIn(os.path.join(directory, name), out)

    def test_a_call_without_audio(self) -> None:
        directory = self.mktemp()
        status, _, err = run("--audio", directory, self.played, self.silent)
        self.assertEqual(status, cli.EXIT_NO_AUDIO)
        self.assertEqual(err, "voipmon-analyze: no audio for no-rtp@example.org: "
                              "the call has no RTP in this capture\n")
        self.assertEqual(len(os.listdir(directory)), 1)     # the other file's call
        self.assertEqual(run("--audio", self.mktemp(), self.silent)[0], 3)   # as documented

    def test_an_unreadable_file_is_worse(self) -> None:
        missing = self.mktemp() + ".pcap"
        status, _, err = run("--audio", self.mktemp(), self.silent, missing)
        self.assertEqual(status, cli.EXIT_FILE)
        self.assertIn("no audio for no-rtp@example.org", err)
        self.assertIn(missing, err)
