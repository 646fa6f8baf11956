"""The CDR record: what the engine emits, the channel carries and the store keeps.

Field names follow VoIPmonitor's ``cdr`` and ``cdr_rtp`` columns (design section 2.3) so
existing SQL reports keep working. Times are UTC epoch seconds (float) in memory and
ISO 8601 with milliseconds in JSON; jitter is in milliseconds; MOS is 1.0..4.5.

``sensor_cdr_uid`` identifies a call on its sensor. It is derived from the call itself
(Call-ID and first packet time, ``voipmon.records.keys.make_cdr_uid``), so replaying a
capture, restarting a sensor, or analysing the same packets on the central (mirroring)
gives the same uid and the store can insert idempotently on (id_sensor, sensor_cdr_uid).

Two JSON forms: ``to_json``/``from_json`` is the design's record for people and tools (ISO
times, a_*/b_* summaries: the API and the CLI); ``to_wire``/``from_wire`` (IRecordType,
``voipmon.records.codec``) is the compact checked form the queue keeps and the channel
carries, which also reads the older ``to_json`` form.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from voipmon.records.codec import Record, RecordCodec, record_type
from voipmon.records.times import iso_ms, parse_iso_ms

# VoIPmonitor's ``bye`` codes (calltable.cpp).
BYE_NOT_ANSWERED = 0
BYE_ANSWERED_NO_BYE = 1
BYE_SEEN = 2
BYE_CONFIRMED = 3
BYE_ONE_WAY = 101
BYE_ABSOLUTE_TIMEOUT = 102
BYE_TIMEOUT = 103
BYE_RTP_TIMEOUT = 104
BYE_ONEWAY_TIMEOUT = 105
BYE_SIP_WITHOUT_RTP_TIMEOUT = 108


@dataclass(frozen=True)
class RtpStream:
    """One RTP stream of a call, like a ``cdr_rtp`` row (plus extras of ours)."""

    saddr: str
    sport: int
    daddr: str
    dport: int
    ssrc: int
    payload: int                      # RTP payload type of the stream's main codec
    received: int = 0
    lost: int = 0
    avgjitter: float = 0.0            # ms, RFC 3550, mean over packets (as Wireshark)
    maxjitter: float = 0.0            # ms
    mos_f1: float | None = None
    mos_f2: float | None = None
    mos_adapt: float | None = None
    codec: str = ""                   # e.g. "PCMU/8000" from rtpmap or the static table
    duplicates: int = 0
    reordered: int = 0
    sl: tuple[int, ...] = ()          # loss bursts of 1..9 and >= 10 packets (sl1..sl10)
    delay: tuple[int, ...] = ()       # d50, d70, d90, d120, d150, d200, d300 buckets
    firsttime: float | None = None    # epoch s of the first packet
    lasttime: float | None = None     # epoch s of the last packet
    rtcp_fraclost: float | None = None  # % from RTCP RR about this stream
    rtcp_jitter: float | None = None  # ms from RTCP RR
    rtcp_rtt: float | None = None     # ms round trip from RTCP LSR/DLSR
    tied_to_sip: bool = True          # False: seen without SDP announcing it
    payloads: tuple[int, ...] = ()    # every payload type seen in the stream
    rtcp_maxfr: float | None = None   # % largest RTCP fraction lost about this stream
    rtcp_maxjitter: float | None = None  # ms largest RTCP jitter about this stream
    rtcp_reports: int = 0             # RTCP report blocks about this stream

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)  # the fields in order (dataclasses.asdict's, cheaper)
        data["sl"] = list(self.sl)
        data["delay"] = list(self.delay)
        data["payloads"] = list(self.payloads)
        data["firsttime"] = iso_ms(self.firsttime)
        data["lasttime"] = iso_ms(self.lasttime)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RtpStream:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["sl"] = tuple(values.get("sl", ()))
        values["delay"] = tuple(values.get("delay", ()))
        values["payloads"] = tuple(values.get("payloads", ()))
        values["firsttime"] = parse_iso_ms(values.get("firsttime"))
        values["lasttime"] = parse_iso_ms(values.get("lasttime"))
        return cls(**values)


_SIDE_FIELDS = ("received", "lost", "avgjitter", "maxjitter", "mos_f1", "mos_f2", "mos_adapt")
_STREAMS = RecordCodec(RtpStream, "rtp")


@record_type("cdr", uid="sensor_cdr_uid", nested={"rtp": _STREAMS},
             omit_none=("hep_capture_id",))
@dataclass(frozen=True)
class Cdr(Record):
    """One call detail record (design section 2.3)."""

    TABLE: ClassVar[str] = "cdr"

    sensor_cdr_uid: str
    callid: str
    id_sensor: int
    calldate: float                   # first INVITE (epoch s, UTC)
    callend: float                    # last packet of the call
    duration: float                   # callend - calldate, seconds
    connect_duration: float           # callend - 200 OK to INVITE, 0 if never answered
    caller: str
    called: str
    sipcallerip: str
    sipcalledip: str
    sipcallerport: int
    sipcalledport: int
    lastSIPresponseNum: int
    bye: int
    lastSIPresponse: str = ""         # e.g. "486 Busy Here"
    caller_domain: str = ""
    called_domain: str = ""
    callername: str = ""
    whohanged: str = ""               # "caller", "callee" or ""
    connect_time: float | None = None  # 200 OK to the INVITE
    a_ua: str = ""
    b_ua: str = ""
    a_index: int | None = None        # index in ``rtp`` of the caller's main stream
    b_index: int | None = None        # index in ``rtp`` of the callee's main stream
    rtp: tuple[RtpStream, ...] = ()
    fbasename: str = ""               # sanitised Call-ID: the per-call pcap's base name
    sip_pcap: str = ""                # spool-relative path of the SIP pcap, "" if none
    rtp_pcap: str = ""                # spool-relative path of the RTP pcap, "" if none
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, e.g. rtcp summaries
    # ours: the capture agent id (HEP chunk 0x000c) of a call received as HEP, None if
    # sniffed; the agent that sent its first INVITE
    hep_capture_id: int | None = None

    def side(self, which: str) -> RtpStream | None:
        """The caller's ("a") or callee's ("b") main stream, if any."""
        index = self.a_index if which == "a" else self.b_index
        if index is None or not 0 <= index < len(self.rtp):
            return None
        return self.rtp[index]

    def to_json(self) -> dict[str, Any]:
        """The JSON record of design 2.3, with a_*/b_* summaries flattened in."""
        data = dict(self.__dict__)
        del data["rtp"]
        data["calldate"] = iso_ms(self.calldate)
        data["callend"] = iso_ms(self.callend)
        data["connect_time"] = iso_ms(self.connect_time)
        for which in ("a", "b"):
            stream = self.side(which)
            for name in _SIDE_FIELDS:
                data[f"{which}_{name}"] = stream.__dict__[name] if stream else None
        data["rtp"] = [stream.to_json() for stream in self.rtp]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cdr:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["calldate"] = parse_iso_ms(values["calldate"])
        values["callend"] = parse_iso_ms(values["callend"])
        values["connect_time"] = parse_iso_ms(values.get("connect_time"))
        values["rtp"] = tuple(RtpStream.from_json(s) for s in values.get("rtp", ()))
        values["extra"] = dict(values.get("extra") or {})
        return cls(**values)

    @classmethod
    def from_wire(cls, data: object) -> Cdr:
        """The CDR from its decoded wire object (or from the older ``to_json`` form, ISO
        times); ValueError naming the bad field."""
        if isinstance(data, dict) and isinstance(data.get("calldate"), str):
            try:
                data = cls.CODEC.fields_of(cls.from_json(data))
            except (TypeError, KeyError, ValueError, AttributeError) as exc:
                raise ValueError(f"cdr: not a CDR record ({exc})")
        return cls.CODEC.build(data)


__all__ = [
    "BYE_ABSOLUTE_TIMEOUT", "BYE_ANSWERED_NO_BYE", "BYE_CONFIRMED", "BYE_NOT_ANSWERED",
    "BYE_ONEWAY_TIMEOUT", "BYE_ONE_WAY", "BYE_RTP_TIMEOUT", "BYE_SEEN",
    "BYE_SIP_WITHOUT_RTP_TIMEOUT", "BYE_TIMEOUT", "Cdr", "RtpStream",
]
