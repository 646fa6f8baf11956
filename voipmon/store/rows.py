"""Cdr objects to table rows and back: pure functions, no database, no reactor.

Writing turns one ``Cdr`` into a ``cdr`` row (VoIPmonitor's columns, ``_mult10`` integers),
a ``cdr_next`` row and one ``cdr_rtp`` row per stream, holding only int, float, str, bytes
and None, already fitted to the columns by ``voipmon.store.fields`` (strings cut to length,
integers clamped, NaN as NULL, lone surrogates replaced) so that no value can make a batch
fail forever. The Call-ID alone is kept exactly: ``cdr_next.callid`` holds it as readable
text (bytes that are not UTF-8 shown as U+FFFD, cut to the column) and, only when that text
is not exact, ``cdr_next.callid_raw`` holds its bytes as captured (``fields.exact_text``).
This is the central's hot path: a value that already fits costs one inline check, and
streams go through ``voipmon.store.rtprows``'s checked fast path.

Reading rebuilds the ``Cdr`` from ``cdr``/``cdr_next``/``cdr_rtp`` (``cdr_rtp`` keeps the
streams at full precision; ``cdr``'s a_/b_ summaries are derived data for SQL reports), and
``cdr_json`` hands it to the HTTP API as ``Cdr.to_json()`` plus ``id`` and ``pcap_on``.

What a round trip keeps: everything (the Call-ID byte for byte), except that times and
durations are kept to the millisecond (as the JSON shows them), addresses come back in
canonical form, other texts are cut to their column's length (a byte that was not UTF-8
becomes '?') and the user agent and response texts lose trailing blanks.
``stored_form`` applies exactly that to a Cdr without a database (the FakeStore uses it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from voipmon.records.cdr import Cdr, RtpStream
from voipmon.store.fields import (
    MAX_DEC3,
    MAX_EPOCH,
    U8,
    U16,
    U32,
    clamp,
    datetime_text,
    dec3,
    epoch,
    epoch_ms,
    exact_text,
    exact_value,
    ip_bytes,
    ip_text,
    lookup_text,
    ms_text,
    parse_int_list,
    text,
    uid,
)
from voipmon.store.rtprows import stream_careful, stream_fast
from voipmon.store.schema import TABLES

SIDES = ("a", "b")
DELAY_BUCKETS = (50, 70, 90, 120, 150, 200, 300)


def _side_names(s: str) -> list[str]:
    return [f"{s}_index", f"{s}_payload", f"{s}_saddr", f"{s}_received", f"{s}_lost",
            f"{s}_reordered", f"{s}_avgjitter_mult10", f"{s}_maxjitter",
            *(f"{s}_sl{i}" for i in range(1, 11)), *(f"{s}_d{d}" for d in DELAY_BUCKETS),
            f"{s}_mos_f1_mult10", f"{s}_mos_f2_mult10", f"{s}_mos_adapt_mult10"]


# Column order of the rows encode() builds (the ID first: None when the database chooses).
CDR_COLUMNS: tuple[str, ...] = (
    "ID", "id_sensor", "sensor_cdr_uid", "calldate", "callend", "duration", "connect_duration",
    "caller", "caller_domain", "callername", "called", "called_domain",
    "sipcallerip", "sipcallerport", "sipcalledip", "sipcalledport", "whohanged", "bye",
    "lastSIPresponse_id", "lastSIPresponseNum", "a_ua_id", "b_ua_id",
    *_side_names("a"), *_side_names("b"),
    "payload", "jitter_mult10", "mos_min_mult10", "packet_loss_perc_mult1000",
)
NEXT_COLUMNS: tuple[str, ...] = (
    "cdr_ID", "callid", "fbasename", "connect_time", "sip_pcap", "rtp_pcap", "pcap_on", "extra",
    "callid_raw", "hep_capture_id",
)
RTP_COLUMNS: tuple[str, ...] = (
    "cdr_ID", "index", "saddr", "sport", "daddr", "dport", "ssrc", "payload", "received",
    "loss", "firsttime", "lasttime", "maxjitter_mult10", "avgjitter", "maxjitter", "mos_f1",
    "mos_f2", "mos_adapt", "codec", "duplicates", "reordered", "sl", "delay",
    "rtcp_fraclost", "rtcp_jitter", "rtcp_rtt", "tied_to_sip",
)

PCAP_ON = ("sensor", "central")


def _length(table: str, column: str) -> int:
    return TABLES[table].column(column).length or 0


RESPONSE_LEN = _length("cdr_sip_response", "lastSIPresponse")
UA_LEN = _length("cdr_ua", "ua")
_TEXT_LEN = _length("cdr", "caller")    # caller, caller_domain, callername, called...
_CALLID_LEN = _length("cdr_next", "callid")
_FBASENAME_LEN = _length("cdr_next", "fbasename")
_PATH_LEN = _length("cdr_next", "sip_pcap")
_EXTRA_LEN = 1 << 20     # characters of JSON: a row stays far below max_allowed_packet
_NO_TIME = "1970-01-01 00:00:00.000"   # for a NOT NULL time the CDR did not have
_SIDE_LEN = len(_side_names("a")) - 1   # side columns after {s}_index
_NO_SIDE = (None,) * _SIDE_LEN


def lookup_keys(cdr: Cdr) -> tuple[str | None, str | None, str | None]:
    """The lookup-table texts a CDR refers to: (lastSIPresponse, a_ua, b_ua)."""
    return (lookup_text(cdr.lastSIPresponse, RESPONSE_LEN), lookup_text(cdr.a_ua, UA_LEN),
            lookup_text(cdr.b_ua, UA_LEN))


# -- CDRs ---------------------------------------------------------------------------


def _loss_perc_mult1000(received: int | None, lost: int | None) -> int:
    """A side's loss percentage times 1000, from its fitted received and lost counts."""
    if not lost or lost < 0:
        return 0
    value = round(lost * 100000 / ((received or 0) + lost))
    return value if value <= U32 else U32


