"""The sensor's way to its centrals: one authenticating endpoint per destination.

``centrals`` turns the channel settings into ``Central`` entries: a TLS endpoint for each
``server_destination`` (pinned, CA-verified or unverified) under the handshake, and the
same for a failback probe of the first one. The sensor service runs them through a
``FailoverEndpoint``; tests put in-memory endpoints in their place (``connect``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet import endpoints, protocol
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from zope.interface import implementer

import voipmon
from voipmon.analysis.settings import analysis_to_hello
from voipmon.config import Destination, SensorSettings, destinations
from voipmon.manager.commands import ICommands
from voipmon.manager.service import advertised_manager
from voipmon.protocols import tls
from voipmon.protocols.capabilities import SUPPORTED
from voipmon.protocols.client import AuthenticatingEndpoint, ISessionProtocol
from voipmon.protocols.handshake import ClientHandshake, derive_key

CONNECT_TIMEOUT = 5.0

#: The TCP (+TLS) endpoint to one central, and its certificate check when that check can
#: say why it refused (a pin that does not match), else None.
Route = tuple[IStreamClientEndpoint, tls.PinningClientCreator | None]


@dataclass(frozen=True)
class Central:
    """One central as this sensor reaches it."""

    name: str                                 # host:port, for logs and sniffer_stat
    endpoint: IStreamClientEndpoint           # connects and completes the handshake
    probe: IStreamClientEndpoint              # the same, as a failback probe
    pin: tls.PinningClientCreator | None      # says why a pinned certificate was refused

    def pin_mismatch(self) -> str | None:
        return self.pin.mismatch if self.pin is not None else None


def tls_route(settings: SensorSettings, reactor: IReactorTime,
              destination: Destination) -> Route:
    """The TLS endpoint to one central, trusting it as ``server_certificate_sha256`` or
    ``server_ca_file`` say."""
    channel = settings.channel
    creator = tls.client_creator(destination.host, pin=channel.server_certificate_sha256,
                                 ca_file=channel.server_ca_file)
    tcp = endpoints.HostnameEndpoint(reactor, destination.host, destination.port,
                                     timeout=CONNECT_TIMEOUT)
    pin = creator if isinstance(creator, tls.PinningClientCreator) else None
    return endpoints.wrapClientTLS(creator, tcp), pin


def centrals(settings: SensorSettings, connect: Callable[[Destination], Route], *,
             mode: str, replay: bool, clock: IReactorTime,
             binding: Callable[[object], bytes] = tls.exporter_binding,
             commands: ICommands | None = None) -> list[Central]:
    """Every ``server_destination``, in order, reached through ``connect`` and
    authenticated with the hello this sensor says (``mode``: local or mirror; ``replay``:
    a capture file, not live packets). ``commands`` (the management port's registry)
    answers the central's requests over the channel; without it the sensor does not
    offer the ``requests`` capability."""
    channel = settings.channel
    key = derive_key(channel.server_password)
    params = dict(id_sensor=channel.id_sensor, name=channel.name_sensor,
                  version=voipmon.__version__, mode=mode,
                  compression=channel.server_type_compress, instance=secrets.token_hex(16),
                  manager=advertised_manager(settings.manager), replay=replay,
                  analysis=analysis_to_hello(settings.analysis) if mode == "mirror" else {},
                  capabilities={name: level for name, level in SUPPORTED.items()
                                if commands is not None or name != "requests"})
    seconds = clock.seconds  # the reactor's: wall-clock UTC epoch seconds

    def hello(probe: bool) -> Callable[[], ClientHandshake]:
        return lambda: ClientHandshake(key, seconds=seconds, probe=probe, **params)

    def authenticated(transport: IStreamClientEndpoint, probe: bool) -> AuthenticatingEndpoint:
        return AuthenticatingEndpoint(transport, hello(probe), channel.server_type_compress,
                                      clock, binding, None if probe else commands)

    found = []
    for destination in destinations(channel):
        transport, pin = connect(destination)
        found.append(Central(str(destination), authenticated(transport, False),
                             authenticated(transport, True), pin))
    return found


def pin_mismatches(found: Sequence[Central]) -> dict[str, str | None]:
    return {central.name: central.pin_mismatch() for central in found}


@implementer(ISessionProtocol)
class ProbeSession(protocol.Protocol):
    """The session of a failback probe: it only proves the primary answers (the central
    closes a probe after its ACCEPT; nothing else is handled)."""

    def handlers(self) -> list[object]:
        return []
