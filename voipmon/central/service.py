"""The central's service tree: TLS listener for sensors, store, mirroring engines, HTTP.

Built by the tap (voipmon.central.tap). Start order: the store (retried until the database
answers: sensors may connect meanwhile,
their CDRs wait on their own disks, and CDRs made here from mirrored packets wait in the
central's CDR queue), then the channel listener, the HTTP API and the legacy mirror
receiver. Once the store has started, the CDR queue stores what it holds, beginning with
what a previous run left. Stop order: stop listening, close every sensor connection (their
unacknowledged CDRs stay queued on the sensors), close the mirroring sensors' calls (their
CDRs go to the CDR queue on disk), give the queue a bounded moment to reach a database
that is up, then close the queue and the store.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Generator

from twisted.application import internet, service
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from voipmon.analysis.engine import Engine
from voipmon.analysis.settings import analysis_from_hello, engine_for
from voipmon.central.cdrqueue import CentralCdrQueue
from voipmon.central.mirror import AnalyzerFactory, MirrorAnalyses
from voipmon.central.sessions import CentralSessions
from voipmon.protocols import tls
from voipmon.protocols.admission import AdmissionGate
from voipmon.protocols.failover import describe_failure
from voipmon.protocols.gated import gated
from voipmon.protocols.handshake import Hello
from voipmon.protocols.server import CentralFactory
from voipmon.records.cdr import Cdr
from voipmon.spool.deadletter import IDeadLetters
from voipmon.spool.retention import Minute, Retention, scan
from voipmon.store.interfaces import IStore

log = Logger()

STORE_RETRY = 5.0
STOP_WAIT = 10.0
_SENSOR_DIR = re.compile(r"\d{1,5}\Z")


def sensor_spool(spooldir: str, id_sensor: int) -> str:
    """Where the central writes a mirroring sensor's pcaps: ``spooldir/<id_sensor>``."""
    return os.path.join(spooldir, str(int(id_sensor)))


def mirror_engine_factory(spooldir: str, dead_letters: IDeadLetters | None = None
                          ) -> AnalyzerFactory:
    """Engines for mirroring sensors: the sensor's own analysis settings, per-sensor pcaps
    under ``spooldir``, and the central's dead letters for a CDR the CDR queue cannot take."""

    def make(hello: Hello, on_cdr: Callable[[Cdr], object]) -> Engine:
        prefix = str(int(hello.id_sensor))

        def relative_to_central(cdr: Cdr) -> None:
            # The engine writes relative to the sensor's directory; the store and the
            # HTTP API resolve pcaps relative to the central's spool.
            on_cdr(dataclasses.replace(
                cdr, sip_pcap=f"{prefix}/{cdr.sip_pcap}" if cdr.sip_pcap else "",
                rtp_pcap=f"{prefix}/{cdr.rtp_pcap}" if cdr.rtp_pcap else ""))

        return engine_for(analysis_from_hello(hello.analysis), id_sensor=hello.id_sensor,
                          spooldir=sensor_spool(spooldir, hello.id_sensor),
                          on_cdr=relative_to_central, on_record=on_cdr,
                          dead_letters=dead_letters)

    return make


class CentralRetention(Retention):
    """maxpoolsize/maxpooldays over the central's spool *and* every per-sensor directory."""

    def minutes(self) -> list[Minute]:
        minutes = super().minutes()
        try:
            names = sorted(e.name for e in os.scandir(self.spooldir)
                           if _SENSOR_DIR.match(e.name) and e.is_dir(follow_symlinks=False))
        except OSError:
            names = []
        for name in names:
            minutes += [Minute(m.start, f"{name}/{m.relpath}", m.size)
                        for m in scan(os.path.join(self.spooldir, name))]
        return minutes


class StoreService(service.Service):
    """Starts the store, retrying every 5 s while the database is unreachable."""

    name = "store"

    def __init__(self, store: IStore, clock: IReactorTime) -> None:
        self.store = store
        self.clock = clock
        self.started: defer.Deferred = defer.Deferred()
        self._retry: IDelayedCall | None = None
        self._attempts = 0

    def startService(self) -> None:
        super().startService()
        self._start()

    def _start(self) -> None:
        self._retry = None
        self._attempts += 1
        d = defer.maybeDeferred(self.store.start)

        def ok(_: object) -> None:
            log.info("store ready: {where}", where=self.store.where)
            if not self.started.called:
                self.started.callback(None)

        def failed(failure: Failure) -> None:
            if not self.running:
                return
            if self._attempts == 1:
                log.error("store {where} unavailable: {error}; retrying every {delay:g} s "
                          "(sensors keep their CDRs until it is back)",
                          where=self.store.where,
                          error=describe_failure(failure), delay=STORE_RETRY)
            self._retry = self.clock.callLater(STORE_RETRY, self._start)

        d.addCallbacks(ok, failed)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        return defer.maybeDeferred(self.store.close).addErrback(
            lambda f: log.failure("closing the store", f))


