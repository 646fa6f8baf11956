"""Tests for voipmon.central.service and the two taps: the trees they build, start/stop order,
store retries, retention over per-sensor directories, option errors."""

from __future__ import annotations

import calendar
import os
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from voipmon.central import tap as central_tap
from voipmon.central.service import (
    CentralRetention,
    CentralService,
    StoreService,
    sensor_spool,
)
from voipmon.config import ConfigError, load_central_config
from voipmon.protocols.gated import GatedFactory
from voipmon.protocols.handshake import Rejection
from voipmon.protocols.wire import MessageType
from voipmon.sensor import tap as sensor_tap
from voipmon.sensor.mirror import MirrorUplink
from voipmon.sensor.service import SensorService
from voipmon.sensor.uplink import UplinkFactory
from voipmon.store.testing import make_cdr
from voipmon.test.fakes import Engines, FakeStore
from voipmon.test.fakes_channel import (
    ChannelPair,
    PumpEndpoint,
    SessionRecorder,
    fixed_binding,
)
from voipmon.test.services import build_central
from voipmon.test.test_tls import make_ca_and_leaf, pem_cert, pem_key


def write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    return path


@implementer(IStreamServerEndpoint)
class NoListen:
    """A server endpoint that pretends to listen (the test connects in memory)."""

    class _Port:
        def stopListening(self):
            return defer.succeed(None)

        def getHost(self):
            return None

    def listen(self, factory):
        return defer.succeed(self._Port())


class TapTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())

    def central_conf(self, extra: str = "") -> str:
        return write(os.path.join(self.base, "central.conf"),
                     f"server_bind = 127.0.0.1\nserver_password = pw\n"
                     f"spooldir = {self.base}/cspool\nsqlite_path = {self.base}/db.sqlite\n"
                     f"http_port = 0\n{extra}")

    def sensor_conf(self, extra: str = "") -> str:
        return write(os.path.join(self.base, "sensor.conf"),
                     f"id_sensor = 4\nserver_destination = 127.0.0.1\nserver_password = pw\n"
                     f"spooldir = {self.base}/sspool\nmanagerport = 0\ninterface = lo\n{extra}")

    def test_central_tree(self) -> None:
        """makeService builds the store, the TLS listener, the thread reading CDR batches and
        a self-signed certificate."""
        options = central_tap.Options()
        options.parseOptions(["--config", self.central_conf()])
        reactor = MemoryReactorClock()
        top = central_tap.makeService(options, reactor)
        self.assertIsInstance(top, CentralService)
        self.assertEqual([s.name for s in top], ["store", "channel", "cdr-read", "holders"])
        self.assertTrue(os.path.exists(os.path.join(self.base, "cspool", "state",
                                                    "central-cert.pem")))
        top.channel.privilegedStartService()
        [(port, factory, backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface, backlog), (60024, "127.0.0.1", 511))
        # TLS under the admission gate, the channel under TLS
        self.assertIsInstance(factory, GatedFactory)
        self.assertIs(factory.gate, top.channel.gate)
        self.assertIsInstance(factory.wrappedFactory, TLSMemoryBIOFactory)
        self.assertIs(factory.wrappedFactory.wrappedFactory, top.channel.central_factory)

    def test_central_certificate_errors(self) -> None:
        """A configured certificate that cannot be used is refused naming the key."""
        options = central_tap.Options()
        conf = self.central_conf("tls_certificate = /nonexistent.pem\n")
        with self.assertRaises(ConfigError) as caught:
            options.parseOptions(["--config", conf])
        self.assertIn("tls_certificate", str(caught.exception))
        self.assertIn("/nonexistent.pem", str(caught.exception))
        conf = self.central_conf("tls_private_key = /k.pem\n")
        self.assertRaises(ConfigError, central_tap.Options().parseOptions, ["--config", conf])

    def test_central_configured_certificate(self) -> None:
        """A configured certificate and key are used (their fingerprint logged)."""
        _ca, leaf, key = make_ca_and_leaf("central.example")
        cert = write(os.path.join(self.base, "c.pem"), pem_cert(leaf).decode())
        keyfile = write(os.path.join(self.base, "k.pem"), pem_key(key).decode())
        options = central_tap.Options()
        options.parseOptions(["--config", self.central_conf(
            f"tls_certificate = {cert}\ntls_private_key = {keyfile}\n")])
        top = central_tap.makeService(options, MemoryReactorClock())
        self.assertEqual(top.certificate.source, cert)
        self.assertFalse(os.path.exists(os.path.join(self.base, "cspool", "state")))

    def test_sensor_tree(self) -> None:
        """The sensor tap builds a SensorService with channel, stats and the source."""
        options = sensor_tap.Options()
        options.parseOptions(["--config", self.sensor_conf()])
        top = sensor_tap.makeService(options, MemoryReactorClock())
        self.assertIsInstance(top, SensorService)
        self.assertEqual({"channel", "stats", "advance"} - {s.name for s in top}, set())
        self.assertEqual(top.mode, "local")

    def test_problems_found_while_building_are_usage_errors(self) -> None:
        """A spool the CDR queue cannot use, or an interface this host lacks, makes
        makeService raise UsageError naming the key, before any service exists."""
        blocker = write(os.path.join(self.base, "blocker"), "a file, not a directory")
        for tap, make_conf, needle in (
                (sensor_tap, lambda: self.sensor_conf(f"spooldir = {blocker}\n"),
                 f"spooldir = {blocker}: cannot use the CDR queue"),
                (sensor_tap, lambda: self.sensor_conf("interface = nosuch0\n"),
                 "interface 'nosuch0': no such interface"),
                (central_tap, lambda: self.central_conf(f"spooldir = {blocker}\n"),
                 f"spooldir = {blocker}: cannot keep the channel certificate")):
            conf = make_conf()
            options = tap.Options()
            options.parseOptions(["--config", conf])
            with self.assertRaises(usage.UsageError) as caught:
                tap.makeService(options, MemoryReactorClock())
            self.assertIn(needle, str(caught.exception))
            self.assertIn(conf, str(caught.exception))

    def test_sensor_option_errors(self) -> None:
        """Bad pins, CA files and --exit-when-done without --read-pcap are refused."""
        for extra, needle in (("server_certificate_sha256 = abc\n", "server_certificate_sha256"),
                              ("server_ca_file = /nonexistent\n", "server_ca_file")):
            with self.assertRaises(usage.UsageError) as caught:
                sensor_tap.Options().parseOptions(["--config", self.sensor_conf(extra)])
            self.assertIn(needle, str(caught.exception))
        with self.assertRaises(usage.UsageError):
            sensor_tap.Options().parseOptions(["--config", self.sensor_conf(),
                                               "--exit-when-done"])

    def test_exit_code(self) -> None:
        """A failure status stops the reactor and is kept for the process exit."""
        reactor = MemoryReactorClock()
        reactor.running = True
        exits = sensor_tap.ExitCode(reactor)
        self.patch(sensor_tap.atexit, "register", lambda *args: self.registered.append(args))
        self.registered: list = []
        exits.exit(0, "fine")
        exits.exit(2, "ignored: the first status wins")
        self.assertEqual(exits.status, 0)
        self.assertEqual(self.registered, [])
        failing = sensor_tap.ExitCode(reactor)
        failing.exit(2, "cannot deliver")
        self.assertEqual(self.registered, [(failing._final, 2)])
        reactor.advance(0)
        self.assertFalse(reactor.running)


