"""What a store measures about its own writes, for the central's metrics: the time each
batch of CDRs took to commit, and the CDRs newly committed per sensor (a CDR already
stored, resent after a reconnect or a failover, is not counted again).

Plain numbers kept on the reactor thread; ``voipmon.central.metrics`` reads them at scrape
time.
"""

from __future__ import annotations

from collections.abc import Iterable

from voipmon.metrics.catalog import family
from voipmon.metrics.snapshot import Histogram


class StoreMeasures:
    """Batch commit times (``batch_seconds``) and new CDRs by id_sensor (``stored``)."""

    def __init__(self) -> None:
        self.batch_seconds = Histogram.of(family("voipmon_central_store_batch_seconds"))
        self.stored: dict[int, int] = {}

    def committed(self, seconds: float, sensors: Iterable[int]) -> None:
        """One batch committed after ``seconds``; ``sensors``: the id of each new CDR."""
        self.batch_seconds.observe(max(seconds, 0.0))
        for id_sensor in sensors:
            self.stored[id_sensor] = self.stored.get(id_sensor, 0) + 1


__all__ = ["StoreMeasures"]
