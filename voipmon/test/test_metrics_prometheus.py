"""voipmon.test.prometheus_support against a real Prometheus (Debian's), scraping a tiny
metrics server (voipmon.test.metrics_server) that serves voipmon.metrics.resource over a
fake fleet whose figures the test knows; then scraping a real central with two sensors
(``FleetScrapeTests``). Real processes on loopback; no reactor here."""

from __future__ import annotations

import sys
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from voipmon.packet.readers import read_capture
from voipmon.test.channel_support import (
    Process,
    analyze,
    free_port,
    mysql_connect,
    wait_until,
)
from voipmon.test.metrics_server import fleet_of
from voipmon.test.prometheus_support import Prometheus, dashboard_queries, promtool, tool
from voipmon.test.test_channel_integration import CAPTURES, ProcessBase

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


class FleetScrapeTests(ProcessBase):
    """Issue 16's acceptance: a real central on MariaDB and two sensors (one processing
    locally, one mirroring) replay captures; a real Prometheus scrapes the central's
    /metrics every second and finds each sensor's calls, CDRs and packets under its
    id_sensor, equal to what the database holds; ``promtool check metrics`` finds nothing
    to say about the exposition; a sensor that stops is down."""

    def test_central_and_two_sensors(self) -> None:
        tool("prometheus")
        database = self.need_mysql()
        port, http = free_port(), free_port()
        self.central("central", port, database, http_port=http)
        local, mirror = 31, 32
        captures = {local: CAPTURES[0], mirror: CAPTURES[1]}
        sensors = {
            local: self.sensor("local", local, [port], captures[local], exit_when_done=False),
            mirror: self.sensor("mirror", mirror, [port], captures[mirror],
                                exit_when_done=False, packetbuffer_sender="yes"),
        }
        prometheus = Prometheus(f"127.0.0.1:{http}").start()
        self.addCleanup(prometheus.stop)
        ids = {str(local), str(mirror)}
        connection = mysql_connect("127.0.0.1", 3306, database)
        self.addCleanup(connection.close)
        calls = {id_sensor: len(analyze(path, id_sensor)) for id_sensor, path in
                 captures.items()}
        packets = {id_sensor: sum(1 for _ in read_capture(path))
                   for id_sensor, path in captures.items()}

        def database_holds() -> dict[str, tuple[int, int]]:
            with connection.cursor() as cursor:
                cursor.execute("SELECT id_sensor, COUNT(*) FROM cdr GROUP BY id_sensor")
                cdrs = {str(a): int(b) for a, b in cursor.fetchall()}
                cursor.execute("SELECT id_sensor, packets FROM sensors")
                seen = {str(a): int(b) for a, b in cursor.fetchall()}
            return {i: (cdrs.get(i, 0), seen.get(i, 0)) for i in ids}

        wait_until(lambda: database_holds() == {str(i): (calls[i], packets[i])
                                                 for i in captures}, 120,
                   "every CDR and the packet counts in the database")
        held = database_holds()
        wanted = {i: float(held[i][0]) for i in ids}
        prometheus.wait_for("voipmon_cdrs_stored_total",
                            lambda r: {x["metric"]["id_sensor"]: float(x["value"][1])
                                       for x in r} == wanted, 60, what="CDRs stored")
        self.assertEqual(prometheus.values("voipmon_cdrs_made_total"), wanted)
        self.assertEqual(prometheus.values(
            "sum by (id_sensor) (voipmon_calls_ended_total)"), wanted)
        prometheus.wait_for("voipmon_sensor_packets_total",
                            lambda r: {x["metric"]["id_sensor"]: float(x["value"][1])
                                       for x in r} == {i: float(held[i][1]) for i in ids},
                            60, what="packets")
        self.assertEqual(prometheus.values("voipmon_sensor_up"), dict.fromkeys(ids, 1.0))
        self.assertEqual(prometheus.values("voipmon_calls_active"), dict.fromkeys(ids, 0.0))
        # the local sensor's next snapshot (every 5 s) has its queue acknowledged
        prometheus.wait_for("voipmon_sensor_queue_records",
                            lambda r: {x["metric"]["id_sensor"]: float(x["value"][1])
                                       for x in r} == dict.fromkeys(ids, 0.0),
                            60, what="empty queues")
        self.assertEqual(prometheus.values("voipmon_sensor_dropped_packets_total"),
                         dict.fromkeys(ids, 0.0))
        self.assertEqual(prometheus.values("voipmon_sensor_info", by="mode"),
                         {"local": 1.0, "mirror": 1.0})
        self.assertEqual(prometheus.values("voipmon_sensor_up", by="name_sensor"),
                         {"local": 1.0, "mirror": 1.0})
        invites = prometheus.values('voipmon_sip_requests_total{method="INVITE"}')
        self.assertEqual(sorted(invites), sorted(ids))
        self.assertTrue(all(count >= 1 for count in invites.values()), invites)
        self.assertEqual(prometheus.values("voipmon_central_sensors_connected", by=""),
                         {"": 2.0})
        self.assertGreaterEqual(prometheus.values(
            "sum(voipmon_central_store_batch_seconds_count)", by="")[""], 1.0)
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10) as reply:
            body = reply.read()
        result = promtool("check", "metrics", stdin=body)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

        sensors[mirror].stop()
        prometheus.wait_for("voipmon_sensor_up",
                            lambda r: {x["metric"]["id_sensor"]: float(x["value"][1])
                                       for x in r} == {str(local): 1.0, str(mirror): 0.0},
                            60, what="the stopped sensor down, the other up")
        self.assertEqual(prometheus.values("voipmon_cdrs_stored_total")[str(mirror)],
                         wanted[str(mirror)])
