"""HEP decoding speed (voipmon.packet.hep), beside a bare struct loop over the same bytes.

Messages are built by the test encoder (voipmon.test.hepsupport) as the real senders lay
them out: SIP of ~600 bytes and G.711 RTP of 172 bytes, IPv4. Each row is the median of
--runs passes over --count messages, in messages per second, and its share of the
reference's rate:

  reference  bare struct loop       one unpack_from of the 10 fixed chunks per message:
                                    the least Python can do to touch every field
  ours       decode_hep ...         Kamailio, sngrep and heplify layouts, auth key, IPv6,
                                    the general chunk walk alone, zlib chunk 0x0010,
                                    heplify's whole-frame gzip, HEPv2
  ours       framer + decode_hep    a TCP stream of the RTP messages, fed in 64 KiB reads
  ours       + HepFrames            decode and frame synthesis, no-op sink
  ours       + Engine.feed          decode, synthesis and the call engine, on the SIP and
                                    RTP of a public capture as HEP (if ../shared is there)

Usage: .venv/bin/python bench/hep_decode.py [--count N] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from voipmon.analysis.engine import Engine  # noqa: E402
from voipmon.packet import hep  # noqa: E402
from voipmon.packet.hep import HepStreamFramer, decode_hep  # noqa: E402
from voipmon.packet.synth import HepFrames  # noqa: E402
from voipmon.test.hepsupport import (  # noqa: E402
    HEPLIFY,
    KAMAILIO,
    SNGREP,
    capture_as_hep,
    gzip_frame,
    hep2_message,
    hep3_message,
)

CAPTURE = os.path.join(HERE, "..", "..", "shared", "pcaps", "public",
                       "sipnab__sip-rtp-g711.pcap")
SIP = (b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1"
       b"\r\n" + b"X-Filler: " + b"x" * 480 + b"\r\nContent-Length: 0\r\n\r\n")
RTP = b"\x80\x08\x12\x34" + bytes(8) + b"\xd5" * 160
_FIXED = struct.Struct("!4sH" + "IHB" * 2 + "IH4s" * 2 + "IHH" * 2 + "IHI" * 2 + "IHB"
                       + "IHI").unpack_from


def rate(fn: Callable[[], int], runs: int) -> float:
    times, n = [], 0
    for _ in range(runs):
        t = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def loop(messages: list[bytes], decode: Callable[[bytes], object]) -> Callable[[], int]:
    def run() -> int:
        for m in messages:
            decode(m)
        return len(messages)
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n, runs = args.count, args.runs

    def build(payload: bytes, **kw: object) -> list[bytes]:
        one = hep3_message("10.0.0.1", 5060, "10.0.0.2", 5060, payload, **kw)  # type: ignore[arg-type]
        return [one] * n

    sip_kam = build(SIP)
    rtp_kam = build(RTP, proto_type=4)
    rows: list[tuple[str, str, float]] = []
    reference = rate(loop(rtp_kam, lambda m: _FIXED(m, 0)), runs)
    rows.append(("reference", "bare struct loop (RTP, Kamailio layout)", reference))
    cases = [
        ("decode_hep RTP, Kamailio layout", rtp_kam, decode_hep),
        ("decode_hep SIP, Kamailio layout", sip_kam, decode_hep),
        ("decode_hep RTP, sngrep layout", build(RTP, proto_type=4, order=SNGREP), decode_hep),
        ("decode_hep RTP, heplify + auth/cid/node", build(
            RTP, proto_type=4, order=HEPLIFY, auth_key=b"s3cret", correlation_id=b"abc@host",
            node_name=b"node1"), decode_hep),
        ("decode_hep RTP, IPv6", [hep3_message("2001:db8::1", 40000, "2001:db8::2", 40002,
                                               RTP, proto_type=4)] * n, decode_hep),
        ("general chunk walk alone, RTP", rtp_kam,
         lambda m: hep._decode_chunks(m, len(m), hep.MAX_PAYLOAD)),
        ("decode_hep RTP, reversed order", build(RTP, proto_type=4,
                                                 order=tuple(reversed(KAMAILIO))), decode_hep),
        ("decode_hep SIP, zlib in 0x0010", build(SIP, compressed="zlib"), decode_hep),
        ("decode_hep SIP, heplify gzip frame", [gzip_frame(sip_kam[0])] * n, decode_hep),
        ("decode_hep SIP, HEPv2", [hep2_message("10.0.0.1", 5060, "10.0.0.2", 5060, SIP)] * n,
         decode_hep),
    ]
    for name, messages, fn in cases:
        rows.append(("ours", name, rate(loop(messages, fn), runs)))

    stream = b"".join(rtp_kam)

    def framed() -> int:
        framer = HepStreamFramer(decode_hep)
        for i in range(0, len(stream), 65536):
            framer.feed(stream[i:i + 65536])
        return framer.messages
    rows.append(("ours", "TCP framer + decode_hep, RTP", rate(framed, runs)))

    decoded = decode_hep(rtp_kam[0])

    def synth() -> int:
        frames = HepFrames(lambda ts, linktype, frame: None)
        feed = frames.feed
        for m in rtp_kam:
            msg = decode_hep(m)
            feed(msg, 1.0)
        return n
    rows.append(("ours", "decode_hep + HepFrames (UDP frame), RTP", rate(synth, runs)))
    assert decoded.proto_type == 4

    if os.path.exists(CAPTURE):
        records = capture_as_hep(CAPTURE)
        repeat = max(1, n // len(records))
        messages = [r.message for r in records]

        def engine() -> int:
            count = 0
            for k in range(repeat):  # the same calls again, shifted by an hour each time
                e = Engine(id_sensor=1, on_cdr=lambda cdr: None)
                frames = HepFrames(e.feed)
                feed = frames.feed
                for m in messages:
                    msg = decode_hep(m)
                    feed(msg, msg.ts + 3600.0 * k)  # type: ignore[operator]
                e.finish()
                count += len(messages)
            return count
        rows.append(("ours", f"decode + HepFrames + Engine.feed, a call ({len(records)} msgs)",
                     rate(engine, max(1, runs // 2))))

    print(f"HEP decoding, {n} messages per pass, median of {runs} passes")
    print(f"{'':10} {'':58} {'msgs/s':>10} {'vs ref':>7}")
    for kind, name, value in rows:
        print(f"{kind:10} {name:58} {value:10,.0f} {value / reference:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
