"""voipmon.metrics.sources, calls and bindings: the seam between components and figures."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from voipmon.metrics import bindings
from voipmon.metrics.calls import CallOutcomes, call_loss, call_mos
from voipmon.metrics.catalog import FAMILIES, Kind, Scope, method_label
from voipmon.metrics.snapshot import Histogram, SnapshotError
from voipmon.metrics.sources import (
    Bind,
    Carried,
    Collection,
    CountersSource,
    HistogramSource,
    IMetricsSource,
    MetricsRegistry,
    SnapshotTaker,
    flatten,
)
from voipmon.packet.decode import Decoder
from voipmon.packet.layers import LINKTYPE_ETHERNET
from voipmon.records.cdr import Cdr, RtpStream


def read(source: Any, scope: Scope = Scope.SENSOR) -> Collection:
    into = Collection(frozenset({scope}))
    source.collect_metrics(into)
    return into


class CountersSourceTests(SynchronousTestCase):

    def test_table(self) -> None:
        """Exact keys, patterns filling labels (mapped to stay bounded), nested dicts,
        a factor, booleans as 0/1, two keys into one series; other keys not exposed."""
        counters: dict[str, Any] = {
            "packets": 10, "kernel_dropped": 2, "interface_dropped": 3, "secret": 99,
            "mode": "local", "missing": None, "rtt_ms": 2.5, "connected": True,
            "sip": {"INVITE": 4, "BYE": 3, "WEIRD": 1, "ODD": 1},
            "responses": {"INVITE": {"2xx": 3}},
        }
        source = CountersSource(lambda: counters, {
            "packets": "voipmon_sensor_packets_total",
            "kernel_dropped": "voipmon_sensor_dropped_packets_total",
            "interface_dropped": "voipmon_sensor_dropped_packets_total",
            "mode": "voipmon_calls_active",
            "missing": "voipmon_sensor_queue_records",
            "rtt_ms": Bind("voipmon_channel_rtt_seconds", scale=0.001),
            "connected": Bind("voipmon_channel_central_in_use", labels={"central": "a"}),
            "sip.*": Bind("voipmon_sip_requests_total", each=("method",),
                          maps={"method": method_label}),
            "responses.*.*": Bind("voipmon_sip_responses_total",
                                  each=("method", "status_class")),
        })
        verifyObject(IMetricsSource, source)
        figures = read(source).own
        self.assertEqual(figures.to_json(), {
            "counters": {
                "voipmon_sensor_packets_total": 10,
                "voipmon_sensor_dropped_packets_total": 5,
                "voipmon_sip_requests_total": {"INVITE": 4, "BYE": 3, "other": 2},
                "voipmon_sip_responses_total": {"INVITE": {"2xx": 3}}},
            "gauges": {"voipmon_channel_rtt_seconds": 0.0025,
                       "voipmon_channel_central_in_use": {"a": 1}},
            "histograms": {}})

    def test_for_one_sensor(self) -> None:
        source = CountersSource(lambda: {"stored": 7}, bindings.STORED_FOR_SENSOR, sensor=4)
        into = read(source, Scope.CENTRAL)
        self.assertEqual(len(into.own), 0)
        self.assertEqual(into.sensors[4].get("voipmon_cdrs_stored_total"), 7)

    def test_bad_tables(self) -> None:
        """A wrong table is a ValueError when it is bound, not at a scrape."""
        for table, message in [
            ({"x": "voipmon_nope_total"}, "not a voipmon metric"),
            ({"x": "voipmon_call_mos"}, "histogram"),
            ({"x.*": "voipmon_sensor_packets_total"}, "'\\*'"),
            ({"x": "voipmon_sip_requests_total"}, "labels"),
            ({"x.*": Bind("voipmon_sip_requests_total", each=("reason",))}, "labels"),
            ({"x.*": Bind("voipmon_sip_requests_total", each=("method",),
                          maps={"reason": str})}, "maps"),
        ]:
            with self.assertRaisesRegex(ValueError, message):
                CountersSource(dict, table)

    def test_flatten(self) -> None:
        self.assertEqual(dict(flatten({"a": 1, "b": {"c": 2, "d": {"e": 3}}})),
                         {"a": 1, "b.c": 2, "b.d.e": 3})


class RegistryTests(SynchronousTestCase):

    def test_failing_source_isolated(self) -> None:
        """A source that fails is logged once while it keeps failing, counted, and the
        other sources are still read."""
        good = CountersSource(lambda: {"packets": 5}, bindings.CAPTURE)
        state = {"bad": True}

        def broken() -> dict[str, Any]:
            if state["bad"]:
                raise RuntimeError("counter gone")
            return {"packets": 1}

        registry = MetricsRegistry(Scope.SENSOR)
        registry.add(CountersSource(broken, bindings.CAPTURE))
        registry.add(good)
        for _ in range(3):
            self.assertEqual(registry.collect().own.get("voipmon_sensor_packets_total"), 5)
        self.assertEqual(registry.errors, 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        state["bad"] = False
        self.assertEqual(registry.collect().own.get("voipmon_sensor_packets_total"), 6)
        state["bad"] = True
        registry.collect()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_scope_enforced(self) -> None:
        """A sensor's registry cannot hold the central's figures (a wiring bug)."""
        registry = MetricsRegistry(Scope.SENSOR)
        registry.add(CountersSource(lambda: {"queued": 1}, bindings.CENTRAL_QUEUE))
        registry.collect()
        self.assertEqual(len(self.flushLoggedErrors(SnapshotError)), 1)

    def test_add_checks_interface(self) -> None:
        with self.assertRaises(TypeError):
            MetricsRegistry(Scope.SENSOR).add(object())

    def test_snapshot_taker(self) -> None:
        clock = Clock()
        clock.advance(1_700_000_000)
        counters = {"packets": 0}
        registry = MetricsRegistry(Scope.SENSOR)
        registry.add(CountersSource(lambda: counters, bindings.CAPTURE))
        taker = SnapshotTaker(registry, 9, clock, mode="mirror")
        clock.advance(5)
        counters["packets"] = 50
        first = taker.take()
        self.assertEqual((first.id_sensor, first.seq, first.started, first.time, first.mode),
                         (9, 1, 1_700_000_000, 1_700_000_005, "mirror"))
        self.assertEqual(first.figures.get("voipmon_sensor_packets_total"), 50)
        counters["packets"] = 70
        peek = taker.peek()
        self.assertEqual((peek.seq, peek.figures.get("voipmon_sensor_packets_total")), (1, 70))
        self.assertEqual(taker.take().seq, 2)
        self.assertEqual(first.figures.get("voipmon_sensor_packets_total"), 50)
        other = SnapshotTaker(registry, 9, clock)
        self.assertNotEqual(other.instance, taker.instance)

    def test_HistogramSource(self) -> None:
        histogram = Histogram((0.1, 1.0))
        histogram.observe(0.05)
        source = HistogramSource("voipmon_central_store_batch_seconds", histogram)
        kept = read(source, Scope.CENTRAL).own.get("voipmon_central_store_batch_seconds")
        assert isinstance(kept, Histogram)
        self.assertEqual(kept.counts, [1, 0, 0])
        with self.assertRaises(ValueError):
            HistogramSource("voipmon_calls_active", histogram)


class CarriedTests(SynchronousTestCase):

    def test_monotonic_across_components(self) -> None:
        """A mirroring sensor's engine is new at each connection: its counts carry on,
        its levels do not."""
        carried = Carried(gauges=("active_calls",))
        first = {"rtp_packets": 100, "active_calls": 4, "sip": {"INVITE": 2}}
        carried.attach(lambda: first)
        self.assertEqual(carried.counters(),
                         {"rtp_packets": 100, "active_calls": 4, "sip.INVITE": 2})
        carried.detach()
        self.assertEqual(carried.counters(), {"rtp_packets": 100, "sip.INVITE": 2})
        second = {"rtp_packets": 30, "active_calls": 1, "sip": {"INVITE": 1, "BYE": 1}}
        carried.attach(lambda: second)
        self.assertEqual(carried.counters(), {"rtp_packets": 130, "active_calls": 1,
                                              "sip.INVITE": 3, "sip.BYE": 1})
        third = {"rtp_packets": 5}
        carried.attach(lambda: third)           # attaching detaches the one before
        self.assertEqual(carried.counters()["rtp_packets"], 135)
        source = CountersSource(carried.counters, bindings.ENGINE, sensor=3)
        figures = read(source, Scope.CENTRAL).sensors[3]
        self.assertEqual(figures.get("voipmon_rtp_packets_total"), 135)
        self.assertIsNone(figures.get("voipmon_calls_active"))


class SensorChannelTests(SynchronousTestCase):

    def test_skew_and_rtt_are_levels_of_the_session(self) -> None:
        """The sensor's own clock-skew measure and ping round trip are those of its
        current channel (never added up across sessions); its bytes carry on."""
        from voipmon.sensor.metrics import SensorMetrics

        class Channel:
            def __init__(self, skew: float, rtt: float | None, sent: int) -> None:
                self.handshake = type("Handshake", (), {"skew": skew})()
                self.rtt, self.payload_bytes_sent, self.wire_bytes_sent = rtt, sent, sent

        metrics = SensorMetrics(5, Clock(), "local")
        metrics.registry.add(CountersSource(metrics.channel_counters, bindings.CHANNEL))
        metrics.session_made(Channel(2.5, 0.01, 100))
        figures = metrics.figures()
        self.assertEqual(figures.get("voipmon_sensor_clock_skew_seconds"), 2.5)
        self.assertEqual(figures.get("voipmon_channel_rtt_seconds"), 0.01)
        metrics.session_lost()
        self.assertIsNone(metrics.figures().get("voipmon_sensor_clock_skew_seconds"))
        metrics.session_made(Channel(-0.75, None, 40))
        figures = metrics.figures()
        self.assertEqual(figures.get("voipmon_sensor_clock_skew_seconds"), -0.75)
        self.assertIsNone(figures.get("voipmon_channel_rtt_seconds"))
        self.assertEqual(figures.get("voipmon_channel_payload_bytes_total"), 140)
        self.assertEqual(figures.get("voipmon_channel_reconnects_total"), 1)


def stream(received: int, lost: int, *mos: float | None) -> RtpStream:
    f1, f2, adapt = (*mos, None, None, None)[:3]
    return RtpStream(saddr="10.0.0.1", sport=4000, daddr="10.0.0.2", dport=4002, ssrc=1,
                     payload=0, received=received, lost=lost, mos_f1=f1, mos_f2=f2,
                     mos_adapt=adapt)


def cdr(bye: int, *streams: RtpStream) -> Cdr:
    return Cdr(sensor_cdr_uid="u", callid="c", id_sensor=1, calldate=0.0, callend=1.0,
               duration=1.0, connect_duration=1.0, caller="a", called="b",
               sipcallerip="10.0.0.1", sipcalledip="10.0.0.2", sipcallerport=5060,
               sipcalledport=5060, lastSIPresponseNum=200, bye=bye, rtp=streams,
               a_index=0 if streams else None, b_index=1 if len(streams) > 1 else None)


class CallOutcomesTests(SynchronousTestCase):

    def test_quality_of_a_call(self) -> None:
        """The lowest MOS of both sides and models, to 0.1 as stored; the worse loss."""
        call = cdr(3, stream(990, 10, 4.36, 4.12, None), stream(1000, 0, 4.4, 4.05, 3.96))
        self.assertEqual(call_mos(call), 4.0)
        self.assertEqual(call_loss(call), 0.01)
        one_sided = cdr(101, stream(0, 0, None))
        self.assertIsNone(call_mos(one_sided))
        self.assertIsNone(call_loss(one_sided))
        self.assertIsNone(call_mos(cdr(0)))

    def test_other_records_pass_uncounted(self) -> None:
        """A mirroring engine's registrations, SIP messages and alerts take the CDRs'
        callback: they reach the queue, and only CDRs are counted."""
        from voipmon.test.recordsupport import SCANNED, engine_records

        outcomes = CallOutcomes()
        stored: list = []
        on_cdr = outcomes.wrap(stored.append)
        records = engine_records(SCANNED)
        for record in [*records, cdr(3)]:
            on_cdr(record)
        self.assertEqual(len(stored), len(records) + 1)
        self.assertEqual(outcomes.counters()["cdrs"], 1)

    def test_counts(self) -> None:
        outcomes = CallOutcomes()
        verifyObject(IMetricsSource, outcomes)
        stored: list[Cdr] = []
        on_cdr = outcomes.wrap(stored.append)
        calls = [cdr(3, stream(1000, 0, 4.4), stream(1000, 0, 4.4)),
                 cdr(3, stream(900, 100, 2.9), stream(1000, 0, 4.0)),
                 cdr(0), cdr(104, stream(500, 5, 3.95))]
        for call in calls:
            on_cdr(call)
        self.assertEqual(stored, calls)
        self.assertEqual(outcomes.counters(), {"cdrs": 4, "mos_count": 3, "loss_count": 3,
                                               "ended.0": 1, "ended.3": 2, "ended.104": 1})
        figures = read(outcomes).own
        self.assertEqual(figures.get("voipmon_cdrs_made_total"), 4)
        self.assertEqual(figures.get("voipmon_calls_ended_total", bye="3"), 2)
        mos = figures.get("voipmon_call_mos")
        loss = figures.get("voipmon_call_packet_loss_ratio")
        assert isinstance(mos, Histogram) and isinstance(loss, Histogram)
        # 2.9 -> le 3.0; 4.0 (3.95 to 0.1) -> le 4.0; 4.4 -> le 4.4.
        self.assertEqual(dict(zip(mos.bounds, mos.counts, strict=False)),
                         {1.0: 0, 1.5: 0, 2.0: 0, 2.5: 0, 3.0: 1, 3.5: 0, 3.8: 0, 4.0: 1,
                          4.2: 0, 4.4: 1})
        self.assertAlmostEqual(mos.sum, 2.9 + 4.0 + 4.4)
        # losses 0, 0.1, 5/505
        self.assertEqual(loss.counts, [1, 0, 0, 0, 1, 0, 0, 1, 0, 0])

    def test_for_one_sensor(self) -> None:
        outcomes = CallOutcomes(sensor=7)
        outcomes.observe(cdr(0))
        into = read(outcomes, Scope.CENTRAL)
        self.assertEqual(into.sensors[7].get("voipmon_cdrs_made_total"), 1)


class BindingsTests(SynchronousTestCase):

    def test_tables_fit_the_catalog(self) -> None:
        """Every table binds (labels, kinds), and every sensor and central family that
        is not written from a histogram or by the fleet has a counter that feeds it."""
        fed = set()
        for name in bindings.__all__:
            table = getattr(bindings, name)
            source = CountersSource(dict, table)
            fed |= {bind.family for bind in source.exact.values()}
            fed |= {bind.family for _, bind in source.patterns}
        by_others = {"voipmon_cdrs_made_total", "voipmon_calls_ended_total",    # CallOutcomes
                     "voipmon_sensor_process_cpu_seconds_total",                # ProcessSource
                     "voipmon_sensor_process_resident_memory_bytes",
                     "voipmon_central_sensors_connected",                       # the fleet
                     "voipmon_central_snapshots_total",
                     "voipmon_channel_clock_skew_seconds"}         # the central's PerSensor
        expected = {item.name for item in FAMILIES
                    if item.scope in (Scope.SENSOR, Scope.CENTRAL)
                    and item.kind is not Kind.HISTOGRAM} - by_others
        self.assertEqual(expected - fed, set())

    def test_decoder_today(self) -> None:
        """The decoder's counters as they are today feed the undecoded series."""
        decoder = Decoder(lambda datagram: None)
        decoder.feed(0.0, LINKTYPE_ETHERNET, b"\x00" * 12 + b"\x08\x00" + b"\x45\x00")
        decoder.feed(0.0, LINKTYPE_ETHERNET, b"\x00" * 12 + b"\x08\x06" + b"\x00" * 28)
        source = CountersSource(decoder.counters, bindings.DECODER)
        figures = read(source).own
        undecoded = figures.series.get("voipmon_sensor_undecoded_packets_total", {})
        ignored = figures.series.get("voipmon_sensor_ignored_packets_total", {})
        self.assertEqual(sum(undecoded.values()), 1)    # type: ignore[arg-type]
        self.assertEqual(sum(ignored.values()), 1)      # type: ignore[arg-type]
        self.assertEqual(dict(decoder.stats.undecodable),
                         {key[0]: value for key, value in undecoded.items()})
