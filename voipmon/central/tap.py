"""``twistd voipmon-central``: command-line options and the central's wiring diagram.

``Options`` reads and checks the config; ``makeService`` builds every part from the
settings (certificate, store, CDR queue, the listener for sensors and what serves them,
the HTTP API...) and hands them to ``CentralService``. A config problem found while
building (a spool the CDR queue cannot use, a certificate that cannot be made) is a
``UsageError``, raised before anything starts; the plugin prints it as one line.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import threads
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from voipmon.central import legacy_mirror
from voipmon.central.cdrbatch import Prepare, ReadPool, inline
from voipmon.central.cdrqueue import QUEUE_DIRECTORY, CentralCdrQueue
from voipmon.central.dbretention import DatabaseRetention
from voipmon.central.metrics import CentralMetrics
from voipmon.central.mirror import AnalyzerFactory, MirrorAnalyses
from voipmon.central.service import (
    CentralRetention,
    CentralService,
    ChannelService,
    StoreService,
    mirror_engine_factory,
)
from voipmon.central.sessions import CentralSessions
from voipmon.config import CentralSettings, is_loopback, load_central_config
from voipmon.manager.service import ManagerConnector
from voipmon.protocols import tls
from voipmon.protocols.admission import AdmissionGate
from voipmon.protocols.handshake import derive_key
from voipmon.protocols.server import CentralFactory, SessionRegistry
from voipmon.spool.deadletter import DIRECTORY as DEAD_LETTERS
from voipmon.spool.deadletter import DeadLetters
from voipmon.spool.queues import spool_queue
from voipmon.store.dialect import dialect_for
from voipmon.store.interfaces import IStore
from voipmon.store.sqlstore import SqlStore
from voipmon.web.site import make_web_service

log = Logger()


class Options(usage.Options):
    synopsis = "--config PATH"
    longdesc = (
        "Run a voipmon central: accept sensors over TLS, store their CDRs in MySQL/MariaDB "
        "or embedded SQLite, and serve the HTTP API and web page."
    )
    optParameters = [
        ["config", "c", "/etc/voipmon/voipmon-central.conf",
         "Central config file (voipmonitor.conf syntax)."],
    ]

    def postOptions(self) -> None:
        settings = load_central_config(self["config"])
        http, channel = settings.http, settings.channel
        if http.http_port and not is_loopback(http.http_bind):
            for key, value in (("http_user", http.http_user),
                               ("http_password", http.http_password)):
                if not value:
                    raise settings.error(
                        key,
                        f"is required because http_bind = {http.http_bind} is not loopback",
                        "a non-empty text",
                    )
        if channel.tls_certificate:
            try:
                tls.load_certificate(channel.tls_certificate, channel.tls_private_key)
            except tls.CertificateError as exc:
                raise settings.error("tls_certificate", str(exc),
                                     "a readable PEM certificate whose key matches")
        elif channel.tls_private_key:
            raise settings.error("tls_private_key", "is set but tls_certificate is not",
                                 "both, or neither (a self-signed certificate is made)")
        self["central"] = settings


def makeService(config: Options, reactor: Any = None) -> service.MultiService:
    """The central: sensors -> channel -> sessions -> (mirroring engines -> CDR queue ->)
    store; the HTTP API and the legacy mirror receiver beside them."""
    if reactor is None:
        from twisted.internet import reactor
    settings: CentralSettings = config["central"]
    for warning in settings.warnings:
        log.warn("config: {problem}", problem=warning)
    channel, spooldir = settings.channel, settings.spool.spooldir
    certificate = channel_certificate(settings)
    central_id = f"{socket.gethostname()}:{channel.server_bind_port}"
    store = SqlStore(dialect_for(settings.store), reactor, central_id=central_id)
    dead_letters = DeadLetters(os.path.join(spooldir, DEAD_LETTERS), reactor)
    cdr_queue = CentralCdrQueue(spool_queue(settings, QUEUE_DIRECTORY), store, reactor,
                                dead_letters=dead_letters)
    engines = mirror_engine_factory(spooldir, dead_letters)
    metrics = CentralMetrics(reactor)
    metrics.bind_store_errors(store.counters)
    reader = ReadPool(reactor)
    listener = sensor_listener(settings, store, cdr_queue, engines, dead_letters, certificate,
                               reactor, name=central_id, endpoint=tls.server_endpoint(
                                   reactor, channel.server_bind_port, channel.server_bind),
                               prepare=reader.prepare,
                               metrics=metrics)
    central = CentralService(StoreService(store, reactor), cdr_queue, listener, certificate)
    connector = ManagerConnector(reactor, channel.server_password, name=central_id)
    optional = [
        reader,
        metrics.holder_watch(store, central_id),
        database_retention(settings, central.store_service, reactor),
        make_web_service(settings.http, spooldir, reactor, store,
                         channels=listener.central_factory.registry,
                         central_name=central_id, connector=connector,
                         mirror_calls=listener.mirrors.active_calls,
                         certificate=certificate, metrics=metrics),
        legacy_mirror.receiver_service(settings, cdr_queue, dead_letters, reactor),
        spool_retention(settings, reactor),
    ]
    for extra in optional:
        if extra is not None:
            extra.setServiceParent(central)
    return central


def channel_certificate(settings: CentralSettings) -> tls.ServerCertificate:
    """The channel's certificate: configured, or self-signed and kept in the spool."""
    channel, spooldir = settings.channel, settings.spool.spooldir
    try:
        return tls.load_or_create(spooldir, channel.tls_certificate, channel.tls_private_key)
    except (tls.CertificateError, OSError) as exc:
        if channel.tls_certificate:
            raise settings.error("tls_certificate", str(exc),
                                 "a readable PEM certificate whose key matches")
        raise usage.UsageError(f"{settings.where('spooldir')}: spooldir = {spooldir}: cannot "
                               f"keep the channel certificate in it: {exc}")


