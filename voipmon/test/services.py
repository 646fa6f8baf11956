"""The sensor and central services for tests, wired as their taps wire them.

Each builder follows its tap's ``makeService`` with test parts where a test needs them:
in-memory endpoints to the centrals (``connect``), a fixed channel binding, a fake store,
a fake analyser factory, a Clock apart from the reactor, an ephemeral port.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

from voipmon.central import legacy_mirror
from voipmon.central import tap as central_tap
from voipmon.central.cdrbatch import ReadPool, inline
from voipmon.central.cdrqueue import QUEUE_DIRECTORY, CentralCdrQueue
from voipmon.central.metrics import CentralMetrics
from voipmon.central.mirror import AnalyzerFactory
from voipmon.central.service import CentralService, StoreService, mirror_engine_factory
from voipmon.config import CentralSettings, Destination, SensorSettings
from voipmon.manager.commands import ManagerCommands
from voipmon.manager.service import ManagerConnector, make_manager_service
from voipmon.protocols import tls
from voipmon.sensor import tap as sensor_tap
from voipmon.sensor.centrals import Route, centrals, tls_route
from voipmon.sensor.metrics import SensorMetrics
from voipmon.sensor.service import GIVE_UP_AFTER, SensorService
from voipmon.sources import registry as sources
from voipmon.sources.interfaces import ISource
from voipmon.spool.deadletter import DIRECTORY as DEAD_LETTERS
from voipmon.spool.deadletter import DeadLetters
from voipmon.spool.queues import spool_queue
from voipmon.store.dialect import dialect_for
from voipmon.store.interfaces import IStore
from voipmon.store.sqlstore import SqlStore
from voipmon.web.site import make_web_service


def build_sensor(settings: SensorSettings, reactor: Any, *, clock: IReactorTime | None = None,
                 read_pcap: str | None = None, source: ISource | None = None,
                 connect: Callable[[Destination], IStreamClientEndpoint] | None = None,
                 binding: Callable[[Any], bytes] = tls.exporter_binding,
                 on_exit: Callable[[int, str], None] | None = None,
                 give_up_after: float = GIVE_UP_AFTER,
                 commands: ManagerCommands | None = None) -> SensorService:
    """A sensor as voipmon.sensor.tap builds it (no management port, no retention):
    ``commands`` (a ManagerCommands; one over its spool if not given) answers the
    central's requests, with the service as its stats and call table."""
    clock = clock if clock is not None else reactor
    dead_letters = DeadLetters(os.path.join(settings.spool.spooldir, DEAD_LETTERS), clock)
    metrics = SensorMetrics(settings.channel.id_sensor, clock, sensor_tap.mode_of(settings))
    uplink, engine, queue = sensor_tap.uplink_for(settings, clock, dead_letters,
                                                  metrics.outcomes)
    if source is None:
        source = sources.from_config(settings, uplink if engine is None else engine, reactor,
                                     read_pcap=read_pcap, clock=clock)

    def route(destination: Destination) -> Route:
        if connect is None:
            return tls_route(settings, reactor, destination)
        return connect(destination), None

    if commands is None:
        commands = ManagerCommands(settings.spool.spooldir)
    found = centrals(settings, route, mode=uplink.mode, replay=not source.live, clock=clock,
                     binding=binding, commands=commands)
    channel = settings.channel
    sensor = SensorService(uplink, source, found, id_sensor=channel.id_sensor, clock=clock,
                         dead_letters=dead_letters, engine=engine, queue=queue,
                         failback_interval=channel.failback_probe_interval,
                         verified=bool(channel.server_certificate_sha256
                                       or channel.server_ca_file),
                         on_exit=on_exit, give_up_after=give_up_after, metrics=metrics)
    commands.stats = commands.calls = sensor
    return sensor


def manager_service(settings: SensorSettings, reactor: Any, stats: Any = None,
                    calls: Any = None, port: int | None = None) -> Any:
    """The sensor's management port as its tap builds it from ``settings`` (``port``
    overrides managerport; 0: ephemeral)."""
    channel = settings.channel
    return make_manager_service(settings.manager, reactor,
                                commands=ManagerCommands(settings.spool.spooldir, stats, calls),
                                spooldir=settings.spool.spooldir,
                                password=channel.server_password, id_sensor=channel.id_sensor,
                                port=port)


def build_central(settings: CentralSettings, reactor: Any, *, store: IStore | None = None,
                  clock: IReactorTime | None = None, port: int | None = None,
                  endpoint: Any = None, binding: Callable[[Any], bytes] = tls.exporter_binding,
                  engines: AnalyzerFactory | None = None,
                  http_port: int | None = None) -> CentralService:
    """A central as voipmon.central.tap builds it; ``port`` and ``http_port`` override the
    settings' (0: ephemeral), ``endpoint`` replaces the sensors' listening endpoint."""
    # On the real reactor, CDR batches are read in a thread as in a central.
    reader = ReadPool(reactor) if clock is None else None
    clock = clock if clock is not None else reactor
    channel, spooldir = settings.channel, settings.spool.spooldir
    certificate = central_tap.channel_certificate(settings)
    central_id = f"{socket.gethostname()}:{channel.server_bind_port}"
    if store is None:
        store = SqlStore(dialect_for(settings.store), reactor, central_id=central_id)
    dead_letters = DeadLetters(os.path.join(spooldir, DEAD_LETTERS), clock)
    cdr_queue = CentralCdrQueue(spool_queue(settings, QUEUE_DIRECTORY), store, clock,
                                dead_letters=dead_letters)
    if engines is None:
        engines = mirror_engine_factory(spooldir, dead_letters)
    if endpoint is None:
        endpoint = tls.server_endpoint(
            reactor, channel.server_bind_port if port is None else port, channel.server_bind)
    metrics = CentralMetrics(clock)
    listener = central_tap.sensor_listener(settings, store, cdr_queue, engines, dead_letters,
                                           certificate, clock, name=central_id,
                                           endpoint=endpoint, binding=binding, metrics=metrics,
                                           prepare=inline if reader is None else reader.prepare)
    central = CentralService(StoreService(store, clock), cdr_queue, listener, certificate)
    connector = ManagerConnector(reactor, channel.server_password, name=central_id)
    for extra in (reader, central_tap.database_retention(settings, central.store_service, clock),
                  make_web_service(settings.http, spooldir, reactor, store,
                                   channels=listener.central_factory.registry,
                                   central_name=central_id, connector=connector,
                                   mirror_calls=listener.mirrors.active_calls,
                                   port=http_port, certificate=certificate, metrics=metrics),
                  legacy_mirror.receiver_service(settings, cdr_queue, dead_letters, reactor)):
        if extra is not None:
            extra.setServiceParent(central)
    return central
