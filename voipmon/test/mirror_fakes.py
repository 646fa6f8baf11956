"""Test doubles for the legacy mirror: an in-memory connector and a sender/receiver pair
(their engines are fakes.RecordingEngine, made by fakes.Engines)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.test import iosim
from zope.interface import implementer

from voipmon.central.legacy_mirror import LegacyMirrorReceiver
from voipmon.config import Destination
from voipmon.protocols.legacy_mirror import ReceiverProtocol
from voipmon.sensor.legacy_mirror import LegacyMirrorSender
from voipmon.test.fakes import Engines

PASSWORD = "mirror-secret"


@implementer(IStreamClientEndpoint)
class LoopEndpoint:
    """Each connect() joins the client to a new ReceiverProtocol through iosim.

    ``pumps`` holds one IOPump per connection; ``refuse`` makes connects fail.
    """

    def __init__(self, receiver: LegacyMirrorReceiver) -> None:
        self.receiver = receiver
        self.pumps: list[iosim.IOPump] = []
        self.servers: list[ReceiverProtocol] = []
        self.refuse = False

    def connect(self, factory: Any) -> defer.Deferred:
        if self.refuse:
            return defer.fail(ConnectionRefusedError("refused"))
        client = factory.buildProtocol(None)
        server = ReceiverProtocol(self.receiver)
        server_io = iosim.FakeTransport(server, isServer=True)
        client_io = iosim.FakeTransport(client, isServer=False)
        self.servers.append(server)
        self.pumps.append(iosim.connect(server, server_io, client, client_io, greet=False))
        return defer.succeed(client)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()


def make_pair(clock: Any, sender_clock: Any = None, password: str = PASSWORD,
              id_sensor: int = 7, max_time_diff: float = 2.0, max_buffer_mb: int = 4,
              **sender_kwargs: Any) -> tuple[LegacyMirrorSender, LegacyMirrorReceiver,
                                             LoopEndpoint, Engines]:
    engines = Engines()
    receiver = LegacyMirrorReceiver(Destination("127.0.0.1", 1), password=PASSWORD,
                                    max_time_diff=max_time_diff, engine_factory=engines,
                                    reactor=clock, clock=clock, endpoint=object())
    endpoint = LoopEndpoint(receiver)
    sender_kwargs.setdefault("retry_policy", lambda attempt: 1.0)
    sender = LegacyMirrorSender(Destination("127.0.0.1", 1), id_sensor=id_sensor,
                                name=f"edge-{id_sensor}", password=password,
                                max_buffer_mb=max_buffer_mb, reactor=clock,
                                clock=sender_clock or clock, endpoint=endpoint,
                                **sender_kwargs)
    return sender, receiver, endpoint, engines
