"""Tests for voipmon.protocols.legacy_mirror: the receiver's protocol against the sender.

The sender (the channel's sensor side over plain TCP) and the receiver's protocol run
against each other in memory (iosim) on a task.Clock; the services they belong to are
built but their network parts are never started here. The sender's buffer is the
channel's mirroring buffer (voipmon.sensor.mirror.MirrorUplink), tested with it
(test_sensor_mirror: batches by size and count, link types, drops, window, acks, resends).
"""

from __future__ import annotations

from twisted.internet import protocol, task
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from voipmon.config import Destination
from voipmon.protocols import wire
from voipmon.protocols.legacy_mirror import HANDSHAKE_TIMEOUT, ReceiverProtocol
from voipmon.sensor.centrals import ProbeSession
from voipmon.sensor.legacy_mirror import LegacyMirrorSender
from voipmon.test.mirror_fakes import PASSWORD, make_pair

EN10MB = 1
SLL = 113


def frames_of(payload: bytes) -> list[tuple[float, bytes]]:
    _seq, _linktype, packets = wire.decode_packets(payload)
    return [(ts, frame) for ts, _wirelen, frame in packets]


def connect_raw(receiver) -> tuple[ReceiverProtocol, StringTransport]:
    """A connection to ``receiver`` from no sender; what the receiver writes is in the transport."""
    proto = ReceiverProtocol(receiver)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


class ProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)

    def connect(self, **kwargs):
        sender, receiver, endpoint, engines = make_pair(self.clock, **kwargs)
        sender.startService()
        endpoint.flush()
        self.addCleanup(lambda: sender.running and sender.stopService())
        return sender, receiver, endpoint, engines

    def test_packets_reach_the_engine_in_order(self) -> None:
        sender, receiver, endpoint, engines = self.connect()
        self.assertTrue(sender.stats()["connected"])
        for i in range(5):
            sender.feed(1_700_000_000.5 + i, EN10MB, b"frame%d" % i)
        self.clock.advance(0.2)  # the flush timer seals the batch
        endpoint.flush()
        engine = engines.made[7]
        self.assertEqual(engine.name, "edge-7")
        self.assertEqual(engine.frames, [(1_700_000_000.5 + i, EN10MB, b"frame%d" % i)
                                         for i in range(5)])
        stats = sender.stats()
        self.assertEqual((stats["acknowledged"], stats["unacknowledged"]), (5, 0))
        sensor = receiver.stats()["sensors"][7]
        self.assertEqual((sensor["packets"], sensor["batches"], sensor["connected"]),
                         (5, 1, True))

    def test_bad_password_is_refused_with_reason(self) -> None:
        with capturedLogs() as events:
            sender, _receiver, endpoint, engines = self.connect(password="wrong")
        self.assertEqual(engines.made, {})
        self.assertFalse(sender.stats()["connected"])
        self.assertIn("bad password", sender.last_error)
        text = " ".join(str(e.get("reason", "")) for e in events)
        self.assertIn("bad password", text)
        self.assertTrue(endpoint.pumps[0].clientIO.disconnected)

    def test_clock_skew_is_refused_naming_the_key(self) -> None:
        ahead = task.Clock()
        ahead.advance(1_700_000_000 + 12.5)
        sender, _receiver, _endpoint, engines = self.connect(sender_clock=ahead)
        self.assertEqual(engines.made, {})
        self.assertEqual(sender.last_error,
                         "clock skew of 12.5 s exceeds mirror_connect_maximum_time_diff_s = "
                         "2 s (the sensor's clock is 12.5 s ahead of the central's)")

    def test_skew_within_the_limit_is_remembered(self) -> None:
        behind = task.Clock()
        behind.advance(1_700_000_000 - 1.5)
        _sender, receiver, _endpoint, engines = self.connect(sender_clock=behind)
        self.assertEqual(receiver.stats()["sensors"][7]["clock_skew"], 1.5)
        receiver.advance()
        self.assertEqual(engines.made[7].advanced, [1_700_000_000 - 1.5])

    def test_id_in_use_by_another_sensor(self) -> None:
        _sender, receiver, endpoint, _engines = self.connect()
        other = LegacyMirrorSender(Destination("127.0.0.1", 1), id_sensor=7, name="other",
                                   password=PASSWORD, max_buffer_mb=1, reactor=self.clock,
                                   endpoint=endpoint, retry_policy=lambda attempt: 1.0)
        other.startService()
        endpoint.flush()
        self.assertIn("id_sensor 7 is already connected", other.last_error)
        self.assertTrue(receiver.stats()["sensors"][7]["connected"])
        self.assertEqual(receiver.stats()["sensors"][7]["name"], "edge-7")
        other.client.stopService()

    def test_same_instance_takes_over_its_stale_connection(self) -> None:
        sender, receiver, endpoint, _engines = self.connect()
        old = endpoint.servers[0]
        sender.endpoint.connect(protocol.Factory.forProtocol(ProbeSession))
        endpoint.flush()
        endpoint.flush()  # the abort of the first connection happened during the second's
        self.assertTrue(endpoint.pumps[0].serverIO.disconnected)
        self.assertIs(receiver.senders[7].connection, endpoint.servers[1])
        self.assertIsNot(old, endpoint.servers[1])

    def test_garbage_closes_only_that_connection(self) -> None:
        sender, receiver, endpoint, engines = self.connect()
        stranger, transport = connect_raw(receiver)
        stranger.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        close = wire.FrameDecoder().feed(transport.value())
        self.assertEqual(close[0].kind, wire.MessageType.CLOSE)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        sender.feed(1.0, EN10MB, b"still fine")
        sender.flush()
        endpoint.flush()
        self.assertEqual(engines.made[7].frames[-1][2], b"still fine")

    def test_oversized_frame_before_the_handshake(self) -> None:
        _s, receiver, _e, _m = make_pair(self.clock)
        stranger, transport = connect_raw(receiver)
        stranger.dataReceived(wire.HEADER.pack(1 << 30, wire.MessageType.PACKETS, 0))
        self.assertTrue(transport.disconnecting)
        stranger.connectionLost(None)

    def test_packets_before_the_handshake_are_refused(self) -> None:
        _s, receiver, _e, engines = make_pair(self.clock)
        stranger, transport = connect_raw(receiver)
        batch = wire.PacketBatch(EN10MB)
        batch.add(1.0, b"x")
        stranger.dataReceived(wire.encode_frame(wire.MessageType.PACKETS, batch.seal(1)))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(engines.made, {})
        stranger.connectionLost(None)

    def test_handshake_timeout(self) -> None:
        _s, receiver, _e, _m = make_pair(self.clock)
        silent, transport = connect_raw(receiver)
        self.clock.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        silent.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_malformed_batch_closes(self) -> None:
        _sender, _receiver, endpoint, _engines = self.connect()
        server = endpoint.servers[0]
        server.dataReceived(wire.encode_frame(wire.MessageType.PACKETS, b"\x01\x02"))
        self.assertTrue(endpoint.pumps[0].serverIO.disconnecting)

    def test_engine_errors_are_counted(self) -> None:
        """An engine failure costs the rest of its batch, never the connection."""
        sender, receiver, endpoint, engines = self.connect()
        sender.feed(1.0, EN10MB, b"ok")
        sender.flush()
        endpoint.flush()
        engines.made[7].fail_on = b"bad"
        for frame in (b"bad", b"skipped"):
            sender.feed(2.0, EN10MB, frame)
        sender.flush()
        endpoint.flush()
        sender.feed(3.0, EN10MB, b"ok2")
        sender.flush()
        endpoint.flush()
        self.assertEqual([f for _, _, f in engines.made[7].frames], [b"ok", b"ok2"])
        self.assertEqual(receiver.stats()["sensors"][7]["engine_errors"], 1)
        self.assertEqual(sender.stats()["unacknowledged"], 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
