"""The central's requester alone: the sensor's answers are written by hand."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.internet.interfaces import IPushProducer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from voipmon.counters import nested
from voipmon.protocols.rpc.messages import (
    Request,
    answer_data_head,
    answer_error,
    answer_head,
    decode_answer,
    decode_cancel,
    decode_credit,
    decode_request,
)
from voipmon.protocols.rpc.requester import Requester, RequestFailed
from voipmon.protocols.wire import MessageType, ProtocolError
from voipmon.test.rpc_support import RequestResults, SlowConsumer

M = MessageType


class Sent:
    """The channel as the requester sees it: records what it sends."""

    def __init__(self) -> None:
        self.frames: list[tuple[MessageType, bytes]] = []

    def send_message(self, kind: MessageType, body: bytes) -> None:
        self.frames.append((kind, body))

    def take(self, kind: MessageType) -> list[Any]:
        decode = {M.REQUEST: decode_request, M.CREDIT: decode_credit,
                  M.CANCEL: decode_cancel}[kind]
        found = [decode(k, body) for k, body in self.frames if k == kind]
        self.frames = [(k, body) for k, body in self.frames if k != kind]
        return found


def first(ident: int, size: int, data: bytes = b"", last: bool = False,
          content_type: str = "application/vnd.tcpdump.pcap") -> Any:
    return decode_answer(M.ANSWER, answer_head(ident, size, content_type, last) + data)


def more(ident: int, data: bytes, last: bool = False) -> Any:
    return decode_answer(M.ANSWER, answer_data_head(ident, last) + data)


def error(ident: int, code: str, message: str, first: bool = True) -> Any:
    return decode_answer(M.ANSWER, answer_error(ident, code, message, first))


class RequesterCase(RequestResults, SynchronousTestCase):
    window = 16 * 1024
    chunk = 4096

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.sent = Sent()
        self.requester = Requester(self.sent, self.clock, "sensor 1", limit=3, timeout=30.0,
                                   window=self.window, chunk=self.chunk)
        self.results: list[Any] = []

    def start(self, command: str = "getfile", args: str = "a.pcap",
              consumer: Any = None, on_head: Any = None) -> SlowConsumer:
        return self.start_request(self.requester, command, args, consumer, on_head)

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])


class StreamingTests(RequesterCase):
    def test_request_and_answer(self) -> None:
        order: list[str] = []
        consumer = self.start(on_head=lambda head: order.append(f"head {head.size}"))
        self.assertEqual(self.sent.take(M.REQUEST),
                         [Request(1, "getfile", "a.pcap", self.window, self.chunk)])
        verifyObject(IPushProducer, consumer.producer)
        self.assertTrue(consumer.streaming)
        self.requester.on_answer(first(1, 10, b"0123"))
        self.assertEqual((order, bytes(consumer.data)), (["head 10"], b"0123"))
        self.assertEqual(self.results, [])
        self.requester.on_answer(more(1, b"456789", last=True))
        self.assertEqual(self.results, [10])
        self.assertEqual(bytes(consumer.data), b"0123456789")
        self.assertEqual((consumer.producer, consumer.unregistered), (None, 1))
        self.assertEqual(self.requester.in_flight, 0)
        self.start()
        self.assertEqual(self.sent.take(M.REQUEST)[0].id, 2)
        self.requester.connection_lost("test over")

    def test_empty_body(self) -> None:
        self.start()
        self.requester.on_answer(first(1, 0, last=True, content_type="text/plain"))
        self.assertEqual(self.results, [0])

    def test_credit_follows_the_consumer(self) -> None:
        consumer = self.start(consumer=SlowConsumer(high=8192))
        size = 100_000
        self.requester.on_answer(first(1, size, b"x" * 4096))
        # A quarter window taken: a quarter window granted.
        self.assertEqual(self.sent.take(M.CREDIT), [(1, 4096)])
        self.requester.on_answer(more(1, b"x" * 4096))
        self.requester.on_answer(more(1, b"x" * 4096))   # 12 KiB buffered: paused
        self.assertTrue(consumer.paused)
        self.assertEqual(self.sent.take(M.CREDIT), [(1, 4096)])
        self.requester.on_answer(more(1, b"x" * 4096))
        self.assertEqual(self.sent.take(M.CREDIT), [])   # nothing while paused
        consumer.consume()                                # the client reads: resumed
        self.assertEqual(self.sent.take(M.CREDIT), [(1, 8192)])
        consumer.high = 1 << 30
        received = 16384
        granted = self.window + 4096 + 4096 + 8192
        while received < size:
            data = min(4096, size - received, granted - received)
            self.requester.on_answer(more(1, b"x" * data, last=received + data == size))
            received += data
            granted += sum(c.bytes for c in self.sent.take(M.CREDIT))
            self.assertLessEqual(received, granted)
        self.assertEqual(granted, size)                   # never more than the body
        self.assertEqual(self.results, [size])

    def test_a_consumer_without_flow_control(self) -> None:
        parts: list[bytes] = []

        class Writer:
            write = parts.append

        self.requester.request("getfile", "a", Writer()).addBoth(self.results.append)
        self.requester.on_answer(first(1, 100_000, b"y" * 4096))
        self.assertEqual(self.sent.take(M.CREDIT), [(1, 4096)])
        self.requester.on_answer(more(1, b"y" * 4096))
        self.assertEqual(self.sent.take(M.CREDIT), [(1, 4096)])
        self.requester.connection_lost("test over")

    def test_no_credit_beyond_the_body(self) -> None:
        self.start()
        self.requester.on_answer(first(1, 20_000, b"y" * 4096))
        self.assertEqual(self.sent.take(M.CREDIT), [(1, 20_000 - self.window)])
        self.requester.on_answer(more(1, b"y" * 4096))
        self.assertEqual(self.sent.take(M.CREDIT), [])
        self.requester.connection_lost("test over")

    def test_query(self) -> None:
        d = self.requester.query("listcalls")
        self.requester.on_answer(first(1, 3, b"[]\n", last=True))
        self.assertEqual(self.successResultOf(d), b"[]\n")
        d = self.requester.query("getfile", "big", limit=100)
        self.requester.on_answer(first(2, 101, b"z"))
        exc = self.failureResultOf(d, RequestFailed).value
        self.assertEqual((exc.code, exc.message), ("too_large", "the answer to getfile from "
                         "sensor 1 is 101 bytes, over the 100-byte limit"))
        self.assertEqual(self.sent.take(M.CANCEL)[0].id, 2)


class ErrorTests(RequesterCase):
    def test_the_sensor_refuses(self) -> None:
        consumer = self.start()
        self.requester.on_answer(error(1, "refused", "'../x' is outside the spool"))
        exc = self.failure()
        self.assertEqual((exc.code, exc.message, exc.remote),
                         ("refused", "'../x' is outside the spool", True))
        self.assertEqual(self.sent.take(M.CANCEL), [])   # the sensor ended it itself
        self.assertEqual(consumer.producer, None)

    def test_the_sensor_fails_midway(self) -> None:
        self.start()
        self.requester.on_answer(first(1, 10, b"0123"))
        self.requester.on_answer(error(1, "internal", "reading failed", first=False))
        self.assertEqual(self.failure().message, "sensor 1 failed while answering getfile "
                                                 "after 4 of 10 bytes: reading failed")

    def test_answers_that_break_the_protocol(self) -> None:
        # Each closes the channel (ProtocolError): every case on a fresh requester.
        cases = [
            ([], more(1, b"x"), "ANSWER data to request 1 before its first chunk"),
            ([], first(9, 1), "ANSWER to request 9, which was never sent"),
            ([], first(1, 5, b"0123456"), "ANSWER to request 1 longer than the 5 bytes"),
            ([first(1, 100_000)], first(1, 1), "a second first ANSWER to request 1"),
            ([first(1, 100_000)], more(1, b"x" * 20_000),
             "20000 bytes of ANSWER to request 1 beyond the credit granted (16384 left)"),
            ([first(1, 100_000, b"x" * 4096)], more(1, b"x", last=True),
             "ANSWER to request 1 ended after 4097 of the 100000 bytes announced"),
        ]
        for before, answer, reason in cases:
            self.setUp()
            self.start()
            for frame in before:
                self.requester.on_answer(frame)
            exc = self.assertRaises(ProtocolError, self.requester.on_answer, answer)
            self.assertIn(reason, str(exc))
            self.requester.connection_lost("closed for the protocol error")
            self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_on_head_failure(self) -> None:
        def on_head(head: Any) -> None:
            raise KeyError("boom")

        self.start(on_head=on_head)
        self.requester.on_answer(first(1, 10, b"0123"))
        self.assertEqual(self.failure().code, "internal")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual(self.sent.take(M.CANCEL)[0].id, 1)

    def test_a_consumer_that_already_has_a_producer(self) -> None:
        consumer = SlowConsumer()

        def busy(producer: Any, streaming: bool) -> None:
            raise ValueError("registering producer before previous one was unregistered")

        consumer.registerProducer = busy
        self.assertRaises(ValueError, self.requester.request, "getfile", "a", consumer)
        self.assertEqual((self.sent.frames, self.requester.pending), ([], {}))

    def test_unsupported(self) -> None:
        old = Requester(self.sent, self.clock, "sensor 4", supported=False)
        exc = self.failureResultOf(old.request("listcalls"), RequestFailed).value
        self.assertEqual(exc.code, "unsupported")
        self.assertIn("sensor 4 does not take requests over its channel", exc.message)
        self.assertEqual(self.sent.frames, [])

    def test_bad_settings(self) -> None:
        self.assertRaises(ValueError, Requester, self.sent, self.clock, "s", chunk=100)
        self.assertRaises(ValueError, Requester, self.sent, self.clock, "s", window=2048,
                          chunk=4096)


class TimeoutTests(RequesterCase):
    def test_no_first_answer(self) -> None:
        self.start("getversion", "")
        self.clock.advance(29.9)
        self.assertEqual(self.results, [])
        self.clock.advance(0.1)
        exc = self.failure()
        self.assertEqual((exc.code, exc.message),
                         ("timeout", "sensor 1 did not answer getversion within 30 s"))
        self.assertEqual(self.sent.take(M.CANCEL),
                         [(1, "sensor 1 did not answer getversion within 30 s")])
        # Its answer may still be on its way: ignored, counted.
        self.requester.on_answer(first(1, 3, b"v1\n", last=True))
        self.assertEqual(self.requester.late_frames, 1)

    def test_data_owed_stops_coming(self) -> None:
        self.start()
        self.requester.on_answer(first(1, 100, b"0123"))
        self.clock.advance(20)
        self.requester.on_answer(more(1, b"4567"))       # progress restarts the wait
        self.clock.advance(29)
        self.assertEqual(self.results, [])
        self.clock.advance(1)
        self.assertEqual(self.failure().message, "sensor 1 stopped sending getfile for 30 s "
                                                 "after 8 of 100 bytes")

    def test_no_timer_while_the_client_holds_the_answer(self) -> None:
        # Window used up and the client not reading: the sensor owes nothing, no timeout.
        consumer = self.start(consumer=SlowConsumer(high=1024))
        self.requester.on_answer(first(1, 100_000, b"x" * 4096))
        for _ in range(3):
            self.requester.on_answer(more(1, b"x" * 4096))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertEqual(self.results, [])
        consumer.consume()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(30)
        self.assertEqual(self.failure().code, "timeout")


class LimitCancelLossTests(RequesterCase):
    def test_limit(self) -> None:
        for _ in range(3):
            self.start()
        self.start()
        exc = self.failure()
        self.assertEqual((exc.code, exc.message),
                         ("too_many_requests", "too many requests in flight to sensor 1 "
                                               "(limit 3)"))
        self.assertEqual(len(self.sent.take(M.REQUEST)), 3)
        self.requester.on_answer(first(2, 0, last=True))
        self.start()
        self.assertEqual([r.id for r in self.sent.take(M.REQUEST)], [4])
        self.assertEqual(nested(self.requester.counters())["failed"], {"too_many_requests": 1})
        self.requester.connection_lost("test over")

    def test_the_client_goes_away(self) -> None:
        consumer = self.start()
        self.requester.on_answer(first(1, 100, b"0123"))
        consumer.disconnect()
        exc = self.failure()
        self.assertEqual((exc.code, exc.message),
                         ("cancelled", "getfile from sensor 1 cancelled: the client went away"))
        self.assertEqual(self.sent.take(M.CANCEL)[0].id, 1)
        self.assertEqual(consumer.unregistered, 0)        # gone: not called again
        self.requester.on_answer(more(1, b"4567"))       # already on its way: ignored
        self.assertEqual(bytes(consumer.data), b"0123")

    def test_the_caller_cancels(self) -> None:
        consumer = SlowConsumer()
        d = self.requester.request("listcalls", "", consumer)
        d.cancel()
        exc = self.failureResultOf(d, RequestFailed).value
        self.assertEqual(exc.code, "cancelled")
        self.assertEqual(self.sent.take(M.CANCEL)[0].id, 1)
        self.assertEqual(consumer.unregistered, 1)

    def test_a_web_request_whose_client_left(self) -> None:
        # twisted.web's Request: its client gone, notifyFinish fails (the web layer cancels
        # the request) and unregisterProducer has no channel left to call.
        from twisted.web.http import Request
        from twisted.web.test.requesthelper import DummyChannel

        web = Request(DummyChannel())
        d = self.requester.request("getfile", "a.pcap", web)
        self.assertIs(web.producer.consumer, web)
        web.notifyFinish().addErrback(lambda _: d.cancel())
        self.requester.on_answer(first(1, 100, b"0123"))
        web.connectionLost(Exception("client went away"))
        self.assertEqual(self.failureResultOf(d, RequestFailed).value.code, "cancelled")
        self.assertEqual(self.sent.take(M.CANCEL)[0].id, 1)
        self.assertEqual(self.requester.pending, {})

    def test_the_channel_closes(self) -> None:
        first_consumer = self.start()
        self.start("listcalls", "")
        self.requester.on_answer(first(1, 100, b"0123"))
        self.requester.connection_lost("sensor silent for 30 s")
        self.assertEqual([f.value.message for f in self.results], [
            "the channel to sensor 1 closed after 4 of 100 bytes of getfile (sensor silent "
            "for 30 s)",
            "the channel to sensor 1 closed before it answered listcalls (sensor silent for "
            "30 s)"])
        self.assertEqual({f.value.code for f in self.results}, {"channel_lost"})
        self.assertEqual(self.sent.take(M.CANCEL), [])
        self.assertEqual(first_consumer.producer, None)
        self.start()
        self.assertEqual(self.failure().message,
                         "sensor 1 is not connected (sensor silent for 30 s)")
