"""The deprecated legacy mirror sender: a sensor's frames to a central's ``mirror_bind``.

See ``voipmon.protocols.legacy_mirror`` for the protocol. The sender is the channel's own
sensor side without TLS: the mirroring buffer (``MirrorUplink``: batches bounded by
``max_buffer_mem``, drops counted, unacknowledged batches resent after a reconnect) behind
an ``AuthenticatingEndpoint`` over plain TCP, which a ``ClientService`` reconnects with
backoff. A sensor with ``mirror_destination`` and no ``server_destination`` makes no CDRs:
its source (``--read-pcap`` or live capture) feeds the sender directly
(``sender_service``). Stopping waits (up to ``stop_timeout`` seconds, connecting if need
be) for the receiver to acknowledge what is buffered, then says what it could not send.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from voipmon import __version__
from voipmon.config import Destination, SensorSettings
from voipmon.protocols.channel import ChannelProtocol
from voipmon.protocols.client import AuthenticatingEndpoint
from voipmon.protocols.failover import FailoverEndpoint, FailoverRoundFailed, describe_failure
from voipmon.protocols.handshake import ClientHandshake, derive_key
from voipmon.protocols.legacy_mirror import COMPRESSION, HANDSHAKE_TIMEOUT, no_binding
from voipmon.sensor.mirror import MirrorUplink
from voipmon.sensor.uplink import UplinkFactory
from voipmon.sources import registry as sources
from voipmon.sources.interfaces import IFrameSink, Record

log = Logger()


@implementer(IFrameSink)
class LegacyMirrorSender(service.Service):
    """A sensor's frames, buffered and delivered to one legacy mirror receiver.

    ``feed``/``feed_all`` buffer (the source's sink); ``flush`` sends the batch being
    filled now (the buffer does so by itself after a moment).
    """

    def __init__(self, destination: Destination, *, id_sensor: int, name: str, password: str,
                 max_buffer_mb: int, reactor: Any, clock: IReactorTime | None = None,
                 endpoint: IStreamClientEndpoint | None = None,
                 retry_policy: Callable[[int], float] | None = None,
                 stop_timeout: float = 5.0) -> None:
        self.destination = destination
        self.clock = clock if clock is not None else reactor
        self.stop_timeout = stop_timeout
        self.last_error = ""
        self.uplink = MirrorUplink(self.clock, max_buffer_mb << 20)
        if endpoint is None:
            endpoint = endpoints.HostnameEndpoint(reactor, destination.host, destination.port)
        key = derive_key(password)
        params = dict(id_sensor=id_sensor, name=name or f"sensor {id_sensor}",
                      version=__version__, mode="mirror", compression=COMPRESSION,
                      instance=secrets.token_hex(16), seconds=self.clock.seconds)
        self.endpoint = AuthenticatingEndpoint(endpoint, lambda: ClientHandshake(key, **params),
                                               COMPRESSION, self.clock, no_binding,
                                               handshake_timeout=HANDSHAKE_TIMEOUT)
        failover = FailoverEndpoint([(str(destination), self.endpoint)], self.clock,
                                    on_round_failed=self._round_failed)
        factory = UplinkFactory(self.uplink, on_lost=self._lost, on_made=self._made)
        self.client = ClientService(failover, factory,
                                    retryPolicy=retry_policy or failover.retry_delay,
                                    clock=self.clock)

    # -- the sink --------------------------------------------------------------------------

    def feed(self, ts: float, linktype: int, frame: bytes) -> bool:
        return self.uplink.feed(ts, linktype, frame)

    def feed_all(self, records: Iterable[Record]) -> int:
        return self.uplink.feed_all(records)

    def flush(self) -> None:
        """Send the batch being filled now."""
        self.uplink.seal()
        self.uplink.pump()

    # -- connection events ----------------------------------------------------------------

    def _made(self, channel: ChannelProtocol) -> None:
        self.last_error = ""
        log.info("legacy mirror: connected to {dest} (deprecated mode: plain TCP; prefer "
                 "packetbuffer_sender = yes); {count} packets to resend",
                 dest=self.destination, count=self.unacknowledged)

    def _lost(self, reason: Failure) -> None:
        if not self.running:
            log.info("legacy mirror: disconnected from {dest}", dest=self.destination)
            return
        self.last_error = reason.getErrorMessage()
        log.warn("legacy mirror: connection to {dest} broke: {reason}; reconnecting",
                 dest=self.destination, reason=self.last_error)

    def _round_failed(self, error: FailoverRoundFailed) -> None:
        self.last_error = "; ".join(describe_failure(f) for _name, f in error.attempts)

    # -- lifecycle and counters ------------------------------------------------------------

    @property
    def unacknowledged(self) -> int:
        return self.uplink.packets - self.uplink.packets_acked

    def startService(self) -> None:
        service.Service.startService(self)
        self.client.startService()

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        self.flush()
        drained = self.uplink.when_acknowledged()
        if not drained.called:  # connected or still connecting: give it stop_timeout
            timer = self.clock.callLater(self.stop_timeout, drained.cancel)
            drained.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])

        def stop(_: object) -> defer.Deferred[None]:
            lost = self.unacknowledged
            if lost:
                log.warn("legacy mirror: stopping with {count} packets not acknowledged by "
                         "{dest}; they are lost", count=lost, dest=self.destination)
            self.uplink.close()
            return self.client.stopService()

        return drained.addErrback(lambda f: f.trap(defer.CancelledError)).addCallback(stop)

    def stats(self) -> dict[str, object]:
        uplink = self.uplink
        return {"destination": str(self.destination), "connected": uplink.transport is not None,
                "packets": uplink.packets, "dropped": uplink.dropped,
                "acknowledged": uplink.packets_acked, "unacknowledged": self.unacknowledged,
                "buffer_bytes": uplink.used, "last_error": self.last_error}


def sender_service(settings: SensorSettings, reactor: Any, *,
                   read_pcap: str | None = None) -> service.MultiService:
    """A legacy mirror sensor: its source (``--read-pcap`` or live capture) feeding the
    sender to ``mirror_destination``."""
    destination = settings.mirroring.mirror_destination
    if destination is None:
        raise ValueError("a legacy mirror sender needs mirror_destination")
    channel = settings.channel
    top = service.MultiService()
    top.setName("voipmon-sensor")
    sender = LegacyMirrorSender(destination, id_sensor=channel.id_sensor,
                                name=channel.name_sensor, password=channel.server_password,
                                max_buffer_mb=settings.mirroring.max_buffer_mem,
                                reactor=reactor)
    sender.setServiceParent(top)
    source = sources.from_config(settings, sender, reactor, read_pcap=read_pcap)
    source.setServiceParent(top)
    return top