class CentralCase(SynchronousTestCase):
    """Settings for a central spooling in the test's directory, on a Clock and a FakeStore."""

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = FakeStore(self.clock)
        text = (f"server_bind = 127.0.0.1\nserver_password = pw\nspooldir = {self.base}\n"
                f"http_port = 0\n")
        self.settings = load_central_config("c.conf", text=text)
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def make_central(self, **extra: Any) -> CentralService:
        return build_central(self.settings, MemoryReactorClock(), store=self.store,
                             clock=self.clock, binding=fixed_binding, endpoint=NoListen(),
                             **extra)


class LifeTests(CentralCase):
    def setUp(self) -> None:
        super().setUp()
        self.central = self.make_central()

    def test_store_retried_until_up(self) -> None:
        """A database down at start is retried every 5 s, logged once."""
        self.store.down = True
        self.central.startService()
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(self.store.calls.count("start"), 3)
        self.assertNoResult(self.central.store_service.started)
        self.store.down = False
        self.clock.advance(5)
        self.successResultOf(self.central.store_service.started)
        lines = [formatEvent(e) for e in self.observer if "unavailable" in formatEvent(e)]
        self.assertEqual(len(lines), 1)
        self.successResultOf(self.central.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_closes_sensors_then_store(self) -> None:
        """Stopping tells every sensor why, closes mirroring calls, then closes the store."""
        self.central.startService()
        network = PumpEndpoint(self.central.channel.central_factory, self.clock)
        pair = ChannelPair(clock=self.clock)
        pair.network = network
        session = self.successResultOf(pair.connect())
        d = self.central.stopService()
        network.flush()
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertIsNotNone(session.lost)
        self.assertEqual(network.pumps[0].client.close_reason,
                         "peer closed: the central is shutting down")
        self.assertEqual(self.store.calls[-1], "close", self.store.calls)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_two_sensors_one_refused(self) -> None:
        """The assembled central refuses a duplicate id while serving the first sensor."""
        self.central.startService()
        pair = ChannelPair(clock=self.clock)
        pair.network = PumpEndpoint(self.central.channel.central_factory, self.clock)
        first = self.successResultOf(pair.connect(instance="01" * 8))
        self.failureResultOf(pair.connect(instance="02" * 8), Rejection)
        first.transport.send_message(MessageType.STATS, {"packets": 1})
        pair.flush()
        self.assertEqual(self.store.sensors[7]["packets"], 1)
        self.assertTrue(self.store.sensors[7]["connected"])
        # one map of the sensors connected here: the sessions', the channel factory's
        registry = self.central.channel.central_factory.registry
        self.assertIs(self.central.channel.sessions.registry, registry)
        self.assertEqual([c.hello.instance for c in registry.channels()], ["01" * 8])
        self.assertEqual(self.central.channel.sessions.metrics.fleet.connected_count(), 1)
        self.central.stopService()
        pair.flush()
        self.assertIsInstance(first, SessionRecorder)


class MirrorRestartTests(CentralCase):
    """CDRs made from mirrored packets during a database outage survive a restart."""

    def setUp(self) -> None:
        self.engines = Engines()
        super().setUp()

    def central(self) -> CentralService:
        central = self.make_central(engines=self.engines.analyzer)
        central.startService()
        return central

    def settle(self, pair: ChannelPair, seconds: float) -> None:
        for _ in range(int(seconds / 0.1)):
            pair.flush()
            self.clock.advance(0.1)
        pair.flush()

    def stop(self, central: CentralService, pair: ChannelPair) -> None:
        d = central.stopService()
        self.settle(pair, 11)
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_queued_during_outage_stored_once_after_restart(self) -> None:
        """A mirroring sensor's replay ends while the database is down: END_ACK still comes
        (the CDRs are on the central's disk). The central is stopped and rebuilt on the same
        spooldir; when the database is back, each CDR is stored, once."""
        central = self.central()
        self.successResultOf(central.store_service.started)
        self.store.down = True
        pair = ChannelPair(clock=self.clock)
        pair.network = PumpEndpoint(central.channel.central_factory, self.clock)
        uplink = MirrorUplink(self.clock, max_buffer_bytes=1 << 20, batch_packets=10, window=2)
        self.successResultOf(pair.connect(UplinkFactory(uplink), mode="mirror", replay=True))
        for i in range(40):
            uplink.feed(1000.0 + i, 1, bytes([i % 4]) + b"rtp" * 20)
            pair.flush()
        uplink.finish_source()
        self.settle(pair, 1)
        self.successResultOf(uplink.when_done())
        self.assertEqual(uplink.central_cdrs, 4)
        self.assertEqual(self.store.cdr_count, 0)
        self.assertEqual(central.cdr_queue.depth, 4)
        self.stop(central, pair)

        again = self.central()
        self.assertEqual(again.cdr_queue.depth, 4)
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(self.store.cdr_count, 0)
        self.store.down = False
        self.clock.advance(5)
        self.successResultOf(again.store_service.started)
        self.assertEqual(sorted(cdr.callid for cdr in self.store.stored_cdrs()),
                         sorted(make_cdr(n, id_sensor=7).callid for n in range(4)))
        self.assertEqual(sum(len(batch) for batch, _ in self.store.batches), 4)
        self.assertEqual({pcap_on for _, pcap_on in self.store.batches}, {"central"})
        self.assertEqual(again.cdr_queue.depth, 0)
        self.stop(again, pair)

        third = self.central()
        self.assertEqual(third.cdr_queue.depth, 0)
        self.clock.advance(1)
        self.assertEqual(sum(len(batch) for batch, _ in self.store.batches), 4)
        self.stop(third, pair)

    def test_unusable_queue_directory_is_a_config_error(self) -> None:
        """A spooldir where the CDR queue cannot live is refused naming the key."""
        write(os.path.join(self.base, "central-queue"), "a file, not a directory")
        with self.assertRaises(usage.UsageError) as caught:
            self.make_central()
        self.assertIn("spooldir", str(caught.exception))
        self.assertIn("cannot use the CDR queue", str(caught.exception))


class RetentionTests(SynchronousTestCase):
    def test_oldest_minutes_across_sensor_directories(self) -> None:
        """maxpoolsize counts the central's per-sensor directories and removes the oldest."""
        spool = os.path.abspath(self.mktemp())
        files = [("3", "2024-01-01/10/00"), ("5", "2024-01-01/10/01"), ("3", "2024-01-01/10/02")]
        for sensor, minute in files:
            write(os.path.join(sensor_spool(spool, int(sensor)), minute, "SIP", "a.pcap"),
                  "x" * 400_000)
        now = calendar.timegm((2024, 1, 1, 11, 0, 0))
        clock = Clock()
        clock.advance(now)
        retention = CentralRetention(spool, 1, 0, clock)
        removed = self.successResultOf(retention.check())
        self.assertEqual([m.relpath for m in removed], ["3/2024-01-01/10/00"])
        self.assertFalse(os.path.exists(os.path.join(spool, "3", "2024-01-01", "10", "00")))
        self.assertTrue(os.path.exists(os.path.join(spool, "5", "2024-01-01", "10", "01")))

    def test_store_service_close_errors_logged(self) -> None:
        """A store that fails to close is logged, not raised."""
        class Broken(FakeStore):
            def close(self):
                return defer.fail(RuntimeError("close failed"))

        svc = StoreService(Broken(), Clock())
        svc.startService()
        self.successResultOf(svc.stopService())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
