"""The management port's wire side: a thin protocol over :class:`ManagerCommands`.

One command per line (``\\n`` or ``\\r\\n``), several per connection. A line longer than
``MAX_LINE`` is refused and the connection closed without buffering the rest, so a 10 MB
"command" costs at most one line of memory. A connection that makes no progress (no complete
command, no body chunk taken by the reader) for ``timeout`` seconds is aborted; the clock is
injected. Bodies are streamed with a pull producer, one chunk per ``resumeProducing``, so a
large pcap is never read whole into memory and a slow reader slows the disk reads.

Unless the port is plain loopback (``manager_enable_unencrypted``), it runs over TLS and
no command is read before the peer passed the password proof (voipmon.manager.auth).
The listener's admission gate (voipmon.protocols.admission) bounds the connections that
have not got that far (or, in plain text, sent no command yet), and drops idle ones first
under a flood; the protocol reports each one's progress to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import interfaces, protocol
from twisted.logger import Logger
from zope.interface import implementer

from voipmon.manager.auth import ManagerAuthServer
from voipmon.manager.commands import (
    E_AUTH,
    E_INTERNAL,
    E_TIMEOUT,
    E_TOO_LONG,
    CommandError,
    ManagerCommands,
    Reply,
)
from voipmon.protocols.admission import GREETED, SECURED, Ticket
from voipmon.protocols.gated import IGated
from voipmon.protocols.handshake import Rejection
from voipmon.protocols.wire import ProtocolError

MAX_LINE = 4096
DEFAULT_TIMEOUT = 30.0


@implementer(interfaces.IPullProducer)
class _ReplySender:
    """Writes a reply's chunks to the transport as fast as it takes them."""

    def __init__(self, owner: ManagerServerProtocol, chunks: Iterator[bytes]) -> None:
        self.owner = owner
        self.chunks = chunks

    def resumeProducing(self) -> None:
        try:
            data = next(self.chunks, None)
        except Exception:
            self.owner.log.failure("management reply failed while streaming")
            self.owner.abort()
            return
        if data is None:
            self.owner.reply_done()
        else:
            self.owner.transport.write(data)
            self.owner.progress()

    def stopProducing(self) -> None:
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()


