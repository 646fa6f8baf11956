"""Requests through both ends, their schedulers and dispatchers, frames on in-memory wires:
interleaving with CDRs, credit, cancellation, timeouts, limits, either end dying, memory."""

from __future__ import annotations

import itertools
import os
from typing import Any

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from voipmon.manager.commands import PCAP, CommandError, ManagerCommands
from voipmon.protocols.rpc.messages import CHUNK, WINDOW, answer_head
from voipmon.protocols.rpc.requester import RequestFailed
from voipmon.protocols.wire import MessageType, ProtocolError, encode_json, parse_json
from voipmon.queue import DurableQueue
from voipmon.sensor.uplink import CdrUplink
from voipmon.spool.layout import minute_dir
from voipmon.test.rpc_support import (
    MemoryChannel,
    PatternFile,
    RequestResults,
    SlowConsumer,
    TableCommands,
)
from voipmon.test.test_manager_pcapmerge import write_pcap
from voipmon.test.test_manager_server import Harness

M = MessageType


class MuxCase(RequestResults, SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.results: list[Any] = []

    def connect(self, commands: Any, **kwargs: Any) -> MemoryChannel:
        self.channel = MemoryChannel(commands, self.clock, **kwargs)
        return self.channel

    def fetch(self, command: str, args: str = "", consumer: Any = None) -> Any:
        return self.start_request(self.channel.requester, command, args, consumer)

    def assertClean(self) -> None:
        """Nothing left on either end: no request, no reader, no timer."""
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.channel.requester.pending, {})
        self.assertEqual(self.channel.responder.streams, {})
        self.assertEqual(self.channel.sensor_out.sources, 0)


class SpoolTests(MuxCase):
    """The real registry: what the sensor's management port serves, over the channel."""

    def test_a_calls_pcap_is_byte_identical_to_getcallpcap(self) -> None:
        spool = os.path.abspath(self.mktemp())
        when = 1700000000.25
        minute = minute_dir(when)
        for kind in ("SIP", "RTP"):
            os.makedirs(os.path.join(spool, minute, kind))
        write_pcap(os.path.join(spool, minute, "SIP", "call1.pcap"),
                   [(when, b"INVITE"), (when + 30, b"BYE")])
        write_pcap(os.path.join(spool, minute, "RTP", "call1.pcap"),
                   [(when + 0.02 * i, bytes(200)) for i in range(1, 4000)])
        commands = ManagerCommands(spool)
        self.connect(commands)
        heads: list[Any] = []
        consumer = SlowConsumer(high=1 << 40, keep=True)
        args = f"{minute} call1"
        d = self.channel.requester.request("getcallpcap", args, consumer, heads.append)
        d.addBoth(self.results.append)
        self.channel.run()
        local = commands.run(f"getcallpcap {args}")
        expected = b"".join(local.chunks())
        self.assertGreater(len(expected), 10 * CHUNK)
        self.assertEqual(bytes(consumer.data), expected)
        self.assertEqual(self.results, [len(expected)])
        self.assertEqual((heads[0].size, heads[0].content_type), (len(expected), PCAP))
        self.assertClean()

    def test_a_path_outside_the_spool_is_refused_as_on_the_management_port(self) -> None:
        port = Harness(self)
        self.connect(port.proto.commands)
        for args in ("../../etc/passwd", "/etc/passwd", "d/../../x"):
            d = self.channel.requester.query("getfile", args)
            self.channel.run()
            exc = self.failureResultOf(d, RequestFailed).value
            self.assertTrue(exc.remote)
            port.send(f"getfile {args}\n".encode())
            self.assertEqual(CommandError(exc.code, exc.message).line(), port.output())
            self.assertEqual(exc.code, "refused")
        self.assertClean()


