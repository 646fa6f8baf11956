"""Every kind of source by name, and the one way to build the sensor's from its settings.

A new source is one module (its class and a ``FACTORY``: when the settings want it, how to
build it) and one line in ``SOURCES``. ``from_config`` builds every source the settings
ask for (``--read-pcap`` stands alone: a live source is not wanted with it; the live
sources may run side by side), and lets a sink whose buffer is bounded hold back a source
that can wait.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IReactorFDSet, IReactorTime
from zope.interface import implementer

from voipmon.config import SensorSettings
from voipmon.sources import capture_file, hep, live
from voipmon.sources.interfaces import (
    IFlowControlledSink,
    IFrameSink,
    ISource,
    SourceFactory,
    SourceRequest,
)

SOURCES: dict[str, SourceFactory] = {
    "file": capture_file.FACTORY,
    "live": live.FACTORY,
    "hep": hep.FACTORY,
}


def from_config(settings: SensorSettings, sink: IFrameSink, reactor: IReactorFDSet, *,
                read_pcap: str | None = None, clock: IReactorTime | None = None,
                registry: dict[str, SourceFactory] = SOURCES) -> ISource:
    """The sensor's source for ``settings`` (and ``--read-pcap``), delivering to ``sink``.

    Raises ``usage.UsageError`` naming the key when the settings ask for no source or for
    one that cannot work here (an interface this host lacks, a filter libpcap refuses).
    """
    request = SourceRequest(settings, read_pcap, reactor,
                            clock if clock is not None else IReactorTime(reactor))
    wanted = [factory for factory in registry.values() if factory.wanted(request)]
    if not wanted:
        raise settings.error("interface", "no packet source: set interface (a list, or "
                             "'any'), or hep_bind_port for HEP input",
                             "interface names, or 'any'")
    sources = [factory.build(request, sink) for factory in wanted]
    source = sources[0] if len(sources) == 1 else SourceSet(sources)
    if IPushProducer.providedBy(source) and IFlowControlledSink.providedBy(sink):
        sink.registerProducer(source, True)
    return source


@implementer(ISource)
class SourceSet(service.MultiService):
    """Several live sources feeding one sink, seen as one (their counters summed)."""

    live = True
    error = None

    def __init__(self, sources: list[ISource]) -> None:
        super().__init__()
        self.sources = sources
        self.sink = sources[0].sink
        self.name = " + ".join(source.name for source in sources)
        self.done: defer.Deferred[int] = defer.Deferred()   # live: no end
        for source in sources:
            source.setServiceParent(self)

    def stats(self) -> dict[str, object]:
        each = {source.name: source.stats() for source in self.sources}
        totals = {key: sum(_count(s.get(key)) for s in each.values())
                  for key in ("packets", "bytes", "dropped")}
        return {"name": self.name, **totals, "sources": each}


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0
