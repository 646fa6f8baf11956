"""The metrics as the services wire them: a whole sensor (its real parts, replaying a
capture on a Clock) against in-memory centrals (voipmon.test.test_sensor_service's), and
what each central's /metrics then says; the central's web site serving /metrics.

Issue 16's unit cases: the push, offline (``up`` 0, series kept), a sensor restart is a
reset, failover between two centrals (each says what it last saw, nothing is counted
twice), a mirroring sensor's figures from the central, one registry behind sniffer_stat.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from voipmon.central.metrics import CentralMetrics
from voipmon.metrics.resource import metrics_resource
from voipmon.packet.readers import read_capture
from voipmon.test.fakes import FakeStore
from voipmon.test.live_support import IdleSource
from voipmon.test.test_metrics_collectors import one, samples
from voipmon.test.test_sensor_service import CAPTURE, TWO_CAPTURE, Base, expected_cdrs
from voipmon.web.site import make_site

PACKETS = sum(1 for _ in read_capture(CAPTURE))
TWO_PACKETS = sum(1 for _ in read_capture(TWO_CAPTURE))
BYTES = sum(len(frame) for _, _, frame in read_capture(CAPTURE))


def count(found: Any, name: str, **labels: str) -> int:
    """How many samples of ``name`` have ``labels`` (``one`` wants exactly one)."""
    return sum(1 for sample_labels, _ in found.get(name, [])
               if all(sample_labels.get(k) == v for k, v in labels.items()))


def rtp_received(store: FakeStore) -> int:
    """RTP packets of the stored CDRs' streams: what voipmon_rtp_packets_total counts."""
    return sum(stream.received for cdr in store.stored_cdrs() for stream in cdr.rtp)


class WiredBase(Base):
    """Each in-memory central's metrics bound as its tap binds them."""

    def setUp(self) -> None:
        super().setUp()
        for central in self.centrals.values():
            metrics = central.sessions.metrics
            metrics.bind(cdr_queue=central.cdr_queue, store=central.store,
                         channels=central.pair.factory.registry.channels)
            central.mirrors.factory = metrics.analyzers(central.mirrors.factory)

    def metrics(self, name: str = "primary") -> CentralMetrics:
        return self.centrals[name].sessions.metrics

    def exposed(self, name: str = "primary") -> Any:
        return samples(self.metrics(name).prometheus(process=False))


