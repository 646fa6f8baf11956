"""The management port for real: TLS on 127.0.0.1, the channel's password proof, files.

These are the security tests of issue 6 on a live socket: no proof, wrong password, every
traversal form, a 10 MB command line; plus a byte-exact file and merged pcap fetch.
"""

from __future__ import annotations

import os
import tracemalloc

from twisted.internet import defer, endpoints, interfaces, protocol, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from voipmon.config import load_sensor_config
from voipmon.manager.client import FileConsumer, ManagerError
from voipmon.manager.commands import ManagerCommands
from voipmon.manager.server import ManagerServerFactory
from voipmon.manager.service import (
    ManagerConnector,
    advertised_manager,
    is_plaintext,
    resolve_manager,
)
from voipmon.protocols import tls
from voipmon.protocols.handshake import Rejection, derive_key
from voipmon.test.services import manager_service
from voipmon.test.test_manager_commands import FakeSensor
from voipmon.test.test_manager_pcapmerge import read_records, write_pcap

PASSWORD = "correct horse"


def sensor_settings(spool: str, **extra: str):
    text = (f"id_sensor = 7\nserver_destination = 127.0.0.1\nserver_password = {PASSWORD}\n"
            f"spooldir = {spool}\nmanagerport = 0\n")
    overrides = list(extra.items())
    return load_sensor_config("sensor.conf", text=text, overrides=overrides)


class TrackingFactory(protocol.Factory):
    """Wraps a factory so a test can wait until every server-side connection is gone."""

    def __init__(self, inner: protocol.Factory) -> None:
        self.inner = inner
        self.lost: list[defer.Deferred] = []

    def buildProtocol(self, addr):
        proto = self.inner.buildProtocol(addr)
        done: defer.Deferred = defer.Deferred()
        self.lost.append(done)
        original = proto.connectionLost

        def connectionLost(reason=None):
            original(reason)
            done.callback(None)

        proto.connectionLost = connectionLost
        return proto


class LoopbackBase(TestCase):
    def setUp(self) -> None:
        self.spool = os.path.abspath(self.mktemp())
        minute = "2024-03-01/10/20"
        for kind in ("SIP", "RTP"):
            os.makedirs(os.path.join(self.spool, minute, kind))
        self.sip = os.path.join(self.spool, minute, "SIP", "call-1.pcap")
        self.rtp = os.path.join(self.spool, minute, "RTP", "call-1.pcap")
        write_pcap(self.sip, [(1709288400.5, b"INVITE"), (1709288403.0, b"BYE")])
        write_pcap(self.rtp, [(1709288401.0 + i / 50, b"rtp%d" % i) for i in range(100)])
        self.big = os.path.join(self.spool, minute, "RTP", "big.pcap")
        with open(self.big, "wb") as handle:
            handle.write(os.urandom(3 * 1024 * 1024 + 17))
        outside = os.path.join(os.path.dirname(self.spool), "secret.txt")
        with open(outside, "w") as handle:
            handle.write("secret")
        os.symlink(outside, os.path.join(self.spool, minute, "SIP", "link.pcap"))
        cert, key = tls.generate_self_signed("localhost")
        self.certificate = tls.ServerCertificate(cert, (), key, tls.fingerprint(cert), "", True)
        commands = ManagerCommands(self.spool, FakeSensor(), FakeSensor())
        self.factory = TrackingFactory(ManagerServerFactory(
            commands, Clock(), key=derive_key(PASSWORD), id_sensor=7,
            binding=tls.exporter_binding))
        endpoint = endpoints.SSL4ServerEndpoint(reactor, 0, self.certificate.options(),
                                                interface="127.0.0.1")
        return endpoint.listen(self.factory).addCallback(self._listening)

    def _listening(self, port) -> None:
        self.port = port.getHost().port
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: defer.DeferredList(self.factory.lost))

    def connector(self, password: str = PASSWORD) -> ManagerConnector:
        return ManagerConnector(reactor, password, timeout=10)