@implementer(IGated, interfaces.IHandshakeListener)
class ManagerServerProtocol(protocol.Protocol):
    """Framing and timeouts only; what a command means is :class:`ManagerCommands`'s job."""

    log = Logger()
    admission: Ticket | None = None   # set by the listener's gate before connectionMade

    def __init__(self, commands: ManagerCommands, clock: Any,
                 timeout: float = DEFAULT_TIMEOUT, max_line: int = MAX_LINE,
                 auth: ManagerAuthServer | None = None,
                 binding: Callable[[Any], bytes] | None = None) -> None:
        self.commands = commands
        self.auth = auth
        self.binding = binding
        self.clock = clock
        self.timeout = timeout
        self.max_line = max_line
        self._buffer = b""
        self._sender: _ReplySender | None = None
        self._closed = False
        self._timer: Any = None
        self.peer = "?"

    # -- connection life --------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        self.progress()

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: TLS is established."""
        if self.admission is not None:
            self.admission.progress(SECURED)

    def _admitted(self) -> None:
        """Past the proof (or, in plain text, the first command): out of the gate."""
        if self.admission is not None:
            self.admission.done()

    def connectionLost(self, reason: Any = None) -> None:
        self._closed = True
        self._buffer = b""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._sender is not None:
            self._sender.stopProducing()
            self._sender = None

    def progress(self) -> None:
        """Something happened: restart the inactivity timer."""
        if self._closed:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.timeout)
        else:
            self._timer = self.clock.callLater(self.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self.log.info("management connection from {peer} timed out after {timeout} s",
                      peer=self.peer, timeout=self.timeout)
        if self._sender is None:
            self.transport.write(CommandError(E_TIMEOUT, f"no command for {self.timeout:g} s")
                                 .line())
        self.abort()

    def abort(self) -> None:
        if self.admission is not None:
            self.admission.closing()
        self._closed = True
        self._buffer = b""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.transport.abortConnection()

    def refuse(self, error: CommandError) -> None:
        """Send one ERR line and close once it is written."""
        if self.admission is not None:
            self.admission.closing()
        self._closed = True
        self._buffer = b""
        self.transport.write(error.line())
        self.transport.loseConnection()

    # -- input ------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return  # refused or aborted: whatever still arrives is dropped, not kept
        if self.auth is not None and not self.auth.done:
            self._authenticate(data)
            return
        self._buffer += data
        self._drain()

    def _authenticate(self, data: bytes) -> None:
        try:
            answer = self.auth.feed(data, lambda: self.binding(self.transport))
        except Rejection as rejection:
            self.log.warn("management connection from {peer} refused: {reason}",
                          peer=self.peer, reason=rejection.reason)
            if self.admission is not None:
                self.admission.closing()
            self._closed = True
            self.transport.write(ManagerAuthServer.reject_bytes(rejection))
            self.transport.loseConnection()
            return
        except ProtocolError as exc:
            self.log.warn("management connection from {peer} refused: no password proof "
                          "({problem})", peer=self.peer, problem=str(exc))
            self.refuse(CommandError(E_AUTH, "this port needs the voipmon password proof "
                                             "before any command"))
            return
        if answer:
            self.transport.write(answer)
        self.progress()
        if self.auth.done:
            self._admitted()
            self.log.info("management connection from {peer} ({name}) authenticated",
                          peer=self.peer, name=self.auth.peer_name)
        elif answer and self.admission is not None:
            self.admission.progress(GREETED)   # a well-formed hello was answered

    def _drain(self) -> None:
        while not self._closed and self._sender is None:
            line, sep, rest = self._buffer.partition(b"\n")
            if not sep:
                if len(self._buffer) > self.max_line:
                    self.log.warn("management command from {peer} longer than {max} bytes; "
                                  "connection closed", peer=self.peer, max=self.max_line)
                    self.refuse(CommandError(E_TOO_LONG,
                                             f"command longer than {self.max_line} bytes"))
                return
            self._buffer = rest
            if len(line) > self.max_line:
                self.refuse(CommandError(E_TOO_LONG, f"command longer than {self.max_line} bytes"))
                return
            self._admitted()
            self.progress()
            self.line_received(line.rstrip(b"\r"))
        if self._sender is not None and len(self._buffer) > self.max_line:
            self.refuse(CommandError(E_TOO_LONG, "too much input while a reply is being sent"))

    def line_received(self, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.transport.write(CommandError("usage", "command is not UTF-8").line())
            return
        try:
            reply = self.commands.run(line)
        except CommandError as error:
            self.log.info("management {peer}: {command!r} -> {code}", peer=self.peer,
                          command=line[:200], code=error.code)
            self.transport.write(error.line())
            return
        except Exception:
            self.log.failure("management command {command!r} failed", command=line[:200])
            self.transport.write(CommandError(E_INTERNAL, "command failed; see the log").line())
            return
        self.send(reply)

    # -- output -----------------------------------------------------------------

    def send(self, reply: Reply) -> None:
        self.transport.write(reply.header())
        self._sender = _ReplySender(self, reply.chunks())
        self.transport.registerProducer(self._sender, False)

    def reply_done(self) -> None:
        self.transport.unregisterProducer()
        self._sender = None
        self.progress()
        self._drain()


class ManagerServerFactory(protocol.Factory):
    """Builds one :class:`ManagerServerProtocol` per connection.

    With ``key`` (the derived password key) every connection must pass the proof for
    ``id_sensor``; ``binding`` gives a transport's TLS exporter value. Without ``key`` the
    port is plain text: only for loopback with ``manager_enable_unencrypted``.
    """

    def __init__(self, commands: ManagerCommands, clock: Any,
                 timeout: float = DEFAULT_TIMEOUT, key: bytes | None = None,
                 id_sensor: int = 0, binding: Callable[[Any], bytes] | None = None) -> None:
        if key is not None and binding is None:
            raise ValueError("a password proof needs the TLS channel binding")
        self.commands = commands
        self.clock = clock
        self.timeout = timeout
        self.key = key
        self.id_sensor = id_sensor
        self.binding = binding

    def buildProtocol(self, addr: Any) -> ManagerServerProtocol:
        auth = (ManagerAuthServer(self.key, self.id_sensor, self.clock.seconds)
                if self.key is not None else None)
        proto = ManagerServerProtocol(self.commands, self.clock, self.timeout, auth=auth,
                                      binding=self.binding)
        proto.factory = self
        return proto