def sensor_listener(settings: CentralSettings, store: IStore, cdr_queue: CentralCdrQueue,
                    engines: AnalyzerFactory, dead_letters: DeadLetters,
                    certificate: tls.ServerCertificate, clock: IReactorTime, *, name: str,
                    endpoint: IStreamServerEndpoint,
                    binding: Callable[[Any], bytes] = tls.exporter_binding,
                    metrics: CentralMetrics | None = None,
                    prepare: Prepare = inline) -> ChannelService:
    """The sensors' channel: TLS under an admission gate on ``endpoint``, the handshake,
    and a session per sensor (its CDRs to the store; its mirrored packets to an engine of
    ``engines``, whose CDRs go to the CDR queue). ``metrics`` is told of every sensor and
    counts what the mirroring engines make; ``prepare`` where the sensors' CDR batches are
    read (voipmon.central.cdrbatch: the reactor's thread pool in a central)."""
    channel = settings.channel
    if metrics is None:
        metrics = CentralMetrics(clock)
    mirrors = MirrorAnalyses(metrics.analyzers(engines), cdr_queue, clock)
    registry = SessionRegistry(clock)   # the one map of the sensors connected here
    sessions = CentralSessions(store, clock, registry, mirrors=mirrors,
                               dead_letters=dead_letters, metrics=metrics, prepare=prepare)
    factory = CentralFactory(derive_key(channel.server_password),
                             channel.client_server_connect_maximum_time_diff_s, sessions, clock,
                             binding, central_name=name, registry=registry)
    metrics.bind(cdr_queue=cdr_queue, store=store, channels=registry.channels)
    gate = AdmissionGate(f"sensor port {channel.server_bind_port}", clock)
    return ChannelService(endpoint, factory, sessions, mirrors, cdr_queue, clock, gate,
                          certificate.options())


def database_retention(settings: CentralSettings, store: StoreService,
                       clock: IReactorTime) -> DatabaseRetention | None:
    """``cleandatabase``: old calls deleted hourly, once the store has started."""
    if not settings.store.cleandatabase:
        return None
    cleaner = DatabaseRetention(store.store, settings.store.cleandatabase, clock)
    store.started.addCallback(lambda _: cleaner.ready())
    return cleaner


def spool_retention(settings: CentralSettings, reactor: Any) -> CentralRetention | None:
    """``maxpoolsize``/``maxpooldays`` over the spool and every per-sensor directory."""
    spool = settings.spool
    if not (spool.maxpoolsize or spool.maxpooldays):
        return None
    return CentralRetention(spool.spooldir, spool.maxpoolsize, spool.maxpooldays, reactor,
                            blocking=lambda f: threads.deferToThreadPool(
                                reactor, reactor.getThreadPool(), f))
