"""HEP input in the metrics (issue 16 with issue 17): a HEP source's messages by type, its
malformed messages by reason apart from those its filters refused, and its connections,
bound by ``bindings.HEP`` for a sensor whose source is HEP (alone or in a SourceSet), in
its snapshot and on its /metrics, which ``promtool check metrics`` finds clean."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import generate_latest
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from voipmon.metrics import bindings
from voipmon.metrics.catalog import Scope
from voipmon.metrics.collectors import sensor_registry
from voipmon.metrics.sources import CountersSource, MetricsRegistry
from voipmon.sources.hep import HepSource
from voipmon.sources.registry import SourceSet
from voipmon.test.hepsupport import hep2_message
from voipmon.test.live_support import free_udp_port
from voipmon.test.prometheus_support import promtool
from voipmon.test.services import build_sensor
from voipmon.test.test_sources_hep import FrameList, _Unreachable, message, settings


def feed(source: HepSource) -> None:
    """Three SIP, one RTP, one LOG and one of an unknown type let in; four malformed (two
    truncated, one not HEP at all, one RTCP-JSON that is not JSON); a wrong password, a
    capture id not listed, a sender outside the allow-list, a TCP stream that broke."""
    intake = source.intake
    good = [message(auth_key=b"pw", capture_id=7) for _ in range(3)]
    good += [message(b"\x80\x00" + bytes(10), proto_type=4, auth_key=b"pw", capture_id=7),
             message(b"a log line", proto_type=100, auth_key=b"pw", capture_id=7),
             message(b"\x00\x01", proto_type=53, auth_key=b"pw", capture_id=7)]
    for data in good:
        assert intake.message(data), data
    for data in (good[0][:50], good[0][:20], b"GET / HTTP/1.1\r\n",
                 message(b"{not json", proto_type=5, auth_key=b"pw", capture_id=7),
                 message(auth_key=b"nope", capture_id=7),
                 message(auth_key=b"pw", capture_id=8),
                 hep2_message("10.0.0.1", 5060, "10.0.0.2", 5060, b"OPTIONS x SIP/2.0\r\n")):
        intake.message(data)
    intake.refused("not_allowed")
    intake.refused("stream_bad_magic")


def hep_source(port: int = 9060) -> HepSource:
    return HepSource(FrameList(), reactor, port=port, password="pw", capture_ids=(7,),
                     clock=Clock())


EXPECTED = {
    ("voipmon_hep_messages_total", ("sip",)): 3,
    ("voipmon_hep_messages_total", ("rtp",)): 1,
    ("voipmon_hep_messages_total", ("log",)): 1,
    ("voipmon_hep_messages_total", ("other",)): 1,
    ("voipmon_hep_messages_total", ("rtcp_json",)): 1,
    ("voipmon_hep_malformed_messages_total", ("truncated",)): 2,
    ("voipmon_hep_malformed_messages_total", ("bad_magic",)): 1,
    ("voipmon_hep_malformed_messages_total", ("bad_rtcp_json",)): 1,
    ("voipmon_hep_malformed_messages_total", ("stream_bad_magic",)): 1,
    ("voipmon_hep_refused_messages_total", ("auth",)): 2,        # HEPv2 has no auth key
    ("voipmon_hep_refused_messages_total", ("capture_id",)): 1,
    ("voipmon_hep_refused_messages_total", ("not_allowed",)): 1,
    ("voipmon_hep_connections", ()): 0,
}


def hep_series(figures: object) -> dict[tuple[str, tuple[str, ...]], float]:
    series = figures.series  # type: ignore[attr-defined]
    return {(name, key): value for name, values in series.items()
            if name.startswith("voipmon_hep_") for key, value in values.items()}


class HepBindingTests(SynchronousTestCase):
    def test_messages_malformed_and_refused_apart(self) -> None:
        source = hep_source()
        feed(source)
        registry = MetricsRegistry(Scope.SENSOR)
        registry.add(CountersSource(source.counters, bindings.HEP, name="hep"))
        self.assertEqual(hep_series(registry.collect().own), EXPECTED)
        # The source's own total of what it did not take is the sum of both families.
        self.assertEqual(source.stats()["dropped"], 2 + 1 + 1 + 1 + 2 + 1 + 1)

    def test_label_values_stay_bounded(self) -> None:
        self.assertEqual(bindings.hep_type_label("200"), "other")
        self.assertEqual(bindings.hep_reason_label("x" * 300), "other")
        self.assertEqual(bindings.hep_reason_label("stream_too_large"), "stream_too_large")


class SensorTests(SynchronousTestCase):
    def sensor(self, **keys: str) -> Any:
        spool = os.path.abspath(self.mktemp())
        return build_sensor(settings(spooldir=spool, managerport="0", **keys), reactor,
                            clock=Clock(), connect=lambda d: _Unreachable())  # type: ignore[arg-type,return-value]

    def test_a_hep_sensor_pushes_and_serves_them(self) -> None:
        svc = self.sensor(hep_bind_port=str(free_udp_port()), hep_password="pw",
                          hep_capture_id="7")
        assert isinstance(svc.source, HepSource)
        feed(svc.source)
        self.assertEqual(hep_series(svc.metrics.figures()), EXPECTED)
        snapshot = svc.metrics.taker.take().to_json()
        self.assertEqual(snapshot["counters"]["voipmon_hep_messages_total"]["sip"], 3)
        body = generate_latest(sensor_registry(svc.metrics.taker, "hep-site", process=False))
        self.assertIn(b'voipmon_hep_refused_messages_total{id_sensor="1",name_sensor='
                      b'"hep-site",reason="auth"} 2.0', body)
        result = promtool("check", "metrics", stdin=body)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_each_hep_source_of_a_source_set(self) -> None:
        first, second = hep_source(9060), hep_source(9061)
        feed(first)
        feed(second)
        svc = self.sensor(hep_bind_port="9062", hep_password="pw", hep_capture_id="7")
        metrics = svc.metrics
        metrics.registry = MetricsRegistry(Scope.SENSOR)
        metrics.bind(source=SourceSet([first, second]), uplink=svc.uplink, engine=svc.engine,
                     dead_letters=svc.dead_letters, failover=svc.failover)
        self.assertEqual(hep_series(metrics.figures()),
                         {key: 2 * value for key, value in EXPECTED.items()})
