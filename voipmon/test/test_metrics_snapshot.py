"""voipmon.metrics.snapshot and catalog: plain-int histograms, figures checked against the
catalog, and the snapshot's JSON form, hostile forms included."""

from __future__ import annotations

import json
import math
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from voipmon.metrics import catalog
from voipmon.metrics.catalog import CONTRACT, FAMILIES, Family, Kind, Scope
from voipmon.metrics.snapshot import (
    MAX_SERIES_PER_FAMILY,
    SNAPSHOT_VERSION,
    Figures,
    Histogram,
    Snapshot,
    SnapshotError,
    new_instance,
)
from voipmon.protocols.wire import parse_json


def sample_snapshot(**header: Any) -> Snapshot:
    figures = Figures()
    figures.counter("voipmon_sensor_packets_total", 1234)
    figures.counter("voipmon_sip_requests_total", 40, method="INVITE")
    figures.counter("voipmon_sip_requests_total", 38, method="BYE")
    figures.counter("voipmon_sip_responses_total", 80, method="INVITE", status_class="1xx")
    figures.counter("voipmon_sip_responses_total", 40, method="INVITE", status_class="2xx")
    figures.gauge("voipmon_calls_active", 2)
    figures.gauge("voipmon_channel_clock_skew_seconds", -0.25)
    mos = Histogram(catalog.MOS_BUCKETS)
    for value in (4.4, 4.1, 3.2, 1.0):
        mos.observe(value)
    figures.histogram("voipmon_call_mos", mos)
    values = {"id_sensor": 3, "instance": "ab" * 16, "seq": 7, "started": 1_700_000_000.0,
              "time": 1_700_000_035.5, "figures": figures, "version": "0.1.0",
              "mode": "local"}
    values.update(header)
    return Snapshot(**values)


def wire(snapshot: Snapshot) -> Any:
    """Its JSON form through the channel's one JSON parser, as the central gets it."""
    return parse_json(json.dumps(snapshot.to_json()).encode("ascii"))


class CatalogTests(SynchronousTestCase):

    def test_contract(self) -> None:
        """The six contract names exist, each with id_sensor; every name is well-formed."""
        for name in CONTRACT:
            self.assertIn("id_sensor", catalog.family(name).label_names)
        self.assertEqual(len(CONTRACT), 6)
        for item in FAMILIES:
            self.assertRegex(item.name, r"^voipmon_[a-z0-9_]+$")
            self.assertTrue(item.help.endswith((".", ")")), item.name)

    def test_family_rules(self) -> None:
        for bad in (
            dict(name="other_total", kind=Kind.COUNTER),
            dict(name="voipmon_x", kind=Kind.COUNTER),
            dict(name="voipmon_x_total", kind=Kind.GAUGE),
            dict(name="voipmon_x", kind=Kind.HISTOGRAM),
            dict(name="voipmon_x", kind=Kind.HISTOGRAM, buckets=(2.0, 1.0)),
            dict(name="voipmon_x", kind=Kind.GAUGE, labels=("id_sensor",)),
        ):
            with self.assertRaises(ValueError, msg=str(bad)):
                Family(scope=Scope.SENSOR, group="g", help="h.", **bad)  # type: ignore[arg-type]

    def test_unknown_name(self) -> None:
        with self.assertRaisesRegex(KeyError, "voipmon_nope"):
            catalog.family("voipmon_nope")

    def test_label_values_bounded(self) -> None:
        self.assertEqual(catalog.method_label("INVITE"), "INVITE")
        self.assertEqual(catalog.method_label("invite"), "other")
        self.assertEqual(catalog.method_label("X" * 500), "other")
        self.assertEqual([catalog.status_class(c) for c in (100, 183, 200, 486, 699, 99, 700)],
                         ["1xx", "1xx", "2xx", "4xx", "6xx", "other", "other"])


class HistogramTests(SynchronousTestCase):

    def test_buckets_are_le(self) -> None:
        """A value equal to a bound counts in that bound's bucket (Prometheus's le)."""
        histogram = Histogram((1.0, 2.0, 3.0))
        for value in (0.5, 1.0, 1.5, 3.0, 3.5, 99.0, math.nan, math.inf):
            histogram.observe(value)
        self.assertEqual(histogram.counts, [2, 1, 1, 2])
        self.assertEqual(histogram.count, 6)
        self.assertEqual(histogram.sum, 0.5 + 1.0 + 1.5 + 3.0 + 3.5 + 99.0)
        self.assertEqual(histogram.cumulative(),
                         [(1.0, 2), (2.0, 3), (3.0, 4), (math.inf, 6)])

    def test_bounds_checked(self) -> None:
        for bounds in ((), (2.0, 1.0), (1.0, 1.0), (1.0, math.inf)):
            with self.assertRaises(SnapshotError):
                Histogram(bounds)

    def test_add_needs_same_bounds(self) -> None:
        a, b = Histogram((1.0, 2.0)), Histogram((1.0, 2.0))
        a.observe(1.0)
        b.observe(5.0)
        a.add(b)
        self.assertEqual((a.counts, a.sum), ([1, 0, 1], 6.0))
        with self.assertRaises(SnapshotError):
            a.add(Histogram((1.0,)))