class FetchTests(LoopbackBase):
    @defer.inlineCallbacks
    def test_getfile_is_byte_exact(self) -> None:
        sizes = []
        out = os.path.join(self.mktemp())
        with open(out, "wb") as handle:
            size = yield self.connector().run(
                "127.0.0.1", self.port, 7, "getfile 2024-03-01/10/20/RTP/big.pcap",
                FileConsumer(handle), on_size=sizes.append)
        self.assertEqual(sizes, [size])
        with open(out, "rb") as got, open(self.big, "rb") as want:
            self.assertEqual(got.read(), want.read())

    @defer.inlineCallbacks
    def test_getcallpcap_merges(self) -> None:
        data = yield self.connector().query("127.0.0.1", self.port, 7,
                                            "getcallpcap 2024-03-01/10/20 call-1")
        names = [r[2] for r in read_records(data)]
        self.assertEqual(len(names), 102)
        self.assertEqual((names[0], names[-1]), (b"INVITE", b"BYE"))

    @defer.inlineCallbacks
    def test_stats_and_calls(self) -> None:
        stat = yield self.connector().query("127.0.0.1", self.port, 7, "sniffer_stat")
        self.assertIn(b'"queue_depth": 2', stat)

    @defer.inlineCallbacks
    def test_traversal_in_every_form_is_refused(self) -> None:
        forms = ["../secret.txt", "2024-03-01/../../secret.txt", "/etc/passwd",
                 os.path.join(os.path.dirname(self.spool), "secret.txt"),
                 "%2e%2e/secret.txt", "..%2Fsecret.txt", "%252e%252e%252fsecret.txt",
                 "2024-03-01/10/20/SIP/link.pcap", "2024-03-01/10/20/SIP/call-1.pcap\x00.txt"]
        for form in forms:
            for command in ("getfile", "file_exists"):
                failure = yield self.assertFailure(
                    self.connector().query("127.0.0.1", self.port, 7, f"{command} {form}"),
                    ManagerError)
                self.assertEqual(failure.code, "refused", (command, form))


class SecurityTests(LoopbackBase):
    @defer.inlineCallbacks
    def test_wrong_password_is_refused(self) -> None:
        failure = yield self.assertFailure(
            self.connector("wrong").query("127.0.0.1", self.port, 7, "getversion"), Rejection)
        self.assertEqual(failure.code, "bad_password")

    @defer.inlineCallbacks
    def test_wrong_sensor_is_refused(self) -> None:
        failure = yield self.assertFailure(
            self.connector().query("127.0.0.1", self.port, 8, "getversion"), Rejection)
        self.assertEqual(failure.code, "wrong_sensor")

    @defer.inlineCallbacks
    def test_no_proof_is_refused(self) -> None:
        """A TLS client that sends a command straight away gets an ERR line and no data."""
        got = yield raw_exchange(self.port, [b"getfile 2024-03-01/10/20/SIP/call-1.pcap\n"])
        self.assertEqual(got, b"ERR auth this port needs the voipmon password proof before "
                              b"any command\n")

    @defer.inlineCallbacks
    def test_plain_tcp_gets_nothing(self) -> None:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        proto = Collect([b"getversion\n"])
        yield endpoints.connectProtocol(endpoint, proto)
        yield proto.done
        self.assertNotIn(b"voipmon", b"".join(proto.received))

    @defer.inlineCallbacks
    def test_ten_megabyte_line_after_proof(self) -> None:
        """An authenticated peer sending a 10 MB line is refused; memory does not grow."""
        proto = yield self.connector().connect("127.0.0.1", self.port, 7)
        received: list[bytes] = []
        lost: defer.Deferred = defer.Deferred()
        proto.dataReceived = received.append
        proto.connectionLost = lambda reason=None: lost.callback(None)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            flood = Flood(proto.transport, 10 * 1024 * 1024)
            proto.transport.registerProducer(flood, False)
            yield lost
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual(b"".join(received), b"ERR too_long command longer than 4096 bytes\n")
        self.assertGreater(flood.sent, 4096)
        self.assertLess(peak - before, 2 * 1024 * 1024, f"peak grew by {peak - before} bytes")

    @defer.inlineCallbacks
    def test_ten_megabyte_line_without_proof(self) -> None:
        got = yield raw_exchange(self.port, [b"A" * 65536] * 160)
        self.assertTrue(got.startswith(b"ERR auth"), got[:80])


