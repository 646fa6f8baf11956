"""The packet-source seam: where frames come from, before the decoder.

A capture file, a live interface and packets mirrored from another sensor all hand
``(ts, linktype, frame)`` to one sink callable (a ``Decoder.feed`` or ``Engine.feed``).
A source is also a Twisted service: starting it starts delivery, stopping it stops it.
Keeping the seam this small lets the sensor assembly pick a source from config without
knowing how any of them works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zope.interface import Attribute, Interface

#: Receives every captured frame: capture time (epoch seconds), pcap LINKTYPE_*, bytes.
Sink = Callable[[float, int, bytes], Any]


class IPacketSource(Interface):
    """Something that delivers captured frames to ``sink``, in capture order per link.

    Providers are also ``IService``: ``startService`` begins delivery and
    ``stopService`` ends it (after handing over what was already captured).
    """

    name = Attribute("Short label for logs and sniffer_stat, e.g. 'live eth0,eth1'.")
    sink = Attribute("The callable(ts, linktype, frame) that receives every frame.")

    def stats() -> dict[str, Any]:
        """A fresh snapshot of the counters.

        At least ``packets`` (frames handed to the sink) and ``dropped`` (frames lost
        anywhere before the sink: kernel, interface, our own buffers), both totals since
        start, so a reader can difference two snapshots.
        """
