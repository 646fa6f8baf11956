"""Tests for voipmon.protocols.client: the sensor's authenticating endpoint (iosim, Clock)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from voipmon.protocols.channel import IMessageTransport
from voipmon.protocols.client import HandshakeFailed, SensorChannel
from voipmon.protocols.failover import FailoverEndpoint, FailoverRoundFailed
from voipmon.protocols.handshake import CentralProofFailed, Rejection
from voipmon.protocols.wire import FrameDecoder, MessageType, encode_frame
from voipmon.test.fakes_channel import ChannelPair, ChannelPairCase, PumpEndpoint, SessionRecorder


class Rogue(protocol.Protocol):
    """A 'central' without the password: challenges, then 'accepts' with a forged proof."""

    def connectionMade(self) -> None:
        self.decoder = FrameDecoder()
        self.received: list[MessageType] = []

    def dataReceived(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            self.received.append(frame.kind)
            if frame.kind == MessageType.HELLO:
                self.transport.write(encode_frame(
                    MessageType.CHALLENGE, b'{"nonce":"%s","time":0}' % (b"11" * 32)))
            elif frame.kind == MessageType.PROOF:
                self.transport.write(encode_frame(MessageType.ACCEPT,
                                                  b'{"proof":"%s"}' % (b"00" * 32)))


class Mute(protocol.Protocol):
    """A 'central' that accepts TCP and says nothing."""


class SensorBase(ChannelPairCase):
    def sensor(self, index: int = -1) -> SensorChannel:
        return self.pair.network.pumps[index].client

    def connect_to(self, central: Callable[[], Any]) -> tuple[PumpEndpoint, defer.Deferred]:
        """Start connecting a sensor to a stand-in central built by ``central``."""
        network = PumpEndpoint(protocol.Factory.forProtocol(central), self.pair.clock)
        endpoint = self.pair.endpoint()
        endpoint.endpoint = network
        return network, endpoint.connect(protocol.Factory.forProtocol(SessionRecorder))


class ConnectTests(SensorBase):
    def test_fires_with_session_after_accept(self) -> None:
        """The endpoint fires with the session protocol, whose transport is the channel."""
        session = self.successResultOf(self.pair.connect())
        self.assertIsInstance(session, SessionRecorder)
        self.assertTrue(IMessageTransport.providedBy(session.transport))
        self.assertEqual(session.transport.accept_info["central"], "central-test")
        self.assertEqual(session.transport.accept_info["window"], 8)
        self.assertTrue(self.sensor().authenticated)
        self.assertEqual(self.sensor().peer, "192.0.2.1:60024")

    def test_session_gets_central_messages(self) -> None:
        """Messages from the central reach the session; pings do not."""
        session = self.successResultOf(self.pair.connect())
        central = self.pair.handler.sessions[0].channel
        central.send_message(MessageType.CDR_ACK, {"upto": 3, "stored": 3})
        self.pair.clock.advance(5)
        self.pair.flush()
        self.assertEqual([k for k, _ in session.messages], [MessageType.CDR_ACK])
        self.assertEqual(session.messages[0][1], {"upto": 3, "stored": 3})

    def test_session_told_of_loss(self) -> None:
        session = self.successResultOf(self.pair.connect())
        self.pair.handler.sessions[0].channel.close("central shutting down")
        self.pair.flush()
        self.assertIsNotNone(session.lost)
        self.assertIn("sensor: 192.0.2.1:60024 closed the channel: central shutting down",
                      self.logged())

    def test_rejection_fails_attempt(self) -> None:
        """A refusal fails the attempt with the Rejection; no session is built."""
        built = []

        class Factory(protocol.Factory):
            def buildProtocol(self, addr):
                built.append(addr)
                return SessionRecorder()

        d = self.pair.connect(Factory(), password="nope")
        self.assertEqual(self.failureResultOf(d, Rejection).value.code, "bad_password")
        self.assertEqual(built, [])
        self.assertIn("central 192.0.2.1:60024 refused this sensor: bad password: the sensor's "
                      "proof does not match server_password", self.logged())

    def test_central_without_password(self) -> None:
        """A central that fails its proof gets nothing after the sensor's proof."""
        rogue = Rogue()
        network, d = self.connect_to(lambda: rogue)
        network.flush()
        failure = self.failureResultOf(d, CentralProofFailed)
        self.assertIn("failed the password proof", str(failure.value))
        self.assertEqual(rogue.received, [MessageType.HELLO, MessageType.PROOF, MessageType.CLOSE])
        self.assertTrue(any("sending nothing" in line for line in self.logged()))
        self.assertEqual(self.pair.clock.getDelayedCalls(), [])

    def test_mute_central_times_out(self) -> None:
        """A central that never answers fails the attempt after 10 s."""
        network, d = self.connect_to(Mute)
        network.flush()
        self.pair.clock.advance(9.9)
        self.assertNoResult(d)
        self.pair.clock.advance(0.1)
        network.flush()
        failure = self.failureResultOf(d, HandshakeFailed)
        self.assertEqual(str(failure.value), "handshake not completed within 10 s")

    def test_connection_lost_during_handshake(self) -> None:
        """Losing the connection before ACCEPT fails the attempt, saying so."""
        network, d = self.connect_to(Mute)
        network.pumps[0].server.transport.loseConnection()
        network.flush()
        self.assertIn("connection closed during the handshake",
                      str(self.failureResultOf(d, HandshakeFailed).value))

    def test_tcp_failure_passes_through(self) -> None:
        self.pair.network.fail_with = ConnectionRefusedError("nobody home")
        d = self.pair.connect()
        self.failureResultOf(d, ConnectionRefusedError)

    def test_cancel_during_handshake(self) -> None:
        """Cancelling mid-handshake aborts the connection and leaves no timer."""
        network, d = self.connect_to(Mute)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        network.flush()
        self.assertEqual(self.pair.clock.getDelayedCalls(), [])

    def test_cancel_before_tcp(self) -> None:
        """Cancelling before TCP connected cancels the inner attempt."""
        from voipmon.test.fakes_channel import FakeEndpoint

        inner = FakeEndpoint()
        endpoint = self.pair.endpoint()
        endpoint.endpoint = inner
        d = endpoint.connect(protocol.Factory.forProtocol(SessionRecorder))
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(inner.cancelled, 1)