def _summary(a_side: tuple[Any, ...] | None, b_side: tuple[Any, ...] | None
             ) -> tuple[Any, Any, Any, Any]:
    """``cdr``'s payload, jitter_mult10, mos_min_mult10, packet_loss_perc_mult1000 from the
    side columns (already fitted; _mult10 is monotonic, so the largest jitter's _mult10 is
    the largest _mult10)."""
    if a_side is None or b_side is None:
        side = a_side or b_side
        if side is None:
            return None, None, None, None
        moses = [m for m in side[-3:] if m is not None]
        return (side[0], side[5], min(moses) if moses else None,
                _loss_perc_mult1000(side[2], side[3]))
    ja, jb = a_side[5], b_side[5]
    moses = [m for m in (*a_side[-3:], *b_side[-3:]) if m is not None]
    return (a_side[0], ja if jb is None else jb if ja is None else max(ja, jb),
            min(moses) if moses else None,
            max(_loss_perc_mult1000(a_side[2], a_side[3]),
                _loss_perc_mult1000(b_side[2], b_side[3])))


_JSON = json.JSONEncoder(sort_keys=True, default=str)


def _extra_json(extra: Any) -> str | None:
    """``Cdr.extra`` as JSON text, or a note of why it is not there (never cut mid-JSON).
    ASCII JSON: any string, even one with a lone surrogate, comes back as it went in."""
    if not extra:
        return None
    try:
        data = _JSON.encode(extra)
    except (TypeError, ValueError) as exc:
        data = json.dumps({"_unstorable": str(exc)[:200]})
    if len(data) > _EXTRA_LEN:
        data = json.dumps({"_too_long": len(data)})
    return data


def _extra_data(stored: str | None) -> dict[str, Any]:
    if not stored:
        return {}
    try:
        data = json.loads(stored)
    except ValueError:
        return {"_unreadable": stored[:200]}
    return data if isinstance(data, dict) else {"_value": data}


