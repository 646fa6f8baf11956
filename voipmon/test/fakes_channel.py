"""Test doubles for the channel: endpoints whose connection attempts the test completes."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransportWithDisconnection
from twisted.logger import formatEvent, globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from voipmon.protocols.capabilities import SUPPORTED
from voipmon.protocols.channel import IMessageTransport
from voipmon.protocols.client import AuthenticatingEndpoint, ISessionProtocol
from voipmon.protocols.handshake import ClientHandshake, derive_key
from voipmon.protocols.server import CentralFactory, ISession, ISessionHandler
from voipmon.protocols.wire import MessageType, encode_json


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Queues each ``connect``; the test calls ``succeed``/``fail`` on the oldest one.

    Modelled on Twisted's ``endpointForTesting`` in ClientService's tests.
    """

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.queue: list[tuple[defer.Deferred, Any]] = []
        self.cancelled = 0
        self.connects = 0

    def connect(self, factory: Any) -> defer.Deferred:
        self.connects += 1

        def cancel(d: defer.Deferred) -> None:
            self.cancelled += 1
            self.queue[:] = [(q, f) for q, f in self.queue if q is not d]

        d: defer.Deferred = defer.Deferred(cancel)
        self.queue.append((d, factory))
        return d

    def succeed(self) -> Any:
        """Complete the oldest attempt with a protocol from its factory; return it."""
        d, factory = self.queue.pop(0)
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        d.callback(protocol)
        return protocol

    def fail(self, exception: Exception | None = None) -> None:
        d, _factory = self.queue.pop(0)
        d.errback(exception or ConnectionRefusedError(f"{self.name} refused"))

    def __repr__(self) -> str:
        return f"<FakeEndpoint {self.name}>"


# -- in-memory channel pairs -------------------------------------------------------



BINDING = b"B" * 32


def fixed_binding(transport: Any) -> bytes:
    """Stands in for the TLS exporter: both ends of an in-memory pair agree."""
    return BINDING


@implementer(IStreamClientEndpoint)
class PumpEndpoint:
    """Connects each client to a protocol of ``server_factory`` in memory (iosim).

    The test moves the bytes with ``flush()``; ``pumps`` keeps every connection.
    """

    def __init__(self, server_factory: Any, clock: Clock, client_port: int = 40000) -> None:
        self.server_factory = server_factory
        self.clock = clock
        self.client_port = client_port
        self.pumps: list[iosim.IOPump] = []
        self.cut: list[iosim.IOPump] = []
        self.fail_with: Exception | None = None

    def connect(self, factory: Any) -> defer.Deferred:
        if self.fail_with is not None:
            return defer.fail(self.fail_with)
        self.client_port += 1
        client_addr = IPv4Address("TCP", "192.0.2.7", self.client_port)
        server_addr = IPv4Address("TCP", "192.0.2.1", 60024)
        client = factory.buildProtocol(server_addr)
        server = self.server_factory.buildProtocol(client_addr)
        client_io = iosim.FakeTransport(client, False, client_addr, server_addr)
        server_io = iosim.FakeTransport(server, True, server_addr, client_addr)
        pump = iosim.connect(server, server_io, client, client_io, greet=False,
                             clock=self.clock)
        self.pumps.append(pump)
        return defer.succeed(client)

    def flush(self) -> None:
        """Pump every connection that is not cut until none has anything to move."""
        for _ in range(1000):
            moved = False
            for pump in list(self.pumps):
                if pump not in self.cut:
                    moved = pump.flush() or moved
            if not moved:
                return
        raise AssertionError("the connections never went idle")

    def partition(self, index: int) -> None:
        """Pull the cable of connection ``index``: nothing moves either way any more."""
        self.cut.append(self.pumps[index])


@implementer(ISession)
class RecordingSession:
    """Records each message of the sensor (type, decoded body) its handlers get."""

    def __init__(self, channel: Any, hello: Any) -> None:
        self.channel = channel
        self.hello = hello
        self.messages: list[tuple[Any, Any]] = []
        self.lost: Any = None

    def on_cdrs(self, body: Any) -> None:
        self.messages.append((MessageType.CDRS, body))

    def on_stats(self, body: Any) -> None:
        self.messages.append((MessageType.STATS, body))

    def on_end(self, body: Any) -> None:
        self.messages.append((MessageType.END, body))

    def on_packets(self, body: Any) -> None:
        self.messages.append((MessageType.PACKETS, body))

    def connectionLost(self, reason: Any) -> None:
        self.lost = reason


@implementer(ISessionHandler)
class RecordingHandler:
    def __init__(self) -> None:
        self.sessions: list[RecordingSession] = []

    def open_session(self, channel: Any, hello: Any) -> RecordingSession:
        session = RecordingSession(channel, hello)
        self.sessions.append(session)
        return session


