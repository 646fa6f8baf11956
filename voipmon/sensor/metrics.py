"""The sensor's one metrics registry: what every view of its figures reads.

``SensorMetrics`` is built by the tap before the parts (the engine's CDR callback goes
through its ``CallOutcomes``), then ``bind`` registers each part as a source: the packet
source (``CAPTURE``; a HEP source's messages, refusals and malformed input too: ``HEP``),
the engine with its decoder (``ENGINE``, ``DECODER`` under ``decoder.``), the uplink
(``CDR_UPLINK`` or ``MIRROR_UPLINK``), the channel (through ``Carried``: a new channel
object at each connection), the failover endpoint, dead letters and the process. The
STATS push (``SnapshotTaker``), ``sniffer_stat``, the status log line and a sensor's own
/metrics all read this registry; nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from voipmon.counters import Counters
from voipmon.metrics import bindings
from voipmon.metrics.calls import CallOutcomes
from voipmon.metrics.catalog import Scope
from voipmon.metrics.collectors import ProcessSource
from voipmon.metrics.snapshot import Figures
from voipmon.metrics.sources import (
    Bind,
    Carried,
    Collection,
    CountersSource,
    IMetricsSource,
    MetricsRegistry,
    SnapshotTaker,
)
from voipmon.protocols.failover import FailoverEndpoint
from voipmon.sources.hep import HepSource

CHANNEL_LEVELS = ("rtt", "clock_skew")


def under(prefix: str, table: Mapping[str, str | Bind]) -> dict[str, str | Bind]:
    """A table for a part's counters read under ``prefix.`` (the engine's ``decoder.``)."""
    return {f"{prefix}.{key}": target for key, target in table.items()}


def channel_counters(channel: Any) -> Counters:
    """The sensor's channel as ``bindings.CHANNEL`` names it."""
    out: Counters = {"payload_bytes": channel.payload_bytes_sent,
                     "wire_bytes": channel.wire_bytes_sent}
    if channel.rtt is not None:
        out["rtt"] = channel.rtt
    skew = getattr(getattr(channel, "handshake", None), "skew", None)
    if skew is not None:
        out["clock_skew"] = skew
    return out


@implementer(IMetricsSource)
class FailoverSource:
    """Which central of server_destination is in use, and how often the sensor moved."""

    def __init__(self, failover: FailoverEndpoint) -> None:
        self.failover = failover

    def __repr__(self) -> str:
        return "<FailoverSource>"

    def collect_metrics(self, into: Collection) -> None:
        failover = self.failover
        into.own.counter("voipmon_channel_failovers_total", failover.switches)
        for index, name in enumerate(failover.names):
            into.own.gauge("voipmon_channel_central_in_use",
                           int(index == failover.connected_index), central=name[:64])


class SensorMetrics:
    """The registry of one sensor process, its call outcomes, its channel's counts and
    the snapshots it pushes (see the module docstring)."""

    def __init__(self, id_sensor: int, clock: IReactorTime, mode: str) -> None:
        self.registry = MetricsRegistry(Scope.SENSOR)
        self.outcomes = CallOutcomes()
        self.channel = Carried(gauges=CHANNEL_LEVELS)
        self.sessions = 0            # channel sessions established; reconnects = the rest
        self.taker = SnapshotTaker(self.registry, id_sensor, clock, mode=mode)

    def bind(self, *, source: Any, uplink: Any, engine: Any, dead_letters: Any,
             failover: FailoverEndpoint) -> None:
        """Register the sensor's parts (``engine`` None when mirroring)."""
        add = self.registry.add
        add(CountersSource(source.stats, bindings.CAPTURE, name="capture"))
        for part in getattr(source, "sources", (source,)):     # a SourceSet's, or itself
            if isinstance(part, HepSource):
                add(CountersSource(part.counters, bindings.HEP, name="hep"))
        if engine is not None:
            add(CountersSource(engine.counters,
                               {**bindings.ENGINE, **under("decoder", bindings.DECODER)},
                               name="engine"))
            add(CountersSource(uplink.counters, bindings.CDR_UPLINK, name="uplink"))
            add(self.outcomes)
        else:
            add(CountersSource(uplink.counters, bindings.MIRROR_UPLINK, name="uplink"))
        add(CountersSource(self.channel_counters, bindings.CHANNEL, name="channel"))
        add(FailoverSource(failover))
        add(CountersSource(dead_letters.counters, bindings.DEAD_LETTERS, name="dead letters"))
        add(ProcessSource())

    def session_made(self, channel: Any) -> None:
        """A channel session is established: its counters are read from now on."""
        self.sessions += 1
        self.channel.attach(lambda: channel_counters(channel))

    def session_lost(self) -> None:
        self.channel.detach()

    def channel_counters(self) -> Counters:
        out = self.channel.counters()
        out["reconnects"] = max(self.sessions - 1, 0)
        return out

    def figures(self) -> Figures:
        """The sensor's figures now."""
        return self.registry.collect().own


__all__ = ["FailoverSource", "SensorMetrics", "channel_counters", "under"]
