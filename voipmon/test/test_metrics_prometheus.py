"""voipmon.test.prometheus_support against a real Prometheus (Debian's), scraping a tiny
metrics server (voipmon.test.metrics_server) that serves voipmon.metrics.resource over a
fake fleet whose figures the test knows. Real processes on loopback; no reactor here."""

from __future__ import annotations

import sys
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from voipmon.test.channel_support import Process
from voipmon.test.metrics_server import fleet_of
from voipmon.test.prometheus_support import Prometheus, dashboard_queries, promtool, tool

SENSORS = 4


class PrometheusScrapeTests(SynchronousTestCase):

    def test_prometheus_scrapes_the_resource(self) -> None:
        tool("prometheus")
        server = Process([sys.executable, "-m", "voipmon.test.metrics_server",
                          "--sensors", str(SENSORS)], "metrics-server")
        self.addCleanup(server.stop)
        target = server.wait_for(r"listening on (127\.0\.0\.1:\d+)").group(1)
        prometheus = Prometheus(target).start()
        self.addCleanup(prometheus.stop)

        prometheus.wait_for("voipmon_sensor_up", lambda r: len(r) == SENSORS,
                            what=f"{SENSORS} sensors' voipmon_sensor_up")
        self.assertEqual(prometheus.targets()[0]["health"], "up")
        _, central, sensors = fleet_of(SENSORS)     # the server's figures, made again here
        ids = [str(sensor.id_sensor) for sensor in sensors]
        self.assertEqual(prometheus.values("voipmon_sensor_up"), dict.fromkeys(ids, 1.0))
        self.assertEqual(prometheus.values("voipmon_sensor_packets_total"),
                         {str(s.id_sensor): s.capture["packets"] for s in sensors})
        self.assertEqual(prometheus.values("voipmon_cdrs_stored_total"),
                         {str(s.id_sensor): central.stored[s.id_sensor]["stored"]
                          for s in sensors})
        self.assertEqual(prometheus.values("voipmon_calls_active"),
                         {str(s.id_sensor): 3 if s.mode == "mirror"
                          else s.engine["active_calls"] for s in sensors})
        names = prometheus.values("voipmon_sensor_up", by="name_sensor")
        self.assertEqual(sorted(names), sorted(f"site-{n}" for n in ids))
        self.assertEqual(
            prometheus.values('sum by (id_sensor) (voipmon_calls_ended_total{bye="3"})'),
            {str(s.id_sensor): s.outcomes.ended.get(3, 0) if s.mode == "local" else 40
             for s in sensors})
        median = prometheus.values("histogram_quantile(0.5, voipmon_call_mos_bucket)")
        self.assertEqual(sorted(median), ids)
        self.assertTrue(all(1.0 <= m <= 4.5 for m in median.values()), median)
        self.assertEqual(prometheus.values("voipmon_central_sensors_connected", by=""),
                         {"": SENSORS})

        for query in dashboard_queries():          # conf/grafana-dashboard.json's
            prometheus.query(query)                 # each one valid PromQL
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as response:
            body = response.read()
        result = promtool("check", "metrics", stdin=body)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))