@implementer(ISessionProtocol)
class SessionRecorder(protocol.Protocol):
    """A sensor-side session protocol that records what the central sends (type, decoded
    body)."""

    def __init__(self) -> None:
        self.messages: list[tuple[Any, Any]] = []
        self.lost: Any = None

    def handlers(self) -> list[object]:
        return [self]

    def on_cdr_ack(self, body: Any) -> None:
        self.messages.append((MessageType.CDR_ACK, body))

    def on_packets_ack(self, body: Any) -> None:
        self.messages.append((MessageType.PACKETS_ACK, body))

    def on_end_ack(self, body: Any) -> None:
        self.messages.append((MessageType.END_ACK, body))

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


class ChannelPair:
    """A real CentralFactory and real sensor endpoints, joined in memory on one Clock."""

    def __init__(self, *, central_password: str = "pw", max_time_diff: float = 2.0,
                 handler: Any = None, clock: Clock | None = None,
                 central_binding: Any = fixed_binding, window: int = 8) -> None:
        self.clock = clock or Clock()
        if clock is None:
            self.clock.advance(1_700_000_000)
        self.handler = handler if handler is not None else RecordingHandler()
        self.factory = CentralFactory(derive_key(central_password), max_time_diff,
                                      self.handler, self.clock, central_binding,
                                      central_name="central-test", window=window)
        self.network = PumpEndpoint(self.factory, self.clock)

    def endpoint(self, *, password: str = "pw", id_sensor: int = 7, name: str = "edge-1",
                 instance: str = "ab" * 8, compression: str = "zstd", skew: float = 0.0,
                 probe: bool = False, protocol_version: int = 1, mode: str = "local",
                 replay: bool = False, binding: Any = fixed_binding,
                 manager: str = "", commands: Any = None) -> AuthenticatingEndpoint:
        """A sensor's endpoint; with ``commands`` (an ICommands) it offers every
        capability and answers the central's requests with them."""
        key = derive_key(password)
        offered = SUPPORTED if commands is not None else None
        clock = self.clock

        def make() -> ClientHandshake:
            return ClientHandshake(key, id_sensor=id_sensor, name=name, version="0.1.0",
                                   mode=mode, compression=compression, instance=instance,
                                   seconds=lambda: clock.seconds() + skew, probe=probe,
                                   manager=manager, replay=replay,
                                   protocol=protocol_version, capabilities=offered)

        return AuthenticatingEndpoint(self.network, make, compression, self.clock, binding,
                                      commands)

    def connect(self, factory: Any = None, **options: Any) -> defer.Deferred:
        factory = factory or protocol.Factory.forProtocol(SessionRecorder)
        d = self.endpoint(**options).connect(factory)
        self.flush()
        return d

    def flush(self) -> None:
        self.network.flush()

    def close_all(self) -> None:
        """Close every connection from both ends and let the closes finish."""
        self.network.cut.clear()
        for pump in self.network.pumps:
            for proto in (pump.client, pump.server):
                if not proto.closing and proto.transport is not None:
                    proto.close("test over")
        self.flush()


class ChannelPairCase(SynchronousTestCase):
    """A ``ChannelPair`` per test, closed after it with no delayed call left, and the log."""

    def setUp(self) -> None:
        self.pair = ChannelPair()
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.addCleanup(self.finish)

    def finish(self) -> None:
        self.pair.close_all()
        self.assertEqual(self.pair.clock.getDelayedCalls(), [])

    def logged(self) -> list[str]:
        return [formatEvent(e) for e in self.observer]


@implementer(IMessageTransport)
class FakeMessageTransport:
    """Records what session logic sends; stands in for an authenticated channel."""

    def __init__(self, accept_info: Any = None, peer: str = "192.0.2.1:60024",
                 host: str = "192.0.2.7") -> None:
        self.accept_info = accept_info if accept_info is not None else {}
        self.peer = peer
        self.host = host
        self.sent: list[tuple[Any, Any]] = []
        self.closed = False
        self.failed: str | None = None

    def send_message(self, kind: Any, body: Any) -> None:
        self.sent.append((kind, body))

    def loseConnection(self) -> None:
        self.closed = True

    def fail(self, reason: str) -> None:
        self.failed = reason
        self.closed = True

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", self.host, 40000)

    def kinds(self) -> list[Any]:
        return [kind for kind, _ in self.sent]

    def take(self) -> list[tuple[Any, Any]]:
        sent, self.sent = self.sent, []
        return sent


def ack(kind: Any, **body: Any) -> tuple[Any, bytes]:
    """A message from the central as session logic receives it: (kind, JSON payload)."""
    return kind, encode_json(body)
