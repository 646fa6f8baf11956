"""What a scrape of the central's /metrics costs with 100 sensors, beside generate_latest
of an empty registry and of Python's process collectors alone.

The fleet is voipmon.test.metrics_fakes's: realistic figures for each sensor (capture,
SIP by method and class, calls by bye code, MOS and loss histograms, delivery, channel;
every third sensor mirroring, its calls counted by the central), each having pushed its
snapshot through JSON. Also printed: the exposition's size (plain and gzip), what the
central spends on one sensor's STATS (JSON parse + check + fleet) and what a sensor spends
making one (read its sources + JSON). All on the thread that renders: the reactor's.

    .venv/bin/python bench/metrics.py [--sensors 100] [--seconds 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.task import Clock

from voipmon.metrics.collectors import (
    FleetCollector,
    add_process_collectors,
    central_registry,
)
from voipmon.protocols.wire import parse_json
from voipmon.test.metrics_fakes import fake_fleet


def per_call(work: Callable[[], object], seconds: float) -> float:
    """Seconds per call of ``work``, run for about ``seconds`` (after one warm-up call)."""
    work()
    calls, started = 0, time.perf_counter()
    while True:
        work()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return elapsed / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=2.0)
    options = parser.parse_args()
    clock = Clock()
    clock.advance(1_700_000_000)
    fleet, central, sensors = fake_fleet(clock, options.sensors)
    registry = central_registry(fleet, central.registry)
    empty = CollectorRegistry()
    process = CollectorRegistry()
    add_process_collectors(process)

    body = generate_latest(registry)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    scrape = per_call(lambda: generate_latest(registry), options.seconds)
    zipped = per_call(lambda: gzip.compress(generate_latest(registry), 6), options.seconds)
    reference = per_call(lambda: generate_latest(empty), options.seconds)
    process_only = per_call(lambda: generate_latest(process), options.seconds)

    collector = FleetCollector(fleet, central.registry)
    ours = per_call(lambda: list(collector.collect()), options.seconds)

    sensor = sensors[0]
    stats_body = json.dumps(sensor.taker.take().to_json()).encode("ascii")
    take = per_call(lambda: json.dumps(sensor.taker.take().to_json()).encode("ascii"),
                    options.seconds)
    bodies = [json.dumps(sensor.taker.take().to_json()).encode("ascii") for _ in range(2000)]
    started = time.perf_counter()
    for stats in bodies:
        fleet.received(sensor.id_sensor, parse_json(stats))
    push = (time.perf_counter() - started) / len(bodies)

    print(f"scrape of the central with {options.sensors} sensors: {scrape * 1e3:.2f} ms "
          f"({series} samples, {len(body) / 1024:.0f} KiB; {zipped * 1e3:.2f} ms with gzip, "
          f"{len(gzip.compress(body, 6)) / 1024:.0f} KiB); of which voipmon's collectors "
          f"{ours * 1e3:.2f} ms, prometheus_client's formatting the rest")
    print(f"reference, generate_latest of an empty registry: {reference * 1e3:.4f} ms; "
          f"of the process collectors alone: {process_only * 1e3:.3f} ms")
    print(f"one sensor's STATS ({len(stats_body)} bytes of JSON): {take * 1e3:.3f} ms to make "
          f"on the sensor, {push * 1e3:.3f} ms to take in on the central "
          f"({options.sensors} sensors every 5 s: "
          f"{push * options.sensors / 5 * 100:.2f} % of one core)")


if __name__ == "__main__":
    main()
