"""The management port's framing, limits, timeouts and proof gate, over StringTransport."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from voipmon.manager.auth import ManagerAuthClient
from voipmon.manager.commands import ManagerCommands
from voipmon.manager.server import MAX_LINE, ManagerServerFactory
from voipmon.protocols.admission import (
    CLOSING,
    GREETED,
    OPENED,
    SPOKE,
    AdmissionGate,
    AdmissionPolicy,
)
from voipmon.protocols.gated import GatedFactory, innermost
from voipmon.protocols.handshake import derive_key
from voipmon.protocols.wire import FrameDecoder, MessageType, decode_json
from voipmon.test.test_manager_commands import FakeSensor

BINDING = b"b" * 32


class Harness:
    def __init__(self, case: SynchronousTestCase, key: bytes | None = None,
                 gate: AdmissionGate | None = None, clock: Clock | None = None,
                 host: str = "192.0.2.50") -> None:
        self.spool = os.path.abspath(case.mktemp())
        os.makedirs(os.path.join(self.spool, "d"))
        self.big = os.path.join(self.spool, "d", "big.bin")
        with open(self.big, "wb") as handle:
            handle.write(os.urandom(300_000))
        self.clock = clock or Clock()
        commands = ManagerCommands(self.spool, FakeSensor(), FakeSensor(), version="1")
        factory: Any = ManagerServerFactory(commands, self.clock, timeout=30, key=key,
                                            id_sensor=7,
                                            binding=(lambda t: BINDING) if key else None)
        if gate is not None:
            factory = GatedFactory(gate, factory)
        peer = IPv4Address("TCP", host, 40000)
        self.proto = factory.buildProtocol(peer)
        self.app = innermost(self.proto)
        self.transport = StringTransport(peerAddress=peer)
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


class GateTests(SynchronousTestCase):
    """The management port behind its admission gate: the protocol reports its progress,
    and idle connections cannot keep the central out."""

    def setUp(self) -> None:
        self.key = derive_key("s3cret")
        self.clock = Clock()
        self.gate = AdmissionGate("management port", self.clock,
                                  AdmissionPolicy(capacity=8, per_source=4))

    def harness(self, key: bytes | None = None, host: str = "192.0.2.50") -> Harness:
        return Harness(self, key=key or self.key, gate=self.gate, clock=self.clock, host=host)

    def authenticate(self, h: Harness) -> None:
        client = ManagerAuthClient(self.key, 7, self.clock.seconds)
        h.send(client.hello())
        self.assertEqual(h.app.admission.stage, GREETED)
        h.send(client.feed(h.output(), lambda: BINDING))
        client.feed(h.output(), lambda: BINDING)
        self.assertTrue(client.done)

    def test_stages_through_the_proof(self) -> None:
        h = self.harness()
        ticket = h.app.admission
        self.assertEqual((ticket.stage, self.gate.pending), (OPENED, 1))
        self.authenticate(h)
        self.assertEqual((ticket.state, self.gate.pending), ("done", 0))
        h.send(b"getversion\n")
        h.pump()
        self.assertEqual(h.output(), b"OK 10\nvoipmon 1\n")

    def test_plain_text_is_admitted_by_its_first_command(self) -> None:
        h = Harness(self, gate=self.gate, clock=self.clock)
        h.send(b"getver")
        self.assertEqual(h.app.admission.stage, SPOKE)
        h.send(b"sion\n")
        self.assertEqual(h.app.admission.state, "done")

    def test_refused_connection_goes_first(self) -> None:
        h = self.harness()
        h.send(b"getfile d/big.bin\n")   # no proof: refused, closing
        self.assertEqual(h.app.admission.stage, CLOSING)

    def test_idle_flood_does_not_keep_the_central_out(self) -> None:
        """Idle connections from one address, each reopened as soon as it is dropped: the
        central's connection (another address) gets in, and idle ones are dropped."""
        idle = []
        for _ in range(10):
            idle.append(self.harness(host="203.0.113.9"))
            self.clock.advance(0)
        dropped = [h for h in idle if h.transport.disconnected]
        self.assertEqual(len(dropped), 6)
        self.assertEqual(self.gate.pending, 4)
        central = self.harness()
        for _ in range(10):                                  # the flood goes on
            idle.append(self.harness(host="203.0.113.9"))
            self.clock.advance(0)
        self.authenticate(central)
        self.assertFalse(central.transport.disconnected)
        central.send(b"getversion\n")
        central.pump()
        self.assertEqual(central.output(), b"OK 10\nvoipmon 1\n")
        for h in idle:
            h.proto.connectionLost(None)
        central.proto.connectionLost(None)
        self.assertEqual(self.gate.pending, 0)
