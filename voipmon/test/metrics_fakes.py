"""Realistic fake figures for the metrics tests, bench/metrics.py and the tiny metrics
server: components shaped as today's (their counters as dicts), bound to the catalog by
the real tables of voipmon.metrics.bindings, through the real seam.

``FakeSensor(n)`` is one sensor's components with figures that grow with ``advance``;
``fake_fleet(clock, count)`` a central with ``count`` sensors (every third one mirroring:
its calls and queue counted by the central), each having pushed two snapshots.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IReactorTime

from voipmon.metrics import bindings
from voipmon.metrics.calls import CallOutcomes
from voipmon.metrics.catalog import STORE_BATCH_BUCKETS, Scope
from voipmon.metrics.fleet import Fleet
from voipmon.metrics.snapshot import Histogram
from voipmon.metrics.sources import (
    CountersSource,
    HistogramSource,
    MetricsRegistry,
    SnapshotTaker,
)

BYE_MIX = ((3, 70), (0, 15), (2, 8), (104, 4), (1, 3))     # bye code, share of calls (%)


class FakeCdr:
    """As much of a CDR as CallOutcomes reads."""

    class Side:
        def __init__(self, received: int, lost: int, mos: float | None) -> None:
            self.received, self.lost = received, lost
            self.mos_f1, self.mos_f2, self.mos_adapt = mos, mos, mos

    def __init__(self, bye: int, mos: float | None = None, lost: int = 0,
                 received: int = 500) -> None:
        self.bye = bye
        self._sides = {} if mos is None else {
            "a": self.Side(received, lost, mos), "b": self.Side(received, 0, mos + 0.1)}

    def side(self, which: str) -> Any:
        return self._sides.get(which)


class FakeSensor:
    """The components of one sensor, as dicts of counters, and its registry."""

    def __init__(self, id_sensor: int, clock: IReactorTime, *, mode: str = "local",
                 centrals: tuple[str, ...] = ("central-a:60024", "central-b:60024")) -> None:
        self.id_sensor = id_sensor
        self.mode = mode
        self.capture: dict[str, Any] = {"packets": 0, "bytes": 0, "dropped": 0}
        self.decoder: dict[str, Any] = {"undecodable": {"truncated ip": 0, "bad udp length": 0},
                                        "ignored": {"arp": 0, "tcp other port": 0, "icmp": 0}}
        self.engine: dict[str, Any] = {
            "active_calls": 0, "rtp_packets": 0, "rtcp_packets": 0,
            "sip_requests": {"INVITE": 0, "ACK": 0, "BYE": 0, "CANCEL": 0, "OPTIONS": 0,
                             "REGISTER": 0, "X-ODD": 0},
            "sip_responses": {"INVITE": {"1xx": 0, "2xx": 0, "4xx": 0, "5xx": 0},
                              "BYE": {"2xx": 0}, "OPTIONS": {"2xx": 0},
                              "REGISTER": {"2xx": 0, "4xx": 0}}}
        self.uplink: dict[str, Any] = {"queue_depth": 0, "queue_bytes": 0, "sent": 0,
                                       "delivered": 0}
        self.mirror: dict[str, Any] = {"dropped": 0, "batches_sent": 0, "batches_acked": 0}
        self.channel: dict[str, Any] = {
            "payload_bytes": 0, "wire_bytes": 0, "reconnects": 1, "switches": 1,
            "central_in_use": dict.fromkeys(centrals, 0) | {centrals[0]: 1},
            "clock_skew": -0.012 * id_sensor, "rtt": 0.0008 + id_sensor * 1e-5}
        self.dead_letters = {"dead_letters": 0}
        self.outcomes = CallOutcomes()
        self.registry = MetricsRegistry(Scope.SENSOR)
        tables = [(self.capture, bindings.CAPTURE), (self.channel, bindings.CHANNEL),
                  (self.dead_letters, bindings.DEAD_LETTERS)]
        if mode == "local":
            tables += [(self.decoder, bindings.DECODER), (self.engine, bindings.ENGINE),
                       (self.uplink, bindings.CDR_UPLINK)]
            self.registry.add(self.outcomes)
        else:
            tables += [(self.mirror, bindings.MIRROR_UPLINK)]
        for counters, table in tables:
            self.registry.add(CountersSource(lambda c=counters: c, table))
        self.taker = SnapshotTaker(self.registry, id_sensor, clock, mode=mode,
                                   instance=f"{id_sensor:04x}" * 8)

    def advance(self, seconds: float, calls: int) -> None:
        """``seconds`` of traffic with ``calls`` calls ending."""
        rate = 1000 + 37 * self.id_sensor
        packets = int(rate * seconds)
        self.capture["packets"] += packets
        self.capture["bytes"] += packets * 214
        self.capture["dropped"] += self.id_sensor % 7 == 0
        self.decoder["undecodable"]["truncated ip"] += 1
        self.decoder["ignored"]["arp"] += int(seconds)
        self.engine["rtp_packets"] += packets - 12 * calls
        self.engine["rtcp_packets"] += calls * 4
        self.engine["active_calls"] = 5 + self.id_sensor % 11
        requests, responses = self.engine["sip_requests"], self.engine["sip_responses"]
        for method in ("INVITE", "ACK", "BYE"):
            requests[method] += calls
        responses["INVITE"]["1xx"] += 2 * calls
        responses["INVITE"]["2xx"] += calls
        responses["BYE"]["2xx"] += calls
        requests["OPTIONS"] += 3
        responses["OPTIONS"]["2xx"] += 3
        for index in range(calls):
            bye = BYE_MIX[index % len(BYE_MIX)][0]
            answered = bye in (1, 2, 3, 104)
            mos = 4.4 - 0.1 * ((index + self.id_sensor) % 9) if answered else None
            self.outcomes.observe(FakeCdr(bye, mos, lost=(index % 4) * 3))
        self.uplink["sent"] += calls
        self.uplink["delivered"] += max(calls - 1, 0)
        self.uplink["queue_depth"] = self.id_sensor % 3
        self.uplink["queue_bytes"] = self.uplink["queue_depth"] * 2100
        self.mirror["batches_sent"] += int(seconds * 10)
        self.mirror["batches_acked"] += int(seconds * 10) - 1
        self.channel["payload_bytes"] += calls * 2100
        self.channel["wire_bytes"] += calls * 700

    def push(self, fleet: Fleet) -> None:
        """A snapshot through JSON, as the channel carries it."""
        fleet.received(self.id_sensor, json.loads(json.dumps(self.taker.take().to_json())))


class FakeCentral:
    """The central's own components and its figures about the sensors."""

    def __init__(self, sensors: list[FakeSensor]) -> None:
        self.registry = MetricsRegistry(Scope.CENTRAL)
        self.queue = {"queued": 4, "queue_bytes": 9000, "dead_letters": 0}
        self.store = {"transactions": 900, "lost": 1, "retried": 2, "unavailable": 0,
                      "failed": 0}
        self.http = {"responses": {"200": 420, "304": 12, "401": 3, "404": 1}}
        self.batches = Histogram(STORE_BATCH_BUCKETS)
        for index in range(200):
            self.batches.observe(0.0007 + 0.0011 * (index % 13))
        for counters, table in ((self.queue, bindings.CENTRAL_QUEUE),
                                (self.store, bindings.STORE), (self.http, bindings.HTTP)):
            self.registry.add(CountersSource(lambda c=counters: c, table))
        self.registry.add(HistogramSource("voipmon_central_store_batch_seconds",
                                           self.batches))
        self.stored: dict[int, dict[str, int]] = {}
        for sensor in sensors:
            stored = self.stored[sensor.id_sensor] = {"stored": 0}
            self.registry.add(CountersSource(lambda c=stored: c, bindings.STORED_FOR_SENSOR,
                                             sensor=sensor.id_sensor))
            if sensor.mode == "mirror":
                # Its calls are made on the central: the central's engine and queue for it.
                outcomes = CallOutcomes(sensor=sensor.id_sensor)
                for index in range(40):
                    outcomes.observe(FakeCdr(3, 4.1 - 0.05 * (index % 5)))
                self.registry.add(outcomes)
                self.registry.add(CountersSource(
                    lambda: {"active_calls": 3, "rtp_packets": 99_000}, bindings.ENGINE,
                    sensor=sensor.id_sensor))
                self.registry.add(CountersSource(lambda: {"queued": 2},
                                                 bindings.CENTRAL_QUEUE_FOR_SENSOR,
                                                 sensor=sensor.id_sensor))

    def store_for(self, sensor: FakeSensor) -> None:
        self.stored[sensor.id_sensor]["stored"] = sensor.uplink["delivered"]


def fake_fleet(clock: Any, count: int, *, names: bool = True
               ) -> tuple[Fleet, FakeCentral, list[FakeSensor]]:
    """A central's fleet of ``count`` sensors (every third mirroring), each connected and
    having pushed two snapshots 5 s apart."""
    fleet = Fleet(clock)
    sensors = [FakeSensor(n, clock, mode="mirror" if n % 3 == 0 else "local")
               for n in range(1, count + 1)]
    central = FakeCentral(sensors)
    for sensor in sensors:
        fleet.connected(sensor.id_sensor, f"site-{sensor.id_sensor}" if names else "")
    for _ in range(2):
        clock.advance(5)
        for sensor in sensors:
            sensor.advance(5, calls=4)
            sensor.push(fleet)
            central.store_for(sensor)
    return fleet, central, sensors
