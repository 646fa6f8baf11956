"""The source seam: where frames come from, and where they go.

A source (a capture file, a live interface; a HEP listener next) is a Twisted service
that hands ``(ts, linktype, frame)`` to one sink: the analysis engine, the mirroring
uplink or the legacy mirror sender, all ``IFrameSink``. Starting the source starts
delivery, stopping it stops it. A source that can wait (a file) is also an
``IPushProducer``, and a sink whose buffer is bounded (``IFlowControlledSink``) pauses it
when full and resumes it when there is room; a source that cannot wait (a wire) is not,
and a bounded sink counts what it must drop instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twisted.application.service import IService
from twisted.internet.interfaces import IPushProducer, IReactorFDSet, IReactorTime
from zope.interface import Attribute, Interface

from voipmon.config import SensorSettings

#: One frame as a source delivers it: capture time (epoch seconds), pcap LINKTYPE_*, bytes.
Record = tuple[float, int, bytes]


class IFrameSink(Interface):
    """Takes frames in capture order (per link)."""

    def feed(ts: float, linktype: int, frame: bytes) -> object:
        """One frame."""

    def feed_all(records: Iterable[Record]) -> int:
        """Many frames at once (a file's slice, a wakeup's worth): the fast path. Returns
        how many were taken."""


class IFlowControlledSink(IFrameSink):
    """A sink with a bounded buffer that can ask a pausable source to wait."""

    def registerProducer(producer: IPushProducer, streaming: bool) -> None:
        """Pause ``producer`` while the buffer is full, resume it when there is room."""

    def unregisterProducer() -> None:
        """Forget the producer (it has delivered everything)."""


class ISource(IService):
    """Something that delivers frames to its ``sink``, in capture order per link.

    ``startService`` begins delivery and ``stopService`` ends it (after handing over what
    was already captured).
    """

    name = Attribute("Short label for logs and sniffer_stat, e.g. 'live eth0,eth1'.")
    sink = Attribute("The IFrameSink that receives every frame.")
    live = Attribute(
        "True when frames arrive as they happen (an interface, a listener): the engine's "
        "clock must then move with the wall clock while no frame comes. False for a file, "
        "whose frames carry their own time.")
    done = Attribute(
        "A Deferred that fires once the source has delivered its last frame (the end of a "
        "file); a live source's never fires.")
    error = Attribute(
        "None, or why delivery ended early (a damaged capture: what and where).")

    def stats() -> dict[str, object]:
        """A fresh snapshot of the counters.

        At least ``packets`` (frames handed to the sink) and ``dropped`` (frames lost
        anywhere before the sink: kernel, interface, our own buffers), both totals since
        start, so a reader can difference two snapshots.
        """


@dataclass(frozen=True)
class SourceRequest:
    """What a source is built from: the sensor's settings (each source reads its own
    group), ``--read-pcap`` if given, the reactor (file descriptors, listening) and the
    clock."""

    settings: SensorSettings
    read_pcap: str | None
    reactor: IReactorFDSet
    clock: IReactorTime


@dataclass(frozen=True)
class SourceFactory:
    """One kind of source, as the registry (voipmon.sources.registry) knows it.

    ``wanted(request)`` says whether the settings ask for it (a source that does not
    replay ``--read-pcap`` is not wanted with it); ``build(request, sink)`` makes it,
    raising ``usage.UsageError`` (naming the key) for a config problem found before
    anything starts.
    """

    name: str
    wanted: Callable[[SourceRequest], bool]
    build: Callable[[SourceRequest, IFrameSink], ISource]
