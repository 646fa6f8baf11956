"""Record encodings on the channel, compared: decode + validation per record, and where.

A CDRS batch of 1000 CDRs (two RTP streams each, as bench/store.py and bench/channel.py
make them) is decoded and every item checked into its record (``records.kinds.from_item``,
the validation the central runs) with:

- ``json``: the standard library's ``json.loads`` (what ``wire.parse_json`` used before it
  took orjson),
- ``orjson``: the same JSON bytes parsed by orjson (same wire, no negotiation needed),
- ``msgpack``: the batch as MessagePack (a different wire: the sensor would convert its
  queue's JSON items, whose cost is printed too).

Then decode + validation of 8 such batches by a pool of 2 threads and by a pool of 2
processes (the records pickled back to the caller, as the central would need them), beside
the same work in the calling thread: whether the GIL leaves anything to threads, and
whether processes pay for their pickling on this machine.

    .venv/bin/python bench/encoding.py [--cdrs 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgpack
import orjson

from voipmon.protocols.wire import encode_cdr_batch
from voipmon.records.kinds import from_item, item_bytes
from voipmon.store import testing


def batch_json(count: int, first: int = 0) -> bytes:
    return encode_cdr_batch(1, [item_bytes(testing.make_cdr(n, id_sensor=2))
                                for n in range(first, first + count)])


def check(body: dict[str, Any]) -> list[Any]:
    return [from_item(item) for item in body["cdrs"]]


def decode_stdlib(payload: bytes) -> list[Any]:
    return check(json.loads(payload))


def decode_orjson(payload: bytes) -> list[Any]:
    return check(orjson.loads(payload))


def decode_msgpack(payload: bytes) -> list[Any]:
    return check(msgpack.unpackb(payload, raw=False, strict_map_key=True))


def best(rounds: int, work: Callable[[], object]) -> float:
    fastest = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        work()
        fastest = min(fastest, time.perf_counter() - began)
    return fastest


def pooled(executor: Executor | None, decode: Callable[[bytes], list[Any]],
           payloads: list[bytes]) -> int:
    if executor is None:
        return sum(len(decode(p)) for p in payloads)
    return sum(len(r) for r in executor.map(decode, payloads))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cdrs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    count = args.cdrs
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load}; best of {args.rounds}; "
          f"batches of {count} CDRs with 2 RTP streams")
    payload = batch_json(count)
    body = json.loads(payload)
    packed = msgpack.packb(body, use_bin_type=True)
    assert decode_msgpack(packed) == decode_stdlib(payload) == decode_orjson(payload)
    parse_only = {
        "json": best(args.rounds, lambda: json.loads(payload)),
        "orjson": best(args.rounds, lambda: orjson.loads(payload)),
        "msgpack": best(args.rounds, lambda: msgpack.unpackb(packed, raw=False)),
    }
    whole = {
        "json": best(args.rounds, lambda: decode_stdlib(payload)),
        "orjson": best(args.rounds, lambda: decode_orjson(payload)),
        "msgpack": best(args.rounds, lambda: decode_msgpack(packed)),
    }
    validation = best(args.rounds, lambda: check(body))
    items = [item_bytes(testing.make_cdr(n, id_sensor=2)) for n in range(count)]
    convert = best(args.rounds, lambda: msgpack.packb(
        {"first": 1, "cdrs": [orjson.loads(i) for i in items]}, use_bin_type=True))
    sizes = {"json": len(payload), "orjson": len(payload), "msgpack": len(packed)}
    print(f"{'encoding':8} {'parse us/rec':>12} {'+validation us/rec':>19} {'records/s':>10} "
          f"{'bytes/rec':>9}")
    for name in ("json", "orjson", "msgpack"):
        print(f"{name:8} {parse_only[name] / count * 1e6:12.1f} "
              f"{whole[name] / count * 1e6:19.1f} {count / whole[name]:10,.0f} "
              f"{sizes[name] / count:9.0f}")
    print(f"validation alone (from_item on decoded items): {validation / count * 1e6:.1f} us/rec")
    print(f"sensor side for msgpack: queue JSON items -> msgpack batch: "
          f"{convert / count * 1e6:.1f} us/rec (json needs none: the items are sent as queued)")
    payloads = [batch_json(count, first=k * count) for k in range(8)]
    total = 8 * count
    print(f"\ndecode + validation of 8 batches ({total} CDRs), orjson:")
    inline = best(args.rounds, lambda: pooled(None, decode_orjson, payloads))
    print(f"  {'in the calling thread':28} {total / inline:10,.0f} CDR/s  (reference)")
    with ThreadPoolExecutor(2) as threads:
        rate = total / best(args.rounds, lambda: pooled(threads, decode_orjson, payloads))
        print(f"  {'2 threads':28} {rate:10,.0f} CDR/s  ({rate * inline / total:.2f}x)")
    with ProcessPoolExecutor(2) as processes:
        pooled(processes, decode_orjson, payloads[:2])   # start the workers
        rate = total / best(args.rounds, lambda: pooled(processes, decode_orjson, payloads))
        print(f"  {'2 processes (records back)':28} {rate:10,.0f} CDR/s  "
              f"({rate * inline / total:.2f}x)")


if __name__ == "__main__":
    main(sys.argv[1:])