def encode(cdr: Cdr, response_id: Any, a_ua_id: Any, b_ua_id: Any, pcap_on: str | None,
           key_uid: str | None = None, cdr_id: int | None = None
           ) -> tuple[tuple[Any, ...], tuple[Any, ...], list[tuple[Any, ...]]]:
    """The ``cdr`` row (``CDR_COLUMNS``), the ``cdr_next`` row (``NEXT_COLUMNS``) and the
    ``cdr_rtp`` rows (``RTP_COLUMNS``) of a CDR, given its lookup ids, its ID if known
    (else None in the ID columns) and its ``uid()`` if known. Each value that already
    fits costs one inline check; the others go through ``voipmon.store.fields``."""
    t = cdr.calldate
    if type(t) is float and 0.0 <= t <= MAX_EPOCH:
        base_ms: int | None = round(t * 1000)
        calldate = ms_text(base_ms)
    else:
        base_ms = epoch_ms(t)
        calldate = _NO_TIME if base_ms is None else ms_text(base_ms)
    encoded = [stream_fast(s, i, base_ms, cdr_id) or stream_careful(s, i, base_ms, cdr_id)
               for i, s in enumerate(cdr.rtp[:U16 + 1])]
    a_index, b_index, n = cdr.a_index, cdr.b_index, len(encoded)
    if not (type(a_index) is int and 0 <= a_index <= U16):
        a_index = None
    if not (type(b_index) is int and 0 <= b_index <= U16):
        b_index = None
    a_side = encoded[a_index][1] if a_index is not None and a_index < n else None
    b_side = encoded[b_index][1] if b_index is not None and b_index < n else None
    t, d, c = cdr.callend, cdr.duration, cdr.connect_duration
    callend = (ms_text(round(t * 1000)) if type(t) is float and 0.0 <= t <= MAX_EPOCH
               else datetime_text(t) or _NO_TIME)
    duration = round(d, 3) if type(d) is float and -MAX_DEC3 <= d <= MAX_DEC3 else dec3(d)
    connected = round(c, 3) if type(c) is float and -MAX_DEC3 <= c <= MAX_DEC3 else dec3(c)
    caller, domain, name, called, called_domain = (
        cdr.caller, cdr.caller_domain, cdr.callername, cdr.called, cdr.called_domain)
    port1, port2, num, bye = cdr.sipcallerport, cdr.sipcalledport, cdr.lastSIPresponseNum, cdr.bye
    whohanged = cdr.whohanged
    row = (
        cdr_id, cdr.id_sensor, uid(cdr.sensor_cdr_uid) if key_uid is None else key_uid,
        calldate, callend, duration, connected,
        caller[:_TEXT_LEN] if type(caller) is str and caller.isascii()
        else text(caller, _TEXT_LEN),
        domain[:_TEXT_LEN] if type(domain) is str and domain.isascii()
        else text(domain, _TEXT_LEN),
        name[:_TEXT_LEN] if type(name) is str and name.isascii() else text(name, _TEXT_LEN),
        called[:_TEXT_LEN] if type(called) is str and called.isascii()
        else text(called, _TEXT_LEN),
        called_domain[:_TEXT_LEN] if type(called_domain) is str and called_domain.isascii()
        else text(called_domain, _TEXT_LEN),
        ip_bytes(cdr.sipcallerip),
        port1 if type(port1) is int and 0 <= port1 <= U16 else clamp(port1, 0, U16),
        ip_bytes(cdr.sipcalledip),
        port2 if type(port2) is int and 0 <= port2 <= U16 else clamp(port2, 0, U16),
        whohanged if whohanged == "caller" or whohanged == "callee" else None,
        bye if type(bye) is int and 0 <= bye <= U8 else clamp(bye, 0, U8), response_id,
        num if type(num) is int and 0 <= num <= U16 else clamp(num, 0, U16), a_ua_id, b_ua_id,
        a_index, *(a_side or _NO_SIDE), b_index, *(b_side or _NO_SIDE),
        *_summary(a_side, b_side),
    )
    callid, fbasename, sip_pcap, rtp_pcap = cdr.callid, cdr.fbasename, cdr.sip_pcap, cdr.rtp_pcap
    if type(callid) is str and len(callid) <= _CALLID_LEN and callid.isascii():
        callid_raw = None
    else:
        callid, callid_raw = exact_text(callid, _CALLID_LEN)
    next_row = (
        cdr_id, callid,
        fbasename[:_FBASENAME_LEN] if type(fbasename) is str and fbasename.isascii()
        else text(fbasename, _FBASENAME_LEN),
        datetime_text(cdr.connect_time),
        sip_pcap[:_PATH_LEN] if type(sip_pcap) is str and sip_pcap.isascii()
        else text(sip_pcap, _PATH_LEN),
        rtp_pcap[:_PATH_LEN] if type(rtp_pcap) is str and rtp_pcap.isascii()
        else text(rtp_pcap, _PATH_LEN),
        pcap_on if (sip_pcap or rtp_pcap) and pcap_on in PCAP_ON else None,
        _extra_json(cdr.extra), callid_raw, clamp(cdr.hep_capture_id, 0, U32),
    )
    return row, next_row, [row for row, _side in encoded]


