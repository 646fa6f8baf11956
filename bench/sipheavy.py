#!/usr/bin/env python3
"""Benchmark: calls/s of a SIP-heavy capture, ``voipmon-analyze`` beside
``tshark -q -z rtp,streams`` on the same file, in the same run.

The capture is real traffic made at run time on ``lo``: SIPp calls SIPp at ``--rate``
calls/s, ``--calls`` short answered calls (INVITE, 100, 180, 200 with SDP, ACK, about
``--rtp-seconds`` of G.711 each way (0: none), BYE, 200: bench/sipp/short_call_*.xml). The caller
replays the first seconds of Debian sip-tester's g711a.pcap from its own media port per
call (``[auto_media_port]``), the answerer echoes it (``-rtp_echo``); tcpdump writes it.
Needs sipp (sip-tester), tcpdump, tshark and editcap, and root to capture.

Then, interleaved round after round (``--runs``, median of each):

- tshark -q -r FILE -z rtp,streams (wall clock of the whole command);
- voipmon-analyze --json --sipport ... FILE (the whole command, interpreter start-up
  included);
- the engine alone in a fresh process (opening the file to the last CDR);

and prints calls/s of each, the ratio to tshark and the targets: the whole command at
least 2x tshark, and at least 2,000 calls/s.

    .venv/bin/python bench/sipheavy.py [--calls 3000] [--rate 300] [--rtp-seconds 2]
                                       [--runs 3] [--pcap FILE --sipport P,P]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIPP_MEDIA = "/usr/share/sip-tester/g711a.pcap"   # 30 ms G.711 A-law frames
TARGET_RATIO, TARGET_CPS = 2.0, 2000.0
MEDIA_SPAN = 10_004   # [auto_media_port]: the caller's ports run over 10,000 from its -mp


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"bench/sipheavy.py: {tool} is not installed")
    return path


class Calls:
    """The SIPp calls of a run: the scenarios written into ``tmp``, free ports, and the
    two command lines (the answerer first, then the caller, which exits when done)."""

    def __init__(self, tmp: str, calls: int, rate: int, rtp_seconds: float,
                 media_base: int) -> None:
        sipp = need("sipp")
        frames = round(rtp_seconds / 0.03)
        with open(os.path.join(HERE, "sipp", "short_call_uac.xml")) as f:
            uac = f.read().replace("PAUSE_MS", str(round(frames * 30 + 150)))
        if frames:
            subprocess.run([need("editcap"), "-r", SIPP_MEDIA, os.path.join(tmp, "rtp.pcap"),
                            f"1-{frames}"], check=True, capture_output=True)
        else:  # signalling only
            uac = "\n".join(line for line in uac.split("\n") if "play_pcap" not in line)
        with open(os.path.join(tmp, "uac.xml"), "w") as f:
            f.write(uac)
        uas_port, uac_port, echo = free_udp_port(), free_udp_port(), free_udp_port()
        self.sip_ports = [uac_port, uas_port]
        self.expression = (
            f"udp and (port {uas_port} or port {uac_port} or port {echo} or port {echo + 2}"
            f" or portrange {media_base}-{media_base + MEDIA_SPAN})")
        common = ["-i", "127.0.0.1", "-nostdin", "-m", str(calls), "-trace_stat",
                  "-trace_err", "-fd", "3600"]
        self.uas = [sipp, "-sf", os.path.join(HERE, "sipp", "short_call_uas.xml"),
                    "-p", str(uas_port), "-mp", str(echo), "-rtp_echo", *common]
        self.uac = [sipp, "-sf", "uac.xml", f"127.0.0.1:{uas_port}", "-p", str(uac_port),
                    "-mp", str(media_base), "-r", str(rate),
                    "-timeout", f"{calls / rate + 60:.0f}s", *common]


def make_capture(tmp: str, calls: int, rate: int, rtp_seconds: float,
                 media_base: int) -> tuple[str, list[int], dict[str, int]]:
    """Run the SIPp calls under tcpdump; (pcap, SIP ports, counts)."""
    run = Calls(tmp, calls, rate, rtp_seconds, media_base)
    pcap = os.path.join(tmp, "sipheavy.pcap")
    dump = subprocess.Popen([need("tcpdump"), "-i", "lo", "-n", "-U", "-B", "262144", "-w",
                             pcap, run.expression], stderr=subprocess.PIPE)
    assert dump.stderr is not None
    line = dump.stderr.readline()   # "listening on lo ...": capturing from now on
    if b"listening" not in line:
        raise SystemExit(f"tcpdump: {line!r}")
    uas = subprocess.Popen(run.uas, cwd=tmp, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(0.5)   # the answerer binds its ports (a benchmark, not a test)
    start = time.perf_counter()
    caller = subprocess.run(run.uac, cwd=tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    made = time.perf_counter() - start
    try:
        uas.wait(timeout=30)
    except subprocess.TimeoutExpired:
        uas.kill()
        uas.wait()
    time.sleep(0.3)   # the last echoed packets
    dump.send_signal(signal.SIGINT)
    _, err = dump.communicate()
    counts = {"sipp_caller_status": caller.returncode, "seconds": round(made, 1)}
    for word, key in ((b"packets captured", "captured"),
                      (b"packets dropped by kernel", "kernel_dropped")):
        for text in (line + err).splitlines():
            if word in text:
                counts[key] = int(text.split()[0])
    return pcap, run.sip_ports, counts


def run_child(argv: list[str], capture: bool = False) -> tuple[float, bytes]:
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start, done.stdout or b""


def engine_run(path: str, ports: list[int]) -> None:
    """Child process: the engine on ``path``; prints seconds and CDRs as JSON."""
    sys.path.insert(0, ROOT)
    from voipmon.analysis.engine import Engine
    from voipmon.packet.readers import CaptureReader

    cdrs: list[object] = []
    engine = Engine(id_sensor=1, on_cdr=cdrs.append, sip_ports=ports)
    start = time.perf_counter()
    with CaptureReader(path) as reader:
        frames = engine.feed_all(reader)
    engine.finish()
    print(json.dumps({"elapsed": time.perf_counter() - start, "frames": frames,
                      "cdrs": len(cdrs)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=300, help="SIPp calls per second")
    parser.add_argument("--rtp-seconds", type=float, default=2.0)
    parser.add_argument("--media-base", type=int, default=40000,
                        help="the caller's first media port (it uses 10,004 from there)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pcap", help="analyse this capture instead of making one")
    parser.add_argument("--sipport", help="with --pcap: its SIP ports, comma separated")
    parser.add_argument("--keep", help="copy the capture made to this path")
    parser.add_argument("--engine-run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_run:
        engine_run(args.engine_run, [int(p) for p in args.sipport.split(",")])
        return 0
    tshark = need("tshark")
    with tempfile.TemporaryDirectory() as tmp:
        if args.pcap:
            path, ports = args.pcap, [int(p) for p in (args.sipport or "5060").split(",")]
            print(f"capture: {path}")
        else:
            path, ports, counts = make_capture(tmp, args.calls, args.rate, args.rtp_seconds,
                                               args.media_base)
            print(f"capture: SIPp, {args.calls} calls at {args.rate}/s, "
                  f"{args.rtp_seconds:g} s of RTP each way, SIP ports "
                  f"{','.join(map(str, ports))}: {counts}")
            if args.keep:
                shutil.copyfile(path, args.keep)
        sipport = ",".join(map(str, ports))
        me = [sys.executable, os.path.abspath(__file__), "--engine-run", path,
              "--sipport", sipport]
        cli = [sys.executable, "-m", "voipmon.cli", "--json", "--sipport", sipport, path]
        samples: dict[str, list[float]] = {"tshark": [], "cli": [], "engine": []}
        calls = frames = 0
        for _ in range(args.runs):
            samples["tshark"].append(run_child([tshark, "-q", "-r", path, "-z",
                                                "rtp,streams"])[0])
            wall, out = run_child(cli, capture=True)
            samples["cli"].append(wall)
            calls = out.count(b"\n")
            result = json.loads(run_child(me, capture=True)[1])
            samples["engine"].append(result["elapsed"])
            frames = result["frames"]
        t_tshark = statistics.median(samples["tshark"])
        print(f"{frames} frames, {calls} CDRs; median of {args.runs} runs; "
              f"{os.cpu_count()} CPUs")
        print(f"{'what':44} {'seconds':>8} {'calls/s':>9} {'x tshark':>9}")
        rows = (("tshark -q -z rtp,streams (whole command)", "tshark"),
                ("voipmon-analyze --json (whole command)", "cli"),
                ("voipmon engine alone (file to last CDR)", "engine"))
        for label, key in rows:
            seconds = statistics.median(samples[key])
            print(f"{label:44} {seconds:8.3f} {calls / seconds:9,.0f} "
                  f"{t_tshark / seconds:8.2f}x")
        t_cli = statistics.median(samples["cli"])
        ok = t_tshark / t_cli >= TARGET_RATIO and calls / t_cli >= TARGET_CPS
        print(f"targets (whole command >= {TARGET_RATIO:g}x tshark and >= "
              f"{TARGET_CPS:,.0f} calls/s): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
