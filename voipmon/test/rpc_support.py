"""In-memory channel ends for the request protocol: no sockets, no reactor.

``MemoryChannel`` joins a central's ``Requester`` and a sensor's ``Responder`` the way the
channel will: each end has its ``OutputScheduler`` (registered as the producer of its
outgoing ``Wire``) and its ``Dispatcher``; frames are encoded with ``wire.encode_frame``
and parsed back with a ``FrameDecoder``. A ``Wire`` is one direction of a TCP connection
whose buffer pauses the writer above ``high`` bytes and resumes it once drained to
``high // 2``; frames move only when a test (or the benchmark) delivers them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from voipmon.manager.commands import E_UNKNOWN, PCAP, CommandError, ICommands, Reply
from voipmon.protocols.capabilities import SUPPORTED, Capabilities
from voipmon.protocols.dispatch import CENTRAL, SENSOR, Dispatcher
from voipmon.protocols.rpc.messages import CHUNK, WINDOW
from voipmon.protocols.rpc.requester import Requester, RequestFailed
from voipmon.protocols.rpc.responder import Responder
from voipmon.protocols.scheduler import OutputScheduler
from voipmon.protocols.wire import MAX_FRAME, FrameDecoder, MessageType, encode_frame


class Wire:
    """One direction: frames in order, with a TCP-like buffer limit."""

    def __init__(self, high: int | None = None) -> None:
        self.high = high
        self.frames: deque[bytes] = deque()
        self.buffered = 0
        self.max_buffered = 0
        self.producer: Any = None
        self.paused = False
        self.receive: Callable[[bytes], None] = lambda data: None
        self.kinds: list[MessageType] = []    # every frame written, in order
        self.log: list[tuple[MessageType, int]] = []  # delivered: type, and ANSWER's id
        self.closed = False

    def write(self, kind: MessageType, payload: bytes) -> None:
        if self.closed:
            return
        frame = encode_frame(kind, payload)
        self.frames.append(frame)
        self.kinds.append(kind)
        self.buffered += len(frame)
        self.max_buffered = max(self.max_buffered, self.buffered)
        if (self.high is not None and self.buffered > self.high and not self.paused
                and self.producer is not None):
            self.paused = True
            self.producer.pauseProducing()

    def deliver(self, count: int | None = None) -> int:
        """Hand up to ``count`` frames (all: None) to the receiver; how many went."""
        moved = 0
        while self.frames and (count is None or moved < count) and not self.closed:
            frame = self.frames.popleft()
            self.buffered -= len(frame)
            moved += 1
            kind = MessageType(frame[4])
            self.log.append((kind, int.from_bytes(frame[6:10], "big")
                             if kind == MessageType.ANSWER else 0))
            self.receive(frame)
            if self.paused and self.buffered <= (self.high or 0) // 2:
                self.paused = False
                self.producer.resumeProducing()
        return moved


class _Sender:
    """The channel's send_message as the requester uses it (payloads already encoded)."""

    def __init__(self, scheduler: OutputScheduler) -> None:
        self.scheduler = scheduler

    def send_message(self, kind: MessageType, body: bytes) -> None:
        self.scheduler.send(kind, body)


class MemoryChannel:
    """A central and a sensor joined by two Wires; ``run`` moves frames until quiet."""

    def __init__(self, commands: Any, clock: Any, *, window: int = WINDOW,
                 chunk: int = CHUNK, limit: int = 8, timeout: float = 30.0,
                 high: int | None = 256 * 1024, max_requests: int = 16,
                 sensor_owners: tuple[object, ...] = (),
                 central_owners: tuple[object, ...] = ()) -> None:
        self.authorised = True
        self.up = Wire(high)        # sensor -> central
        self.down = Wire(high)      # central -> sensor
        self.sensor_out = OutputScheduler(self.up.write)
        self.central_out = OutputScheduler(self.down.write)
        self.up.producer = self.sensor_out
        self.down.producer = self.central_out
        self.requester = Requester(_Sender(self.central_out), clock, "sensor 1", limit=limit,
                                   timeout=timeout, window=window, chunk=chunk)
        self.responder = Responder(commands, self.sensor_out, lambda: self.authorised,
                                   max_requests=max_requests)
        agreed = Capabilities(SUPPORTED).negotiate(Capabilities(SUPPORTED))
        self.central = Dispatcher(CENTRAL, self.requester, *central_owners, agreed=agreed)
        self.sensor = Dispatcher(SENSOR, self.responder, *sensor_owners, agreed=agreed)
        self.up.receive = self._feeder(self.central)
        self.down.receive = self._feeder(self.sensor)

    @staticmethod
    def _feeder(dispatcher: Dispatcher) -> Callable[[bytes], None]:
        decoder = FrameDecoder(MAX_FRAME)

        def receive(data: bytes) -> None:
            for frame in decoder.feed(data):
                dispatcher.dispatch(frame.kind, frame.payload)

        return receive

    def step(self) -> int:
        """One frame each way; how many moved."""
        return self.up.deliver(1) + self.down.deliver(1)

    def run(self, limit: int | None = None) -> int:
        """Deliver frames both ways until none is left (or ``limit`` steps)."""
        moved = steps = 0
        while limit is None or steps < limit:
            now = self.step()
            if not now:
                break
            moved += now
            steps += 1
        return moved

    def lose(self, reason: str = "connection lost") -> None:
        """The connection breaks: both ends learn it, nothing more moves."""
        self.up.closed = self.down.closed = True
        self.sensor_out.stopProducing()
        self.central_out.stopProducing()
        self.requester.connection_lost(reason)
        self.responder.connection_lost()


