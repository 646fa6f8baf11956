"""Packet decoding speed: capture reader and Decoder, beside tcpdump and tshark on the same file.

Builds the 200k-frame benchmark capture (../shared/pcaps/make-bench-pcap.sh) in a temporary
directory unless --pcap names one, then times (median of --runs, file in page cache):

  reference  tcpdump -r F -w /dev/null        read and copy, C
  reference  tshark -q -r F                   read and dissect, no tap
  reference  tshark -q -r F -z rtp,streams    what issue 3's analysis target compares with
  ours       CaptureReader loop               read only
  ours       CaptureReader + Decoder.feed     per-frame calls, no-op sink
  ours       CaptureReader + Decoder.feed_all the loop inlined, no-op sink
  ours       Decoder.feed on frames in memory decode share alone, in µs per frame
  reference  dpkt Ethernet/IP/UDP objects     on the first 50,000 frames

Usage: .venv/bin/python bench/decode.py [--pcap FILE] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from voipmon.packet.decode import Decoder  # noqa: E402
from voipmon.packet.readers import CaptureReader  # noqa: E402

MAKE = os.path.join(HERE, "..", "..", "shared", "pcaps", "make-bench-pcap.sh")


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def command(argv: list[str]):
    if shutil.which(argv[0]) is None:
        return None

    def run():
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pcap", help="use this capture instead of building the benchmark file")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = None
    path = args.pcap
    if path is None:
        if not os.path.exists(MAKE):
            print("no --pcap and the benchmark recipe is not available", file=sys.stderr)
            return 2
        tmp = tempfile.mkdtemp(prefix="voipmon-bench-")
        path = os.path.join(tmp, "bench.pcap")
        subprocess.run(["bash", MAKE, path], check=True, stdout=subprocess.DEVNULL)
    try:
        return report(path, args.runs)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def report(path: str, runs: int) -> int:
    records = list(CaptureReader(path))
    n = len(records)
    print(f"file: {os.path.basename(path)}, {n} frames, {os.path.getsize(path) / 1e6:.1f} MB, "
          f"median of {runs} runs\n")
    rows: list[tuple[str, float]] = []

    for label, argv in (("tcpdump -r F -w /dev/null", ["tcpdump", "-r", path, "-w",
                                                        "/dev/null"]),
                        ("tshark -q -r F", ["tshark", "-q", "-r", path]),
                        ("tshark -q -r F -z rtp,streams", ["tshark", "-q", "-r", path, "-z",
                                                           "rtp,streams"])):
        fn = command(argv)
        if fn is None:
            print(f"  ({argv[0]} not installed: skipped {label})")
            continue
        rows.append((label, n / median_time(fn, runs)))

    def read_only():
        for _ in CaptureReader(path):
            pass

    datagrams = []

    def sink(d):
        pass

    def read_feed():
        d = Decoder(sink)
        feed = d.feed
        for ts, lt, frame in CaptureReader(path):
            feed(ts, lt, frame)
        datagrams.append(d.stats)

    def read_feed_all():
        Decoder(sink).feed_all(CaptureReader(path))

    def memory_feed():
        d = Decoder(sink)
        feed = d.feed
        for ts, lt, frame in records:
            feed(ts, lt, frame)

    rows.append(("voipmon CaptureReader, read only", n / median_time(read_only, runs)))
    rows.append(("voipmon CaptureReader + Decoder.feed", n / median_time(read_feed, runs)))
    rows.append(("voipmon CaptureReader + Decoder.feed_all",
                 n / median_time(read_feed_all, runs)))
    mem = median_time(memory_feed, runs)
    rows.append(("voipmon Decoder.feed, frames in memory", n / mem))
    probe = Decoder(sink)
    fast, other = [], []
    for rec in records:
        before = probe._nslow
        probe.feed(*rec)
        (fast if probe._nslow == before else other).append(rec)

    def split_feed(part):
        def run():
            feed = Decoder(sink).feed
            for ts, lt, frame in part:
                feed(ts, lt, frame)
        return median_time(run, runs) / max(len(part), 1) * 1e6
    fast_us, other_us = split_feed(fast), split_feed(other)

    try:
        import dpkt

        sample = records[:50000]

        def dpkt_objects():
            for _, _, frame in sample:
                eth = dpkt.ethernet.Ethernet(frame)
                ip = eth.data
                if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP):
                    ip.data.data  # noqa: B018
        rows.append(("dpkt Ethernet/IP/UDP objects (50k frames)",
                     len(sample) / median_time(dpkt_objects, runs)))
    except ImportError:
        pass

    ref = dict(rows).get("tshark -q -r F -z rtp,streams")
    print(f"  {'what':<46} {'packets/s':>12} {'vs tshark rtp,streams':>22}")
    for label, rate in rows:
        ratio = f"{rate / ref:.1f}x" if ref else "-"
        print(f"  {label:<46} {rate:>12,.0f} {ratio:>22}")
    stats = datagrams[-1]
    print(f"\ndecode share: {mem / n * 1e6:.2f} µs per frame (frames in memory, no-op sink); "
          f"{fast_us:.2f} µs for the {len(fast)} frames on the fast paths, "
          f"{other_us:.2f} µs for the {len(other)} others (TCP, LLC, ARP ...)")
    print(f"decoder: {stats.frames} frames -> {stats.datagrams} datagrams; "
          f"ignored {dict(stats.ignored)}; undecodable {dict(stats.undecodable)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