class FiguresTests(SynchronousTestCase):

    def test_checked_against_catalog(self) -> None:
        figures = Figures()
        cases = [
            (lambda: figures.counter("voipmon_nope_total", 1), "not a voipmon metric"),
            (lambda: figures.gauge("voipmon_sensor_packets_total", 1), "is a counter"),
            (lambda: figures.counter("voipmon_sip_requests_total", 1), "labels"),
            (lambda: figures.counter("voipmon_sensor_packets_total", 1, method="INVITE"),
             "labels"),
            (lambda: figures.counter("voipmon_sensor_packets_total", -1), "not a count"),
            (lambda: figures.counter("voipmon_sensor_packets_total", math.nan), "not a count"),
            (lambda: figures.counter("voipmon_sensor_packets_total", True), "not a count"),
            (lambda: figures.gauge("voipmon_calls_active", math.inf), "finite"),
            (lambda: figures.counter("voipmon_sip_requests_total", 1, method=""), "label"),
            (lambda: figures.counter("voipmon_sip_requests_total", 1, method="a\nb"), "label"),
            (lambda: figures.gauge("voipmon_central_queue_records", 1), "central metric"),
            (lambda: figures.gauge("voipmon_sensor_up", 1), "fleet metric"),
        ]
        for write, message in cases:
            with self.assertRaisesRegex(SnapshotError, message):
                write()
        self.assertEqual(len(figures), 0)

    def test_same_series_adds_up(self) -> None:
        """Two parts counting into one series (kernel and interface drops) add up."""
        figures = Figures()
        figures.counter("voipmon_sensor_dropped_packets_total", 3)
        figures.counter("voipmon_sensor_dropped_packets_total", 4)
        figures.counter("voipmon_sip_requests_total", 1, method="other")
        figures.counter("voipmon_sip_requests_total", 2, method="other")
        self.assertEqual(figures.get("voipmon_sensor_dropped_packets_total"), 7)
        self.assertEqual(figures.get("voipmon_sip_requests_total", method="other"), 3)
        self.assertEqual(len(figures), 2)

    def test_histogram_is_copied(self) -> None:
        """Figures keep the histogram as it was when written, not the live one."""
        live = Histogram(catalog.MOS_BUCKETS)
        live.observe(4.0)
        figures = Figures()
        figures.histogram("voipmon_call_mos", live)
        live.observe(1.0)
        kept = figures.get("voipmon_call_mos")
        assert isinstance(kept, Histogram)
        self.assertEqual(kept.count, 1)

    def test_series_bounded(self) -> None:
        figures = Figures()
        for n in range(MAX_SERIES_PER_FAMILY):
            figures.counter("voipmon_sensor_undecoded_packets_total", 1, reason=f"r{n}")
        with self.assertRaisesRegex(SnapshotError, "too many series"):
            figures.counter("voipmon_sensor_undecoded_packets_total", 1, reason="one more")

    def test_replaced_by_is_per_family_and_read_only(self) -> None:
        sensor = Figures()
        sensor.counter("voipmon_sip_requests_total", 5, method="INVITE")
        sensor.counter("voipmon_sip_requests_total", 5, method="BYE")
        sensor.counter("voipmon_sensor_packets_total", 100)
        central = Figures()
        central.counter("voipmon_sip_requests_total", 7, method="INVITE")
        merged = sensor.replaced_by(central)
        self.assertEqual(merged.get("voipmon_sip_requests_total", method="INVITE"), 7)
        self.assertIsNone(merged.get("voipmon_sip_requests_total", method="BYE"))
        self.assertEqual(merged.get("voipmon_sensor_packets_total"), 100)
        with self.assertRaisesRegex(SnapshotError, "read-only"):
            merged.counter("voipmon_sensor_packets_total", 1)
        self.assertEqual(sensor.get("voipmon_sensor_packets_total"), 100)