class PushTests(WiredBase):
    def test_local_sensor_pushed_and_exposed(self) -> None:
        """A local-processing sensor's snapshot reaches the central at once and every 5 s;
        its /metrics shows the contract series under its id, equal to what was stored, and
        sniffer_stat reads the same registry."""
        svc = self.sensor(exit_when_done=False)
        svc.startService()
        self.advance(6)
        found = self.exposed()
        self.assertEqual(one(found, "voipmon_sensor_up", id_sensor="7"), 1)
        self.assertEqual(one(found, "voipmon_sensor_packets_total", id_sensor="7"), PACKETS)
        self.assertEqual(one(found, "voipmon_sensor_bytes_total", id_sensor="7"), BYTES)
        self.assertEqual(one(found, "voipmon_cdrs_stored_total", id_sensor="7"), 3)
        self.assertEqual(one(found, "voipmon_cdrs_made_total", id_sensor="7"), 3)
        self.assertEqual(one(found, "voipmon_calls_active", id_sensor="7"), 0)
        self.assertEqual(one(found, "voipmon_sensor_queue_records", id_sensor="7"), 0)
        self.assertEqual(one(found, "voipmon_sensor_dropped_packets_total", id_sensor="7"), 0)
        self.assertEqual(one(found, "voipmon_sip_requests_total", id_sensor="7",
                             method="INVITE"), 3)
        self.assertEqual(one(found, "voipmon_sip_responses_total", id_sensor="7",
                             method="INVITE", status_class="2xx"), 3)
        self.assertEqual(one(found, "voipmon_cdrs_acked_total", id_sensor="7"), 3)
        # Skew, both on one Clock (no skew), the HELLO one 0.05 s step on its way: the
        # central's measure has that delay in it; the sensor's own is right to within
        # half of its handshake's round trip.
        self.assertAlmostEqual(one(found, "voipmon_channel_clock_skew_seconds",
                                   id_sensor="7"), -0.05, places=5)
        skew = one(found, "voipmon_sensor_clock_skew_seconds", id_sensor="7")
        self.assertLessEqual(abs(skew), 0.025 + 1e-6)
        rtp = rtp_received(self.centrals["primary"].store)
        self.assertGreater(rtp, 1000)
        self.assertEqual(one(found, "voipmon_rtp_packets_total", id_sensor="7"), rtp)
        self.assertEqual(one(found, "voipmon_cdrs_sent_total", id_sensor="7"), 3)
        self.assertEqual(one(found, "voipmon_channel_central_in_use", id_sensor="7",
                             central="primary:60024"), 1)
        self.assertEqual(one(found, "voipmon_central_sensors_connected"), 1)
        self.assertEqual(one(found, "voipmon_central_store_batch_seconds_count"), 1)
        stats = svc.sniffer_stat()
        self.assertEqual((stats["packets"], stats["cdrs"], stats["queue_depth"]),
                         (PACKETS, 3, 0))
        self.assertEqual(stats["metrics"]["counters"]["voipmon_sensor_packets_total"], PACKETS)
        seq = self.metrics().fleet.sensors[7].snapshot.seq
        self.advance(5)
        self.assertEqual(self.metrics().fleet.sensors[7].snapshot.seq, seq + 1)
        health = self.metrics().health()
        self.assertEqual([(h.id_sensor, str(h.state), h.packets_per_second) for h in health],
                         [(7, "ok", 0.0)])

    def test_offline_keeps_series(self) -> None:
        """A sensor that stops is down at once, its last figures still exposed."""
        svc = self.sensor(exit_when_done=False)
        svc.startService()
        self.advance(6)
        svc.stopService()
        self.advance(1)
        found = self.exposed()
        self.assertEqual(one(found, "voipmon_sensor_up", id_sensor="7"), 0)
        self.assertEqual(one(found, "voipmon_sensor_packets_total", id_sensor="7"), PACKETS)
        self.assertEqual(one(found, "voipmon_cdrs_stored_total", id_sensor="7"), 3)
        self.assertEqual(one(found, "voipmon_central_sensors_connected"), 0)
        self.assertEqual([str(h.state) for h in self.metrics().health()], ["offline"])

    def test_stopping_pushes_the_last_figures(self) -> None:
        """A live sensor stopped a moment after its last calls ended: the central keeps
        its figures as they were at the stop, not those of the last periodic push (the
        demo's HEP sensor showed 2 CDRs made beside 3 stored)."""
        svc = self.sensor(read_pcap=None, exit_when_done=False, source=IdleSource(),
                          interface="lo")
        svc.startService()
        self.advance(6)                       # pushed at the start and at 5 s
        frames = list(read_capture(CAPTURE))
        engine = svc.engine
        assert engine is not None
        engine.feed_all(frames)
        engine.advance(frames[-1][0] + 60)    # the calls end (as a live capture's would)
        self.advance(2)                       # stored; the next push is due at 10 s
        found = self.exposed()
        self.assertEqual(one(found, "voipmon_cdrs_stored_total", id_sensor="7"), 3)
        self.assertEqual(one(found, "voipmon_cdrs_made_total", id_sensor="7"), 0)
        svc.stopService()
        self.advance(1)
        found = self.exposed()
        self.assertEqual(one(found, "voipmon_sensor_up", id_sensor="7"), 0)
        self.assertEqual(one(found, "voipmon_cdrs_made_total", id_sensor="7"), 3)
        self.assertEqual(one(found, "voipmon_cdrs_acked_total", id_sensor="7"), 3)
        self.assertEqual(one(found, "voipmon_rtp_packets_total", id_sensor="7"),
                         rtp_received(self.centrals["primary"].store))

    def test_restart_is_a_reset(self) -> None:
        """A new sensor process starts its counters from 0 (a reset to Prometheus, its
        start time changes); what the central counts itself goes on."""
        first = self.sensor(exit_when_done=False)
        first.startService()
        self.advance(6)
        started = one(self.exposed(), "voipmon_sensor_start_time_seconds", id_sensor="7")
        first.stopService()
        self.advance(10)
        second = self.sensor(read_pcap=TWO_CAPTURE, exit_when_done=False)
        second.startService()
        self.advance(6)
        found = self.exposed()
        self.assertEqual(one(found, "voipmon_sensor_packets_total", id_sensor="7"),
                         TWO_PACKETS)
        self.assertGreater(one(found, "voipmon_sensor_start_time_seconds", id_sensor="7"),
                           started)
        self.assertEqual(one(found, "voipmon_cdrs_stored_total", id_sensor="7"),
                         3 + len(expected_cdrs(TWO_CAPTURE)))
        self.assertEqual(self.metrics().fleet.outcomes["restart"], 1)

    def test_mirroring_sensor_figures_from_the_central(self) -> None:
        """For a mirroring sensor the calls, CDRs and queue are the central's; packets and
        drops the sensor's own."""
        svc = self.sensor(exit_when_done=False, packetbuffer_sender="yes")
        svc.startService()
        self.advance(6)
        found = self.exposed()
        self.assertEqual(one(found, "voipmon_sensor_packets_total", id_sensor="7"), PACKETS)
        self.assertEqual(one(found, "voipmon_cdrs_made_total", id_sensor="7"), 3)
        self.assertEqual(one(found, "voipmon_cdrs_stored_total", id_sensor="7"), 3)
        self.assertEqual(one(found, "voipmon_calls_active", id_sensor="7"), 0)
        self.assertEqual(one(found, "voipmon_sensor_queue_records", id_sensor="7"), 0)
        self.assertEqual(one(found, "voipmon_sip_requests_total", id_sensor="7",
                             method="INVITE"), 3)
        rtp = rtp_received(self.centrals["primary"].store)
        self.assertGreater(rtp, 1000)
        self.assertEqual(one(found, "voipmon_rtp_packets_total", id_sensor="7"), rtp)
        self.assertEqual(one(found, "voipmon_mirror_batches_acked_total", id_sensor="7"),
                         one(found, "voipmon_mirror_batches_sent_total", id_sensor="7"))
        self.assertEqual(one(found, "voipmon_sensor_info", id_sensor="7", mode="mirror"), 1)


