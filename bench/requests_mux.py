"""MB/s of a 50 MB answer through the request protocol in memory, beside a bare copy loop.

What the protocol itself costs, with no socket and no TLS: the central's ``Requester``
sends REQUEST and grants CREDIT, the sensor's ``Responder`` reads the reply in 64 KiB
chunks and makes ANSWER frames within credit, its ``OutputScheduler`` pulls them, frames
are encoded (``wire.encode_frame``) and parsed back (``FrameDecoder``), the central's
``Dispatcher`` decodes each ANSWER and the requester writes its data to the consumer. The
body is a pcap of RTP packets with random payloads (audio does not compress much).

Reference: the same reply chunks, each copied into a frame and back out of it (what any
framing costs in Python at least), into the same consumer. Runs:

- ``protocol``: the consumer and the wire never push back;
- ``flow control``: a TCP-like wire buffer of 256 KiB pauses the sensor's scheduler, and
  the client reads 256 KiB at a time, pausing the request (credit held back);
- ``zstd``: as ``protocol``, with the ANSWER frames compressed by the channel's zstd codec
  as ``send_message`` would (tells whether answers should skip compression).

    .venv/bin/python bench/requests_mux.py [MB] [runs]
"""

from __future__ import annotations

import os
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import task

from voipmon.manager.commands import PCAP, Reply
from voipmon.protocols.compression import get_codec
from voipmon.protocols.rpc.messages import CHUNK
from voipmon.protocols.wire import (
    COMPRESS_MIN,
    FLAG_COMPRESSED,
    MAX_FRAME,
    MAX_MESSAGE,
    FrameDecoder,
    MessageType,
    encode_frame,
)
from voipmon.test.rpc_support import MemoryChannel, SlowConsumer, TableCommands


def rtp_pcap(size: int) -> bytes:
    """~``size`` bytes of pcap: 214-byte Ethernet/IPv4/UDP/RTP frames, random payloads."""
    frame_head = bytes(14) + b"\x45" + bytes(27) + b"\x80\x00" + bytes(10)
    record = struct.Struct("<IIII")
    count = size // (16 + 214)
    payloads = os.urandom(count * 160)
    parts = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for n in range(count):
        ts = 1700000000 + n * 0.02
        parts.append(record.pack(int(ts), int(ts * 1e6) % 1000000, 214, 214))
        parts.append(frame_head + payloads[n * 160:(n + 1) * 160])
    return b"".join(parts)


def reply_of(body: bytes) -> Callable[[str], Reply]:
    def reply(args: str) -> Reply:
        view = memoryview(body)

        def chunks() -> Iterator[bytes]:
            for offset in range(0, len(body), CHUNK):
                yield bytes(view[offset:offset + CHUNK])   # a file read copies too

        return Reply(len(body), chunks, PCAP)

    return reply


class Sink:
    """The consumer: counts what it is given."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)


def reference(body: bytes) -> float:
    sink = Sink()
    head = b"\x00" * 11
    start = time.perf_counter()
    for data in reply_of(body)("").chunks():
        frame = head + data              # into a frame
        sink.write(frame[11:])           # and out of it
    elapsed = time.perf_counter() - start
    assert sink.written == len(body)
    return elapsed


def compress_answers(channel: MemoryChannel) -> None:
    """Compress the sensor's frames as the channel's send_message does, and decompress
    them on the central's side before dispatch."""
    codec = get_codec("zstd")
    wire = channel.up
    frames = wire.frames

    def write(kind: MessageType, payload: bytes) -> None:
        flags = 0
        if len(payload) >= COMPRESS_MIN:
            packed = codec.compress(payload)
            if len(packed) < len(payload):
                payload, flags = packed, FLAG_COMPRESSED
        frames.append(encode_frame(kind, payload, flags))

    decoder = FrameDecoder(MAX_FRAME)

    def receive(data: bytes) -> None:
        for frame in decoder.feed(data):
            payload = frame.payload
            if frame.flags & FLAG_COMPRESSED:
                payload = codec.decompress(payload, MAX_MESSAGE)
            channel.central.dispatch(frame.kind, payload)

    channel.sensor_out.write = write
    wire.receive = receive


def through_protocol(body: bytes, variant: str) -> float:
    clock = task.Clock()
    flow = variant == "flow control"
    channel = MemoryChannel(TableCommands(pcap=reply_of(body)), clock,
                            high=256 * 1024 if flow else None)
    if variant == "zstd":
        compress_answers(channel)
    results: list[Any] = []
    consumer: Any = SlowConsumer(high=256 * 1024) if flow else Sink()
    start = time.perf_counter()
    channel.requester.request("pcap", "", consumer).addBoth(results.append)
    if flow:
        while not results:
            channel.run()
            consumer.consume()
    else:
        channel.run()
    elapsed = time.perf_counter() - start
    if results != [len(body)] or consumer.written != len(body):
        raise SystemExit(f"{variant}: the answer did not arrive whole: {results}")
    if clock.getDelayedCalls():
        raise SystemExit(f"{variant}: a delayed call was left")
    return elapsed


def main() -> int:
    megabytes = float(sys.argv[1]) if len(sys.argv) > 1 else 50.0
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    body = rtp_pcap(int(megabytes * 1024 * 1024))
    mb = len(body) / 1e6
    reference_s = statistics.median(reference(body) for _ in range(runs))
    print(f"{mb:.1f} MB answer in {CHUNK // 1024} KiB chunks, in memory, median of {runs} runs")
    print(f"{'':38} {'MB/s':>9} {'vs ref':>7}")
    print(f"{'reference: chunks into frames and out':38} {mb / reference_s:9,.0f} "
          f"{1.0:7.2f}")
    for variant in ("protocol", "flow control", "zstd"):
        elapsed = statistics.median(through_protocol(body, variant) for _ in range(runs))
        print(f"{variant:38} {mb / elapsed:9,.0f} {reference_s / elapsed:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