def batch_items(cdrs: Sequence[Cdr], pcap_on: str) -> list[tuple[tuple[int, str], Cdr]]:
    """A store_cdrs batch validated: ((id_sensor, stored uid), Cdr) sorted by key (so that
    concurrent writers lock rows in the same order), the first of duplicates kept.
    ValueError for what is not a sequence of Cdr with a valid id_sensor."""
    if isinstance(cdrs, Cdr | str | bytes) or not isinstance(cdrs, Sequence):
        raise ValueError("store_cdrs takes a sequence of Cdr")
    if pcap_on not in PCAP_ON:
        raise ValueError(f"pcap_on = {pcap_on!r}: allowed: {', '.join(PCAP_ON)}")
    unique: dict[tuple[int, str], Cdr] = {}
    for cdr in cdrs:
        if not isinstance(cdr, Cdr):
            raise ValueError(f"store_cdrs takes Cdr objects, not {type(cdr).__name__}")
        ident = cdr.id_sensor
        if type(ident) is not int or not 0 <= ident <= 65535:
            raise ValueError(f"CDR {cdr.callid!r}: id_sensor = {ident!r}: allowed: 0..65535")
        unique.setdefault((ident, uid(cdr.sensor_cdr_uid)), cdr)
    return sorted(unique.items(), key=lambda item: item[0])


# -- reading ------------------------------------------------------------------------

# What the read queries select, in this order (c = cdr, n = cdr_next, r/ua/ub = lookups).
READ_COLUMNS: tuple[str, ...] = (
    "c.ID", "c.id_sensor", "c.sensor_cdr_uid", "c.calldate", "c.callend", "c.duration",
    "c.connect_duration", "c.caller", "c.called", "c.sipcallerip", "c.sipcalledip",
    "c.sipcallerport", "c.sipcalledport", "c.lastSIPresponseNum", "c.bye",
    "c.caller_domain", "c.called_domain", "c.callername", "c.whohanged",
    "c.a_index", "c.b_index", "r.lastSIPresponse", "ua.ua", "ub.ua",
    "n.callid", "n.fbasename", "n.connect_time", "n.sip_pcap", "n.rtp_pcap", "n.pcap_on",
    "n.extra", "n.callid_raw", "n.hep_capture_id",
)
READ_RTP_COLUMNS: tuple[str, ...] = tuple(c for c in RTP_COLUMNS if c != "cdr_ID")


def decode_rtp(row: Sequence[Any], base: float | None) -> RtpStream:
    """A stream from a ``cdr_rtp`` row (``READ_RTP_COLUMNS`` order, without cdr_ID)."""
    (_index, saddr, sport, daddr, dport, ssrc, payload, received, loss, first, last,
     _maxjitter_mult10, avgjitter, maxjitter, mos_f1, mos_f2, mos_adapt, codec, duplicates,
     reordered, sl, delay, fraclost, rtcp_jitter, rtt, tied) = row
    return RtpStream(
        saddr=ip_text(saddr), sport=sport or 0, daddr=ip_text(daddr), dport=dport or 0,
        ssrc=ssrc or 0, payload=payload if payload is not None else -1,
        received=received or 0, lost=loss or 0,
        avgjitter=avgjitter if avgjitter is not None else 0.0,
        maxjitter=maxjitter if maxjitter is not None else 0.0,
        mos_f1=mos_f1, mos_f2=mos_f2, mos_adapt=mos_adapt, codec=codec or "",
        duplicates=duplicates or 0, reordered=reordered or 0, sl=parse_int_list(sl),
        delay=parse_int_list(delay),
        firsttime=None if first is None or base is None else base + first,
        lasttime=None if last is None or base is None else base + last,
        rtcp_fraclost=fraclost, rtcp_jitter=rtcp_jitter, rtcp_rtt=rtt,
        tied_to_sip=bool(tied),
    )