class FailoverTests(WiredBase):
    def test_failover_between_two_centrals(self) -> None:
        """A sensor on the backup while the primary is down, then back on the primary: each
        central exposes it, up where it is, down with its last figures where it was; the
        figures are the sensor's own counters, never added up across centrals."""
        self.centrals["primary"].pair.network.fail_with = ConnectionRefusedError("down")
        svc = self.sensor(read_pcap=None, exit_when_done=False, source=IdleSource(),
                          failback_probe_interval="30", interface="lo")
        svc.startService()
        self.advance(6)
        self.assertEqual(self.metrics("primary").fleet.sensors, {})
        backup = self.exposed("backup")
        self.assertEqual(one(backup, "voipmon_sensor_up", id_sensor="7"), 1)
        self.assertEqual(one(backup, "voipmon_channel_central_in_use", id_sensor="7",
                             central="backup:60024"), 1)
        self.centrals["primary"].pair.network.fail_with = None
        self.advance(31)
        self.assertEqual(svc.failover.connected_index, 0)
        primary, backup = self.exposed("primary"), self.exposed("backup")
        self.assertEqual(one(primary, "voipmon_sensor_up", id_sensor="7"), 1)
        self.assertEqual(one(backup, "voipmon_sensor_up", id_sensor="7"), 0)
        self.assertEqual(one(primary, "voipmon_channel_failovers_total", id_sensor="7"), 1)
        self.assertEqual(one(primary, "voipmon_channel_reconnects_total", id_sensor="7"), 1)
        self.assertEqual(one(backup, "voipmon_channel_central_in_use", id_sensor="7",
                             central="backup:60024"), 1)      # what the backup saw last
        self.assertEqual(one(primary, "voipmon_channel_central_in_use", id_sensor="7",
                             central="primary:60024"), 1)
        own = svc.metrics.figures()
        sent = one(primary, "voipmon_channel_payload_bytes_total", id_sensor="7")
        self.assertGreater(sent, 0)
        self.assertLessEqual(sent, own.total("voipmon_channel_payload_bytes_total"))


