"""The sensor's responder alone: the management port's registry, answers within credit."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from voipmon.manager.commands import (
    PCAP,
    TEXT,
    CommandError,
    ICommands,
    ManagerCommands,
    Reply,
)
from voipmon.manager.server import MAX_LINE
from voipmon.protocols.rpc.messages import Answer, Cancel, Credit, Request, decode_answer
from voipmon.protocols.rpc.responder import Responder
from voipmon.protocols.scheduler import OutputScheduler
from voipmon.protocols.wire import MessageType, ProtocolError
from voipmon.test.rpc_support import PatternFile, TableCommands
from voipmon.test.test_manager_server import Harness

M = MessageType


class Out:
    """The channel's transport under the scheduler: decodes what the responder sends."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []

    def write(self, kind: MessageType, payload: bytes) -> None:
        assert kind == M.ANSWER, kind
        self.answers.append(decode_answer(kind, payload))

    def take(self) -> list[Answer]:
        answers, self.answers = self.answers, []
        return answers


class ResponderCase(SynchronousTestCase):
    def make(self, commands: Any, **kwargs: Any) -> None:
        self.out = Out()
        self.scheduler = OutputScheduler(self.out.write)
        self.authorised = True
        self.responder = Responder(commands, self.scheduler, lambda: self.authorised,
                                   **kwargs)

    def ask(self, ident: int, command: str, args: str = "", window: int = 1 << 20,
            chunk: int = 65536) -> list[Answer]:
        self.responder.on_request(Request(ident, command, args, window, chunk))
        return self.out.take()

    def body(self, answers: list[Answer]) -> bytes:
        self.assertTrue(answers[0].first and answers[-1].last)
        self.assertEqual(sum(a.last for a in answers), 1)
        return b"".join(a.data for a in answers)