@implementer(IConsumer)
class SlowConsumer:
    """An HTTP response stand-in: pauses its producer above ``high`` buffered bytes and
    resumes it at ``high // 2``; ``consume`` is the client reading."""

    def __init__(self, high: int = 256 * 1024, keep: bool = False,
                 check: Callable[[int, bytes], None] | None = None) -> None:
        self.high = high
        self.keep = keep
        self.check = check
        self.data = bytearray()
        self.producer: Any = None
        self.streaming: bool | None = None
        self.paused = False
        self.written = self.consumed = self.buffered = self.max_buffered = 0
        self.unregistered = 0
        self.resumed = 0

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.streaming = streaming

    def unregisterProducer(self) -> None:
        self.producer = None
        self.unregistered += 1

    def write(self, data: bytes) -> None:
        if self.check is not None:
            self.check(self.written, data)
        if self.keep:
            self.data += data
        self.written += len(data)
        self.buffered += len(data)
        self.max_buffered = max(self.max_buffered, self.buffered)
        if self.buffered > self.high and not self.paused and self.producer is not None:
            self.paused = True
            self.producer.pauseProducing()

    def consume(self, amount: int | None = None) -> None:
        taken = self.buffered if amount is None else min(amount, self.buffered)
        self.buffered -= taken
        self.consumed += taken
        if self.paused and self.buffered <= self.high // 2:
            self.paused = False
            self.resumed += 1
            if self.producer is not None:
                self.producer.resumeProducing()

    def disconnect(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()


PERIOD = 251   # a prime: a chunk out of place never matches


class PatternFile:
    """A body of ``size`` bytes read ``chunk`` bytes at a time, counting what was read and
    whether the reader was closed (as a spool file's reader is)."""

    def __init__(self, size: int, chunk: int = CHUNK) -> None:
        self.size = size
        self.chunk = chunk
        self.read = 0
        self.closed = False
        self.opened = 0
        self._block = bytes(i % PERIOD for i in range(chunk + PERIOD))

    def expected(self, offset: int, length: int) -> bytes:
        start = offset % PERIOD
        if length <= self.chunk:
            return self._block[start:start + length]
        return b"".join(self.expected(offset + done, min(self.chunk, length - done))
                        for done in range(0, length, self.chunk))

    def check(self, offset: int, data: bytes) -> None:
        if data != self.expected(offset, len(data)):
            raise AssertionError(f"wrong bytes at offset {offset}")

    def reply(self) -> Reply:
        def chunks() -> Iterator[bytes]:
            self.opened += 1
            try:
                while self.read < self.size:
                    length = min(self.chunk, self.size - self.read)
                    data = self.expected(self.read, length)
                    self.read += length
                    yield data
            finally:
                self.closed = True

        return Reply(self.size, chunks, PCAP)


@implementer(ICommands)
class TableCommands:
    """An ICommands of a few commands: ``name -> callable(args) -> Reply``."""

    def __init__(self, **table: Callable[[str], Reply]) -> None:
        self.table = table
        self.calls: list[tuple[str, str]] = []

    def run(self, line: str) -> Reply:
        name, _, args = line.strip().partition(" ")
        return self.execute(name, args)

    def execute(self, name: str, args: str = "") -> Reply:
        self.calls.append((name, args))
        if name not in self.table:
            raise CommandError(E_UNKNOWN, f"{name!r}; 'help' lists the commands")
        return self.table[name](args.strip())


class RequestResults:
    """A test case's requests; each outcome (a size or a Failure) lands in ``results``."""

    results: list[Any]

    def start_request(self, requester: Requester, command: str, args: str = "",
                      consumer: Any = None, on_head: Any = None) -> Any:
        consumer = consumer if consumer is not None else SlowConsumer(high=1 << 40, keep=True)
        requester.request(command, args, consumer, on_head).addBoth(self.results.append)
        return consumer

    def failure(self, index: int = -1) -> RequestFailed:
        result = self.results[index]
        self.assertIsInstance(getattr(result, "value", None), RequestFailed, result)
        return result.value
