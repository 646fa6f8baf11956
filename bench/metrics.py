"""What the metrics cost: the analysis rate with metrics on beside off (target: at most 3 %
slower), and a scrape of the central's /metrics with 100 sensors, beside generate_latest
of an empty registry and of Python's process collectors alone.

Analysis: the same frames (a SIP-heavy mix of the bundled captures, REGISTER floods
included; and an RTP-heavy one, the bundled 3-call G.711 capture) through a fresh engine,
after a warm-up, in ``--runs`` rounds of three runs (off, on, off again; the order
rotating), each run's CPU time. Each round gives the on/off and off/off slow-downs,
paired (a change of the machine's load between rounds cancels out); printed: their median,
quartiles and range, and a 95 % bootstrap interval of the median, which decides the
verdict (met only when the whole interval is within the target). Off: the engine
alone. On: as a sensor runs it, its CDR callback through ``CallOutcomes``, its counters
in a ``MetricsRegistry`` with the process's, a snapshot taken and serialized as STATS
every ``--interval`` seconds (5 s, as on a sensor; at least one a run, at its end).
Times are the process's CPU time (the machine may be shared), runs long enough to hide
the clock's grain. Also printed: what
one snapshot costs, and its share of a core at one per 5 s. The SIP counting by method
and class is part of the engine in both (plain dict increments in its SIP path, like its
other counters); its share is measured apart, the same statements timed alone for as
many SIP messages as the mix holds.

The fleet is voipmon.test.metrics_fakes's: realistic figures for each sensor (capture,
SIP by method and class, calls by bye code, MOS and loss histograms, delivery, channel;
every third sensor mirroring, its calls counted by the central), each having pushed its
snapshot through JSON. Also printed: the exposition's size (plain and gzip), what the
central spends on one sensor's STATS (JSON parse + check + fleet) and what a sensor spends
making one (read its sources + JSON). All on the thread that renders: the reactor's.

    .venv/bin/python bench/metrics.py [--sensors 100] [--seconds 2] [--runs 21]
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.task import Clock

from voipmon.analysis.engine import Engine
from voipmon.metrics import bindings
from voipmon.metrics.calls import CallOutcomes
from voipmon.metrics.catalog import Scope, method_label
from voipmon.metrics.collectors import (
    FleetCollector,
    ProcessSource,
    add_process_collectors,
    central_registry,
)
from voipmon.metrics.sources import CountersSource, MetricsRegistry, SnapshotTaker
from voipmon.packet.readers import read_capture
from voipmon.protocols.wire import parse_json
from voipmon.sensor.metrics import under
from voipmon.test.common import data_path
from voipmon.test.metrics_fakes import fake_fleet

TARGET = 3.0          # % slower with metrics on, at most
SIP_MIX = ("register_sipvicious_lo.pcap", "register_kamailio_sipp_lo.pcap",
           "sipmsg_kamailio_sipp_lo.pcap", "sipp_tcp_2calls_udp_486_2calls_lo.pcap",
           "hostile_callids.pcap")
RTP_MIX = ("sipp_uac_pcap_rtp_echo_lo_3calls.pcap",)
Record = tuple[float, int, bytes]


def workload(names: tuple[str, ...], copies: int) -> list[Record]:
    """The captures' frames ``copies`` times over, each copy later than the one before."""
    base: list[Record] = []
    for name in names:
        records = list(read_capture(data_path(name)))
        shift = (base[-1][0] + 60 - records[0][0]) if base else 0.0
        base += [(ts + shift, linktype, frame) for ts, linktype, frame in records]
    span = base[-1][0] - base[0][0] + 60
    return [(ts + copy * span, linktype, frame) for copy in range(copies)
            for ts, linktype, frame in base]


snapshot_cost: list[float] = []


def analyse(records: list[Record], metrics: bool, interval: float) -> tuple[float, int, int]:
    """Seconds to analyse ``records`` (metrics on or off); CDRs made; snapshots taken."""
    cdrs: list[object] = []
    snapshots = 0
    if metrics:
        outcomes = CallOutcomes()
        engine = Engine(id_sensor=1, on_cdr=outcomes.wrap(cdrs.append))
        registry = MetricsRegistry(Scope.SENSOR)
        registry.add(CountersSource(engine.counters, {
            **bindings.ENGINE, **under("decoder", bindings.DECODER)}))
        registry.add(outcomes)
        registry.add(ProcessSource())
        taker = SnapshotTaker(registry, 1, Clock())
    else:
        engine = Engine(id_sensor=1, on_cdr=cdrs.append)
    started = time.process_time()
    due = started + interval
    for at in range(0, len(records), 2000):
        engine.feed_all(records[at:at + 2000])
        if metrics and time.process_time() >= due:
            json.dumps(taker.take().to_json()).encode("ascii")
            snapshots += 1
            due = time.process_time() + interval
    engine.finish()
    if metrics:
        json.dumps(taker.take().to_json()).encode("ascii")
        snapshots += 1
    elapsed = time.process_time() - started
    if metrics:     # measured apart, after the run
        snapshot_cost.append(per_call(lambda: json.dumps(taker.take().to_json()), 0.2))
    return elapsed, len(cdrs), snapshots


