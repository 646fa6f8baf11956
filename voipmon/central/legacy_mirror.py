"""The deprecated legacy mirror receiver's service on a central (``mirror_bind``).

See ``voipmon.protocols.legacy_mirror`` for the protocol. Each sending sensor gets an
analysis engine of its own, as a mirroring sensor does on the channel (its analysis
settings default, its pcaps under ``spooldir/<id_sensor>``); its CDRs go to the central's
CDR queue and from there to the store.
"""

from __future__ import annotations

from typing import Any

from voipmon.central.cdrqueue import CentralCdrQueue
from voipmon.central.service import mirror_engine_factory
from voipmon.config import CentralSettings
from voipmon.protocols.handshake import Hello
from voipmon.protocols.legacy_mirror_service import LegacyMirrorReceiver
from voipmon.spool.deadletter import IDeadLetters


def receiver_service(settings: CentralSettings, cdr_queue: CentralCdrQueue,
                     dead_letters: IDeadLetters, reactor: Any) -> LegacyMirrorReceiver | None:
    """The receiver on ``mirror_bind``, or None when it is not set."""
    if settings.legacy_mirror.mirror_bind is None:
        return None
    make = mirror_engine_factory(settings.spool.spooldir, dead_letters)

    def engine(id_sensor: int, name: str) -> Any:
        hello = Hello(id_sensor, name, "", "mirror", "none", 0.0, b"", "")
        return make(hello, cdr_queue.add)

    return LegacyMirrorReceiver.from_config(settings.legacy_mirror,
                                            settings.channel.server_password, engine, reactor)
