"""Test doubles for the channel: endpoints whose connection attempts the test completes."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import StringTransportWithDisconnection
from zope.interface import implementer


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
