"""HEP input speed: HEP3 messages/s into the engine over TCP and over UDP from a sender
process on this host, beside the same packets read from a pcap file, in one run.

The workload is --calls answered calls (SIP one HEP message per SIP message, 50 RTP packets
each way as HEP type 4, an RTCP SR and RR as heplify's JSON: 109 messages a call, made by
the test encoder, voipmon.test.hepsupport), written once as a HEP stream file and once as
the pcap of the very frames the HEP source synthesises from it.

  reference  pcap -> engine          CaptureReader of that pcap into Engine.feed_all
  ours       HEP over TCP -> engine  HepSource (the sensor's, real loopback socket) fed by
                                     a child process writing the stream as fast as it can
  ours       HEP over UDP -> engine  the same, one datagram a message, the child pacing
                                     itself at --udp-rate messages/s; loss is printed
  ours       ... -> no-op sink       the same without the engine: what the HEP input
                                     itself (sockets, framing, decoding, checks, frame
                                     synthesis) takes, apart from the call analysis

The rate is messages handed to the engine per second, from the first message in to the
last (TCP) or to the last one that arrived (UDP). Target: >= 100,000 HEP messages/s over
TCP. UDP loss is what the kernel dropped (the socket's buffer, net.core.rmem_max caps it).

Usage: .venv/bin/python bench/hep.py [--calls N] [--udp-rate N]
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
    return 0


def workload(calls: int, directory: str) -> tuple[str, str, int]:
    """(HEP stream file, pcap file, messages)."""
    from voipmon.packet.hep import decode_hep
    from voipmon.packet.synth import HepFrames
    from voipmon.packet.writers import pcap_global_header, pcap_record
    from voipmon.test.hepsupport import hep3_message
    from voipmon.test.test_hep_pipeline import call_messages

    stream = os.path.join(directory, "calls.hep")
    pcap = os.path.join(directory, "calls.pcap")
    count = 0
    with open(stream, "wb") as s, open(pcap, "wb") as p:
        p.write(pcap_global_header(1))
        frames = HepFrames(lambda ts, _lt, frame: p.write(pcap_record(ts, frame)))
        for k in range(calls):
            a = (f"10.{k >> 8 & 255}.{k & 255}.1", 5060)
            b = (f"10.{k >> 8 & 255}.{k & 255}.2", 5060)
            for ts, src, dst, kind, payload in call_messages(f"bench{k}@hep", a, b,
                                                             1.7e9 + 0.05 * k):
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


def over_socket(kind: str, stream: str, expected: int, rate: float,
                null: bool = False) -> tuple[float, int, int]:
    """(seconds, messages in, CDRs) with the sensor's HEP source on the real reactor."""
    from twisted.internet import reactor, task

    from voipmon.analysis.engine import Engine
    from voipmon.sources.hep import HepSource
    cdrs: list[object] = []
    engine: Engine | NullSink = NullSink() if null else Engine(id_sensor=1,
                                                              on_cdr=cdrs.append)
    source = HepSource(engine, reactor, host="127.0.0.1", port=0, udp=kind == "udp",
                       tcp=kind == "tcp")
    source.startService()
    state = {"first": 0.0, "last": 0.0, "seen": 0, "quiet": 0.0}
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--send", kind,
                              str(source.port), stream, str(rate)])

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
    child.wait()
    source.stopService()
    engine.finish()
    return state["last"] - state["first"], source.intake.received, len(cdrs)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--send":
        return send(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--udp-rate", type=float, default=100_000)
    ap.add_argument("--only", choices=("tcp", "udp"), default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        stream, pcap, n = workload(args.calls, directory)
        seconds, frames, cdrs = from_pcap(pcap)
        rows = [("reference", f"pcap -> engine ({frames} frames)", n / seconds, cdrs, "")]
        kinds = [args.only] if args.only else ["tcp", "udp"]
        for kind in kinds:
            for sink in ("engine", "null"):
                # each over the real reactor, which runs once per process: a child each
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one",
                                      kind, stream, str(n), str(args.udp_rate), sink],
                                     capture_output=True, text=True, check=True)
                seconds, got, cdrs = (float(x) for x in out.stdout.split())
                loss = n - int(got)
                met = "met" if got / seconds >= TARGET_TCP else "NOT met"
                note = (f"target >= {TARGET_TCP:,}/s: {met}" if kind == "tcp" else
                        f"sent at {args.udp_rate:,.0f}/s: {int(got)} of {n} in, loss {loss} "
                        f"({100.0 * loss / n:.2f} %)")
                into = "engine" if sink == "engine" else "no-op sink"
                name = f"HEP over {kind.upper()} -> {into}"
                rows.append(("ours", name, got / seconds, int(cdrs), note))
    print(f"HEP input, {args.calls} calls, {n} HEP messages ({n // args.calls} a call)")
    print(f"{'':10} {'':34} {'msgs/s':>10} {'vs ref':>7} {'CDRs':>6}  note")
    reference = rows[0][2]
    for kind, name, value, cdrs, note in rows:
        print(f"{kind:10} {name:34} {value:10,.0f} {value / reference:7.2f} {cdrs:6}  {note}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        s, got, c = over_socket(sys.argv[2], sys.argv[3], int(sys.argv[4]),
                                float(sys.argv[5]), null=sys.argv[6] == "null")
        print(s, got, c)
        raise SystemExit(0)
    raise SystemExit(main())
