"""Live capture speed: tcpreplay a large capture onto a veth pair, capture on the far end.

Needs root, iproute2 (veth), tcpreplay, tcpdump, and editcap/mergecap to build the input
(../shared/pcaps/make-bench-pcap.sh, into a temporary directory that is removed after).

Runs, all on the same replay of the same file:
  1. tcpdump -w /dev/null with our filter: the reference.
  2. LiveCapture with a no-op sink: what capture alone costs.
  3. LiveCapture feeding the analysis engine (one Engine.feed_all per read, no per-call
     pcaps): capture and analysis, with the default TPACKET_V3 ring and, for comparison,
     in immediate mode.
each first at tcpreplay --topspeed, then at fixed rates (tcpreplay --pps) rising until the
kernel drops, to find the highest rate captured without a drop. Packets/s of a run is the
frames handed over divided by the time from the start of the first read that got frames
to the end of the last (for tcpdump: frames captured over the replay time). At topspeed
the ring holds a backlog, so that is the rate of capture (and analysis) itself.

Usage: bench/live.py [--copies N] [--ringbuffer MB] [--snaplen N] [--rates 25000,...]
                     [--limit FRAMES]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pcap  # noqa: E402
from twisted.internet import defer, protocol, task  # noqa: E402

from voipmon.analysis.engine import Engine  # noqa: E402
from voipmon.packet.bpf import DLT_EN10MB, build_filter  # noqa: E402
from voipmon.packet.readers import CaptureReader  # noqa: E402
from voipmon.sources.live import LiveCapture  # noqa: E402
from voipmon.test.live_support import FunctionSink  # noqa: E402

SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "pcaps"))
PAIR = (f"vmlive{os.getpid() % 10000}a", f"vmlive{os.getpid() % 10000}b")


def need(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"bench/live.py: {message}")


def build_capture(folder: str, copies: int) -> str:
    path = os.path.join(folder, "bench.pcap")
    script = os.path.join(SHARED, "make-bench-pcap.sh")
    need(os.path.exists(script), f"{script} is missing (shared captures)")
    subprocess.run(["bash", script, path, str(copies)], check=True, capture_output=True)
    return path


def passing(path: str, expression: str, limit: int | None) -> int:
    """Frames among the first ``limit`` of ``path`` that pass ``expression`` (libpcap)."""
    program = pcap.bpf(expression.encode(), DLT_EN10MB)
    count = 0
    with CaptureReader(path) as reader:
        for index, (_ts, _lt, frame) in enumerate(reader):
            if limit is not None and index >= limit:
                break
            count += bool(program.filter(frame))
    return count


def veth_up() -> None:
    subprocess.run(["ip", "link", "add", PAIR[0], "type", "veth", "peer", "name", PAIR[1]],
                   check=True)
    for name in PAIR:
        subprocess.run(["ip", "link", "set", name, "mtu", "9000", "up"], check=True)


def veth_down() -> None:
    subprocess.run(["ip", "link", "del", PAIR[0]], check=False, capture_output=True)


class Collect(protocol.ProcessProtocol):
    def __init__(self, marker: bytes | None = None) -> None:
        self.output = b""
        self.marker = marker
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        if marker is None:
            self.ready.callback(None)

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data
        if self.marker and not self.ready.called and self.marker in self.output:
            self.ready.callback(None)

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(None)


def spawn(reactor: Any, argv: list[str], marker: bytes | None = None) -> tuple[Collect, Any]:
    proto = Collect(marker)
    return proto, reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ))


@defer.inlineCallbacks
def replay(reactor: Any, path: str, pps: int | None, limit: int | None) -> Any:
    argv = [shutil.which("tcpreplay"), "-q", "-i", PAIR[0]]
    argv += ["--topspeed"] if pps is None else [f"--pps={pps}"]
    if limit:
        argv += [f"--limit={limit}"]
    proc, _ = spawn(reactor, argv + [path])
    yield proc.ended
    text = proc.output.decode(errors="replace")
    match = re.search(r"Actual: (\d+) packets .* sent in ([\d.]+) seconds", text)
    if not match:
        raise RuntimeError(f"tcpreplay: {text}")
    return int(match.group(1)), float(match.group(2))


@defer.inlineCallbacks
def run_tcpdump(reactor: Any, path: str, expression: str, buffer_mb: int, pps: int | None,
                limit: int | None) -> Any:
    proc, transport = spawn(reactor, [shutil.which("tcpdump"), "-i", PAIR[1], "-n", "-B",
                                      str(buffer_mb * 1024), "-w", "/dev/null", expression],
                            marker=b"listening on")
    yield proc.ready
    sent, seconds = yield replay(reactor, path, pps, limit)
    transport.signalProcess(signal.SIGINT)
    yield proc.ended
    text = proc.output.decode(errors="replace")
    captured = int(re.search(r"(\d+) packets? captured", text).group(1))
    dropped = int(re.search(r"(\d+) packets? dropped by kernel", text).group(1))
    ifdrop = re.search(r"(\d+) packets? dropped by interface", text)
    return {"sent": sent, "replay_s": seconds, "frames": captured, "dropped": dropped,
            "ifdropped": int(ifdrop.group(1)) if ifdrop else None,
            "pps": captured / seconds if seconds else 0.0}


@defer.inlineCallbacks
def run_ours(reactor: Any, path: str, args: argparse.Namespace, mode: str,
             expected: int, pps: int | None, limit: int | None,
             immediate: bool = False) -> Any:
    """mode: "noop" (capture only) or "feed" (Engine.feed per frame)."""
    cdrs: list[Any] = []
    engine = Engine(id_sensor=1, on_cdr=cdrs.append, sip_ports=[5060]) \
        if mode != "noop" else None
    sink = engine if engine is not None else FunctionSink(lambda ts, linktype, frame: None)
    capture = LiveCapture([PAIR[1]], [5060], sink, reactor=reactor, status_interval=0,
                          ringbuffer_mb=args.ringbuffer, immediate=immediate,
                          snaplen=args.snaplen)
    # Busy time: from the start of the first read that got frames to the end of the last.
    clock = time.perf_counter
    busy = [0.0, 0.0]
    reader = capture.interfaces[0]
    read = reader.doRead

    def timed_read() -> None:
        before, start = reader.packets, clock()
        read()
        if reader.packets != before:
            if not busy[0]:
                busy[0] = start
            busy[1] = clock()

    reader.doRead = timed_read
    capture.startService()
    sent, seconds = yield replay(reactor, path, pps, limit)
    # The replay has ended; wait (bounded) until the ring is read to the end.
    deadline = clock() + 60
    while True:
        stats = capture.stats()
        seen = stats["packets"] + stats["kernel_dropped"] + stats["interface_dropped"]
        if seen >= expected or clock() > deadline:
            break
        yield task.deferLater(reactor, 0.05, lambda: None)
    capture.stopService()
    stats = capture.stats()
    if engine is not None:
        engine.finish()
    elapsed = busy[1] - busy[0]
    return {"sent": sent, "replay_s": seconds, "frames": stats["packets"],
            "dropped": stats["kernel_dropped"], "ifdropped": stats["interface_dropped"],
            "pps": stats["packets"] / elapsed if elapsed > 0 else 0.0, "cdrs": len(cdrs)}


def line(name: str, rate: str, result: dict[str, Any], offered: int) -> str:
    extra = f", {result['cdrs']} CDRs" if "cdrs" in result else ""
    ifdrop = result["ifdropped"]
    lost = "?" if ifdrop is None else f"{ifdrop}"
    return (f"  {name:<26} {rate:>9}: {result['frames']:>6}/{offered} frames, kernel drops "
            f"{result['dropped']:>5}, interface drops {lost:>4}, "
            f"{result['pps']:>9,.0f} packets/s{extra}")


@defer.inlineCallbacks
def main(reactor: Any, args: argparse.Namespace) -> Any:
    folder = tempfile.mkdtemp(prefix="voipmon-bench-live-")
    names = (("LiveCapture, no-op sink", "noop"), ("LiveCapture + Engine", "feed"))
    try:
        path = build_capture(folder, args.copies)
        expression = build_filter([5060], "", DLT_EN10MB)
        total = passing(path, expression, None)
        some = passing(path, expression, args.limit)
        veth_up()
        ref = yield run_tcpdump(reactor, path, expression, args.ringbuffer, None, None)
        print(f"input: {ref['sent']} frames ({args.copies} copies of a G.711 call with RTCP), "
              f"{total} pass the capture filter; veth {PAIR[0]} -> {PAIR[1]}; ring "
              f"{args.ringbuffer} MB; snaplen {args.snaplen}")
        print(f"tcpreplay --topspeed offers {ref['sent'] / ref['replay_s']:,.0f} packets/s. "
              "Frames missing beyond a capturer's own drops were lost before its socket "
              "(tcpdump prints no interface-drop count: '?').")
        print(line("tcpdump -w /dev/null", "topspeed", ref, total))
        for name, mode in names:
            result = yield run_ours(reactor, path, args, mode, total, None, None)
            print(line(name, "topspeed", result, total))
        result = yield run_ours(reactor, path, args, "feed", total, None, None, immediate=True)
        print(line("  the same, immediate mode", "topspeed", result, total))
        print(f"rising replay rates (tcpreplay --pps, first {args.limit} frames):")
        best: dict[str, float] = {}
        for name, mode in names:
            for rate in args.rates:
                probe = yield run_tcpdump(reactor, path, expression, args.ringbuffer, rate,
                                          args.limit)
                result = yield run_ours(reactor, path, args, mode, some, rate, args.limit)
                offered = result["sent"] / result["replay_s"]
                print(line(name, f"{offered:,.0f}", result, some))
                print(line("  tcpdump, same rate", f"{offered:,.0f}", probe, some))
                if result["dropped"]:
                    break
                best[name] = offered
        print("highest offered rate with no kernel drop (tcpreplay's own ceiling caps the "
              "ladder):")
        print(f"  tcpdump: at least {ref['sent'] / ref['replay_s']:,.0f} packets/s (topspeed, "
              f"{ref['dropped']} drops)")
        for name, _mode in names:
            print(f"  {name}: {best.get(name, 0):,.0f} packets/s")
    finally:
        veth_down()
        shutil.rmtree(folder, ignore_errors=True)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=47)
    parser.add_argument("--ringbuffer", type=int, default=50, help="MB, as the config key")
    parser.add_argument("--snaplen", type=int, default=65535, help="bytes, as the config key")
    parser.add_argument("--limit", type=int, default=100_000, help="frames per ladder run")
    parser.add_argument("--rates", default="50000,100000,150000,200000,300000",
                        help="tcpreplay --pps ladder")
    args = parser.parse_args()
    args.rates = [int(r) for r in args.rates.split(",")]
    return args


if __name__ == "__main__":
    arguments = parse()
    need(os.geteuid() == 0, "needs root (veth pair, live capture)")
    for tool in ("tcpreplay", "tcpdump", "ip", "editcap", "mergecap"):
        need(shutil.which(tool) is not None, f"{tool} is not installed")
    task.react(main, [arguments])