class SharedDatabaseTests(WiredBase):
    def test_failover_between_centrals_sharing_one_database(self) -> None:
        """Two centrals, one sensors table: after the sensor fails back to the primary,
        the backup reads the table, says the primary holds it and stops exposing the
        sensor's own counters; the CDRs it stored stay its own. Summed over both
        centrals, the sensor's packets count once and the CDRs stored equal the
        database's."""
        primary, backup = self.centrals["primary"].store, self.centrals["backup"].store
        primary.central_id, backup.central_id = "primary:60024", "backup:60024"
        backup.sensors = primary.sensors                     # one sensors table
        for name in ("primary", "backup"):
            store = self.centrals[name].store
            watch = self.metrics(name).holder_watch(store, store.central_id)
            watch.startService()
            self.addCleanup(watch.stopService)
        self.centrals["primary"].pair.network.fail_with = ConnectionRefusedError("down")
        svc = self.sensor(exit_when_done=False, failback_probe_interval="30")
        svc.startService()
        self.advance(6)
        self.assertEqual((primary.cdr_count, backup.cdr_count), (0, 3))
        self.centrals["primary"].pair.network.fail_with = None
        self.advance(31)
        self.assertEqual(svc.failover.connected_index, 0)
        self.assertEqual(primary.sensors[7]["central"], "primary:60024")
        self.advance(6)                                      # a tick of each watch
        on_primary, on_backup = self.exposed("primary"), self.exposed("backup")
        self.assertEqual(one(on_primary, "voipmon_sensor_up", id_sensor="7"), 1)
        self.assertEqual(one(on_backup, "voipmon_sensor_up", id_sensor="7"), 0)
        self.assertEqual(one(on_backup, "voipmon_sensor_held_by_info", id_sensor="7",
                             central="primary:60024"), 1)
        self.assertEqual(0, count(on_primary, "voipmon_sensor_held_by_info", id_sensor="7",
                              central="primary:60024"))
        for name in ("voipmon_sensor_packets_total", "voipmon_cdrs_made_total",
                     "voipmon_rtp_packets_total", "voipmon_sensor_queue_records"):
            self.assertEqual(0, count(on_backup, name, id_sensor="7"), name)
        total = sum(value for on in (on_primary, on_backup) for labels, value
                    in on.get("voipmon_sensor_packets_total", []) if labels["id_sensor"] == "7")
        self.assertEqual(total, PACKETS)
        self.assertEqual([one(on, "voipmon_cdrs_stored_total", id_sensor="7")
                          for on in (on_primary, on_backup)], [0, 3])
        # The sensor moves to the backup again: there it is shown, and hidden here.
        self.centrals["primary"].pair.network.fail_with = ConnectionRefusedError("down")
        self.centrals["primary"].pair.close_all()
        self.advance(12)
        self.assertEqual(svc.failover.connected_index, 1)
        on_primary, on_backup = self.exposed("primary"), self.exposed("backup")
        self.assertEqual(one(on_backup, "voipmon_sensor_packets_total", id_sensor="7"),
                         PACKETS)
        self.assertEqual(0, count(on_backup, "voipmon_sensor_held_by_info", id_sensor="7",
                              central="primary:60024"))
        self.assertEqual(0, count(on_primary, "voipmon_sensor_packets_total", id_sensor="7"))
        self.assertEqual(one(on_primary, "voipmon_sensor_held_by_info", id_sensor="7",
                             central="backup:60024"), 1)


class SiteTests(TestCase):
    """/metrics on the central's web site, with and without the page's credentials."""

    @defer.inlineCallbacks
    def get(self, metrics_auth: bool, path: bytes,
            credentials: bytes | None = None) -> Any:
        metrics = CentralMetrics(reactor)
        site = make_site(FakeStore(), None, "admin", "secret",
                         metrics=metrics_resource(metrics.prometheus(process=False)),
                         metrics_auth=metrics_auth)
        metrics.bind_http(site.counters)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        headers = Headers({b"authorization": [b"Basic " + credentials]}) if credentials else None
        response = yield Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{port.getHost().port}".encode() + path, headers)
        body = yield readBody(response)
        return response.code, body, site

    @defer.inlineCallbacks
    def test_behind_the_page_credentials_by_default(self) -> Any:
        code, _, _ = yield self.get(True, b"/metrics")
        self.assertEqual(code, 401)
        code, body, site = yield self.get(True, b"/metrics", b"YWRtaW46c2VjcmV0")
        self.assertEqual(code, 200)
        self.assertIn(b"voipmon_build_info{", body)
        self.assertEqual(site.counters(), {"responses.200": 1})

    @defer.inlineCallbacks
    def test_open_when_the_operator_says(self) -> Any:
        code, body, _ = yield self.get(False, b"/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"voipmon_central_sensors_connected 0.0", body)
        code, _, _ = yield self.get(False, b"/api/sensors")
        self.assertEqual(code, 401)