class SnapshotTests(SynchronousTestCase):

    def test_round_trip(self) -> None:
        snapshot = sample_snapshot()
        data = wire(snapshot)
        self.assertEqual(data["v"], SNAPSHOT_VERSION)
        self.assertEqual(data["counters"]["voipmon_sip_responses_total"],
                         {"INVITE": {"1xx": 80, "2xx": 40}})
        self.assertEqual(data["histograms"]["voipmon_call_mos"]["counts"],
                         [1, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0])
        back = Snapshot.parse(data)
        self.assertEqual(back, snapshot)
        self.assertEqual(back.figures.to_json(), snapshot.figures.to_json())
        self.assertEqual(back.figures.get("voipmon_channel_clock_skew_seconds"), -0.25)
        self.assertEqual(back.ignored, ())

    def test_newer_families_ignored(self) -> None:
        """A newer sensor's family this central does not know is ignored and named."""
        data = wire(sample_snapshot())
        data["counters"]["voipmon_future_things_total"] = 5
        data["gauges"]["voipmon_future_level"] = {"a": 1}
        back = Snapshot.parse(data)
        self.assertEqual(sorted(back.ignored),
                         ["voipmon_future_level", "voipmon_future_things_total"])
        self.assertEqual(back.figures.get("voipmon_sensor_packets_total"), 1234)

    def test_malformed_refused(self) -> None:
        """Each malformation refuses the whole snapshot with a reason."""
        def edit(change: Any) -> Any:
            data = wire(sample_snapshot())
            change(data)
            return data

        cases = [
            ([1, 2], "JSON object"),
            (edit(lambda d: d.update(v=2)), "version 2 is not supported"),
            (edit(lambda d: d.update(v=True)), "version"),
            (edit(lambda d: d.pop("v")), "version"),
            (edit(lambda d: d.update(id_sensor=70000)), "id_sensor"),
            (edit(lambda d: d.update(seq=-1)), "seq"),
            (edit(lambda d: d.update(seq=1.5)), "seq"),
            (edit(lambda d: d.update(started="now")), "started"),
            (edit(lambda d: d.update(time=1e20)), "time"),
            (edit(lambda d: d.update(instance="")), "instance"),
            (edit(lambda d: d.update(instance="x" * 65)), "instance"),
            (edit(lambda d: d.update(mode=5)), "mode"),
            (edit(lambda d: d.update(counters=[])), "counters must be an object"),
            (edit(lambda d: d["gauges"].update(voipmon_sensor_packets_total=1)),
             "no place in a snapshot's gauges"),
            (edit(lambda d: d["gauges"].update(voipmon_sensor_up=1)), "fleet"),
            (edit(lambda d: d["gauges"].update(voipmon_central_queue_records=1)), "central"),
            (edit(lambda d: d["counters"].update(voipmon_sip_requests_total=5)),
             "nested by label value"),
            (edit(lambda d: d["counters"].update(voipmon_sensor_packets_total=-5)),
             "not a count"),
            (edit(lambda d: d["counters"].update(voipmon_sensor_packets_total="5")),
             "not a count"),
            (edit(lambda d: d["counters"].update(
                voipmon_sip_requests_total={"\x00": 1})), "label value"),
            (edit(lambda d: d["counters"].update(voipmon_sip_requests_total={
                f"m{n}": 1 for n in range(MAX_SERIES_PER_FAMILY + 1)})), "too many series"),
            (edit(lambda d: d["histograms"]["voipmon_call_mos"].update(counts=[1, 2])),
             "counts must be 11"),
            (edit(lambda d: d["histograms"]["voipmon_call_mos"].update(le=[2.0, 1.0] + [
                3.0] * 8)), "increase"),
            (edit(lambda d: d["histograms"]["voipmon_call_mos"].update(sum="x")), "sum"),
            (edit(lambda d: d["histograms"]["voipmon_call_mos"].pop("sum")), "le, counts"),
            (edit(lambda d: d["histograms"]["voipmon_call_mos"]["counts"].__setitem__(0, -1)),
             "counts"),
        ]
        for data, message in cases:
            with self.assertRaisesRegex(SnapshotError, message, msg=message):
                Snapshot.parse(data)

    def test_histogram_bounds_travel(self) -> None:
        """A histogram carries its bounds: another version's bounds are kept as sent."""
        data = wire(sample_snapshot())
        data["histograms"]["voipmon_call_mos"] = {"le": [2.0, 4.0], "counts": [1, 2, 3],
                                                  "sum": 19.5}
        histogram = Snapshot.parse(data).figures.get("voipmon_call_mos")
        assert isinstance(histogram, Histogram)
        self.assertEqual((histogram.bounds, histogram.counts), ((2.0, 4.0), [1, 2, 3]))

    def test_instances_differ(self) -> None:
        names = {new_instance() for _ in range(50)}
        self.assertEqual(len(names), 50)
        self.assertTrue(all(len(n) == 32 and int(n, 16) >= 0 for n in names))