class RegistryTests(ResponderCase):
    """The same ManagerCommands object the management port serves."""

    def setUp(self) -> None:
        self.port = Harness(self)
        self.commands = self.port.proto.commands
        self.make(self.commands)

    def over_the_port(self, line: str) -> bytes:
        self.port.send(line.encode() + b"\n")
        self.port.pump()
        return self.port.output()

    def test_commands(self) -> None:
        answers = self.ask(1, "getversion")
        self.assertEqual(len(answers), 1)
        self.assertEqual((answers[0].size, answers[0].content_type, answers[0].data),
                         (10, TEXT, b"voipmon 1\n"))
        self.assertEqual(self.over_the_port("getversion"), b"OK 10\nvoipmon 1\n")
        answers = self.ask(2, "listcalls")
        self.assertEqual(answers[0].content_type, "application/json")
        self.assertEqual(json.loads(self.body(answers)), [{"callid": "abc@host",
                                                           "caller": "100"}])
        body = self.body(self.ask(3, "getfile", "d/big.bin", chunk=65536))
        with open(self.port.big, "rb") as handle:
            self.assertEqual(body, handle.read())
        self.assertEqual(self.over_the_port("getfile d/big.bin"), b"OK 300000\n" + body)

    def test_refused_exactly_as_on_the_management_port(self) -> None:
        outside = os.path.abspath(self.mktemp())
        os.makedirs(outside)
        with open(os.path.join(outside, "secret"), "wb") as handle:
            handle.write(b"secret")
        os.symlink(outside, os.path.join(self.port.spool, "d", "out"))
        cases = [("getfile", "../../etc/passwd"), ("getfile", "/etc/passwd"),
                 ("getfile", "d/out/secret"), ("getfile", "%2e%2e/etc/passwd"),
                 ("getfile", "d"), ("getfile", "nothere.pcap"), ("getfile", ""),
                 ("file_exists", "../x"), ("getcallpcap", "2023-11-14/22/13 ../../x"),
                 ("getcallpcap", "soon x"), ("getcallpcap", ""), ("nosuch", "x"),
                 ("getfile", "a" * MAX_LINE)]
        for ident, (command, args) in enumerate(cases, 1):
            answers = self.ask(ident, command, args)
            self.assertEqual(len(answers), 1, (command, args))
            answer = answers[0]
            self.assertTrue(answer.first and answer.error and answer.last)
            line = CommandError(answer.code, answer.message).line()
            self.assertEqual(line, self.over_the_port(f"{command} {args}"), (command, args))
            self.assertIn(answer.code, ("refused", "not_found", "usage", "unknown_command",
                                        "too_long"))
        self.assertEqual(self.responder.streams, {})
        self.assertEqual(self.responder.counters()["refused"], len(cases))

    def test_a_request_of_several_lines(self) -> None:
        (answer,) = self.ask(1, "getfile", "d/big.bin\ngetversion")
        self.assertEqual((answer.code, answer.message), ("usage", "a command is one line"))

    def test_a_command_that_crashes(self) -> None:
        def broken(args: str) -> Reply:
            raise RuntimeError("bug")

        self.commands._table["broken"] = (broken, "")
        (answer,) = self.ask(1, "broken", "x")
        self.assertEqual(CommandError(answer.code, answer.message).line(),
                         b"ERR internal command failed; see the log\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class StreamingTests(ResponderCase):
    def setUp(self) -> None:
        self.file = PatternFile(300_000, chunk=16384)
        self.make(TableCommands(big=lambda args: self.file.reply()), max_chunk=16384)

    def test_no_more_than_the_credit_and_one_chunk_read(self) -> None:
        answers = self.ask(1, "big", window=40_000, chunk=16384)
        self.assertEqual([len(a.data) for a in answers], [16384, 16384, 7232])
        self.assertEqual((answers[0].size, answers[0].content_type), (300_000, PCAP))
        self.assertEqual(self.file.read, 3 * 16384)   # the rest of the third chunk is held
        stream = self.responder.streams[1]
        self.assertEqual((stream.sent, stream.held, stream.credit), (40_000, 9152, 0))
        self.responder.on_credit(Credit(1, 10_000))
        self.assertEqual([len(a.data) for a in self.out.take()], [9152, 848])
        self.assertEqual(self.file.read, 4 * 16384)
        self.responder.on_credit(Credit(1, 1 << 30))
        rest = self.out.take()
        self.assertTrue(rest[-1].last)
        self.assertTrue(all(len(a.data) <= 16384 for a in rest))
        self.assertEqual(sum(len(a.data) for a in answers + rest) + 9152 + 848, 300_000)
        self.assertTrue(self.file.closed)
        self.assertEqual(self.responder.streams, {})
        self.responder.on_credit(Credit(1, 100))      # after the end: ignored
        self.assertEqual(self.out.take(), [])

    def test_the_central_chunk_size_wins_when_smaller(self) -> None:
        answers = self.ask(1, "big", window=10_000, chunk=4096)
        self.assertEqual([len(a.data) for a in answers], [4096, 4096, 1808])
        self.assertEqual(self.file.read, 16384)

    def test_a_big_reply_chunk_is_cut(self) -> None:
        self.make(TableCommands(json=lambda args: Reply.of(b"j" * 100_000)))
        answers = self.ask(1, "json", chunk=4096)
        self.assertEqual(len(answers), 25)
        self.assertEqual(self.body(answers), b"j" * 100_000)

    def test_nothing_is_read_while_the_transport_is_paused(self) -> None:
        self.scheduler.pauseProducing()
        self.assertEqual(self.ask(1, "big"), [])
        self.assertEqual(self.file.read, 0)
        self.scheduler.resumeProducing()
        self.assertEqual(len(self.out.take()), 19)

    def test_cancel_closes_the_reader(self) -> None:
        self.ask(1, "big", window=20_000)
        self.responder.on_cancel(Cancel(1, "the client went away"))
        self.assertTrue(self.file.closed)
        self.assertEqual((self.responder.streams, self.scheduler.sources), ({}, 0))
        self.responder.on_credit(Credit(1, 1 << 20))
        self.responder.on_cancel(Cancel(1, "again"))
        self.responder.on_cancel(Cancel(77, "never asked"))
        self.assertEqual(self.out.take(), [])
        self.assertEqual(self.responder.counters()["cancelled"], 1)

    def test_the_channel_closes(self) -> None:
        self.ask(1, "big", window=20_000)
        other = PatternFile(100)
        self.responder.commands.table["small"] = lambda args: other.reply()
        self.scheduler.pauseProducing()
        self.ask(2, "small")
        self.responder.connection_lost()
        self.scheduler.stopProducing()
        self.assertTrue(self.file.closed)
        self.assertEqual(other.opened, 0)              # never read at all
        self.assertEqual(self.responder.streams, {})
        self.ask(3, "big")
        self.assertEqual(self.responder.streams, {})

    def test_limit_on_the_sensor(self) -> None:
        self.make(TableCommands(big=lambda args: PatternFile(1 << 20).reply()),
                  max_requests=2)
        self.ask(1, "big", window=0)
        self.ask(2, "big", window=0)
        (answer,) = self.ask(3, "big")
        self.assertEqual((answer.code, answer.message),
                         ("unavailable", "too many requests in progress on this sensor "
                                         "(limit 2)"))
        # A central that keeps asking while even the refusals cannot go out is broken.
        self.scheduler.pauseProducing()
        self.ask(4, "big")
        self.ask(5, "big")
        exc = self.assertRaises(ProtocolError, self.ask, 6, "big")
        self.assertEqual(str(exc), "more than 4 requests unanswered: the central does not "
                                   "wait for answers")

    def test_refused_requests(self) -> None:
        self.authorised = False
        exc = self.assertRaises(ProtocolError, self.ask, 1, "big")
        self.assertEqual(str(exc), "REQUEST from a peer that is not the central this sensor "
                                   "authenticated on this connection")
        self.assertEqual(self.responder.commands.calls, [])
        self.authorised = True
        self.ask(1, "big", window=0)
        exc = self.assertRaises(ProtocolError, self.ask, 1, "big")
        self.assertIn("REQUEST 1 while request 1 is still being answered", str(exc))


class BrokenReplyTests(ResponderCase):
    def reply(self, size: int, parts: list[Any]) -> Reply:
        def chunks() -> Iterator[bytes]:
            for part in parts:
                if isinstance(part, Exception):
                    raise part
                yield part

        return Reply(size, chunks)

    def check(self, size: int, parts: list[Any], sent: bytes, message: str) -> None:
        self.make(TableCommands(x=lambda args: self.reply(size, parts)))
        answers = self.ask(1, "x")
        self.assertEqual(b"".join(a.data for a in answers[:-1]), sent)
        last = answers[-1]
        self.assertTrue(last.error and last.last)
        self.assertEqual(last.first, len(answers) == 1)
        self.assertEqual(last.code, "internal")
        self.assertEqual(last.message, message)
        self.assertEqual(self.responder.streams, {})

    def test_reading_fails_midway(self) -> None:
        self.check(10, [b"0123", OSError(5, "Input/output error")], b"0123",
                   "reading the answer failed after 4 of 10 bytes (OSError); see the "
                   "sensor's log")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_shorter_or_longer_than_announced(self) -> None:
        self.check(10, [b"0123"], b"0123", "reading the answer failed after 4 of 10 bytes "
                                  "(EOFError); see the sensor's log")
        self.check(3, [b"0123"], b"", "reading the answer failed after 0 of 3 bytes "
                                 "(ValueError); see the sensor's log")
        self.assertEqual(len(self.flushLoggedErrors(EOFError, ValueError)), 2)


class InterfaceTests(SynchronousTestCase):
    def test_manager_commands_is_the_registry_of_both_transports(self) -> None:
        from zope.interface.verify import verifyObject

        commands = ManagerCommands(self.mktemp())
        verifyObject(ICommands, commands)
        self.assertEqual(commands.execute("getversion").size, commands.run("getversion").size)
        self.assertEqual(commands.execute("file_exists", "  x  ").chunks().__next__(),
                         b"not_exists\n")