class InterleavingTests(MuxCase):
    def test_cdr_batches_are_acked_between_answer_chunks(self) -> None:
        queue = DurableQueue(os.path.abspath(self.mktemp()), sync=False)
        uplink = CdrUplink(queue, self.clock, batch_records=1, first_batch=1)

        class Central:
            """The central's CDR session, as handlers: ack each batch at once."""

            def __init__(self) -> None:
                self.channel: Any = None
                self.batches = 0

            def on_cdrs(self, payload: bytes) -> None:
                # A CDRS message reaches the session as its bytes (it reads them itself).
                body = parse_json(payload)
                self.batches += 1
                last = body["first"] + len(body["cdrs"]) - 1
                self.channel.central_out.send(M.CDR_ACK, encode_json({"upto": last,
                                                                      "stored": 1}))

        class Sensor:
            def on_cdr_ack(self, body: dict[str, Any]) -> None:
                uplink.on_cdr_ack(body)

        class Transport:
            peer = "central"
            accept_info: dict[str, Any] = {}

            def __init__(self, channel: MemoryChannel) -> None:
                self.channel = channel

            def send_message(self, kind: MessageType, body: bytes) -> None:
                self.channel.sensor_out.send(kind, body)

        central = Central()
        size = 8 * 1024 * 1024
        file = PatternFile(size)
        self.connect(TableCommands(big=lambda args: file.reply()), high=2 * CHUNK,
                     sensor_owners=(Sensor(),), central_owners=(central,))
        central.channel = self.channel
        uplink.attach(Transport(self.channel))
        consumer = self.fetch("big")
        log = self.channel.up.log
        waits: list[int] = []           # answer frames between a CDR queued and its ack
        waiting: list[int] = []
        step = added = 0
        while not self.results:
            if step % 7 == 0:
                added += 1
                uplink.add_raw(b'{"callid":"%d"}' % step)
                uplink.flush()
                waiting.append(len(log))
            before = uplink.delivered
            self.channel.step()
            for _ in range(uplink.delivered - before):
                since = waiting.pop(0)
                waits.append(sum(1 for kind, _ in log[since:] if kind == M.ANSWER))
            step += 1
        self.channel.run()
        self.assertEqual(self.results, [size])
        self.assertEqual(consumer.written, size)
        kinds = self.channel.up.kinds
        self.assertGreater(len(waits), 15)
        # Every CDR was acknowledged within a few frames of being queued, the answer
        # still in full flow: the whole answer is 128 frames.
        self.assertLessEqual(max(waits), 5, waits)
        first, last = kinds.index(M.CDRS), len(kinds) - kinds[::-1].index(M.CDRS)
        self.assertGreater(kinds[first:last].count(M.ANSWER), 100)
        self.assertEqual(uplink.delivered, added)     # the last ones after the answer
        uplink.close()
        self.assertClean()

    def test_concurrent_answers_take_turns(self) -> None:
        a, b = PatternFile(20 * CHUNK), PatternFile(20 * CHUNK)
        self.connect(TableCommands(a=lambda args: a.reply(), b=lambda args: b.reply()),
                     high=CHUNK)
        self.fetch("a")
        self.fetch("b")
        self.channel.run()
        self.assertEqual(self.results, [20 * CHUNK, 20 * CHUNK])
        ids = [ident for kind, ident in self.channel.up.log if kind == M.ANSWER]
        self.assertEqual(sorted(ids), [1] * 20 + [2] * 20)
        switches = sum(1 for one, two in itertools.pairwise(ids) if one != two)
        self.assertGreaterEqual(switches, len(ids) - 5, ids)
        self.assertClean()


