"""The central's client for a sensor's management port.

:class:`ManagerClientProtocol` sends one command line and parses the ``OK <length>`` /
``ERR <code> <message>`` reply. A body is not buffered: :meth:`ReplyStream.deliver` hands
it to a consumer (an HTTP request, a file) with the TCP transport registered as its
producer, so a slow browser slows the sensor's disk reads instead of filling the central's
memory. Every wait (the proof, a header, the next body bytes) is bounded by ``timeout`` on
an injected clock. voipmon.manager.service.ManagerConnector connects and uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from voipmon.manager.auth import ManagerAuthClient

MAX_HEADER = 4096
DEFAULT_TIMEOUT = 30.0


class ManagerError(Exception):
    """The sensor answered ``ERR <code> <message>``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ManagerProtocolError(Exception):
    """The peer does not speak the management protocol, or closed mid-reply."""


class ReplyStream:
    """A reply whose ``size`` is known; its body is delivered on request."""

    def __init__(self, proto: ManagerClientProtocol, size: int) -> None:
        self.proto = proto
        self.size = size
        self.received = 0
        self.done: defer.Deferred[int] = defer.Deferred()
        self._consumer: Any = None
        self._pending: list[bytes] = []

    def deliver(self, consumer: Any) -> defer.Deferred[int]:
        """Write the body to ``consumer`` (anything with ``write``); fires with its size."""
        self._consumer = consumer
        if hasattr(consumer, "registerProducer") and self.received < self.size:
            consumer.registerProducer(self.proto.transport, True)
        pending, self._pending = self._pending, []
        for data in pending:
            consumer.write(data)
        self.proto.transport.resumeProducing()
        self._maybe_done()
        return self.done

    def _data(self, data: bytes) -> None:
        self.received += len(data)
        if self._consumer is None:
            self._pending.append(data)
        else:
            self._consumer.write(data)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._consumer is not None and self.received >= self.size and not self.done.called:
            if hasattr(self._consumer, "unregisterProducer") and self.size:
                self._consumer.unregisterProducer()
            self.done.callback(self.size)

    def _failed(self, reason: Failure) -> None:
        if not self.done.called:
            if self._consumer is not None and hasattr(self._consumer, "unregisterProducer"):
                self._consumer.unregisterProducer()
            self.done.errback(reason)


class ManagerClientProtocol(protocol.Protocol):
    """One command at a time; ``command()`` fires with a :class:`ReplyStream`."""

    log = Logger()

    def __init__(self, clock: Any, timeout: float = DEFAULT_TIMEOUT,
                 auth: ManagerAuthClient | None = None,
                 binding: Callable[[Any], bytes] | None = None) -> None:
        self.auth = auth
        self.binding = binding
        self.clock = clock
        self.timeout = timeout
        self._buffer = b""
        self._waiting: defer.Deferred[ReplyStream] | None = None
        self._stream: ReplyStream | None = None
        self._timer: Any = None
        self.connected_d: defer.Deferred[ManagerClientProtocol] = defer.Deferred()
        self.lost = False

    def connectionMade(self) -> None:
        if self.auth is None:
            self.connected_d.callback(self)
            return
        self.transport.write(self.auth.hello())
        self._arm()

    def _authenticate(self, data: bytes) -> None:
        try:
            answer = self.auth.feed(data, lambda: self.binding(self.transport))
        except Exception as exc:  # Rejection, CentralProofFailed, ProtocolError
            self._disarm()
            self.connected_d.errback(exc)
            self.transport.abortConnection()
            return
        if answer:
            self.transport.write(answer)
        if self.auth.done:
            self._disarm()
            self.connected_d.callback(self)

    def command(self, line: str) -> defer.Deferred[ReplyStream]:
        if self._waiting is not None or (self._stream and not self._stream.done.called):
            raise RuntimeError("one command at a time")
        if "\n" in line or "\r" in line:
            raise ValueError("a command is one line")
        self._waiting = defer.Deferred()
        self.transport.write(line.encode("utf-8") + b"\n")
        self._arm()
        return self._waiting

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.timeout)
        else:
            self._timer = self.clock.callLater(self.timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if not self.connected_d.called:
            self.connected_d.errback(ManagerProtocolError(
                f"no answer to the password proof for {self.timeout:g} s"))
        self._fail(Failure(ManagerProtocolError(f"no answer for {self.timeout:g} s")))
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.auth is not None and not self.auth.done:
            if not self.connected_d.called:
                self._authenticate(data)
            return
        stream = self._stream
        if stream is not None and not stream.done.called:
            self._arm()
            wanted = stream.size - stream.received
            body, extra = data[:wanted], data[wanted:]
            if body:
                stream._data(body)
            if stream.done.called or stream.received >= stream.size:
                self._disarm()
            if extra:
                self._fail(Failure(ManagerProtocolError("data after the end of a reply")))
                self.transport.abortConnection()
            return
        if self._waiting is None:
            self._fail(Failure(ManagerProtocolError("unsolicited data")))
            self.transport.abortConnection()
            return
        self._buffer += data
        line, sep, rest = self._buffer.partition(b"\n")
        if not sep:
            if len(self._buffer) > MAX_HEADER:
                self._fail(Failure(ManagerProtocolError("reply header too long")))
                self.transport.abortConnection()
            return
        self._buffer = b""
        self._header(line.rstrip(b"\r"), rest)

    def _header(self, line: bytes, rest: bytes) -> None:
        waiting, self._waiting = self._waiting, None
        word, _, tail = line.partition(b" ")
        if word == b"ERR":
            self._disarm()
            code, _, message = tail.decode("utf-8", "replace").partition(" ")
            waiting.errback(ManagerError(code, message))
            if rest:
                self.transport.abortConnection()
            return
        if word != b"OK" or not tail.isdigit():
            self._disarm()
            waiting.errback(ManagerProtocolError(f"unexpected reply {line[:80]!r}"))
            self.transport.abortConnection()
            return
        stream = self._stream = ReplyStream(self, int(tail))
        if stream.size:
            self.transport.pauseProducing()  # until someone takes the body
        else:
            self._disarm()
        waiting.callback(stream)
        if rest:
            self.dataReceived(rest)

    def _fail(self, reason: Failure) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(reason)
        if self._stream is not None:
            self._stream._failed(reason)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        self._disarm()
        if not self.connected_d.called:
            self.connected_d.errback(reason)
        self._fail(Failure(ManagerProtocolError(
            "connection closed before the reply was complete"
            + (f" ({reason.getErrorMessage()})" if reason is not None else ""))))


@implementer(interfaces.IConsumer)
class FileConsumer:
    """Writes a reply's body to an open binary file (tests, the bench)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.handle.write(data)
