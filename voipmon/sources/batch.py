"""One read's frames, handed to the sink as one batch.

A source that reads in bursts (live capture: one ``pcap_dispatch``; HEP: one TCP read or
one burst of datagrams) collects the frames of the read here and hands them to its sink
in one ``feed_all`` once the read is done, so the engine's fast path
(``voipmon.analysis.fastpath``) takes them in one loop instead of one call per frame.
The batch is two lists (capture times and frames) of one link type, given to the sink
as ``zip(times, repeat(linktype), frames)``: no tuple is made per frame. A frame the
sink fails on is counted (``on_failure``) and skipped; the frames after it still go, one
at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat

from voipmon.sources.interfaces import IFrameSink


class FrameBatch:
    """The frames of the read in progress; ``deliver(sink)`` hands them over.

    ``collect(ts, frame)`` adds a frame (it is a plain closure, the callback a
    ``pcap_dispatch`` takes); ``emit(ts, linktype, frame)`` is the same for producers
    that name the link type (``voipmon.packet.synth.HepFrames``), which must be the
    batch's. ``linktype`` may change between batches (an interface reopened).
    """

    __slots__ = ("collect", "frames", "linktype", "on_failure", "times")

    def __init__(self, linktype: int, on_failure: Callable[[], object]) -> None:
        self.linktype = linktype
        self.on_failure = on_failure
        self.times: list[float] = []
        self.frames: list[bytes] = []
        self.collect = self._collector()

    def _collector(self) -> Callable[[float, bytes], None]:
        add_time = self.times.append
        add_frame = self.frames.append

        def collect(ts: float, frame: bytes) -> None:
            add_time(ts)
            add_frame(frame)
        return collect

    def emit(self, ts: float, linktype: int, frame: bytes) -> None:
        if linktype != self.linktype:
            raise ValueError(f"a frame of link type {linktype} in a batch of "
                             f"{self.linktype}")
        self.times.append(ts)
        self.frames.append(frame)

    def __len__(self) -> int:
        return len(self.frames)

    def deliver(self, sink: IFrameSink) -> int:
        """The collected frames to ``sink`` in one ``feed_all``; how many there were.
        The batch is empty afterwards, whatever the sink did."""
        times, frames = self.times, self.frames
        count = len(frames)
        if not count:
            return 0
        batch = zip(times, repeat(self.linktype), frames)
        try:
            try:
                sink.feed_all(batch)
                return count
            except Exception:
                self.on_failure()
            for ts, linktype, frame in batch:  # after a failure: one at a time
                try:
                    sink.feed(ts, linktype, frame)
                except Exception:
                    self.on_failure()
        finally:
            times.clear()
            frames.clear()
        return count