class FlowControlTests(MuxCase):
    def test_a_client_that_stops_reading_stops_the_sensors_reads(self) -> None:
        file = PatternFile(64 * 1024 * 1024)
        self.connect(TableCommands(big=lambda args: file.reply()))
        consumer = self.fetch("big", consumer=SlowConsumer(high=256 * 1024, check=file.check))
        self.channel.run()
        self.assertTrue(consumer.paused)
        self.assertLessEqual(consumer.written, consumer.high + CHUNK + WINDOW)
        self.assertLessEqual(file.read, consumer.written + CHUNK)
        self.assertEqual(self.channel.run(), 0)      # nothing more moves
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)                       # a client may read slowly: no timeout
        self.assertEqual(self.results, [])
        while not self.results:
            consumer.consume()
            self.channel.run()
        self.assertEqual(self.results, [file.size])
        self.assertTrue(file.closed)
        self.assertClean()

    def test_memory_stays_bounded_for_a_gigabyte(self) -> None:
        size = 1 << 30
        file = PatternFile(size)
        self.connect(TableCommands(big=lambda args: file.reply()))
        consumer = self.fetch("big", consumer=SlowConsumer(high=256 * 1024, check=file.check))
        self.channel.down.deliver(1)
        stream = self.channel.responder.streams[1]
        bound = WINDOW + consumer.high + self.channel.up.high + 2 * CHUNK
        worst = 0
        while not self.results:
            self.channel.step()
            consumer.consume(48 * 1024)                # slower than the sensor could send
            self.assertLessEqual(stream.held, CHUNK)
            worst = max(worst, file.read - consumer.consumed)
            self.assertLessEqual(file.read - consumer.consumed, bound)
        consumer.consume()
        self.assertEqual(self.results, [size])
        self.assertEqual(consumer.consumed, size)
        self.assertLessEqual(consumer.max_buffered, consumer.high + WINDOW)
        self.assertLessEqual(self.channel.up.max_buffered, self.channel.up.high + CHUNK + 100)
        self.assertEqual(self.channel.sensor_out.counters()["max_queued_bytes"], 0)
        self.assertGreater(worst, WINDOW // 2)        # the window was actually used
        self.assertClean()


class EndingTests(MuxCase):
    def setUp(self) -> None:
        super().setUp()
        self.files: list[PatternFile] = []

        def big(args: str) -> Any:
            self.files.append(PatternFile(10 * 1024 * 1024))
            return self.files[-1].reply()

        self.connect(TableCommands(big=big), limit=2)

    @property
    def file(self) -> PatternFile:
        return self.files[0]

    def test_the_client_goes_away(self) -> None:
        consumer = self.fetch("big", consumer=SlowConsumer(high=1 << 40))
        self.channel.run(limit=5)
        consumer.disconnect()
        self.channel.run()
        self.assertEqual(self.failure().code, "cancelled")
        self.assertTrue(self.file.closed)
        self.assertLess(self.file.read, self.file.size)
        self.assertEqual(self.channel.responder.counters()["cancelled"], 1)
        self.assertClean()

    def test_no_first_answer(self) -> None:
        self.fetch("big")
        self.clock.advance(30)
        self.assertEqual(self.failure().message, "sensor 1 did not answer big within 30 s")
        self.channel.run()        # the REQUEST, its first answer, the CANCEL cross
        self.assertTrue(self.file.closed)
        self.assertGreaterEqual(self.channel.requester.late_frames, 1)
        self.assertClean()

    def test_the_limit(self) -> None:
        self.fetch("big")
        self.fetch("big")
        self.fetch("big")
        self.assertEqual(self.failure().message, "too many requests in flight to sensor 1 "
                                                 "(limit 2)")
        self.channel.run()
        self.assertEqual(self.results[1:], [self.file.size, self.file.size])
        self.fetch("big")
        self.assertEqual(self.channel.requester.in_flight, 1)
        self.channel.run()
        self.assertClean()

    def test_the_sensor_dies_mid_answer(self) -> None:
        consumer = self.fetch("big")
        self.fetch("big")
        self.channel.run(limit=20)
        received = consumer.written
        self.assertGreater(received, 0)
        self.channel.requester.connection_lost("sensor 1 silent for 30 s")
        self.assertEqual([f.value.code for f in self.results], ["channel_lost"] * 2)
        self.assertIn(f"after {received} of {self.file.size} bytes", self.failure(0).message)
        self.assertEqual(consumer.producer, None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.channel.requester.pending, {})

    def test_the_central_dies_mid_request(self) -> None:
        self.fetch("big")
        self.channel.run(limit=10)
        self.assertFalse(self.file.closed)
        self.channel.sensor_out.stopProducing()
        self.channel.responder.connection_lost()
        self.assertTrue(self.file.closed)
        self.assertEqual(self.channel.responder.streams, {})
        self.assertEqual(self.channel.sensor_out.sources, 0)
        self.channel.lose()
        self.assertClean()

    def test_both_learn_of_a_broken_connection(self) -> None:
        self.fetch("big")
        self.channel.run(limit=3)
        self.channel.lose("connection reset")
        self.assertEqual(self.failure().code, "channel_lost")
        self.assertTrue(self.file.closed)
        self.assertClean()


class RefusalTests(MuxCase):
    def test_only_the_authenticated_central_may_ask(self) -> None:
        commands = TableCommands()
        self.connect(commands)
        self.channel.authorised = False
        self.fetch("getversion")
        exc = self.assertRaises(ProtocolError, self.channel.run)
        self.assertIn("not the central this sensor authenticated", str(exc))
        self.assertEqual(commands.calls, [])
        self.channel.lose(str(exc))
        self.assertEqual(self.failure().code, "channel_lost")

    def test_a_sensor_cannot_send_requests_to_the_central(self) -> None:
        self.connect(TableCommands())
        self.channel.sensor_out.send(M.REQUEST, encode_json({"id": 1, "command": "x"}))
        exc = self.assertRaises(ProtocolError, self.channel.run)
        self.assertEqual(str(exc), "a sensor cannot send REQUEST to the central (it goes "
                                   "from the central to the sensor only)")
        self.channel.sensor_out.send(M.ANSWER, answer_head(1, 0, "x", True))
        exc = self.assertRaises(ProtocolError, self.channel.run)
        self.assertIn("ANSWER to request 1, which was never sent", str(exc))
