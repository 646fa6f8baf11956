"""``--read-pcap``: a capture file as the sensor's packet source.

The file is read in slices of ``chunk`` frames, one slice per reactor turn, so the
channel, pings and timers keep running during a long replay. A sink that can push back
(the mirroring buffer: a file can wait, unlike a wire) is asked ``has_room`` before each
slice and waited for with ``when_room``. At the end ``on_end`` runs once: the engine
closes the calls still open, or the mirror says END.

A corrupt or truncated capture ends the replay where the damage starts, after every frame
before it was delivered: ``error`` then says what and where (file and byte offset), it is
logged, and ``on_end`` still runs, so the calls read so far are closed and delivered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from voipmon.packet.readers import CaptureFormatError, CaptureReader
from voipmon.packet.source import IPacketSource, Sink

log = Logger()

CHUNK = 2000


@implementer(IPacketSource)
class ReplaySource(service.Service):
    """Feeds every frame of ``path`` to ``sink`` (``sink_many`` for whole slices)."""

    def __init__(self, path: str, sink: Sink, clock: IReactorTime, *,
                 on_end: Callable[[], Any] = lambda: None,
                 sink_many: Callable[[list[tuple[float, int, bytes]]], Any] | None = None,
                 has_room: Callable[[], bool] | None = None,
                 when_room: Callable[[], defer.Deferred] | None = None,
                 chunk: int = CHUNK) -> None:
        self.path = path
        self.sink = sink
        self.sink_many = sink_many
        self.clock = clock
        self.on_end = on_end
        self.has_room = has_room
        self.when_room = when_room
        self.chunk = chunk
        self.name = f"replay {path}"
        self.packets = 0
        self.error: str | None = None
        self.finished = False
        self._reader: CaptureReader | None = None
        self._records: Any = None
        self._call: Any = None
        self._waiting: defer.Deferred | None = None
        self.done: defer.Deferred = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        try:
            self._reader = CaptureReader(self.path)
        except (OSError, CaptureFormatError) as exc:
            self._end(f"cannot read {self.path}: {exc}")
            return
        self._records = iter(self._reader)
        log.info("replaying {path} ({kind})", path=self.path, kind=self._reader.format)
        self._call = self.clock.callLater(0, self._step)

    def _step(self) -> None:
        self._call = None
        if not self.running:
            return
        if self.has_room is not None and not self.has_room():
            self._waiting = self.when_room()
            self._waiting.addCallback(self._resume)
            self._waiting.addErrback(lambda f: f.trap(defer.CancelledError))
            return
        batch = []
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
            self._call = self.clock.callLater(0, self._step)

    def _resume(self, _: Any) -> None:
        self._waiting = None
        if self.running and not self.finished:
            self._step()

    def _deliver(self, batch: list[tuple[float, int, bytes]]) -> None:
        if not batch:
            return
        if self.sink_many is not None:
            self.sink_many(batch)
        else:
            sink = self.sink
            for ts, linktype, frame in batch:
                sink(ts, linktype, frame)
        self.packets += len(batch)

    def _end(self, error: str | None) -> None:
        self.finished = True
        self.error = error
        if self._reader is not None:
            self._reader.close()
        if error:
            log.error("replay of {path} stopped early, after {packets} frames: {error}",
                      path=self.path, packets=self.packets, error=error)
        else:
            log.info("replay of {path} done: {packets} frames", path=self.path,
                     packets=self.packets)
        try:
            self.on_end()
        finally:
            self.done.callback(self.packets)

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
        if self._reader is not None and not self.finished:
            self._reader.close()

    def stats(self) -> dict[str, Any]:
        return {"packets": self.packets, "dropped": 0, "finished": self.finished}