class KeepaliveTests(SensorBase):
    def test_pings_keep_both_sides_alive(self) -> None:
        """With pings flowing every 5 s, a minute passes without anyone being dropped."""
        session = self.successResultOf(self.pair.connect())
        for _ in range(12):
            self.pair.clock.advance(5)
            self.pair.flush()
        self.assertIsNone(session.lost)
        self.assertIsNotNone(self.sensor().rtt)
        self.assertIsNotNone(self.pair.factory.registry.get(7).rtt)

    def test_silent_network_drops_both_ends(self) -> None:
        """When the network goes silent, both ends drop the connection after 30 s."""
        session = self.successResultOf(self.pair.connect())
        self.pair.network.partition(0)
        for _ in range(5):
            self.pair.clock.advance(5)
        self.assertFalse(self.sensor().closing)
        self.pair.clock.advance(5)
        self.assertTrue(self.sensor().closing)
        self.assertTrue(self.pair.network.pumps[0].server.closing)
        self.assertIn("peer silent for 30 s", self.sensor().close_reason)
        self.pair.network.cut.clear()
        self.pair.flush()
        self.assertIsNotNone(session.lost)
        self.assertIsNone(self.pair.factory.registry.get(7))


class FailoverHandshakeTests(SynchronousTestCase):
    """ClientService over a FailoverEndpoint of authenticating endpoints, all in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.primary = ChannelPair(clock=self.clock, central_password="other")
        self.backup = ChannelPair(clock=self.clock)
        self.failover = FailoverEndpoint(
            [("primary:60024", self.primary.endpoint()), ("backup:60024", self.backup.endpoint())],
            self.clock, jitter=lambda: 0.5)
        self.service = ClientService(self.failover,
                                     protocol.Factory.forProtocol(SessionRecorder),
                                     retryPolicy=self.failover.retry_delay, clock=self.clock)

    def tearDown(self) -> None:
        self.service.stopService()
        for pair in (self.primary, self.backup):
            pair.close_all()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def flush(self) -> None:
        for _ in range(5):
            self.primary.flush()
            self.backup.flush()

    def test_refusing_primary_counts_as_down(self) -> None:
        """A primary that refuses the password is skipped for the backup in the same round."""
        self.service.startService()
        self.flush()
        session = self.successResultOf(self.service.whenConnected())
        self.assertEqual(self.failover.connected_index, 1)
        self.assertEqual(len(self.backup.handler.sessions), 1)
        self.assertEqual(self.primary.factory.refusals["bad_password"], 1)
        self.assertIsNone(session.lost)

    def test_every_central_refusing(self) -> None:
        """When every central refuses, the round fails with each reason and backs off."""
        self.backup.factory.key = b"x" * 32
        d = self.service.whenConnected(failAfterFailures=1)
        self.service.startService()
        self.flush()
        failure = self.failureResultOf(d, FailoverRoundFailed)
        self.assertEqual([type(f.value) for _, f in failure.value.attempts],
                         [Rejection, Rejection])
        self.assertIn("bad password", str(failure.value))
