"""The durable queues a sensor or a central keeps in its spool directory."""

from __future__ import annotations

import os

from twisted.python import usage

from voipmon.config import CentralSettings, SensorSettings
from voipmon.queue import DurableQueue, QueueError


def spool_queue(settings: SensorSettings | CentralSettings, name: str) -> DurableQueue:
    """The durable queue ``spooldir/name``; a spool it cannot live in is a config error
    naming ``spooldir`` (file and line)."""
    spooldir = settings.spool.spooldir
    try:
        return DurableQueue(os.path.join(spooldir, name))
    except (QueueError, OSError) as exc:
        raise usage.UsageError(f"{settings.where('spooldir')}: spooldir = {spooldir}: cannot "
                               f"use the CDR queue: {exc}")
