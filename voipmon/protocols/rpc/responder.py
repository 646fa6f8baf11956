"""The sensor's side of requests: run the command, stream the answer as credit allows.

A :class:`Responder` serves one channel. Each REQUEST runs through the same command
registry as the management port (``ICommands.execute``: the same commands, the same spool
checks, the same errors), and its answer becomes an :class:`AnswerStream`, an
``IFrameSource`` the channel's output scheduler pulls frames from. A frame is made only
when it is pulled, and holds only data the central has credit for: the reply's chunks are
read from disk one at a time when the transport can take them and the central wants them,
so at most one chunk of the reply is ever held, whatever its size, and a paused HTTP
client on the central stops this sensor's file reads once the window is used up.

Requests are taken only from the central this sensor authenticated (``authorised``, the
channel's hook: the password proofs of both sides passed on this very connection), in the
central -> sensor direction only (the dispatcher refuses a REQUEST arriving at the central).
CANCEL, or the channel going away, closes the reply's reader (its file) at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from twisted.logger import Logger
from zope.interface import implementer

from voipmon.counters import Counters
from voipmon.manager.commands import (
    E_INTERNAL,
    E_TOO_LONG,
    E_UNAVAILABLE,
    E_USAGE,
    CommandError,
    ICommands,
    Reply,
)
from voipmon.manager.server import MAX_LINE
from voipmon.protocols.rpc.messages import (
    CHUNK,
    MAX_CREDIT,
    Cancel,
    Credit,
    Request,
    answer_data_head,
    answer_error,
    answer_head,
)
from voipmon.protocols.scheduler import IFrameOutput, IFrameSource
from voipmon.protocols.wire import MessageType, ProtocolError

log = Logger()

MAX_REQUESTS = 16          # answers being read on one channel, whatever the central asks


@implementer(IFrameSource)
class AnswerStream:
    """One request's answer: a first frame, then data within credit, the last one marked."""

    def __init__(self, responder: Responder, request: Request, reply: Reply | None,
                 error: CommandError | None = None) -> None:
        self.responder = responder
        self.id = request.id
        self.command = request.command
        self.chunk = min(request.chunk, responder.max_chunk)
        self.credit = request.window
        self.reply = reply
        self.error = error
        self.size = reply.size if reply is not None else 0
        self.sent = 0           # body bytes sent
        self.read = 0           # body bytes taken from the reply's chunks
        self.head_sent = False
        self.finished = False
        self._chunks: Iterator[bytes] | None = None
        self._held = memoryview(b"")   # what was read and not yet sent (at most one chunk)

    @property
    def held(self) -> int:
        return len(self._held)

    def ready(self) -> bool:
        if self.finished:
            return False
        return (not self.head_sent or self.error is not None
                or (self.credit > 0 and self.sent < self.size))

    def next_frame(self) -> tuple[MessageType, bytes] | None:
        if not self.ready():
            return None
        if self.error is not None:
            frame = answer_error(self.id, self.error.code, self.error.message,
                                 first=not self.head_sent)
            self.head_sent = True
            self.close()
            return MessageType.ANSWER, frame
        first = not self.head_sent
        want = min(self.chunk, self.credit, self.size - self.sent)
        try:
            data = self._take(want) if want else b""
        except Exception as exc:
            log.failure("answering {command} (request {id}) failed after {sent} of {size} "
                        "bytes", command=self.command, id=self.id, sent=self.sent,
                        size=self.size)
            self.error = CommandError(E_INTERNAL, f"reading the answer failed after "
                                      f"{self.sent} of {self.size} bytes "
                                      f"({type(exc).__name__}); see the sensor's log")
            return self.next_frame()
        self.sent += len(data)
        self.credit -= len(data)
        last = self.sent == self.size
        if first:
            self.head_sent = True
            head = answer_head(self.id, self.size, self.reply.content_type, last)
        else:
            head = answer_data_head(self.id, last)
        if last:
            self.close()
        self.responder.bytes_sent += len(data)
        return MessageType.ANSWER, head + data

    def _take(self, want: int) -> bytes:
        """``want`` bytes of the body (fewer only at its end), reading at most one chunk."""
        held = self._held
        if not held:
            if self._chunks is None:
                self._chunks = self.reply.chunks()
            data = next(self._chunks, None)
            if data is None:
                raise EOFError(f"the reply ended after {self.read} of {self.size} bytes")
            if self.read + len(data) > self.size:
                raise ValueError(f"the reply is longer than the {self.size} bytes announced")
            self.read += len(data)
            if len(data) <= want:
                return data
            held = memoryview(data)
        self._held = held[want:]
        return bytes(held[:want])

    def add_credit(self, amount: int) -> None:
        self.credit = min(self.credit + amount, MAX_CREDIT)

    def close(self) -> None:
        """Finished or cancelled: release the reader (the file) at once."""
        self.finished = True
        self._held = memoryview(b"")
        chunks, self._chunks = self._chunks, None
        close = getattr(chunks, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.failure("closing the reader of {command}", command=self.command)
        self.responder._forget(self)


class Responder:
    """Answers the central's requests on one channel.

    ``commands`` is the registry (``ICommands``); ``output`` the channel's scheduler
    (``IFrameOutput``); ``authorised()`` says whether the peer is the central this sensor
    authenticated on this connection (the channel's hook; requests are refused otherwise).
    """

    def __init__(self, commands: ICommands, output: IFrameOutput,
                 authorised: Callable[[], bool], max_requests: int = MAX_REQUESTS,
                 max_chunk: int = CHUNK) -> None:
        self.commands = commands
        self.output = output
        self.authorised = authorised
        self.max_requests = max_requests
        self.max_chunk = max_chunk
        self.streams: dict[int, AnswerStream] = {}
        self.requests = self.refused = self.cancelled = self.bytes_sent = 0
        self.lost = False

    def on_request(self, request: Request) -> None:
        if not self.authorised():
            raise ProtocolError("REQUEST from a peer that is not the central this sensor "
                                "authenticated on this connection")
        if request.id in self.streams:
            raise ProtocolError(f"REQUEST {request.id} while request {request.id} is still "
                                "being answered")
        if self.lost:
            return
        self.requests += 1
        reply, error = None, None
        if len(self.streams) >= 2 * self.max_requests:
            raise ProtocolError(f"more than {2 * self.max_requests} requests unanswered: the "
                                "central does not wait for answers")
        if sum(1 for s in self.streams.values() if s.reply is not None) >= self.max_requests:
            error = CommandError(E_UNAVAILABLE, f"too many requests in progress on this "
                                 f"sensor (limit {self.max_requests})")
        else:
            reply, error = self._run(request)
        if error is not None:
            self.refused += 1
            log.info("request {id} from the central: {command} -> {code}", id=request.id,
                     command=request.command, code=error.code)
        stream = AnswerStream(self, request, reply, error)
        self.streams[request.id] = stream
        self.output.wake(stream)

    def _run(self, request: Request) -> tuple[Reply | None, CommandError | None]:
        """The command's Reply, or the error the management port would answer."""
        if len(request.command) + 1 + len(request.args) > MAX_LINE:
            return None, CommandError(E_TOO_LONG, f"command longer than {MAX_LINE} bytes")
        if "\n" in request.args or "\r" in request.args:
            return None, CommandError(E_USAGE, "a command is one line")
        try:
            return self.commands.execute(request.command, request.args), None
        except CommandError as error:
            return None, error
        except Exception:
            log.failure("request {id}: {command!r} failed", id=request.id,
                        command=f"{request.command} {request.args}"[:200])
            return None, CommandError(E_INTERNAL, "command failed; see the log")

    def on_credit(self, credit: Credit) -> None:
        stream = self.streams.get(credit.id)
        if stream is None:
            return  # the answer just ended, or was cancelled: nothing more to send
        stream.add_credit(credit.bytes)
        self.output.wake(stream)

    def on_cancel(self, cancel: Cancel) -> None:
        stream = self.streams.get(cancel.id)
        if stream is None:
            return  # ended before the cancel arrived
        self.cancelled += 1
        log.info("request {id} ({command}) cancelled by the central after {sent} of {size} "
                 "bytes: {reason}", id=cancel.id, command=stream.command, sent=stream.sent,
                 size=stream.size, reason=cancel.reason or "no reason given")
        stream.close()

    def _forget(self, stream: AnswerStream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        self.output.discard(stream)

    def connection_lost(self) -> None:
        """The channel is gone: close every reader; nothing more is sent."""
        self.lost = True
        for stream in list(self.streams.values()):
            stream.close()

    def counters(self) -> Counters:
        return {"requests": self.requests, "refused": self.refused,
                "cancelled": self.cancelled, "in_progress": len(self.streams),
                "bytes_sent": self.bytes_sent}
