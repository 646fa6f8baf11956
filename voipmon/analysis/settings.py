"""The call engine from its settings: on a sensor, and on a central for a mirroring sensor.

A local-processing sensor builds its engine from its own ``AnalysisSettings``; a mirroring
sensor sends the same settings in its hello (``analysis_to_hello``) and the central builds
that sensor's engine from them (``analysis_from_hello``), so both analyse alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from voipmon.analysis.engine import Engine
from voipmon.config.settings import AnalysisSettings
from voipmon.records.cdr import Cdr
from voipmon.spool.deadletter import IDeadLetters
from voipmon.spool.writer import SpoolWriter


def engine_for(analysis: AnalysisSettings, *, id_sensor: int, spooldir: str,
               on_cdr: Callable[[Cdr], object],
               dead_letters: IDeadLetters | None = None) -> Engine:
    """The engine for ``id_sensor``'s packets, writing each call's pcaps under ``spooldir``."""
    return Engine(id_sensor=id_sensor, on_cdr=on_cdr, sip_ports=analysis.sipport,
                  spool=SpoolWriter(spooldir), rtptimeout=analysis.rtptimeout,
                  sipwithoutrtptimeout=analysis.sipwithoutrtptimeout,
                  absolute_timeout=analysis.absolute_timeout, savesip=analysis.savesip,
                  savertp=analysis.savertp, dead_letters=dead_letters)


def analysis_to_hello(analysis: AnalysisSettings) -> dict[str, object]:
    """The hello's ``analysis``: JSON the central's engine is built from."""
    body = asdict(analysis)
    body["sipport"] = list(analysis.sipport)
    return body


def analysis_from_hello(body: dict[str, object]) -> AnalysisSettings:
    """The settings a hello's (checked) ``analysis`` gives; what it leaves out defaults."""
    fields = dict(body)
    ports = fields.pop("sipport", None)
    if isinstance(ports, list):
        fields["sipport"] = tuple(ports)
    return AnalysisSettings(**fields)