class ChannelService(internet.StreamServerEndpointService):
    """The TLS listener for sensors; stopping it also closes every sensor connection.

    It listens on a TCP endpoint with ``factory`` under TLS, behind ``gate`` (the admission
    of connections in their handshake).
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: CentralFactory,
                 sessions: CentralSessions, mirrors: MirrorAnalyses, cdr_queue: CentralCdrQueue,
                 clock: IReactorTime, gate: AdmissionGate,
                 tls_options: IOpenSSLServerConnectionCreator) -> None:
        super().__init__(endpoint, gated(gate, factory, tls_options))
        self.central_factory = factory
        self.gate = gate
        self.sessions = sessions
        self.mirrors = mirrors
        self.cdr_queue = cdr_queue
        self.clock = clock
        self.listening: defer.Deferred = defer.Deferred()
        self.setName("channel")

    _raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as exc:
            # A central that cannot listen is useless: exit with one clear line.
            raise SystemExit(f"voipmon-central: cannot listen for sensors: {exc}")

        def listening(port: IListeningPort) -> IListeningPort:
            address = port.getHost()
            if address is not None:
                log.info("listening for sensors on {host}:{port} (TLS 1.2+)",
                         host=address.host, port=address.port)
            if not self.listening.called:
                self.listening.callback(port)
            return port

        self._waitingForPort.addCallback(listening)

    def stopService(self) -> defer.Deferred:
        listening = defer.maybeDeferred(super().stopService)
        return defer.gatherResults([listening, self._wind_down()], consumeErrors=True)

    @defer.inlineCallbacks
    def _wind_down(self) -> Generator[defer.Deferred, object, None]:
        """Close every sensor, then wait (bounded) for what they leave to be written."""
        channels = list(self.central_factory.registry.channels())
        for channel in channels:
            channel.close("the central is shutting down")
        yield self._bounded(defer.DeferredList([c.lost for c in channels]))
        yield self._bounded(self.mirrors.stop())
        # A database that is up gets a moment to take the queue (so a central retired for
        # good leaves nothing behind); one that is down does not hold the shutdown up.
        yield self._bounded(self.cdr_queue.settled())
        for _ in range(int(STOP_WAIT / 0.1)):
            if self.sessions.idle():
                break
            yield task.deferLater(self.clock, 0.1, lambda: None)
        self.cdr_queue.stop()
        self.sessions.stop()

    def _bounded(self, d: defer.Deferred) -> defer.Deferred:
        """``d``, or nothing after STOP_WAIT seconds (a shutdown must not hang)."""
        timeout = task.deferLater(self.clock, STOP_WAIT, lambda: None)
        first = defer.DeferredList([d, timeout], fireOnOneCallback=True, consumeErrors=True)

        def done(result: object) -> object:
            if not timeout.called:
                timeout.cancel()
            return result

        return first.addBoth(done)


class CentralService(service.MultiService):
    """Everything one central process runs, from parts its tap built.

    The store starts first (retried until the database answers); once it has, the CDR
    queue stores what it holds. ``channel`` is the listener for sensors. Other services
    (HTTP, retention, the legacy mirror receiver) are added by the tap. The store stops
    last, once nothing writes to it any more.
    """

    def __init__(self, store: StoreService, cdr_queue: CentralCdrQueue,
                 channel: ChannelService, certificate: tls.ServerCertificate) -> None:
        super().__init__()
        self.setName("voipmon-central")
        self.store_service = store
        self.store = store.store
        self.cdr_queue = cdr_queue
        self.channel = channel
        self.certificate = certificate
        store.setServiceParent(self)
        store.started.addCallback(lambda _: cdr_queue.start())
        channel.setServiceParent(self)
        log.info("channel TLS certificate SHA-256 {fingerprint} ({source}{generated}); "
                 "sensors may pin it with server_certificate_sha256",
                 fingerprint=certificate.fingerprint, source=certificate.source,
                 generated=", generated now" if certificate.generated else "")

    def stopService(self) -> defer.Deferred:
        """Stop everything else first; close the store once nothing writes to it any more."""
        if not self.running:
            return defer.succeed(None)
        service.Service.stopService(self)
        others = [child for child in reversed(list(self)) if child is not self.store_service]
        d = defer.DeferredList([defer.maybeDeferred(child.stopService) for child in others],
                               consumeErrors=True)
        d.addCallback(lambda _: self.store_service.stopService())
        return d
