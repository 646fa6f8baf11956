#!/usr/bin/env python3
"""Benchmark: call analysis packets/s beside ``tshark -q -z rtp,streams`` on the same file.

Builds the 1M-frame capture described in ../shared/pcaps/README-bench.md (the real G.711
call with RTCP repeated ``--copies`` times, 235 by default, via make-bench-pcap.sh) in a
temporary directory, then
in the same run measures, each as the median of ``--runs`` runs in a fresh process:

- tshark -q -r FILE -z rtp,streams (wall clock of the whole command);
- our engine with per-call pcap writing off, then on (time from opening the file to the
  last CDR, inside the process: reading, decoding, analysis, pcap writing);
- the whole ``voipmon-analyze --json FILE`` command, interpreter start-up included;

with each one's peak RSS, and prints the rates and the ratio to tshark beside the
targets (at least 5x with writing off, 4x with writing on).

    .venv/bin/python bench/analyze.py [--runs 3] [--copies 235] [--pcap FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "pcaps")
TARGET_OFF, TARGET_ON = 5.0, 4.0


def run_child(argv: list[str], stdout: int | None = subprocess.DEVNULL) -> tuple[float, int,
                                                                                   bytes]:
    """Run ``argv``; (wall seconds, peak RSS in KiB, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE if stdout is None else stdout,
                            stderr=subprocess.DEVNULL)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed with status {proc.returncode}")
    return elapsed, usage.ru_maxrss, out


def engine_run(path: str, spool: str | None) -> None:
    """Child process: analyse ``path`` and print timings as JSON."""
    import resource

    sys.path.insert(0, ROOT)
    from voipmon.analysis.engine import Engine
    from voipmon.packet.readers import CaptureReader
    from voipmon.spool.writer import SpoolWriter

    cdrs = []
    writer = SpoolWriter(spool) if spool else None
    engine = Engine(id_sensor=1, on_cdr=cdrs.append, spool=writer)
    start = time.perf_counter()
    with CaptureReader(path) as reader:
        frames = engine.feed_all(reader)
    engine.finish()
    elapsed = time.perf_counter() - start
    print(json.dumps({"elapsed": elapsed, "frames": frames, "cdrs": len(cdrs),
                      "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "spool_bytes": writer.stats.bytes if writer else 0}))


def count_frames(path: str) -> int:
    sys.path.insert(0, ROOT)
    from voipmon.packet.readers import CaptureReader

    with CaptureReader(path) as reader:
        return sum(1 for _ in reader)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--copies", type=int, default=235,
                        help="copies of the call in the capture built (47: 200k frames)")
    parser.add_argument("--pcap", help="use this capture instead of building one")
    parser.add_argument("--engine-run", help=argparse.SUPPRESS)
    parser.add_argument("--spool", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_run:
        engine_run(args.engine_run, args.spool)
        return 0
    tshark = shutil.which("tshark")
    if tshark is None:
        print("tshark is not installed: no reference to measure against", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        path = args.pcap
        if path is None:
            script = os.path.join(SHARED, "make-bench-pcap.sh")
            if not os.path.exists(script):
                print(f"no {script}: pass --pcap FILE", file=sys.stderr)
                return 1
            path = os.path.join(tmp, "bench.pcap")
            subprocess.run(["bash", script, path, str(args.copies)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        frames = count_frames(path)
        size = os.path.getsize(path)
        print(f"capture: {frames} frames, {size / 1e6:.1f} MB; median of {args.runs} runs; "
              f"{os.cpu_count()} CPUs")
        # the measurements are interleaved, round after round, so that a change of load
        # on the machine affects all of them alike
        me = [sys.executable, os.path.abspath(__file__), "--engine-run", path]
        spool = os.path.join(tmp, "spool")
        samples: dict[str, list[tuple[float, int]]] = {k: [] for k in ("tshark", "off", "on",
                                                                      "cli")}
        for _ in range(args.runs):
            wall, rss, _ = run_child([tshark, "-q", "-r", path, "-z", "rtp,streams"])
            samples["tshark"].append((wall, rss))
            for label, extra in (("off", []), ("on", ["--spool", spool])):
                shutil.rmtree(spool, ignore_errors=True)
                _, rss, out = run_child(me + extra, stdout=None)
                samples[label].append((json.loads(out)["elapsed"], rss))
            wall, rss, _ = run_child([sys.executable, "-m", "voipmon.cli", "--json", path])
            samples["cli"].append((wall, rss))
        shutil.rmtree(spool, ignore_errors=True)

        def median(label: str) -> float:
            return statistics.median(x[0] for x in samples[label])

        def peak(label: str) -> int:
            return max(x[1] for x in samples[label])

        t_tshark = median("tshark")
        results = {"off": median("off"), "on": median("on")}
        rows = [("tshark -q -z rtp,streams (whole command)", t_tshark, peak("tshark"), None),
                ("voipmon engine, pcap writing off", results["off"], peak("off"), TARGET_OFF),
                ("voipmon engine, pcap writing on", results["on"], peak("on"), TARGET_ON),
                ("voipmon-analyze --json (whole command)", median("cli"), peak("cli"), None)]
        print(f"{'what':44} {'seconds':>8} {'packets/s':>11} {'x tshark':>9} {'target':>7} "
              f"{'peak RSS':>10}")
        for label, seconds, rss, target in rows:
            ratio = t_tshark / seconds
            verdict = "" if target is None else \
                f"{'>=' if ratio >= target else '<'}{target:.1f}x"
            print(f"{label:44} {seconds:8.3f} {frames / seconds:11,.0f} {ratio:8.2f}x "
                  f"{verdict:>7} {rss / 1024:8.1f} MB")
        ok = t_tshark / results["off"] >= TARGET_OFF and t_tshark / results["on"] >= TARGET_ON
        print("targets met" if ok else "targets NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
