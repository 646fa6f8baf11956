"""Random interleavings of requests, frames in either direction, slow and vanishing clients,
cancels, timeouts, records and a lost connection never break the request protocol's rules:
data only within credit, at most one chunk held by the sensor, at most the window beyond
the client's buffer on the central, every request ends exactly once with the right bytes
or a reason, and nothing is left behind."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from voipmon.protocols.rpc.requester import RequestFailed
from voipmon.protocols.wire import MessageType, encode_json
from voipmon.test.rpc_support import MemoryChannel, PatternFile, SlowConsumer, TableCommands

WINDOW = 8192
CHUNK = 1024
READ = 1500          # the sensor reads in pieces that do not match the frames
HIGH = 4096          # the client's buffer

operation = st.one_of(
    st.tuples(st.just("request"), st.integers(0, 40_000)),
    st.tuples(st.just("up"), st.integers(1, 6)),
    st.tuples(st.just("down"), st.integers(1, 6)),
    st.tuples(st.just("up"), st.integers(1, 6)),
    st.tuples(st.just("down"), st.integers(1, 6)),
    st.tuples(st.just("consume"), st.integers(0, 7), st.integers(1, 20_000)),
    st.tuples(st.just("consume"), st.integers(0, 7), st.integers(1, 20_000)),
    st.tuples(st.just("disconnect"), st.integers(0, 7)),
    st.tuples(st.just("cancel"), st.integers(0, 7)),
    st.tuples(st.just("advance"), st.floats(0, 40)),
    st.tuples(st.just("record")),
)


class Stats:
    """The central's handler of the sensor's records (they share the channel)."""

    def __init__(self) -> None:
        self.received = 0

    def on_stats(self, body: dict[str, Any]) -> None:
        self.received += 1


class Fetch:
    def __init__(self, size: int) -> None:
        self.size = size
        self.file: PatternFile | None = None
        self.wrong: list[int] = []
        self.consumer = SlowConsumer(high=HIGH, check=self.check)
        self.results: list[Any] = []
        self.deferred: Any = None

    def check(self, offset: int, data: bytes) -> None:
        if self.file is None or data != self.file.expected(offset, len(data)):
            self.wrong.append(offset)


class Scenario:
    def __init__(self, case: SynchronousTestCase, max_requests: int) -> None:
        self.case = case
        self.clock = task.Clock()
        self.fetches: list[Fetch] = []
        self.by_command: dict[str, Fetch] = {}
        self.stats = Stats()
        self.channel = MemoryChannel(TableCommands(), self.clock, window=WINDOW, chunk=CHUNK,
                                     limit=3, timeout=30.0, high=2 * CHUNK,
                                     max_requests=max_requests,
                                     central_owners=(self.stats,))
        self.records = 0
        self.lost = False
        # Paused calls: the credit they had when last seen paused, and how often resumed.
        self.held_back: dict[int, tuple[int, int]] = {}

    def open(self, name: str) -> Any:
        fetch = self.by_command[name]
        fetch.file = PatternFile(fetch.size, chunk=READ)
        return fetch.file.reply()

    def apply(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        channel = self.channel
        if kind == "request":
            fetch = Fetch(op[1])
            name = f"f{len(self.fetches)}"
            self.by_command[name] = fetch
            channel.responder.commands.table[name] = lambda args, n=name: self.open(n)
            self.fetches.append(fetch)
            fetch.deferred = channel.requester.request(name, "", fetch.consumer)
            fetch.deferred.addBoth(fetch.results.append)
        elif kind == "up":
            channel.up.deliver(op[1])
        elif kind == "down":
            channel.down.deliver(op[1])
        elif kind == "consume" and self.fetches:
            self.fetches[op[1] % len(self.fetches)].consumer.consume(op[2])
        elif kind == "disconnect" and self.fetches:
            self.fetches[op[1] % len(self.fetches)].consumer.disconnect()
        elif kind == "cancel" and self.fetches:
            self.fetches[op[1] % len(self.fetches)].deferred.cancel()
        elif kind == "advance":
            self.clock.advance(op[1])
        elif kind == "record":
            self.records += 1
            channel.sensor_out.send(MessageType.STATS, encode_json({"n": self.records}))
        elif kind == "lose":
            channel.lose("connection reset")
            self.lost = True

    def check(self) -> None:
        case = self.case
        channel = self.channel
        requester, responder = channel.requester, channel.responder
        held_back = {}
        for ident, call in requester.pending.items():
            case.assertLessEqual(call.received, call.granted)
            case.assertLessEqual(call.granted - call.received, WINDOW)
            case.assertLessEqual(call.consumer.buffered, HIGH + WINDOW)
            if call.consumer.paused:
                # No credit at all while the client is not reading.
                now = (call.granted, call.consumer.resumed)
                before = self.held_back.get(ident, now)
                if before[1] == now[1]:
                    case.assertEqual(now[0], before[0])
                held_back[ident] = now
            stream = responder.streams.get(ident)
            if stream is not None:
                # The sensor never sends beyond the credit the central granted.
                case.assertLessEqual(stream.sent, call.granted)
        self.held_back = held_back
        for ident, stream in responder.streams.items():
            case.assertLessEqual(ident, requester._last_id)
            case.assertLessEqual(stream.held, READ)
            file = self.by_command[stream.command].file
            if stream.reply is not None:  # not refused: read only what it sent, and held
                case.assertEqual(file.read, stream.sent + stream.held)
        readers = [s for s in responder.streams.values() if s.reply is not None]
        case.assertLessEqual(len(readers), responder.max_requests)
        for fetch in self.fetches:
            case.assertEqual(fetch.wrong, [])
            case.assertLessEqual(len(fetch.results), 1)
            case.assertLessEqual(fetch.consumer.written, fetch.size)

    def finish(self) -> None:
        """Let everything run out, then check each request ended once, rightly."""
        case = self.case
        channel = self.channel
        if not self.lost:
            for _ in range(100_000):
                for fetch in self.fetches:
                    fetch.consumer.consume()
                if not channel.run():
                    break
                self.check()
            self.clock.advance(31)
            case.assertEqual(self.stats.received, self.records)
        for fetch in self.fetches:
            case.assertEqual(len(fetch.results), 1)
            result = fetch.results[0]
            if isinstance(result, int):
                case.assertEqual(result, fetch.size)
                case.assertEqual(fetch.consumer.written, fetch.size)
            else:
                failure = result.trap(RequestFailed)
                case.assertTrue(failure)
                code = result.value.code
                allowed = {"cancelled", "timeout", "too_many_requests", "unavailable"}
                if self.lost:
                    allowed.add("channel_lost")
                case.assertIn(code, allowed, result.value.message)
            if fetch.file is not None and fetch.file.opened:
                case.assertTrue(fetch.file.closed)
            case.assertIsNone(fetch.consumer.producer)
        case.assertEqual(self.clock.getDelayedCalls(), [])
        case.assertEqual(channel.requester.pending, {})
        case.assertEqual(channel.responder.streams, {})
        case.assertEqual(channel.sensor_out.sources, 0)


class InterleavingProperty(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.just("request"), st.integers(0, 40_000)), min_size=1,
                    max_size=4),
           st.lists(operation, min_size=10, max_size=80), st.sampled_from([2, 16]),
           st.one_of(st.none(), st.integers(0, 100)))
    def test_invariants(self, requests: list[tuple[Any, ...]],
                        operations: list[tuple[Any, ...]], max_requests: int,
                        lose_at: int | None) -> None:
        scenario = Scenario(self, max_requests)
        operations = requests + operations
        if lose_at is not None and lose_at < len(operations):
            operations.insert(lose_at, ("lose",))
        for op in operations:
            scenario.apply(op)
            scenario.check()
            if scenario.lost:
                break
        scenario.finish()
