"""voipmon.metrics.collectors and resource: what /metrics renders, in memory and over a
loopback HTTP connection."""

from __future__ import annotations

import gzip

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from voipmon.metrics.catalog import CONTRACT, FAMILIES, Kind, Scope
from voipmon.metrics.collectors import (
    FleetCollector,
    ProcessSource,
    central_registry,
    sensor_registry,
)
from voipmon.metrics.fleet import Fleet
from voipmon.metrics.resource import MetricsResource, metrics_site
from voipmon.metrics.sources import Collection, IMetricsSource, MetricsRegistry
from voipmon.test.metrics_fakes import fake_fleet

Samples = dict[str, list[tuple[dict[str, str], float]]]


def samples(registry: CollectorRegistry) -> Samples:
    out: Samples = {}
    text = generate_latest(registry).decode()
    for metric in text_string_to_metric_families(text):
        for sample in metric.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def one(found: Samples, name: str, **labels: str) -> float:
    matches = [v for sample_labels, v in found.get(name, [])
               if all(sample_labels.get(k) == v2 for k, v2 in labels.items())]
    if len(matches) != 1:
        raise AssertionError(f"{name} {labels}: {len(matches)} samples")
    return matches[0]


@implementer(IMetricsSource)
class StoredFor12:
    def collect_metrics(self, into: Collection) -> None:
        into.sensor(12).counter("voipmon_cdrs_stored_total", 3)


class CentralExpositionTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.fleet, self.central, self.sensors = fake_fleet(self.clock, 6)
        self.found = samples(central_registry(self.fleet, self.central.registry))

    def test_contract_series_for_every_sensor_in_either_mode(self) -> None:
        for sensor in self.sensors:
            labels = {"id_sensor": str(sensor.id_sensor),
                      "name_sensor": f"site-{sensor.id_sensor}"}
            for name in CONTRACT:
                one(self.found, name, **labels)
            self.assertEqual(one(self.found, "voipmon_sensor_up", **labels), 1)
            self.assertEqual(one(self.found, "voipmon_sensor_packets_total", **labels),
                             sensor.capture["packets"])
            self.assertEqual(one(self.found, "voipmon_cdrs_stored_total", **labels),
                             sensor.uplink["delivered"])
            mirror = sensor.mode == "mirror"
            self.assertEqual(one(self.found, "voipmon_calls_active", **labels),
                             3 if mirror else sensor.engine["active_calls"])
            self.assertEqual(one(self.found, "voipmon_sensor_queue_records", **labels),
                             2 if mirror else sensor.uplink["queue_depth"])
            self.assertEqual(one(self.found, "voipmon_sensor_info", **labels, mode=sensor.mode,
                                 version="0.1.0"), 1)

    def test_histograms(self) -> None:
        sensor = self.sensors[0]
        labels = {"id_sensor": "1"}
        self.assertEqual(one(self.found, "voipmon_call_mos_count", **labels),
                         sensor.outcomes.mos.count)
        self.assertEqual(one(self.found, "voipmon_call_mos_bucket", **labels, le="+Inf"),
                         sensor.outcomes.mos.count)
        self.assertEqual(one(self.found, "voipmon_call_mos_bucket", **labels, le="4.0"),
                         sum(sensor.outcomes.mos.counts[:8]))
        self.assertEqual(one(self.found, "voipmon_central_store_batch_seconds_count"), 200)

    def test_labels_and_central_series(self) -> None:
        """Sensor families carry id_sensor and name_sensor; the central's own, none."""
        for item in FAMILIES:
            suffixes = ("_bucket", "_count", "_sum") if item.kind is Kind.HISTOGRAM else ("",)
            for suffix in suffixes:
                for labels, _ in self.found.get(item.name + suffix, []):
                    sensor_labels = {"id_sensor", "name_sensor"} & set(labels)
                    if item.scope in (Scope.SENSOR, Scope.FLEET):
                        self.assertEqual(len(sensor_labels), 2, item.name)
                    else:
                        self.assertEqual(sensor_labels, set(), item.name)
        self.assertEqual(one(self.found, "voipmon_central_sensors_connected"), 6)
        self.assertEqual(one(self.found, "voipmon_central_http_requests_total", code="200"),
                         420)
        self.assertEqual(one(self.found, "voipmon_central_db_errors_total",
                             kind="lost_connection"), 1)
        self.assertEqual(one(self.found, "voipmon_build_info", version="0.1.0"), 1)

    def test_process_collectors(self) -> None:
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                     "python_info", "python_gc_objects_collected_total"):
            self.assertIn(name, self.found)

    def test_empty_fleet(self) -> None:
        found = samples(central_registry(Fleet(self.clock), MetricsRegistry(Scope.CENTRAL),
                                         process=False))
        self.assertEqual(sorted(found), ["voipmon_build_info",
                                         "voipmon_central_sensors_connected",
                                         "voipmon_central_snapshots_total"])

    def test_central_figures_of_a_sensor_not_in_the_fleet(self) -> None:
        """CDRs stored for a sensor the fleet has not heard of (yet) are exposed too."""
        fleet = Fleet(self.clock)
        central = MetricsRegistry(Scope.CENTRAL)
        rows, _ = FleetCollector(fleet, central).rows()
        self.assertEqual(rows, [])

        central.add(StoredFor12())
        found = samples(central_registry(fleet, central, process=False))
        self.assertEqual(one(found, "voipmon_cdrs_stored_total", id_sensor="12",
                             name_sensor=""), 3)
        self.assertNotIn("voipmon_sensor_up", found)


