"""The admission gate (voipmon.protocols.admission) on a real listener.

``gated(gate, factory, tls_options)`` is what a listener listens with, on a plain TCP
endpoint: ``GatedFactory`` wraps each accepted connection in a ``GatedProtocol`` *below*
TLS, so the gate counts a connection from TCP accept on, sees its first raw bytes (a
ClientHello), can ask the socket whether bytes wait unread, and drops a connection with an
abort, whether or not TLS ever completed. The application protocol on top (the channel,
the management port, a HEP listener) provides ``IGated``: it gets its ``Ticket`` before
``connectionMade`` and reports the later stages (TLS established, a well-formed hello,
authenticated).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import Attribute, Interface

from voipmon.protocols.admission import SPOKE, AdmissionGate, Ticket
from voipmon.protocols.channel import describe_peer


class IGated(Interface):
    """A protocol that reports its handshake's progress to the gate of its listener."""

    admission = Attribute(
        "The connection's Ticket, set before connectionMade by GatedProtocol (None when no "
        "gate watches the connection). The protocol calls progress(SECURED/GREETED) as the "
        "handshake advances, done() once the peer authenticated, closing() when it closes.")


def innermost(proto: Any) -> Any:
    """The application protocol under any wrappers (TLS, the gate)."""
    while getattr(proto, "wrappedProtocol", None) is not None:
        proto = proto.wrappedProtocol
    return proto


class GatedProtocol(ProtocolWrapper):
    """One accepted connection under the gate (below TLS, when there is TLS)."""

    ticket: Ticket | None = None

    def makeConnection(self, transport: Any) -> None:
        self.ticket = self.factory.gate.admit(transport.getPeer(), self._evicted,
                                              self._has_input, describe_peer(transport))
        application = innermost(self.wrappedProtocol)
        if IGated.providedBy(application):
            application.admission = self.ticket
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        ticket = self.ticket
        if ticket.stage < SPOKE:
            ticket.progress(SPOKE)
        super().dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        if self.ticket is not None:
            self.ticket.release()
        super().connectionLost(reason)

    def _evicted(self, reason: str) -> None:
        # An unauthenticated peer gets no goodbye: wait for nothing, free the slot now.
        self.transport.abortConnection()

    def _has_input(self) -> bool:
        """Whether bytes wait in the socket that the event loop has not read yet."""
        get_handle = getattr(self.transport, "getHandle", None)
        sock = get_handle() if get_handle is not None else None
        if not isinstance(sock, socket.socket):
            return False
        try:
            return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:  # nothing yet (EAGAIN), or the connection is broken
            return False


class GatedFactory(WrappingFactory):
    """Puts ``gate`` in front of ``wrapped`` (a TLS factory, or a plain one)."""

    protocol = GatedProtocol
    noisy = False

    def __init__(self, gate: AdmissionGate, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.gate = gate

    def doStop(self) -> None:
        super().doStop()
        self.gate.stop()


def gated(gate: AdmissionGate, factory: Any, tls_options: Any = None) -> GatedFactory:
    """The factory a listener listens with: ``factory`` behind ``gate``, under TLS with
    ``tls_options`` (a CertificateOptions) when given. Listen on a plain TCP endpoint: the
    gate sits below TLS, so it counts a connection that never completes TLS."""
    if tls_options is not None:
        factory = TLSMemoryBIOFactory(tls_options, False, factory)
    return GatedFactory(gate, factory)
