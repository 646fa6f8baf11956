"""Assembly of the management port: the sensor's listening service and the central's
connector. The taps call these; everything they build is injected (reactor, clock).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.application import internet
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python import usage

from voipmon.config import is_loopback
from voipmon.config.settings import ManagerSettings
from voipmon.manager.auth import ManagerAuthClient
from voipmon.manager.client import DEFAULT_TIMEOUT, ManagerClientProtocol, ReplyStream
from voipmon.manager.commands import ICommands
from voipmon.manager.server import ManagerServerFactory
from voipmon.protocols import tls
from voipmon.protocols.admission import AdmissionGate, AdmissionPolicy
from voipmon.protocols.gated import gated
from voipmon.protocols.handshake import derive_key

log = Logger()

# The central opens one connection per command, a few at a time: a small table is plenty.
MANAGER_ADMISSION = AdmissionPolicy(capacity=64, per_source=32, hard_limit=256)


def is_plaintext(manager: ManagerSettings) -> bool:
    """Plain text only when bound to loopback *and* explicitly allowed."""
    return manager.manager_enable_unencrypted and is_loopback(manager.managerip)


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host in ("", "*")


def make_manager_service(manager: ManagerSettings, reactor: Any, *, commands: ICommands,
                         spooldir: str, password: str, id_sensor: int,
                         certificate: tls.ServerCertificate | None = None,
                         port: int | None = None) -> Any:
    """The sensor's management port as a service, or None when ``managerport = 0``.

    It answers with ``commands``, the registry the channel's requests use too (a
    ManagerCommands over the spool, the stats and the call table). Over TLS (always,
    unless :func:`is_plaintext`) the certificate is ``certificate`` or the one kept in
    the spool, and the central proves ``password`` for ``id_sensor``. ``port`` overrides
    ``managerport`` (0: an ephemeral port, for tests and benchmarks).
    """
    if not manager.managerport:
        return None
    port = manager.managerport if port is None else port
    host = manager.managerip
    gate = AdmissionGate(f"management port {port}", reactor, MANAGER_ADMISSION)
    endpoint = tls.server_endpoint(reactor, port, host)
    if is_plaintext(manager):
        listening = gated(gate, ManagerServerFactory(commands, reactor))
        log.warn("management port {host}:{port} is plain text (manager_enable_unencrypted)",
                 host=host, port=port)
    else:
        if manager.manager_enable_unencrypted:
            log.warn("manager_enable_unencrypted ignored: managerip {host} is not loopback",
                     host=host)
        if certificate is None:
            try:
                certificate = tls.load_or_create(spooldir)
            except (tls.CertificateError, OSError) as exc:
                raise usage.UsageError(f"spooldir = {spooldir}: cannot keep the management "
                                       f"port's certificate in it: {exc}")
        factory = ManagerServerFactory(commands, reactor, key=derive_key(password),
                                       id_sensor=id_sensor, binding=tls.exporter_binding)
        listening = gated(gate, factory, certificate.options())
    svc = internet.StreamServerEndpointService(endpoint, listening)
    svc.setName("manager")
    return svc


def advertised_manager(manager: ManagerSettings) -> str:
    """What the sensor puts in the hello's ``manager``: ``host:port``, ``*:port`` when it
    listens on every address (the central then uses the channel's peer address), or ""
    when the central cannot use it (disabled, or plain-text loopback only)."""
    if not manager.managerport or is_plaintext(manager):
        return ""
    host = "*" if is_wildcard(manager.managerip) else manager.managerip
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{manager.managerport}"


def resolve_manager(advertised: str, channel_peer: str) -> tuple[str, int] | None:
    """The central's side: (host, port) to reach from the hello's ``manager`` and the
    address the channel came from; None if the sensor offers no usable port."""
    if not advertised:
        return None
    host, sep, port = advertised.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if is_wildcard(host):
        host = channel_peer
    return host, int(port)


class ManagerConnector:
    """The central's way to a sensor's management port: TLS, the password proof, one
    command per connection (as VoIPmonitor's manager does)."""

    def __init__(self, reactor: Any, password: str, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = 10.0, name: str = "central") -> None:
        self.reactor = reactor
        self.key = derive_key(password)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.name = name

    def connect(self, host: str, port: int, id_sensor: int) -> defer.Deferred:
        """Fires with an authenticated ManagerClientProtocol."""
        auth = ManagerAuthClient(self.key, id_sensor, self.reactor.seconds, self.name)
        proto = ManagerClientProtocol(self.reactor, self.timeout, auth=auth,
                                      binding=tls.exporter_binding)
        tcp = endpoints.HostnameEndpoint(self.reactor, host, port, timeout=self.connect_timeout)
        endpoint = endpoints.wrapClientTLS(tls.client_creator(host), tcp)
        d = endpoints.connectProtocol(endpoint, proto)
        d.addCallback(lambda _: proto.connected_d)
        return d

    def run(self, host: str, port: int, id_sensor: int, line: str, consumer: Any,
            on_size: Callable[[int], None] | None = None) -> defer.Deferred:
        """Send ``line``, stream the body into ``consumer``; fires with the body's size."""

        @defer.inlineCallbacks
        def go() -> Any:
            proto = yield self.connect(host, port, id_sensor)
            try:
                stream: ReplyStream = yield proto.command(line)
                if on_size is not None:
                    on_size(stream.size)
                size = yield stream.deliver(consumer)
                return size
            finally:
                if not proto.lost:
                    proto.transport.loseConnection()

        return go()

    def query(self, host: str, port: int, id_sensor: int, line: str) -> defer.Deferred:
        """A small reply (JSON, text) as bytes."""
        parts: list[bytes] = []

        class _Collect:
            write = parts.append

        d = self.run(host, port, id_sensor, line, _Collect())
        return d.addCallback(lambda _: b"".join(parts))
