"""The deprecated legacy mirror sender's service: the source feeds the sender directly.

See ``voipmon.protocols.legacy_mirror`` for the protocol. A sensor with
``mirror_destination`` and no ``server_destination`` makes no CDRs: every frame its
source captures goes to the sender, which buffers it (``max_buffer_mem``) and delivers it
to the receiver over plain TCP.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service

from voipmon.config import SensorSettings
from voipmon.protocols.legacy_mirror_service import LegacyMirrorSender
from voipmon.sources import registry as sources


def sender_service(settings: SensorSettings, reactor: Any, *,
                   read_pcap: str | None = None) -> service.MultiService:
    """The sender, and the source that feeds it (``--read-pcap`` or live capture)."""
    top = service.MultiService()
    top.setName("voipmon-sensor")
    sender = LegacyMirrorSender.from_config(settings.channel, settings.mirroring, reactor)
    sender.setServiceParent(top)
    source = sources.from_config(settings, sender, reactor, read_pcap=read_pcap)
    source.setServiceParent(top)
    return top
