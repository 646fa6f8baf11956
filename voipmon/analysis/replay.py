"""Analyse one call's capture again, with an observer: the base of quality and audio.

The central keeps a call's packets as pcaps (its spool, or the sensor's fetched over the
channel; ``voipmon.manager.pcapmerge`` joins the SIP and RTP ones). Running a fresh engine
over them reproduces the call's CDR figure for figure, since the engine is a pure function
of the packets; with an ``IAnalysisObserver`` attached, the same run also yields what the
observer collects (``voipmon.analysis.timeline``, ``voipmon.audio``).

A call's pcap may hold more than one call: a Call-ID reused after its call closed (a new
INVITE after a final failure) writes to the same files. ``select_call`` picks the one the
request is about by its ``sensor_cdr_uid``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from voipmon.analysis.engine import Engine
from voipmon.packet.readers import CaptureReader
from voipmon.records.cdr import Cdr

Source = str | BinaryIO | Iterable[tuple[float, int, bytes]]


class CallNotFound(LookupError):
    """The capture has no call, or not the one asked for."""


def replay(source: Source, observer: Any, *, sip_ports: Iterable[int] = (5060,),
           on_cdr: Callable[[Cdr], Any] | None = None, **engine_options: Any) -> list[Cdr]:
    """Run a fresh engine with ``observer`` over ``source`` (a capture file's path, an
    open binary file, or ``(ts, linktype, frame)`` records); returns the CDRs in the
    order they closed, or hands each to ``on_cdr`` as it closes (then returns none: a
    capture of many calls is handled call by call). Nothing is written: no spool."""
    cdrs: list[Cdr] = []
    engine = Engine(id_sensor=0, on_cdr=on_cdr or cdrs.append, sip_ports=sip_ports,
                    observer=observer, **engine_options)
    if isinstance(source, str) or hasattr(source, "read"):
        with CaptureReader(source) as reader:  # type: ignore[arg-type]
            engine.feed_all(reader)
    else:
        engine.feed_all(source)  # type: ignore[arg-type]
    engine.finish()
    return cdrs


def select_call(cdrs: list[Cdr], cdr_uid: str | None = None) -> Cdr:
    """The CDR with ``sensor_cdr_uid`` ``cdr_uid``; without one, the only CDR."""
    if cdr_uid is not None:
        for cdr in cdrs:
            if cdr.sensor_cdr_uid == cdr_uid:
                return cdr
        raise CallNotFound(f"the capture has no call with uid {cdr_uid} "
                           f"({len(cdrs)} other call(s))")
    if len(cdrs) != 1:
        raise CallNotFound(f"the capture holds {len(cdrs)} calls: say which (its uid)"
                           if cdrs else "the capture holds no call (no INVITE)")
    return cdrs[0]
