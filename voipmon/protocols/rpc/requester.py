"""The central's side of requests: ids, pending requests, timeouts and credit.

A :class:`Requester` serves one sensor's channel. ``request(command, args, consumer)``
sends a REQUEST and streams the answer's data into ``consumer`` (an HTTP response, a file,
a collector); its Deferred fires with the body's size once the last byte was written, or
fails with :class:`RequestFailed` saying why (the sensor's own error code and message, a
timeout, the in-flight limit, the channel closing, the client leaving).

Flow control: every request is a streaming producer registered with its consumer. Data
arrives only within the credit the central granted (``window`` bytes at first), and the
central grants more only while the consumer takes data: when the HTTP client is slow its
transport pauses the request (``pauseProducing``), no credit goes out, and the sensor stops
reading its file once the window is used up. Memory per request on the central is thus at
most the window beyond what the consumer itself buffers, whatever the answer's size, and
the channel itself is never paused, so CDRs and pings keep flowing. A consumer that stops
(the client went away) cancels the request on the sensor.

Timeouts (on the injected clock): a request fails if no first answer comes within
``timeout`` seconds, and if data the sensor has credit for stops coming for as long. When a
request ends early the sensor is told (CANCEL); frames of it still on their way are
ignored. When the channel closes every pending request fails at once and no delayed call
is left.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from voipmon.counters import Counters, family
from voipmon.protocols.rpc.messages import (
    CHUNK,
    ID_MAX,
    MAX_CHUNK,
    MAX_CREDIT,
    MIN_CHUNK,
    WINDOW,
    Answer,
    Request,
    encode_cancel,
    encode_credit,
    encode_request,
)
from voipmon.protocols.wire import MessageType, ProtocolError

log = Logger()

LIMIT = 8                  # requests in flight to one sensor
TIMEOUT = 30.0             # for the first answer, and for data owed
MAX_QUERY = 16 * 1024 * 1024

# RequestFailed codes of the central's own (the sensor's are the management port's).
TIMEOUT_CODE = "timeout"
TOO_MANY = "too_many_requests"
LOST = "channel_lost"
CANCELLED = "cancelled"
UNSUPPORTED = "unsupported"
TOO_LARGE = "too_large"
INTERNAL = "internal"


class RequestFailed(Exception):
    """A request that did not complete. ``code`` is the sensor's error code when
    ``remote`` (``not_found``, ``refused``... as on the management port), else one of the
    central's (``timeout``, ``too_many_requests``, ``channel_lost``, ``cancelled``...)."""

    def __init__(self, code: str, message: str, remote: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.remote = remote


class Head(NamedTuple):
    """What the first answer says of the body."""

    size: int
    content_type: str


class IRequestTransport(Interface):
    """The channel, as the requester sees it."""

    def send_message(kind, body):
        """Send one message (``body`` already encoded, bytes)."""


@implementer(IPushProducer)
class _Call:
    """One request in flight; the producer registered with its consumer."""

    def __init__(self, requester: Requester, ident: int, command: str, consumer: Any,
                 on_head: Callable[[Head], None] | None) -> None:
        self.requester = requester
        self.id = ident
        self.command = command
        self.consumer = consumer
        self.on_head = on_head
        self.done: defer.Deferred[int] = defer.Deferred(self._cancelled)
        self.head: Head | None = None
        self.received = 0
        self.granted = requester.window
        self.paused = False
        self.ended = False
        self.registered = False
        self._timer: Any = None

    # -- answer frames ----------------------------------------------------------------

    def answer(self, answer: Answer) -> None:
        requester = self.requester
        if answer.first:
            if self.head is not None:
                raise ProtocolError(f"a second first ANSWER to request {self.id}")
            if answer.error:
                self._fail(answer.code, answer.message, remote=True, tell_sensor=False)
                return
            self.head = Head(answer.size, answer.content_type)
            if self.on_head is not None:
                try:
                    self.on_head(self.head)
                except Exception as exc:
                    self._consumer_failed(exc, "taking the answer's head")
                    return
                if self.ended:
                    return  # cancelled from on_head
        elif self.head is None:
            raise ProtocolError(f"ANSWER data to request {self.id} before its first chunk")
        elif answer.error:
            self._fail(answer.code, f"{requester.label} failed while answering {self.command} "
                       f"after {self.received} of {self.head.size} bytes: {answer.message}",
                       remote=True, tell_sensor=False)
            return
        data = answer.data
        if data:
            size = len(data)
            if self.received + size > self.granted:
                raise ProtocolError(f"{size} bytes of ANSWER to request {self.id} beyond the "
                                    f"credit granted ({self.granted - self.received} left)")
            if self.received + size > self.head.size:
                raise ProtocolError(f"ANSWER to request {self.id} longer than the "
                                    f"{self.head.size} bytes announced")
            self.received += size
            requester.bytes_received += size
            try:
                self.consumer.write(data)
            except Exception as exc:
                self._consumer_failed(exc, "writing the answer")
                return
            if self.ended:
                return  # the consumer stopped us from inside write
        if answer.last:
            if self.received != self.head.size:
                raise ProtocolError(f"ANSWER to request {self.id} ended after "
                                    f"{self.received} of the {self.head.size} bytes announced")
            self._finish()
            return
        self._credit()
        self._watch(progress=True)

    def _credit(self) -> None:
        """Grant what the consumer has taken, while it takes data, a quarter window at a
        time (or whatever completes the body)."""
        if self.paused or self.ended or self.head is None:
            return
        requester = self.requester
        need = self.head.size - self.granted
        grant = min(requester.window - (self.granted - self.received), need)
        if grant <= 0 or (grant < requester.credit_step and grant < need):
            return
        self.granted += grant
        requester.transport.send_message(MessageType.CREDIT, encode_credit(self.id, grant))

    # -- timers -----------------------------------------------------------------------

    def _watch(self, progress: bool = False) -> None:
        """Keep a timer while the sensor owes us something: the first answer, or data
        it has credit for."""
        owed = self.head is None or (self.granted > self.received
                                     and self.received < self.head.size)
        timer = self._timer
        if not owed or self.ended:
            if timer is not None:
                timer.cancel()
                self._timer = None
        elif timer is None:
            self._timer = self.requester.clock.callLater(self.requester.timeout,
                                                         self._timed_out)
        elif progress:
            timer.reset(self.requester.timeout)

    def _timed_out(self) -> None:
        self._timer = None
        requester = self.requester
        if self.head is None:
            message = (f"{requester.label} did not answer {self.command} within "
                       f"{requester.timeout:g} s")
        else:
            message = (f"{requester.label} stopped sending {self.command} for "
                       f"{requester.timeout:g} s after {self.received} of {self.head.size} "
                       "bytes")
        self._fail(TIMEOUT_CODE, message)

    # -- IPushProducer (the consumer calls these) -------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._credit()
        self._watch()

    def stopProducing(self) -> None:
        """The consumer is gone (the HTTP client disconnected): cancel on the sensor."""
        self.registered = False
        self._fail(CANCELLED, f"{self.command} from {self.requester.label} cancelled: the "
                   "client went away")

    # -- ending -----------------------------------------------------------------------

    def _cancelled(self, _: defer.Deferred) -> None:
        self._fail(CANCELLED, f"{self.command} from {self.requester.label} cancelled")

    def _consumer_failed(self, exc: Exception, what: str) -> None:
        if isinstance(exc, RequestFailed):
            self._fail(exc.code, exc.message)
            return
        log.failure("request {id} ({command}): {what} failed", id=self.id,
                    command=self.command, what=what)
        self._fail(INTERNAL, f"{what} of {self.command} failed: {exc}")

    def _end(self) -> None:
        self.ended = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.requester._forget(self)
        if self.registered:
            self.registered = False
            try:
                self.consumer.unregisterProducer()
            except AttributeError:
                pass  # a twisted.web Request whose client left has no channel to leave

    def _finish(self) -> None:
        self._end()
        self.requester.completed += 1
        self.done.callback(self.received)

    def _fail(self, code: str, message: str, remote: bool = False,
              tell_sensor: bool = True) -> None:
        if self.ended:
            return
        self._end()
        requester = self.requester
        if tell_sensor and not requester.lost:
            requester.transport.send_message(MessageType.CANCEL,
                                             encode_cancel(self.id, message))
        requester.failed[code] += 1
        self.done.errback(RequestFailed(code, message, remote))


class _Collect:
    """A consumer gathering a small answer in memory (``query``)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)


class Requester:
    """Requests to one sensor over its channel.

    ``transport`` is the channel (``IRequestTransport``), ``clock`` the injected
    ``IReactorTime``, ``label`` how errors name the sensor ("sensor 3"). ``supported`` is
    False when the sensor did not announce the ``requests`` capability.
    """

    def __init__(self, transport: Any, clock: IReactorTime, label: str, limit: int = LIMIT,
                 timeout: float = TIMEOUT, window: int = WINDOW, chunk: int = CHUNK,
                 supported: bool = True) -> None:
        if not MIN_CHUNK <= chunk <= MAX_CHUNK or not chunk <= window <= MAX_CREDIT:
            raise ValueError(f"bad chunk {chunk} or window {window}")
        self.transport = transport
        self.clock = clock
        self.label = label
        self.limit = limit
        self.timeout = timeout
        self.window = window
        self.chunk = chunk
        self.credit_step = max(chunk, window // 4)
        self.supported = supported
        self.pending: dict[int, _Call] = {}
        self.lost: str | None = None
        self._last_id = 0
        self.requests = self.completed = self.late_frames = self.bytes_received = 0
        self.failed: Counter[str] = Counter()

    def request(self, command: str, args: str = "", consumer: Any = None,
                on_head: Callable[[Head], None] | None = None) -> defer.Deferred[int]:
        """Run ``command args`` on the sensor, writing the body to ``consumer``.

        ``on_head(Head)`` runs before the first byte is written (set Content-Length there).
        Fires with the body's size; fails with RequestFailed. Cancelling the Deferred
        cancels the request on the sensor."""
        refusal = self._refusal(command)
        if refusal is not None:
            self.failed[refusal.code] += 1
            return defer.fail(refusal)
        self._last_id += 1
        call = _Call(self, self._last_id, command, consumer if consumer is not None
                     else _Collect(), on_head)
        if hasattr(call.consumer, "registerProducer"):
            call.consumer.registerProducer(call, True)   # may raise: nothing sent yet
            call.registered = True
        self.requests += 1
        self.pending[call.id] = call
        self.transport.send_message(MessageType.REQUEST, encode_request(
            Request(call.id, command, args, self.window, self.chunk)))
        call._watch()
        return call.done

    def _refusal(self, command: str) -> RequestFailed | None:
        if self.lost is not None:
            return RequestFailed(LOST, f"{self.label} is not connected ({self.lost})")
        if not self.supported:
            return RequestFailed(UNSUPPORTED, f"{self.label} does not take requests over its "
                                 "channel (it did not announce the 'requests' capability: "
                                 "an older version?)")
        if len(self.pending) >= self.limit:
            return RequestFailed(TOO_MANY, f"too many requests in flight to {self.label} "
                                 f"(limit {self.limit})")
        if self._last_id >= ID_MAX:
            return RequestFailed(LOST, f"request ids to {self.label} are used up on this "
                                 "connection; it must reconnect")
        return None

    def query(self, command: str, args: str = "", limit: int = MAX_QUERY) -> defer.Deferred:
        """A small answer (JSON, text) as bytes; refused beyond ``limit`` bytes."""
        collect = _Collect()

        def head(head: Head) -> None:
            if head.size > limit:
                raise RequestFailed(TOO_LARGE, f"the answer to {command} from {self.label} "
                                    f"is {head.size} bytes, over the {limit}-byte limit")

        d = self.request(command, args, collect, head)
        return d.addCallback(lambda _: b"".join(collect.parts))

    def on_answer(self, answer: Answer) -> None:
        """An ANSWER frame from the sensor (the dispatcher hands it over decoded)."""
        call = self.pending.get(answer.id)
        if call is not None:
            call.answer(answer)
        elif answer.id <= self._last_id:
            self.late_frames += 1   # a request that ended here first (cancel, timeout)
        else:
            raise ProtocolError(f"ANSWER to request {answer.id}, which was never sent")

    def _forget(self, call: _Call) -> None:
        if self.pending.get(call.id) is call:
            del self.pending[call.id]

    def connection_lost(self, reason: str) -> None:
        """The channel closed: every pending request fails now."""
        self.lost = reason or "closed"
        for call in list(self.pending.values()):
            if call.head is None:
                message = (f"the channel to {self.label} closed before it answered "
                           f"{call.command} ({self.lost})")
            else:
                message = (f"the channel to {self.label} closed after {call.received} of "
                           f"{call.head.size} bytes of {call.command} ({self.lost})")
            call._fail(LOST, message)

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def counters(self) -> Counters:
        return {"requests": self.requests, "completed": self.completed,
                "in_flight": len(self.pending), "late_frames": self.late_frames,
                "bytes_received": self.bytes_received,
                **family("failed", self.failed)}
