"""Records of SIP that is not a call, made by the engine from the bundled real captures
(SIPp phones and sipvicious against kamailio; a PBX's OPTIONS, SUBSCRIBE, NOTIFY and
MESSAGE), for the store, channel and API tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from typing import Any

from voipmon.analysis.settings import engine_for
from voipmon.config.settings import AnalysisSettings
from voipmon.packet.readers import read_capture
from voipmon.test.common import data_path

PHONES = "register_kamailio_sipp_lo.pcap"
SCANNED = "register_sipvicious_lo.pcap"
PBX = "sipmsg_kamailio_sipp_lo.pcap"
REGISTRAR, PHONE, ATTACKER = "127.0.0.2", "127.0.0.3", "127.0.0.1"
#: every analyser on, as a sensor's options would switch them on
ANALYSIS = AnalysisSettings(sip_register="yes", sip_options="yes", sip_subscribe="yes",
                            sip_notify="yes", sip_message="yes")
#: the same as the options of a sensor's config file
OPTIONS = {"sip-register": "yes", "sip-options": "yes", "sip-subscribe": "yes",
           "sip-notify": "yes", "sip-message": "yes"}


def engine_records(name: str, id_sensor: int = 1,
                   analysis: AnalysisSettings = ANALYSIS) -> list[Any]:
    """Every record (revisions included, in emitted order) the engine makes of a capture."""
    records: list[Any] = []
    engine = engine_for(analysis, id_sensor=id_sensor, spooldir=tempfile.mkdtemp(),
                        on_cdr=records.append, on_record=records.append)
    engine.feed_all(read_capture(data_path(name)))
    engine.finish()
    return records


def final(records: Iterable[Any]) -> dict[tuple[str, tuple[int, str]], Any]:
    """The last emitted record of each (kind, key): what the database must hold."""
    out: dict[tuple[str, tuple[int, str]], Any] = {}
    for record in records:
        out[(record.KIND, record.key())] = record
    return out