def decode_cdr(row: Sequence[Any], rtp_rows: Sequence[Sequence[Any]]) -> tuple[int, Cdr, Any]:
    """(ID, Cdr, pcap_on) from a ``READ_COLUMNS`` row and its ``cdr_rtp`` rows in order."""
    (cdr_id, id_sensor, sensor_cdr_uid, calldate, callend, duration, connect_duration,
     caller, called, sipcallerip, sipcalledip, sipcallerport, sipcalledport,
     response_num, bye, caller_domain, called_domain, callername, whohanged, a_index,
     b_index, response, a_ua, b_ua, callid, fbasename, connect_time, sip_pcap, rtp_pcap,
     pcap_on, extra, callid_raw, hep_capture_id) = row
    start = epoch(calldate)
    cdr = Cdr(
        sensor_cdr_uid=sensor_cdr_uid, callid=exact_value(callid, callid_raw),
        id_sensor=id_sensor,
        calldate=start, callend=epoch(callend),
        duration=float(duration) if duration is not None else 0.0,
        connect_duration=float(connect_duration) if connect_duration is not None else 0.0,
        caller=caller or "", called=called or "", sipcallerip=ip_text(sipcallerip),
        sipcalledip=ip_text(sipcalledip), sipcallerport=sipcallerport or 0,
        sipcalledport=sipcalledport or 0, lastSIPresponseNum=response_num or 0, bye=bye or 0,
        lastSIPresponse=response or "", caller_domain=caller_domain or "",
        called_domain=called_domain or "", callername=callername or "",
        whohanged=whohanged or "", connect_time=epoch(connect_time), a_ua=a_ua or "",
        b_ua=b_ua or "", a_index=a_index, b_index=b_index,
        rtp=tuple(decode_rtp(r, start) for r in rtp_rows),
        fbasename=fbasename or "", sip_pcap=sip_pcap or "", rtp_pcap=rtp_pcap or "",
        extra=_extra_data(extra), hep_capture_id=hep_capture_id,
    )
    return cdr_id, cdr, pcap_on


def cdr_json(cdr_id: int, cdr: Cdr, pcap_on: str | None) -> dict[str, Any]:
    """What the HTTP API serves for a stored CDR: ``Cdr.to_json()`` plus ``id`` and
    ``pcap_on`` ("sensor": fetch the pcap from the sensor's management port; "central": it
    is in the central's spool; None: no pcap was written)."""
    data = cdr.to_json()
    data["id"] = cdr_id
    data["pcap_on"] = pcap_on
    return data


def stored_form(cdr: Cdr, pcap_on: str | None = "sensor") -> tuple[Cdr, str | None]:
    """The (Cdr, pcap_on) a store gives back for ``cdr``: encode, then decode, no database."""
    response, a_ua, b_ua = lookup_keys(cdr)
    row, next_row, rtp_rows = encode(cdr, None, None, None, pcap_on, cdr_id=0)
    read = {
        "r.lastSIPresponse": response, "ua.ua": a_ua, "ub.ua": b_ua,
        **{f"c.{k}": v for k, v in zip(CDR_COLUMNS, row, strict=True)},
        **{f"n.{k}": v for k, v in zip(NEXT_COLUMNS, next_row, strict=True)},
    }
    _, stored, stored_pcap_on = decode_cdr([read[c] for c in READ_COLUMNS],
                                           [r[1:] for r in rtp_rows])
    return stored, stored_pcap_on