class SensorExpositionTests(SynchronousTestCase):

    def test_own_metrics(self) -> None:
        """A sensor's own /metrics: its figures now, same names and labels, no up."""
        clock = Clock()
        clock.advance(1_700_000_000)
        _, _, sensors = fake_fleet(clock, 1)
        sensor = sensors[0]
        sensor.registry.add(ProcessSource())
        sensor.advance(5, calls=1)
        found = samples(sensor_registry(sensor.taker, "site-1"))
        labels = {"id_sensor": "1", "name_sensor": "site-1"}
        self.assertEqual(one(found, "voipmon_sensor_packets_total", **labels),
                         sensor.capture["packets"])
        self.assertGreater(one(found, "voipmon_sensor_process_resident_memory_bytes",
                               **labels), 0)
        self.assertEqual(one(found, "voipmon_sensor_start_time_seconds", **labels),
                         sensor.taker.started)
        self.assertNotIn("voipmon_sensor_up", found)
        self.assertIn("process_cpu_seconds_total", found)
        self.assertEqual(sensor.taker.seq, 2, "a scrape pushes nothing")


class ResourceTests(SynchronousTestCase):

    def setUp(self) -> None:
        clock = Clock()
        clock.advance(1_700_000_000)
        fleet, central, _ = fake_fleet(clock, 3)
        self.registry = central_registry(fleet, central.registry, process=False)

    def test_render(self) -> None:
        request = DummyRequest([b""])
        body = MetricsResource(self.registry).render_GET(request)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                         [CONTENT_TYPE_LATEST.encode()])
        self.assertEqual(body, generate_latest(self.registry))
        self.assertIn(b'voipmon_sensor_up{id_sensor="2",name_sensor="site-2"} 1.0', body)

    def test_failing_collection(self) -> None:
        """A collector that raises gives a 500 with a short text, and is logged."""
        class Broken:
            def collect(self) -> list[object]:
                raise RuntimeError("boom")

        registry = CollectorRegistry()
        registry.register(Broken())  # type: ignore[arg-type]
        resource = MetricsResource(registry)
        request = DummyRequest([b""])
        body = resource.render_GET(request)
        self.assertEqual(request.responseCode, 500)
        self.assertNotIn(b"boom", body)
        self.assertEqual(resource.failures, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class LoopbackTests(TestCase):
    """The same resource on a real socket, fetched by a real HTTP client."""

    @defer.inlineCallbacks
    def test_served(self) -> defer.Generator:
        clock = Clock()
        clock.advance(1_700_000_000)
        fleet, central, _ = fake_fleet(clock, 3)
        registry = central_registry(fleet, central.registry)
        port = reactor.listenTCP(0, metrics_site(registry), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}".encode()
        agent = Agent(reactor)
        response = yield agent.request(b"GET", base + b"/metrics")
        body = yield readBody(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [CONTENT_TYPE_LATEST.encode()])
        names = {m.name for m in text_string_to_metric_families(body.decode())}
        self.assertTrue({"voipmon_sensor_up", "voipmon_sensor_packets", "process_cpu_seconds"}
                        <= names, names)
        zipped = yield agent.request(b"GET", base + b"/metrics",
                                     Headers({b"accept-encoding": [b"gzip"]}))
        raw = yield readBody(zipped)
        self.assertEqual(zipped.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertIn(b"voipmon_sensor_up{", gzip.decompress(raw))
        missing = yield agent.request(b"GET", base + b"/other")
        yield readBody(missing)
        self.assertEqual(missing.code, 404)

