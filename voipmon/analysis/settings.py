"""The call engine from its settings: on a sensor, and on a central for a mirroring sensor.

``engine_for`` also adds the analysers of SIP that is not a call that the options switch
on (``sip-register``; ``sip-options``, ``sip-subscribe``, ``sip-notify``, ``sip-message``);
their records go to ``on_record``.

A local-processing sensor builds its engine from its own ``AnalysisSettings``; a mirroring
sensor sends the same settings in its hello (``analysis_to_hello``) and the central builds
that sensor's engine from them (``analysis_from_hello``), so both analyse alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from voipmon.analysis.engine import Engine
from voipmon.analysis.registers import RegisterTracker
from voipmon.analysis.regstate import RegisterSettings
from voipmon.analysis.sipmsg import SipMsgSettings, SipMsgTracker
from voipmon.config.settings import AnalysisSettings
from voipmon.records.cdr import Cdr
from voipmon.records.codec import Record
from voipmon.spool.deadletter import IDeadLetters
from voipmon.spool.writer import SpoolWriter


def engine_for(analysis: AnalysisSettings, *, id_sensor: int, spooldir: str,
               on_cdr: Callable[[Cdr], object],
               on_record: Callable[[Record], object] | None = None,
               dead_letters: IDeadLetters | None = None) -> Engine:
    """The engine for ``id_sensor``'s packets, writing each call's pcaps under ``spooldir``;
    CDRs go to ``on_cdr``, the records of SIP that is not a call to ``on_record``."""
    engine = Engine(id_sensor=id_sensor, on_cdr=on_cdr, sip_ports=analysis.sipport,
                    spool=SpoolWriter(spooldir), rtptimeout=analysis.rtptimeout,
                    sipwithoutrtptimeout=analysis.sipwithoutrtptimeout,
                    absolute_timeout=analysis.absolute_timeout, savesip=analysis.savesip,
                    savertp=analysis.savertp, dead_letters=dead_letters, on_record=on_record)
    add_noncall(engine, analysis)
    return engine


def register_settings(analysis: AnalysisSettings) -> RegisterSettings | None:
    """The REGISTER tracker's settings, None when ``sip-register = no``."""
    if analysis.sip_register == "no":
        return None
    return RegisterSettings(
        sip_register=analysis.sip_register,
        sip_register_timeout=analysis.sip_register_timeout,
        sip_register_max_registers=analysis.sip_register_max_registers,
        sip_register_state_timeout=analysis.sip_register_state_timeout)


def sip_msg_settings(analysis: AnalysisSettings) -> SipMsgSettings | None:
    """The OPTIONS/SUBSCRIBE/NOTIFY/MESSAGE tracker's settings, None when all are off."""
    settings = SipMsgSettings(sip_options=analysis.sip_options,
                              sip_subscribe=analysis.sip_subscribe,
                              sip_notify=analysis.sip_notify,
                              sip_message=analysis.sip_message)
    return settings if settings.modes() else None


def add_noncall(engine: Engine, analysis: AnalysisSettings) -> None:
    """Add to ``engine`` the trackers of SIP that is not a call that ``analysis`` asks for."""
    registers = register_settings(analysis)
    if registers is not None:
        engine.registers = RegisterTracker(registers, engine.id_sensor, engine.emit_record)
        engine.add_analyser(engine.registers)
    messages = sip_msg_settings(analysis)
    if messages is not None:
        engine.sip_messages = SipMsgTracker(messages, engine.id_sensor, engine.emit_record)
        engine.add_analyser(engine.sip_messages)


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
