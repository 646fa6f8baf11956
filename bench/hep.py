"""HEP input speed: HEP3 messages/s into the engine over TCP and over UDP from a sender
process on this host, beside the same packets read from a pcap file, in one run.

Two workloads, each written once as a HEP stream file and once as the pcap of the very
frames the HEP source synthesises from it (messages made by the test encoder,
voipmon.test.hepsupport):

  SIP-heavy  --calls short answered calls: the SIP dialogue one HEP message per SIP
             message, 50 RTP packets each way as HEP type 4, an RTCP SR and RR as
             heplify's JSON (109 messages a call): the engine's per-call cost dominates
  RTP-heavy  --rtp-calls calls of --rtp-packets RTP packets each way (20 s of audio at
             the default), the same SIP and RTCP: what a HEP feed with RTP mostly is

For each:

  reference  pcap -> engine          CaptureReader of that pcap into Engine.feed_all
  ours       HEP over TCP -> engine  HepSource (the sensor's, real loopback socket) fed by
                                     a child process writing the stream as fast as it can
  ours       ... -> no-op sink       the same without the engine: what the HEP input
                                     itself (sockets, framing, decoding, checks, frame
                                     synthesis) takes, apart from the call analysis
  ours       HEP over UDP -> ...     one datagram a message, the child pacing itself at
                                     --udp-rate messages/s; loss is printed, with the
                                     receive buffer the kernel granted (hep_udp_rcvbuf,
                                     capped by net.core.rmem_max)

With --raise-rmem (root), the UDP rows are run again with net.core.rmem_max raised to
--udp-rcvbuf MB, and rmem_max is restored afterwards.

The rate is messages handed to the sink per second, from the first message in to the
last (TCP) or to the last one that arrived (UDP). Target: >= 100,000 HEP messages/s over
TCP into the engine.

Usage: .venv/bin/python bench/hep.py [--calls N] [--rtp-calls N] [--rtp-packets N]
                                     [--udp-rate N] [--udp-rcvbuf MB] [--raise-rmem]
                                     [--only tcp|udp] [--workload sip|rtp]
       (the child: bench/hep.py --send tcp|udp PORT FILE RATE)
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

TARGET_TCP = 100_000


def send(kind: str, port: int, path: str, rate: float) -> int:
    """The sender process: the stream file to 127.0.0.1:port."""
    with open(path, "rb") as f:
        data = f.read()
    if kind == "tcp":
        with socket.create_connection(("127.0.0.1", port)) as sock:
            view = memoryview(data)
            for i in range(0, len(data), 1 << 20):
                sock.sendall(view[i:i + (1 << 20)])
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)   # until the receiver closes
        return 0
    messages = []
    p = 0
    while p < len(data):
        length = struct.unpack_from("!H", data, p + 4)[0]
        messages.append(data[p:p + length])
        p += length
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    batch = 100
    start = time.perf_counter()
    for i in range(0, len(messages), batch):
        for m in messages[i:i + batch]:
            try:
                sock.send(m)
            except OSError:   # ECONNREFUSED from an ICMP, ENOBUFS: the receiver counts it
                pass
        ahead = (i + batch) / rate - (time.perf_counter() - start)
        if ahead > 0:
            time.sleep(ahead)
    sock.close()
    print(len(messages) / (time.perf_counter() - start))   # the rate really sent
    return 0


def workload(calls: int, rtp_packets: int, directory: str, name: str
             ) -> tuple[str, str, int]:
    """(HEP stream file, pcap file, messages)."""
    from voipmon.packet.hep import decode_hep
    from voipmon.packet.synth import HepFrames
    from voipmon.packet.writers import pcap_global_header, pcap_record
    from voipmon.test.hepsupport import hep3_message
    from voipmon.test.test_hep_pipeline import call_messages

    stream = os.path.join(directory, f"{name}.hep")
    pcap = os.path.join(directory, f"{name}.pcap")
    count = 0
    with open(stream, "wb") as s, open(pcap, "wb") as p:
        p.write(pcap_global_header(1))
        frames = HepFrames(lambda ts, _lt, frame: p.write(pcap_record(ts, frame)))
        messages = []
        for k in range(calls):
            a = (f"10.{k >> 8 & 255}.{k & 255}.1", 5060)
            b = (f"10.{k >> 8 & 255}.{k & 255}.2", 5060)
            messages += call_messages(f"bench{k}@hep", a, b, 1.7e9 + 0.05 * k, rtp_packets)
        messages.sort(key=lambda m: m[0])   # the calls overlap, as on a busy proxy
        for ts, src, dst, kind, payload in messages:
            data = hep3_message(src[0], src[1], dst[0], dst[1], payload,
                                ts=(int(ts), round(ts % 1 * 1e6)), proto_type=kind,
                                capture_id=7)
            s.write(data)
            msg = decode_hep(data)
            frames.feed(msg, msg.ts)  # type: ignore[arg-type]
            count += 1
    return stream, pcap, count


def from_pcap(pcap: str) -> tuple[float, int, int]:
    from voipmon.analysis.engine import Engine
    from voipmon.packet.readers import CaptureReader
    cdrs: list[object] = []
    engine = Engine(id_sensor=1, on_cdr=cdrs.append)
    start = time.perf_counter()
    with CaptureReader(pcap) as reader:
        frames = engine.feed_all(reader)
    engine.finish()
    return time.perf_counter() - start, frames, len(cdrs)


class NullSink:
    """An IFrameSink that only counts."""

    def __init__(self) -> None:
        self.frames = 0

    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        self.frames += 1

    def feed_all(self, records: Iterable[tuple[float, int, bytes]]) -> int:
        n = 0
        for _ in records:
            n += 1
        self.frames += n
        return n

    def finish(self) -> None:
        pass


def over_socket(kind: str, stream: str, expected: int, rate: float, null: bool = False,
                rcvbuf: int = 8 << 20) -> tuple[float, int, int, int, float]:
    """(seconds, messages in, CDRs, UDP receive buffer granted, UDP messages/s sent) with
    the sensor's HEP source on the real reactor; the seconds from the first message in to
    the last, and the engine's ``finish`` (as the reference's)."""
    from twisted.internet import reactor, task

    from voipmon.analysis.engine import Engine
    from voipmon.sources.hep import HepSource
    cdrs: list[object] = []
    engine: Engine | NullSink = NullSink() if null else Engine(id_sensor=1,
                                                              on_cdr=cdrs.append)
    source = HepSource(engine, reactor, host="127.0.0.1", port=0, udp=kind == "udp",
                       tcp=kind == "tcp", udp_rcvbuf=rcvbuf)
    source.startService()
    state = {"first": 0.0, "last": 0.0, "seen": 0, "quiet": 0.0}
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--send", kind,
                              str(source.port), stream, str(rate)],
                             stdout=subprocess.PIPE, text=True)

    def watch() -> None:
        now = time.perf_counter()
        received = source.intake.received
        if received and not state["first"]:
            state["first"] = now
        if received != state["seen"]:
            state["seen"], state["last"] = received, now
        done = received >= expected or (
            child.poll() is not None and received and now - state["last"] > 1.0)
        if done:
            loop.stop()
            for conn in list(source.connections):
                conn.transport.loseConnection()  # type: ignore[union-attr]
            reactor.callLater(0, reactor.stop)

    loop = task.LoopingCall(watch)
    loop.start(0.002)
    reactor.run(installSignalHandlers=False)
    sent = float(child.communicate()[0] or 0.0)
    source.stopService()
    start = time.perf_counter()
    engine.finish()
    finish = time.perf_counter() - start
    return (state["last"] - state["first"] + finish, source.intake.received, len(cdrs),
            source.udp_rcvbuf_granted, sent)


RMEM_MAX = "/proc/sys/net/core/rmem_max"


def one(kind: str, stream: str, n: int, rate: float, sink: str, rcvbuf: int
        ) -> tuple[float, int, int, int, float]:
    """One socket run, in a child: the real reactor runs once per process."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", kind, stream,
                          str(n), str(rate), sink, str(rcvbuf)],
                         capture_output=True, text=True, check=True)
    seconds, got, cdrs, granted, sent = out.stdout.split()
    return float(seconds), int(got), int(cdrs), int(granted), float(sent)


