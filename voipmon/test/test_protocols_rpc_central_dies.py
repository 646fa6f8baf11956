"""A central that dies in the middle of a request, seen from the sensor (in memory, fakes).

The sensor is streaming a big answer over its real channel (iosim, a ``Clock``) when the
central goes: its process is killed (the connection drops at once), or it freezes or the
cable is pulled (nothing more comes; the sensor's keepalive gives up after 30 s). Either
way the sensor's responder stops reading the file within the credit it had, closes it,
keeps no answer in progress, and leaves no delayed call behind (ChannelPairCase checks).
"""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from voipmon.protocols.channel import PING_INTERVAL, PING_TIMEOUT
from voipmon.protocols.rpc.requester import RequestFailed
from voipmon.test.fakes_channel import ChannelPairCase, SessionRecorder
from voipmon.test.rpc_support import PatternFile, SlowConsumer, TableCommands

SIZE = 50 * 1024 * 1024


class CentralDiesTests(ChannelPairCase):
    def setUp(self) -> None:
        super().setUp()
        self.file = PatternFile(SIZE)
        self.commands = TableCommands(big=lambda args: self.file.reply())
        self.sensor = self.successResultOf(self.pair.connect(
            protocol.Factory.forProtocol(SessionRecorder), commands=self.commands)).transport
        self.central = self.pair.network.pumps[0].server
        self.results: list[object] = []
        # a client that reads nothing more once it has 1 MB: the window then runs out
        self.client = SlowConsumer(high=1 << 20)
        self.pair.factory.registry.request(7, "big", "", self.client).addBoth(
            self.results.append)
        for _ in range(4):
            self.pair.network.pumps[0].pump()
        self.responder = self.sensor.responder
        self.assertEqual(list(self.responder.streams), [1])
        self.assertGreater(self.file.read, 0, "the sensor is reading the file")
        self.assertLess(self.file.read, SIZE)
        self.assertFalse(self.file.closed)

    def assert_freed(self, read_before: int) -> None:
        self.assertTrue(self.file.closed, "the sensor closed the file")
        self.assertEqual(self.responder.streams, {})
        self.assertTrue(self.responder.lost)
        window = self.central.requester.window
        self.assertLessEqual(self.file.read - read_before, window + self.file.chunk,
                             "no read beyond the credit once the central was gone")
        self.assertLess(self.file.read, SIZE)
        self.assertTrue(self.sensor.lost.called)

    def test_the_central_process_is_killed(self) -> None:
        """The connection drops with no CLOSE: the sensor frees the file at once."""
        read_before = self.file.read
        self.sensor.connectionLost(Failure(ConnectionLost("the central was killed")))
        self.assert_freed(read_before)
        # a request arriving on the dead channel is not run
        self.assertEqual(self.commands.calls, [("big", "")])
        # the central's side, torn down by the test, fails what it had in flight
        self.central.connectionLost(Failure(ConnectionLost("killed")))
        self.assertIsInstance(self.results[0].value, RequestFailed)

    def test_the_central_freezes(self) -> None:
        """Nothing more comes from the central: the sensor reads nothing more than the
        credit it had, gives up after the 30 s silence limit, and frees the file once
        the connection is gone."""
        self.pair.network.partition(0)
        read_before = self.file.read
        for _ in range(int(PING_TIMEOUT / PING_INTERVAL) + 1):
            self.pair.clock.advance(PING_INTERVAL)
        self.assertTrue(self.sensor.closing)
        self.assertIn("peer silent for 30 s", self.sensor.close_reason)
        self.assertLessEqual(self.file.read - read_before,
                             self.central.requester.window + self.file.chunk)
        # the sensor aborts the connection 10 s later; the kernel reports it gone
        self.pair.clock.advance(10)
        self.pair.network.cut.clear()
        self.pair.flush()
        self.assert_freed(read_before)
