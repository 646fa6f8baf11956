"""What ended calls came to, counted from their CDRs as plain ints: CDRs made, calls by
``bye`` code, and histograms of MOS and of packet loss.

It sits on the engine's output (``wrap(on_cdr)``), so it costs one small call per call,
nothing per packet, and counts the same whether the engine runs on a sensor or, for a
mirroring sensor, on the central (``sensor=id_sensor`` there: figures about that sensor).

A call's MOS is the lowest of its two main streams over the three models, to 0.1, as the
database stores it (``cdr.mos_min_mult10``), so the histogram's buckets agree with a query
on ``mos_min_mult10 <= 10 * le``. Its loss is the worse direction's lost / (received +
lost). A call without RTP has neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from zope.interface import implementer

from voipmon.metrics.catalog import family
from voipmon.metrics.snapshot import Histogram
from voipmon.metrics.sources import Collection, IMetricsSource
from voipmon.records.cdr import Cdr
from voipmon.store.fields import mult10


class StreamLike(Protocol):
    received: int
    lost: int
    mos_f1: float | None
    mos_f2: float | None
    mos_adapt: float | None


class CdrLike(Protocol):
    bye: int

    def side(self, which: str) -> StreamLike | None: ...


def call_mos(cdr: CdrLike) -> float | None:
    """The lowest MOS of either main stream, any model, to 0.1; None without any."""
    scores = [score for which in ("a", "b") if (stream := cdr.side(which)) is not None
              for score in (stream.mos_f1, stream.mos_f2, stream.mos_adapt)
              if score is not None]
    if not scores:
        return None
    tenths = mult10(min(scores))
    return None if tenths is None else tenths / 10


def call_loss(cdr: CdrLike) -> float | None:
    """The worse direction's loss ratio; None when neither main stream had packets."""
    ratios = [stream.lost / (stream.received + stream.lost)
              for which in ("a", "b") if (stream := cdr.side(which)) is not None
              and stream.lost >= 0 and stream.received + stream.lost > 0]
    return max(ratios) if ratios else None


@implementer(IMetricsSource)
class CallOutcomes:
    """Counts of ended calls (see the module docstring)."""

    def __init__(self, sensor: int | None = None) -> None:
        self.sensor = sensor
        self.cdrs = 0
        self.ended: dict[int, int] = {}
        self.mos = Histogram.of(family("voipmon_call_mos"))
        self.loss = Histogram.of(family("voipmon_call_packet_loss_ratio"))

    def __repr__(self) -> str:
        return f"<CallOutcomes sensor={self.sensor}>"

    def observe(self, cdr: CdrLike) -> None:
        self.cdrs += 1
        self.ended[cdr.bye] = self.ended.get(cdr.bye, 0) + 1
        mos = call_mos(cdr)
        if mos is not None:
            self.mos.observe(mos)
        loss = call_loss(cdr)
        if loss is not None:
            self.loss.observe(loss)

    def wrap(self, on_cdr: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``on_cdr`` that counts each CDR first (the engine's callback). The other records
        an engine makes (registrations, SIP messages, alerts) may take the same way: they
        pass uncounted."""
        def counted(cdr: Any) -> Any:
            if isinstance(cdr, Cdr):
                self.observe(cdr)
            return on_cdr(cdr)
        return counted

    def counters(self) -> dict[str, int]:
        """Flat counts: ``cdrs``, ``ended.<bye>``, ``mos_count``, ``loss_count``."""
        out = {"cdrs": self.cdrs, "mos_count": self.mos.count, "loss_count": self.loss.count}
        out.update((f"ended.{bye}", count) for bye, count in sorted(self.ended.items()))
        return out

    def collect_metrics(self, into: Collection) -> None:
        figures = into.own if self.sensor is None else into.sensor(self.sensor)
        figures.counter("voipmon_cdrs_made_total", self.cdrs)
        for bye, count in self.ended.items():
            figures.counter("voipmon_calls_ended_total", count, bye=str(bye))
        figures.histogram("voipmon_call_mos", self.mos)
        figures.histogram("voipmon_call_packet_loss_ratio", self.loss)


__all__ = ["CallOutcomes", "call_loss", "call_mos"]
