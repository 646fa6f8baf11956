"""Tests for voipmon.central.cdrbatch and the CDR session reading batches off the reactor:
read_batch (records, malformed items by field name, malformed messages), the session with
a reader that completes out of order, fails, or outlives the connection (fakes), and the
reactor's thread pool doing the same (loopback)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from voipmon.central.cdrbatch import in_threads, read_batch
from voipmon.central.sessions import CentralSessions
from voipmon.protocols.handshake import Hello
from voipmon.protocols.wire import MessageType, ProtocolError, encode_cdr_batch, parse_json
from voipmon.records.kinds import from_item
from voipmon.store.testing import make_cdr
from voipmon.test.dispatching import to_central
from voipmon.test.fakes import FakeStore
from voipmon.test.fakes_channel import FakeMessageTransport


def hello(id_sensor: int = 7) -> Hello:
    return Hello(id_sensor, "edge-1", "0.1.0", "local", "zstd", 0.0, b"\0" * 32, "ab" * 8)


def batch(first: int, numbers: list[int], id_sensor: int = 7) -> bytes:
    return encode_cdr_batch(first, [make_cdr(n, id_sensor=id_sensor).to_wire()
                                    for n in numbers])


BAD_DURATION = make_cdr(5, id_sensor=7).to_wire().replace(b'"duration":31.25',
                                                          b'"duration":"long"')


class ReadBatchTests(SynchronousTestCase):
    def test_records(self) -> None:
        """Every item comes back as its record, numbered from 'first'."""
        read = read_batch(batch(10, [0, 1, 2]))
        self.assertEqual((read.first, read.last, read.rejected), (10, 12, []))
        self.assertEqual(read.records, [make_cdr(n, id_sensor=7) for n in range(3)])

    def test_malformed_item_named_by_field(self) -> None:
        """A malformed record is refused by field name; the others are read."""
        self.assertNotIn(b'"duration":31.25', BAD_DURATION)
        read = read_batch(encode_cdr_batch(4, [make_cdr(0, id_sensor=7).to_wire(),
                                               BAD_DURATION]))
        self.assertEqual(len(read.records), 1)
        [rejected] = read.rejected
        self.assertEqual(rejected.seq, 5)
        self.assertEqual(rejected.reason, "cdr.duration: expected a number, got 'long'")

    def test_malformed_messages(self) -> None:
        for payload in (b"[]", b'{"first":1,"cdrs":[]}', b'{"first":0,"cdrs":[{}]}',
                        b'{"first":1}', b'{"first":1,"cdrs":[NaN]}', b"{",
                        b'{"first":1e400,"cdrs":[{}]}',
                        b'{"first":1' + b"0" * 30 + b',"cdrs":[{}]}'):
            self.assertRaises(ProtocolError, read_batch, payload)

    def test_lone_surrogate_kept(self) -> None:
        """A Call-ID with bytes that are not UTF-8 travels as lone surrogate escapes:
        orjson refuses them, the standard parser reads them, the record is unchanged."""
        cdr = make_cdr(3, id_sensor=7, callid="abc\udcff\udc80@host")
        self.assertIn(b"\\udcff", cdr.to_wire())
        read = read_batch(encode_cdr_batch(1, [cdr.to_wire()]))
        self.assertEqual(read.records, [cdr])

    def test_parse_json_same_as_standard_library(self) -> None:
        """parse_json (orjson) gives the values the standard library gives."""
        import json

        for text in (batch(1, [0, 1]), b'{"a":[1,2.5,-0.0,null,true,"\\u00e9"],"b":{}}',
                     b'"\\ud83d\\ude00"', b"18446744073709551615"):
            self.assertEqual(parse_json(text), json.loads(text))


class HeldReader:
    """A ``Prepare`` whose reads wait until the test finishes them, in any order."""

    def __init__(self) -> None:
        self.waiting: list[tuple[defer.Deferred, Any, tuple[Any, ...]]] = []

    def __call__(self, function: Any, *args: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.waiting.append((d, function, args))
        return d

    def finish(self, index: int) -> None:
        d, function, args = self.waiting.pop(index)
        try:
            result = function(*args)
        except Exception:
            d.errback(Failure())
        else:
            d.callback(result)


class OffReactorSessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeStore(self.clock)
        self.reader = HeldReader()
        self.sessions = CentralSessions(self.store, self.clock, prepare=self.reader)
        self.channel = FakeMessageTransport()
        self.session = self.sessions.open_session(self.channel, hello())

    def acks(self) -> list[dict]:
        return [body for kind, body in self.channel.take() if kind == MessageType.CDR_ACK]

    def test_read_out_of_order_acked_in_order(self) -> None:
        """The second batch read first waits for the first: acks keep the sensor's order,
        each batch stored once."""
        to_central(self.session, MessageType.CDRS, batch(1, [0, 1]))
        to_central(self.session, MessageType.CDRS, batch(3, [2]))
        self.assertEqual(self.store.calls.count("store_cdrs"), 0)
        self.reader.finish(1)
        self.assertEqual(self.acks(), [])       # batch 2 stored, its ack waits for batch 1
        self.reader.finish(0)
        self.assertEqual(self.acks(), [{"upto": 2, "stored": 2}, {"upto": 3, "stored": 1}])
        self.assertEqual(len(self.store.cdrs), 3)
        self.assertEqual(self.session.counters()["received"], 3)

    def test_malformed_record_is_a_dead_letter(self) -> None:
        """A malformed record read in the pool is refused by field name, kept as a dead
        letter, never stored; the batch is acknowledged."""
        to_central(self.session, MessageType.CDRS,
                   encode_cdr_batch(1, [make_cdr(0, id_sensor=7).to_wire(), BAD_DURATION]))
        self.reader.finish(0)
        self.assertEqual(self.acks(), [{"upto": 2, "stored": 1}])
        self.assertEqual(len(self.store.cdrs), 1)
        self.assertEqual(self.sessions.dead_letters.for_sensor(7), 1)
        self.assertEqual(self.session.rejected, 1)

    def test_malformed_message_fails_the_channel(self) -> None:
        """A CDRS message found malformed in the pool closes the channel with the reason;
        nothing is stored or acknowledged."""
        to_central(self.session, MessageType.CDRS, b'{"first":1,"cdrs":[]}')
        self.assertFalse(self.channel.closed)
        self.reader.finish(0)
        self.assertTrue(self.channel.closed)
        self.assertIn("malformed CDRS message", self.channel.failed)
        self.assertEqual(self.acks(), [])
        self.assertEqual(self.session.counters()["pending_batches"], 0)

    def test_connection_lost_while_reading(self) -> None:
        """A read that completes after the sensor went stores and sends nothing."""
        to_central(self.session, MessageType.CDRS, batch(1, [0]))
        self.session.connectionLost(Failure(Exception("gone")))
        self.reader.finish(0)
        self.assertEqual(self.store.calls.count("store_cdrs"), 0)
        self.assertEqual(self.acks(), [])

    def test_window_counts_batches_being_read(self) -> None:
        """Batches still being read count against the unacknowledged limit (memory)."""
        from voipmon.central.sessions import MAX_PENDING_BATCHES

        for i in range(MAX_PENDING_BATCHES):
            to_central(self.session, MessageType.CDRS, batch(i + 1, [i]))
        self.assertRaises(ProtocolError, to_central, self.session, MessageType.CDRS,
                          batch(99, [99]))


class ThreadPoolTests(TestCase):
    """The same path on the real reactor: batches read in its thread pool."""

    @defer.inlineCallbacks
    def test_read_in_threads(self) -> None:
        prepare = in_threads(reactor)
        payload = batch(1, list(range(50)))
        read = yield prepare(read_batch, payload)
        self.assertEqual(read.records, [from_item(x) for x in
                                        parse_json(payload)["cdrs"]])
        with self.assertRaises(ProtocolError):
            yield prepare(read_batch, b"[]")

    @defer.inlineCallbacks
    def test_session_in_threads(self) -> None:
        """Three batches read in the pool: stored once each, acknowledged in order."""
        store = FakeStore(reactor)
        sessions = CentralSessions(store, reactor, prepare=in_threads(reactor))
        channel = AckWaiter(3)
        session = sessions.open_session(channel, hello())
        for first in (1, 201, 401):
            to_central(session, MessageType.CDRS, batch(first, list(range(first, first + 200))))
        yield channel.done
        acks = [body for kind, body in channel.sent if kind == MessageType.CDR_ACK]
        self.assertEqual(acks, [{"upto": 200, "stored": 200}, {"upto": 400, "stored": 200},
                                {"upto": 600, "stored": 200}])
        self.assertEqual(len(store.cdrs), 600)
        sessions.stop()


class AckWaiter(FakeMessageTransport):
    """Fires ``done`` when ``count`` CDR_ACKs were sent."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.done: defer.Deferred = defer.Deferred()

    def send_message(self, kind: Any, body: Any) -> None:
        super().send_message(kind, body)
        if kind == MessageType.CDR_ACK and not self.done.called and len(
                [k for k, _ in self.sent if k == MessageType.CDR_ACK]) == self.count:
            self.done.callback(None)
