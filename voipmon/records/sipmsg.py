"""Records of SIP that is not a call: VoIPmonitor's ``sip_msg`` rows (OPTIONS, SUBSCRIBE,
NOTIFY) and ``message`` rows (MESSAGE).

One record per request and its answer (or per request that got none). Column names are
VoIPmonitor's; VoIPmonitor splits times into seconds and ``*_us`` columns, we keep epoch
seconds as floats; user agents, content types and response texts are text (the store maps
them to its lookup tables). Fields it does not have are marked "ours".

Exactly once: both are written once; the store inserts on (id_sensor, uid) and ignores a
duplicate. ``uid`` is derived from the request (Call-ID, CSeq, method, first-seen time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from voipmon.records.codec import Record, record_type

# VoIPmonitor's method codes (calltable.h), the ``type`` column of sip_msg.
TYPE_REGISTER = 4
TYPE_MESSAGE = 5
TYPE_SUBSCRIBE = 7
TYPE_OPTIONS = 8
TYPE_NOTIFY = 9
METHOD_TYPES = {"OPTIONS": TYPE_OPTIONS, "SUBSCRIBE": TYPE_SUBSCRIBE, "NOTIFY": TYPE_NOTIFY}


@record_type("sip_msg")
@dataclass(frozen=True, slots=True)
class SipMsg(Record):
    """A ``sip_msg`` row: one OPTIONS, SUBSCRIBE or NOTIFY and its final answer."""

    TABLE: ClassVar[str] = "sip_msg"

    uid: str
    id_sensor: int
    time: float                       # the request, first seen
    type: int                         # TYPE_OPTIONS, TYPE_SUBSCRIBE or TYPE_NOTIFY
    ip_src: str                       # the requester
    port_src: int
    ip_dst: str
    port_dst: int
    number_src: str                   # From user
    number_dst: str                   # To user (or the Request-URI's)
    domain_src: str
    domain_dst: str
    callid: str
    cseq: int
    response_number: int              # final answer, 0 if none was seen
    qualify_ok: bool                  # answered 200 within the qualify limit
    request_repetition: int = 0       # retransmissions of the request
    request_time: float = 0.0         # the last copy of the request
    response_time: float | None = None
    response_duration_ms: int | None = None  # request first seen to the answer
    response_reason: str = ""         # ours: "OK", "Not Found" ... (column response_id)
    ua_src: str = ""                  # column ua_src_id
    ua_dst: str = ""                  # column ua_dst_id
    callername: str = ""
    request_content_type: str = ""    # column request_id_content_type
    request_content_length: int = 0
    request_content: str = ""         # cut to the tracker's content limit
    response_content_type: str = ""
    response_content_length: int = 0
    response_content: str = ""


@record_type("message")
@dataclass(frozen=True, slots=True)
class InstantMessage(Record):
    """A ``message`` row: one SIP MESSAGE (instant message) and its final answer."""

    TABLE: ClassVar[str] = "message"

    uid: str
    id_sensor: int
    calldate: float                   # the request, first seen
    caller: str
    caller_domain: str
    callername: str
    called: str
    called_domain: str
    sipcallerip: str
    sipcalledip: str
    lastSIPresponseNum: int           # 0 if no answer was seen
    content_type: str = ""            # column id_contenttype
    content_length: int = 0
    message: str = ""                 # the body, cut to the tracker's content limit
    response_time: int | None = None  # ms from the request to the answer
    lastSIPresponse: str = ""         # e.g. "202 Accepted" (column lastSIPresponse_id)
    a_ua: str = ""
    b_ua: str = ""
    sipcallerport: int = 0            # ours
    sipcalledport: int = 0            # ours
    callid: str = ""                  # ours
    cseq: int = 0                     # ours


__all__ = [
    "METHOD_TYPES", "TYPE_MESSAGE", "TYPE_NOTIFY", "TYPE_OPTIONS", "TYPE_REGISTER",
    "TYPE_SUBSCRIBE", "InstantMessage", "SipMsg",
]