def rows_for(label: str, stream: str, pcap: str, n: int, args: argparse.Namespace,
             udp_only: bool = False) -> list[tuple[str, str, float, int, str]]:
    rows = []
    if not udp_only:
        seconds, frames, cdrs = from_pcap(pcap)
        rows.append(("reference", f"{label}: pcap -> engine", n / seconds, cdrs,
                     f"{frames} frames"))
    kinds = [args.only] if args.only else ["tcp", "udp"]
    for kind in kinds:
        if udp_only and kind == "tcp":
            continue
        for sink in ("engine", "null"):
            seconds, got, cdrs, granted, sent = one(kind, stream, n, args.udp_rate, sink,
                                                    args.udp_rcvbuf << 20)
            loss = n - got
            if kind == "tcp":
                met = "met" if got / seconds >= TARGET_TCP else "NOT met"
                note = f"target >= {TARGET_TCP:,}/s: {met}" if sink == "engine" else ""
            else:
                note = (f"sent at {sent:,.0f}/s: {got} of {n} in, loss {loss} "
                        f"({100.0 * loss / n:.1f} %), rcvbuf {granted:,} B")
            into = "engine" if sink == "engine" else "no-op sink"
            rows.append(("ours", f"{label}: HEP/{kind.upper()} -> {into}", got / seconds,
                         cdrs, note))
    return rows


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--send":
        return send(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rtp-calls", type=int, default=100)
    ap.add_argument("--rtp-packets", type=int, default=1000)
    ap.add_argument("--udp-rate", type=float, default=100_000)
    ap.add_argument("--udp-rcvbuf", type=int, default=8, help="MB (hep_udp_rcvbuf)")
    ap.add_argument("--raise-rmem", action="store_true")
    ap.add_argument("--only", choices=("tcp", "udp"), default=None)
    ap.add_argument("--workload", choices=("sip", "rtp"), default=None)
    args = ap.parse_args()
    with open(RMEM_MAX) as f:
        rmem_max = int(f.read())
    rows = []
    heads = []
    with tempfile.TemporaryDirectory() as directory:
        loads = []
        if args.workload in (None, "sip"):
            loads.append(("SIP-heavy", args.calls, 50))
        if args.workload in (None, "rtp"):
            loads.append(("RTP-heavy", args.rtp_calls, args.rtp_packets))
        made = []
        for label, calls, packets in loads:
            stream, pcap, n = workload(calls, packets, directory, label)
            made.append((label, stream, pcap, n))
            heads.append(f"{label}: {calls} calls, {n} HEP messages ({n // calls} a call)")
            rows += rows_for(label, stream, pcap, n, args)
        if args.raise_rmem and args.only != "tcp":
            wanted = args.udp_rcvbuf << 20
            heads.append(f"net.core.rmem_max {rmem_max:,} B, then raised to {wanted:,} B "
                         f"for the rows marked (raised)")
            try:
                with open(RMEM_MAX, "w") as f:
                    f.write(str(wanted))
                for label, stream, pcap, n in made:
                    rows += rows_for(label + " (raised)", stream, pcap, n, args, True)
            finally:
                with open(RMEM_MAX, "w") as f:
                    f.write(str(rmem_max))
        else:
            heads.append(f"net.core.rmem_max {rmem_max:,} B")
    print("HEP input. " + "; ".join(heads))
    print(f"{'':10} {'':44} {'msgs/s':>9} {'vs ref':>6} {'CDRs':>5}  note")
    reference = 0.0
    for kind, name, value, cdrs, note in rows:
        if kind == "reference":
            reference = value
        print(f"{kind:10} {name:44} {value:9,.0f} {value / reference:6.2f} {cdrs:5}  {note}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        s, got, c, g, sent = over_socket(sys.argv[2], sys.argv[3], int(sys.argv[4]),
                                         float(sys.argv[5]), null=sys.argv[6] == "null",
                                         rcvbuf=int(sys.argv[7]))
        print(s, got, c, g, sent)
        raise SystemExit(0)
    raise SystemExit(main())