@implementer(interfaces.IPullProducer)
class Flood:
    def __init__(self, transport, total: int) -> None:
        self.transport = transport
        self.left = total
        self.sent = 0

    def resumeProducing(self) -> None:
        if self.left <= 0:
            self.transport.unregisterProducer()
            return
        self.transport.write(b"A" * 65536)
        self.left -= 65536
        self.sent += 65536

    def stopProducing(self) -> None:
        self.left = 0


class Collect(protocol.Protocol):
    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.received: list[bytes] = []
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        for line in self.lines:
            self.transport.write(line)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason=None) -> None:
        self.done.callback(None)


def raw_exchange(port: int, lines: list[bytes]) -> defer.Deferred:
    """Open TLS, send ``lines`` without any proof, return what came back before the close."""
    tcp = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    proto = Collect(lines)
    d = endpoints.connectProtocol(endpoints.wrapClientTLS(tls.client_creator("127.0.0.1"), tcp),
                                  proto)
    d.addCallback(lambda _: proto.done)
    return d.addCallback(lambda _: b"".join(proto.received))


class ServiceTests(TestCase):
    def test_disabled(self) -> None:
        settings = sensor_settings(self.mktemp())
        self.assertIsNone(manager_service(settings, reactor))
        self.assertEqual(advertised_manager(settings.manager), "")

    def test_plaintext_only_on_loopback(self) -> None:
        spool = self.mktemp()
        yes = sensor_settings(spool, managerport="5029", manager_enable_unencrypted="yes")
        self.assertTrue(is_plaintext(yes.manager))
        self.assertEqual(advertised_manager(yes.manager), "")  # the central cannot use plain text
        wide = sensor_settings(spool, managerport="5029", manager_enable_unencrypted="yes",
                               managerip="0.0.0.0")
        self.assertFalse(is_plaintext(wide.manager))
        self.assertEqual(advertised_manager(wide.manager), "*:5029")
        v6 = sensor_settings(spool, managerport="5029", managerip="::1")
        self.assertEqual(advertised_manager(v6.manager), "[::1]:5029")

    @defer.inlineCallbacks
    def test_service_over_tls(self) -> None:
        """make_manager_service listens with TLS and the proof, using the spool's cert."""
        spool = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(spool, "x"))
        with open(os.path.join(spool, "x", "f.pcap"), "wb") as handle:
            handle.write(b"hello")
        settings = sensor_settings(spool, managerport="5029")
        svc = manager_service(settings, reactor, FakeSensor(), FakeSensor(), port=0)
        svc.factory = tracking = TrackingFactory(svc.factory)
        svc.startService()
        listening: defer.Deferred = defer.Deferred()
        svc._waitingForPort.addCallback(lambda p: listening.callback(p) or p)
        port = yield listening  # not the service's own Deferred: yield would eat its result
        self.addCleanup(svc.stopService)
        self.addCleanup(lambda: defer.DeferredList(tracking.lost))
        self.assertTrue(os.path.exists(os.path.join(spool, "state", tls.CERT_NAME)))
        data = yield ManagerConnector(reactor, PASSWORD).query(
            "127.0.0.1", port.getHost().port, 7, "getfile x/f.pcap")
        self.assertEqual(data, b"hello")


class ResolveTests(SynchronousTestCase):
    def test_resolve(self) -> None:
        self.assertEqual(resolve_manager("10.0.0.5:5029", "192.0.2.1"), ("10.0.0.5", 5029))
        self.assertEqual(resolve_manager("*:5029", "192.0.2.1"), ("192.0.2.1", 5029))
        self.assertEqual(resolve_manager("[::]:6000", "2001:db8::1"), ("2001:db8::1", 6000))
        self.assertEqual(resolve_manager("[fd00::2]:5029", "x"), ("fd00::2", 5029))
        for bad in ("", "host", "host:0", "host:99999", "host:x"):
            self.assertIsNone(resolve_manager(bad, "192.0.2.1"))
