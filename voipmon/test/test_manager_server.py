"""The management port's framing, limits, timeouts and proof gate, over StringTransport."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from voipmon.manager.auth import ManagerAuthClient
from voipmon.manager.commands import ManagerCommands
from voipmon.manager.server import MAX_LINE, ManagerServerFactory
from voipmon.protocols.handshake import derive_key
from voipmon.protocols.wire import FrameDecoder, MessageType, decode_json
from voipmon.test.test_manager_commands import FakeSensor

BINDING = b"b" * 32


class Harness:
    def __init__(self, case: SynchronousTestCase, key: bytes | None = None) -> None:
        self.spool = os.path.abspath(case.mktemp())
        os.makedirs(os.path.join(self.spool, "d"))
        self.big = os.path.join(self.spool, "d", "big.bin")
        with open(self.big, "wb") as handle:
            handle.write(os.urandom(300_000))
        self.clock = Clock()
        commands = ManagerCommands(self.spool, FakeSensor(), FakeSensor(), version="1")
        factory = ManagerServerFactory(commands, self.clock, timeout=30, key=key, id_sensor=7,
                                       binding=(lambda t: BINDING) if key else None)
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def output(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def pump(self) -> None:
        """Let a registered pull producer run until the reply is complete."""
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()


class PlainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)

    def test_command_and_keep_going(self) -> None:
        self.h.send(b"getversion\r\nnonsense here\n")
        self.h.pump()
        self.assertEqual(self.h.output(), b"OK 10\nvoipmon 1\n"
                         b"ERR unknown_command 'nonsense'; 'help' lists the commands\n")
        self.assertFalse(self.h.transport.disconnecting)
        self.h.send(b"file_exists d/big.bin\n")
        self.h.pump()
        self.assertEqual(self.h.output(), b"OK 7\n300000\n")

    def test_getfile_streams_in_chunks(self) -> None:
        self.h.send(b"getfile d/big.bin\ngetversion\n")
        self.assertEqual(self.h.output(), b"OK 300000\n")  # body waits for the consumer
        self.assertFalse(self.h.transport.streaming)
        writes = 0
        received = b""
        while self.h.transport.producer is not None:
            self.h.transport.producer.resumeProducing()
            chunk = self.h.output()
            writes += 1
            self.assertLessEqual(len(chunk), 64 * 1024 + 20)
            received += chunk
        with open(self.h.big, "rb") as handle:
            self.assertEqual(received, handle.read() + b"OK 10\nvoipmon 1\n")
        self.assertGreaterEqual(writes, 5)

    def test_refused_paths_get_an_error_line(self) -> None:
        for line in (b"getfile ../../etc/passwd", b"getfile /etc/passwd",
                     b"getfile %2e%2e/%2e%2e/etc/passwd", b"getfile d/\x00x"):
            self.h.send(line + b"\n")
            self.assertTrue(self.h.output().startswith(b"ERR refused "), line)
        self.assertFalse(self.h.transport.disconnecting)

    def test_not_utf8(self) -> None:
        self.h.send(b"getfile \xff\xfe\n")
        self.assertEqual(self.h.output(), b"ERR usage command is not UTF-8\n")

    def test_ten_megabyte_line_is_refused_without_buffering(self) -> None:
        chunk = b"A" * 65536
        for _ in range(160):  # 10 MB in the chunk size a socket read gives
            self.h.send(chunk)
            self.assertLessEqual(len(self.h.proto._buffer), MAX_LINE + len(chunk))
        self.assertEqual(self.h.output(),
                         b"ERR too_long command longer than 4096 bytes\n")
        self.assertTrue(self.h.transport.disconnecting)
        self.assertEqual(self.h.proto._buffer, b"")

    def test_silent_client_times_out(self) -> None:
        self.h.clock.advance(29)
        self.assertFalse(self.h.transport.disconnecting)
        self.h.clock.advance(1)
        self.assertEqual(self.h.output(), b"ERR timeout no command for 30 s\n")
        self.assertTrue(self.h.transport.disconnecting)
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_slow_drip_does_not_keep_a_connection(self) -> None:
        for _ in range(3):
            self.h.send(b"g")
            self.h.clock.advance(10)
        self.assertTrue(self.h.transport.disconnecting)

    def test_commands_reset_the_timer_and_close_cancels_it(self) -> None:
        for _ in range(3):
            self.h.clock.advance(20)
            self.h.send(b"getversion\n")
            self.h.pump()
        self.assertFalse(self.h.transport.disconnecting)
        self.h.proto.connectionLost(None)
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_stalled_reader_times_out(self) -> None:
        self.h.send(b"getfile d/big.bin\n")
        self.h.transport.producer.resumeProducing()
        self.h.clock.advance(30)  # the reader never takes another chunk
        self.assertTrue(self.h.transport.disconnecting)


class ProofTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.key = derive_key("s3cret")
        self.h = Harness(self, key=self.key)

    def handshake(self, key: bytes) -> tuple[ManagerAuthClient, bytes, list]:
        """The client's hello and proof; the server's last answer, raw and as frames."""
        client = ManagerAuthClient(key, 7, self.h.clock.seconds)
        self.h.send(client.hello())
        challenge = self.h.output()
        self.assertEqual([f.kind for f in FrameDecoder().feed(challenge)],
                         [MessageType.CHALLENGE])
        self.h.send(client.feed(challenge, lambda: BINDING))
        answer = self.h.output()
        return client, answer, FrameDecoder().feed(answer)

    def test_proof_then_commands(self) -> None:
        client, answer, frames = self.handshake(self.key)
        self.assertEqual([f.kind for f in frames], [MessageType.ACCEPT])
        client.feed(answer, lambda: BINDING)
        self.assertTrue(client.done)
        self.h.send(b"getversion\n")
        self.h.pump()
        self.assertEqual(self.h.output(), b"OK 10\nvoipmon 1\n")

    def test_wrong_password(self) -> None:
        _client, _answer, frames = self.handshake(derive_key("guess"))
        self.assertEqual([f.kind for f in frames], [MessageType.REJECT])
        self.assertEqual(decode_json(frames[0].kind, frames[0].payload)["code"], "bad_password")
        self.assertTrue(self.h.transport.disconnecting)
        self.h.send(b"getversion\n")
        self.assertEqual(self.h.output(), b"")

    def test_wrong_sensor(self) -> None:
        client = ManagerAuthClient(self.key, 8, self.h.clock.seconds)
        self.h.send(client.hello())
        frames = FrameDecoder().feed(self.h.output())
        self.assertEqual(decode_json(frames[0].kind, frames[0].payload),
                         {"code": "wrong_sensor", "reason": "this is sensor 7, not sensor 8"})

    def test_command_without_proof(self) -> None:
        self.h.send(b"getfile d/big.bin\n")
        self.assertEqual(self.h.output(), b"ERR auth this port needs the voipmon password proof "
                                          b"before any command\n")
        self.assertTrue(self.h.transport.disconnecting)

    def test_silent_before_proof(self) -> None:
        self.h.clock.advance(30)
        self.assertTrue(self.h.transport.disconnecting)
