"""Tests for voipmon.cli: the ``voipmon-analyze`` command."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import dpkt
from twisted.trial.unittest import SynchronousTestCase

from voipmon import cli
from voipmon.packet import readers
from voipmon.records.cdr import Cdr
from voipmon.test.callsupport import rtp, sdp, sip_message, udp_frame

A, B = ("10.0.0.1", 5060), ("10.0.0.2", 5060)
AM, BM = ("10.0.0.1", 40000), ("10.0.0.2", 50000)


def write_capture(path: str, callid: str = "cli-call@test", rtp_count: int = 60,
                  orphan: bool = False) -> None:
    """A small pcap: one answered call with RTP both ways and a BYE."""
    frames: list[tuple[float, bytes]] = []

    def udp(ts: float, src: tuple, dst: tuple, payload: bytes) -> None:
        frames.append((ts, udp_frame(src[0], src[1], dst[0], dst[1], payload)))

    t = 1600000000.0
    udp(t, A, B, sip_message("INVITE sip:bob@example.com SIP/2.0", callid, "1 INVITE", "ft",
                             body=sdp(*AM)))
    udp(t + 1, B, A, sip_message("SIP/2.0 200 OK", callid, "1 INVITE", "ft", "tt",
                                 body=sdp(*BM)))
    for i in range(rtp_count):
        udp(t + 1.1 + i * 0.02, AM, BM, rtp(i, i * 160, 0x1234))
        udp(t + 1.11 + i * 0.02, BM, AM, rtp(i, i * 160, 0x5678))
        if orphan:
            udp(t + 1.12 + i * 0.02, ("10.5.5.5", 20000), ("10.5.5.6", 20002),
                rtp(i, i * 160, 0x9999))
    end = t + 2 + rtp_count * 0.02
    udp(end, A, B, sip_message("BYE sip:bob@10.0.0.2 SIP/2.0", callid, "2 BYE", "ft", "tt"))
    udp(end + 0.01, B, A, sip_message("SIP/2.0 200 OK", callid, "2 BYE", "ft", "tt"))
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f)
        for ts, frame in frames:
            writer.writepkt(frame, ts=ts)


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


class CliTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.capture = os.path.join(self.dir, "call.pcap")
        write_capture(self.capture, orphan=True)

    def run_cli(self, *argv: str, err: io.StringIO | None = None) -> tuple[int, str, str]:
        out = io.StringIO()
        err = err if err is not None else io.StringIO()
        status = cli.main(list(argv), out, err)
        return status, out.getvalue(), err.getvalue()

    def test_json_lines(self) -> None:
        status, out, err = self.run_cli("--json", "--id-sensor", "12", self.capture)
        self.assertEqual((status, err), (0, ""))
        (line,) = out.splitlines()
        cdr = Cdr.from_json(json.loads(line))
        self.assertEqual((cdr.callid, cdr.id_sensor, cdr.lastSIPresponseNum, cdr.bye),
                         ("cli-call@test", 12, 200, 3))
        self.assertEqual(sorted(s.received for s in cdr.rtp), [60, 60])
        self.assertEqual(json.loads(line)["a_received"], 60)

    def test_orphans_in_json_only_when_asked(self) -> None:
        _, out, _ = self.run_cli("--json", "--orphans", self.capture)
        records = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(len(records), 2)
        self.assertEqual(records[1]["orphan_stream"]["ssrc"], 0x9999)
        self.assertFalse(records[1]["orphan_stream"]["tied_to_sip"])

    def test_table(self) -> None:
        status, out, _ = self.run_cli(self.capture)
        self.assertEqual(status, 0)
        self.assertIn("cli-call@test", out)
        self.assertIn("calldate (UTC)", out)
        self.assertIn("2020-09-13T12:26:40.000Z", out)
        self.assertIn("ssrc 0x00001234 PCMU/8000 recv 60 lost 0", out)
        self.assertIn("without signalling", out)
        self.assertIn("ssrc 0x00009999", out)

    def test_spool(self) -> None:
        spool = os.path.join(self.dir, "spool")
        status, out, _ = self.run_cli("--json", "--spool", spool, self.capture)
        cdr = Cdr.from_json(json.loads(out.splitlines()[0]))
        self.assertEqual(status, 0)
        self.assertTrue(os.path.getsize(os.path.join(spool, cdr.sip_pcap)) > 24)
        self.assertTrue(os.path.getsize(os.path.join(spool, cdr.rtp_pcap)) > 24)

    def test_sipport(self) -> None:
        options = cli.Options()
        options.parseOptions(["--sipport", "7000,7002", "--sipport", "8000", "f"])
        self.assertEqual(options["sipport"], [7000, 7002, 8000])
        options = cli.Options()
        options.parseOptions(["f"])
        self.assertEqual(options["sipport"], [5060])
        seen = []
        real = cli.Engine

        def spy(**kwargs):
            seen.append(kwargs["sip_ports"])
            return real(**kwargs)

        self.patch(cli, "Engine", spy)
        self.run_cli("--json", "--sipport", "7000", self.capture)
        self.assertEqual(seen, [[7000]])

    def test_unreadable_files(self) -> None:
        text = os.path.join(self.dir, "notes.txt")
        with open(text, "w") as f:
            f.write("not a capture\n")
        status, out, err = self.run_cli("--json", os.path.join(self.dir, "missing.pcap"), text,
                                        self.capture)
        self.assertEqual(status, 1)
        self.assertIn("missing.pcap: No such file or directory", err)
        self.assertIn("notes.txt: at byte offset 0: not a pcap or pcapng file", err)
        self.assertEqual(len(out.splitlines()), 1)  # the good file is still analysed

    def test_truncated_file_is_reported_and_analysed(self) -> None:
        """A capture cut short is analysed up to the cut, then an error with the offset of
        the record cut short, and exit status 1 (it was a warning and 0)."""
        with open(self.capture, "rb") as f:
            data = f.read()
        cut = os.path.join(self.dir, "cut.pcap")
        with open(cut, "wb") as f:
            f.write(data[:-30])
        status, out, err = self.run_cli("--json", cut)
        self.assertEqual(status, 1)
        with open(self.capture, "rb") as f:
            need = 16 + len(list(dpkt.pcap.Reader(f))[-1][1])
        last = len(data) - need
        self.assertEqual(err, f"voipmon-analyze: {cut}: last pcap record at byte offset {last} "
                              f"is truncated ({need - 30} of {need} bytes); stopped there "
                              "(1 call reported)\n")
        self.assertEqual(json.loads(out)["bye"], 2)  # the BYE's 200 OK was cut off

    def test_bad_options(self) -> None:
        for argv in ([], ["--id-sensor", "70000", "x"], ["--sipport", "http", "x"],
                     ["--savertp", "maybe", "x"], ["--bogus", "x"]):
            status, _, err = self.run_cli(*argv)
            self.assertEqual(status, 2, argv)
            self.assertIn("Usage: voipmon-analyze", err)

    def test_progress_on_a_terminal(self) -> None:
        self.patch(cli, "PROGRESS_BYTES", 1)
        self.patch(cli, "_BATCH", 50)
        err = FakeTty()
        status, _, _ = self.run_cli("--json", self.capture, err=err)
        self.assertEqual(status, 0)
        self.assertIn("frames/s", err.getvalue())
        self.assertTrue(err.getvalue().endswith("\r"))  # the line is cleared at the end

    def test_classic_pcap_is_walked_with_progress_from_the_reads(self) -> None:
        walked = []
        real = cli.CaptureReader.batches

        def spy(reader: cli.CaptureReader) -> object:
            walked.append(reader)
            return real(reader)

        self.patch(cli.CaptureReader, "batches", spy)
        self.patch(readers, "CHUNK", 4096)   # many reads from a small file
        self.patch(cli, "PROGRESS_BYTES", 1)
        err = FakeTty()
        status, out, _ = self.run_cli("--json", "--stats", self.capture, err=err)
        self.assertEqual((status, len(walked)), (0, 1))
        shown = re.findall(r"\r\S+: +([\d.]+)%  (\d+) frames", err.getvalue())
        self.assertGreater(len(shown), 5)
        self.assertEqual([float(pct) for pct, _ in shown],
                         sorted(float(pct) for pct, _ in shown))
        self.assertEqual(shown[-1], ("100.0", "184"))  # INVITE, 200, 3 x 60 RTP, BYE, 200
        self.assertIn(f"{self.capture}: 184 frames; ", err.getvalue())
        self.assertEqual(json.loads(out)["a_received"], 60)

    def test_pcapng_gives_the_same_output(self) -> None:
        ng = os.path.join(self.dir, "call.pcapng")
        with open(self.capture, "rb") as f, open(ng, "wb") as g:
            writer = dpkt.pcapng.Writer(g)
            for ts, frame in dpkt.pcap.Reader(f):
                writer.writepkt(frame, ts=ts)
        self.patch(cli, "_BATCH", 50)
        self.patch(cli, "PROGRESS_BYTES", 1)
        runs = []
        for path in (self.capture, ng):
            err = FakeTty()
            status, out, _ = self.run_cli("--json", "--orphans", "--stats", path, err=err)
            self.assertEqual(status, 0)
            self.assertIn("frames/s", err.getvalue())
            stats = re.search(r"(\d+ frames; .*)", err.getvalue())
            runs.append((out, stats and stats[1]))
        self.assertEqual(runs[0], runs[1])
        self.assertEqual(len(runs[0][0].splitlines()), 2)

    def test_stats(self) -> None:
        _, _, err = self.run_cli("--json", "--stats", self.capture)
        self.assertIn('"cdrs": 1', err)

    def test_installed_command(self) -> None:
        script = os.path.join(os.path.dirname(sys.executable), "voipmon-analyze")
        if not os.path.exists(script):
            script = None
        argv = [script] if script else [sys.executable, "-m", "voipmon.cli"]
        done = subprocess.run([*argv, "--json", self.capture], capture_output=True,
                              text=True, timeout=60, check=False)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout)["callid"], "cli-call@test")