def sip_counting(messages: int) -> float:
    """Seconds that the engine's SIP counting takes for ``messages`` SIP messages (the
    statements of Engine._sip, alone), half requests, half responses."""
    requests: dict[str, int] = {}
    responses: dict[str, list[int]] = {}
    methods = ("INVITE", "REGISTER", "BYE", "ACK")
    started = time.process_time()
    for n in range(messages // 2):
        method = methods[n & 3]
        if method in requests:
            requests[method] += 1
        else:
            label = method_label(method)
            requests[label] = requests.get(label, 0) + 1
        row = responses.get(method)
        if row is None:
            row = responses.setdefault(method_label(method), [0] * 7)
        klass = 200 // 100
        row[klass if 0 < klass < 7 else 0] += 1
    return time.process_time() - started


def observing(cdrs: list[object]) -> float:
    """Seconds that ``CallOutcomes`` takes to observe every CDR of ``cdrs``."""
    outcomes = CallOutcomes()
    return per_call(lambda: [outcomes.observe(cdr) for cdr in cdrs], 0.2)  # type: ignore[arg-type]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    at = q * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def median_interval(values: list[float], rounds: int = 4000) -> tuple[float, float]:
    """A 95 % interval of the median of ``values`` (percentile bootstrap, fixed seed)."""
    pick = random.Random(16)
    medians = sorted(statistics.median(pick.choices(values, k=len(values)))
                     for _ in range(rounds))
    return quantile(medians, 0.025), quantile(medians, 0.975)


def verdict(slower: list[float]) -> str:
    low, high = median_interval(slower)
    median = statistics.median(slower)
    if high <= TARGET:
        return f"met (95 % interval of the median {low:+.2f} .. {high:+.2f} %)"
    if median <= TARGET:
        return (f"met on the median only (95 % interval {low:+.2f} .. {high:+.2f} %: not "
                f"shown beyond the noise)")
    return f"NOT met (95 % interval {low:+.2f} .. {high:+.2f} %)"


def analysis_overhead(runs: int, interval: float) -> None:
    for title, names, copies in (("SIP-heavy", SIP_MIX, 30), ("RTP-heavy", RTP_MIX, 25)):
        records = workload(names, copies)
        made: list[object] = []
        probe = Engine(id_sensor=1, on_cdr=made.append)
        probe.feed_all(records)
        probe.finish()
        messages = probe.stats.sip_messages
        for arm in ("off", "on"):           # warm-up, not counted
            analyse(records, arm == "on", interval)
        # Rounds of three runs: off, on, and off again (the same work timed twice: the
        # machine's noise), their order rotating from round to round. Each round gives
        # the slow-down of on, and of the second off, against its own off: paired, so a
        # change of load between rounds cancels out.
        timings: dict[str, list[float]] = {"off": [], "on": [], "again": []}
        snapshots = 0
        arms = ["off", "on", "again"]
        for run in range(runs):
            for arm in arms[run % 3:] + arms[:run % 3]:
                gc.collect()
                elapsed, _cdrs, taken = analyse(records, arm == "on", interval)
                timings[arm].append(elapsed)
                snapshots += taken if arm == "on" else 0
        slower = [(on / off - 1) * 100 for on, off in zip(timings["on"], timings["off"],
                                                          strict=True)]
        noise = [(again / off - 1) * 100 for again, off in zip(timings["again"],
                                                               timings["off"], strict=True)]
        off = statistics.median(timings["off"])
        on = statistics.median(timings["on"])
        counting = sip_counting(messages) / off * 100
        # What "on" adds, each part timed alone: every CDR observed, one snapshot a run.
        observe = observing(made)
        added = (observe + statistics.median(snapshot_cost) * snapshots / runs) / off * 100
        print(f"analysis, {title} ({len(records)} frames, {messages} SIP messages, "
              f"{runs} rounds of off/on/off, CPU time): metrics off {len(records) / off:,.0f} "
              f"packets/s, on {len(records) / on:,.0f} packets/s (medians)")
        print(f"  on vs off, paired: median {statistics.median(slower):+.2f} %, quartiles "
              f"{quantile(slower, 0.25):+.2f} .. {quantile(slower, 0.75):+.2f} %, range "
              f"{min(slower):+.2f} .. {max(slower):+.2f} %; target <= {TARGET:g} % slower: "
              f"{verdict(slower)}; {snapshots // runs} snapshots a run")
        print(f"  off vs off (the noise), paired: median {statistics.median(noise):+.2f} %, "
              f"quartiles {quantile(noise, 0.25):+.2f} .. {quantile(noise, 0.75):+.2f} %, "
              f"range {min(noise):+.2f} .. {max(noise):+.2f} %")
        print(f"  what on adds, its parts timed alone: {added:.3f} % of the run ({len(made)} "
              f"CDRs observed, {snapshots / runs:g} snapshot a run); with the counting in "
              f"the engine below: {added + counting:.3f} %")
        print(f"  counted in the engine in both arms: SIP by method and class "
              f"{counting:.2f} % of the run (its statements timed alone); RTP one addition "
              f"per drain of a flow's buffer (not per packet)")
    cost = statistics.median(snapshot_cost)
    print(f"one snapshot of the sensor's registry, as STATS JSON: {cost * 1e3:.2f} ms "
          f"({cost / 5 * 100:.3f} % of a core at one per 5 s)")


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
    parser.add_argument("--runs", type=int, default=21,
                        help="rounds of off/on/off runs for each workload")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between snapshots while analysing (5 on a sensor)")
    options = parser.parse_args()
    analysis_overhead(options.runs, options.interval)
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
