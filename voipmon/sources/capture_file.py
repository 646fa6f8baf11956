"""A capture file (``--read-pcap``) as the sensor's packet source.

The file is read in slices of ``chunk`` frames, one slice per reactor turn, each handed to
the sink's ``feed_all``, so the channel, pings and timers keep running during a long
replay. A file can wait, unlike a wire: the source is an ``IPushProducer``, and a sink
with a bounded buffer (the mirroring uplink) pauses it while full and resumes it when
there is room again. At the end ``done`` fires (with the number of frames): the engine
closes the calls still open, or the mirror says END.

A corrupt or truncated capture ends the replay where the damage starts, after every frame
before it was delivered: ``error`` then says what and where (file and byte offset), it is
logged, and ``done`` still fires, so the calls read so far are closed and delivered.
"""

from __future__ import annotations

from collections.abc import Iterator

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from voipmon.packet.readers import CaptureFormatError, CaptureReader
from voipmon.sources.interfaces import IFrameSink, ISource, Record, SourceFactory, SourceRequest

log = Logger()

CHUNK = 2000


@implementer(ISource, IPushProducer)
class CaptureFileSource(service.Service):
    """Feeds every frame of ``path`` to ``sink``, a slice per reactor turn."""

    live = False

    def __init__(self, path: str, sink: IFrameSink, clock: IReactorTime, *,
                 chunk: int = CHUNK) -> None:
        self.path = path
        self.sink = sink
        self.clock = clock
        self.chunk = chunk
        self.name = f"replay {path}"
        self.packets = 0
        self.bytes = 0          # of the frames as captured
        self.error: str | None = None
        self.paused = False
        self._reader: CaptureReader | None = None
        self._records: Iterator[Record] | None = None
        self._call: IDelayedCall | None = None
        self.done: defer.Deferred[int] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        try:
            self._reader = CaptureReader(self.path)
        except (OSError, CaptureFormatError) as exc:
            self._end(f"cannot read {self.path}: {exc}")
            return
        self._records = iter(self._reader)
        log.info("replaying {path} ({kind})", path=self.path, kind=self._reader.format)
        self._schedule()

    def _schedule(self) -> None:
        if self._call is None and self.running and not self.paused and not self.done.called:
            self._call = self.clock.callLater(0, self._step)

    def _step(self) -> None:
        self._call = None
        if self._records is None or self._reader is None:
            return
        batch: list[Record] = []
        try:
            for record in self._records:
                batch.append(record)
                if len(batch) >= self.chunk:
                    break
        except CaptureFormatError as exc:
            self._deliver(batch)
            self._end(str(exc))
            return
        except OSError as exc:
            self._deliver(batch)
            self._end(f"{self.path}: read error: {exc.strerror or exc}")
            return
        self._deliver(batch)
        if len(batch) < self.chunk:
            self._end("; ".join(self._reader.notes) if self._reader.truncated else None)
        else:
            self._schedule()

    def _deliver(self, batch: list[Record]) -> None:
        if batch:
            self.sink.feed_all(batch)
            self.packets += len(batch)
            self.bytes += sum(len(record[2]) for record in batch)

    def _end(self, error: str | None) -> None:
        self.error = error
        if self._reader is not None:
            self._reader.close()
        if error:
            log.error("replay of {path} stopped early, after {packets} frames: {error}",
                      path=self.path, packets=self.packets, error=error)
        else:
            log.info("replay of {path} done: {packets} frames", path=self.path,
                     packets=self.packets)
        self.done.callback(self.packets)

    # -- IPushProducer: a bounded sink holds the replay while it is full ------------------

    def pauseProducing(self) -> None:
        self.paused = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.stopService()

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._reader is not None and not self.done.called:
            self._reader.close()

    def stats(self) -> dict[str, object]:
        return {"packets": self.packets, "bytes": self.bytes, "dropped": 0,
                "finished": self.done.called}


def _wanted(request: SourceRequest) -> bool:
    return request.read_pcap is not None


def _build(request: SourceRequest, sink: IFrameSink) -> ISource:
    return CaptureFileSource(request.read_pcap or "", sink, request.clock)


#: ``--read-pcap FILE``: the file, instead of any live source.
FACTORY = SourceFactory("file", _wanted, _build)
