"""Cdr objects to table rows and back: pure functions, no database, no reactor.

Writing turns one ``Cdr`` into a ``cdr`` row (VoIPmonitor's columns, ``_mult10`` integers),
a ``cdr_next`` row and one ``cdr_rtp`` row per stream, holding only int, float, str, bytes
and None, already fitted to the columns by ``voipmon.store.fields`` (strings cut to length,
integers clamped, NaN as NULL, lone surrogates replaced) so that no value can make a batch
fail forever. This is the central's hot path, so each stream first goes through
``_stream_fast``, which checks every field at once and builds both of the stream's column
sets directly; anything unusual falls back to ``_stream_careful``, the reference
(tests check that both agree).

Reading rebuilds the ``Cdr`` from ``cdr``/``cdr_next``/``cdr_rtp`` (``cdr_rtp`` keeps the
streams at full precision; ``cdr``'s a_/b_ summaries are derived data for SQL reports), and
``cdr_json`` hands it to the HTTP API as ``Cdr.to_json()`` plus ``id`` and ``pcap_on``.

What a round trip keeps: everything, except that times and durations are kept to the
millisecond (as the JSON shows them), addresses come back in canonical form, texts are
cut to their column's length and the user agent and response texts lose trailing blanks.
``stored_form`` applies exactly that to a Cdr without a database (the FakeStore uses it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from voipmon.analysis.cdr import Cdr, RtpStream
from voipmon.store.fields import (
    I32_MAX,
    I32_MIN,
    I64_MAX,
    I64_MIN,
    MAX_EPOCH,
    U8,
    U16,
    U32,
    clamp,
    datetime_text,
    dec3,
    epoch,
    epoch_ms,
    int_list,
    ints,
    ip_bytes,
    ip_text,
    lookup_text,
    mult10,
    parse_int_list,
    real,
    text,
    uid,
    unsigned,
)
from voipmon.store.schema import TABLES

SIDES = ("a", "b")
DELAY_BUCKETS = (50, 70, 90, 120, 150, 200, 300)


def _side_names(s: str) -> list[str]:
    return [f"{s}_index", f"{s}_payload", f"{s}_saddr", f"{s}_received", f"{s}_lost",
            f"{s}_reordered", f"{s}_avgjitter_mult10", f"{s}_maxjitter",
            *(f"{s}_sl{i}" for i in range(1, 11)), *(f"{s}_d{d}" for d in DELAY_BUCKETS),
            f"{s}_mos_f1_mult10", f"{s}_mos_f2_mult10", f"{s}_mos_adapt_mult10"]


# Column order of the rows encode() builds.
CDR_COLUMNS: tuple[str, ...] = (
    "id_sensor", "sensor_cdr_uid", "calldate", "callend", "duration", "connect_duration",
    "caller", "caller_domain", "callername", "called", "called_domain",
    "sipcallerip", "sipcallerport", "sipcalledip", "sipcalledport", "whohanged", "bye",
    "lastSIPresponse_id", "lastSIPresponseNum", "a_ua_id", "b_ua_id",
    *_side_names("a"), *_side_names("b"),
    "payload", "jitter_mult10", "mos_min_mult10", "packet_loss_perc_mult1000",
)
NEXT_COLUMNS: tuple[str, ...] = (
    "cdr_ID", "callid", "fbasename", "connect_time", "sip_pcap", "rtp_pcap", "pcap_on", "extra",
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
_LEN = {name: _length("cdr", name) for name in
        ("caller", "caller_domain", "callername", "called", "called_domain")}
_CALLID_LEN = _length("cdr_next", "callid")
_FBASENAME_LEN = _length("cdr_next", "fbasename")
_PATH_LEN = _length("cdr_next", "sip_pcap")
_CODEC_LEN = _length("cdr_rtp", "codec")
_EXTRA_LEN = 1 << 20     # characters of JSON: a row stays far below max_allowed_packet
_NO_TIME = "1970-01-01 00:00:00.000"   # for a NOT NULL time the CDR did not have
_JITTER_MAX = U32 / 10 - 1           # ms; a_avgjitter_mult10 must fit an int unsigned
_MOS_MAX = U8 / 10                   # _mult10 of a MOS must fit a tinyint unsigned
_SIDE_LEN = len(_side_names("a")) - 1   # side columns after {s}_index
_NO_SIDE = (None,) * _SIDE_LEN
_PAD = (None,) * 10
_INT = {int}


def lookup_keys(cdr: Cdr) -> tuple[str | None, str | None, str | None]:
    """The lookup-table texts a CDR refers to: (lastSIPresponse, a_ua, b_ua)."""
    return (lookup_text(cdr.lastSIPresponse, RESPONSE_LEN), lookup_text(cdr.a_ua, UA_LEN),
            lookup_text(cdr.b_ua, UA_LEN))


# -- streams ------------------------------------------------------------------------


def _relative(moment: Any, base_ms: int | None) -> float | None:
    number = real(moment)
    if number is None or base_ms is None:
        return None
    return round(min(max(number, 0.0), MAX_EPOCH) - base_ms / 1000, 6)


def _stream_careful(s: RtpStream, index: int, base_ms: int | None
                    ) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(the cdr_rtp row after cdr_ID, the a_/b_ side columns after {s}_index): the reference
    encoding, field by field."""
    ssrc = clamp(s.ssrc, I64_MIN, I64_MAX)
    sport, dport = ints((s.sport, s.dport), 0, U16)
    received, duplicates, reordered = ints((s.received, s.duplicates, s.reordered), 0, U32)
    payload, lost = ints((s.payload, s.lost), I32_MIN, I32_MAX)
    saddr = ip_bytes(s.saddr)
    avgjitter, maxjitter = real(s.avgjitter), real(s.maxjitter)
    sl, delay = tuple(s.sl[:10]), tuple(s.delay[:7])
    counts = ints((*sl, *delay), 0, U32)
    n_sl = len(sl)
    row = (
        index, saddr, sport, ip_bytes(s.daddr), dport, None if ssrc is None else ssrc & U32,
        payload, received, lost, _relative(s.firsttime, base_ms),
        _relative(s.lasttime, base_ms), mult10(maxjitter), avgjitter, maxjitter,
        real(s.mos_f1), real(s.mos_f2), real(s.mos_adapt), text(s.codec, _CODEC_LEN),
        duplicates, reordered, int_list(counts[:n_sl]), int_list(counts[n_sl:]),
        real(s.rtcp_fraclost),
        real(s.rtcp_jitter), real(s.rtcp_rtt), 1 if s.tied_to_sip else 0,
    )
    side = (
        payload, saddr, received, lost, reordered, mult10(avgjitter),
        None if maxjitter is None else clamp(round(maxjitter), 0, U32),
        *counts[:n_sl], *_PAD[:10 - n_sl], *counts[n_sl:], *_PAD[:7 - len(delay)],
        mult10(s.mos_f1, U8), mult10(s.mos_f2, U8), mult10(s.mos_adapt, U8),
    )
    return row, side


def _optional(value: Any, lo: float, hi: float) -> bool:
    return value is None or (type(value) is float and lo <= value <= hi)


def _stream_fast(s: RtpStream, index: int, base_ms: int | None
                 ) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """``_stream_careful``'s result built directly, or None when any field is unusual
    (wrong type, out of range, NaN, too long) and needs the careful path."""
    sport, dport, ssrc, payload, lost = s.sport, s.dport, s.ssrc, s.payload, s.lost
    avgjitter, maxjitter, m1, m2, m3 = s.avgjitter, s.maxjitter, s.mos_f1, s.mos_f2, s.mos_adapt
    first, last, codec = s.firsttime, s.lasttime, s.codec
    sl, delay = s.sl, s.delay
    counts = (s.received, s.duplicates, s.reordered, *sl, *delay)
    if not (
        type(sport) is int and type(dport) is int and 0 <= sport <= U16 and 0 <= dport <= U16
        and type(ssrc) is int and 0 <= ssrc <= U32
        and type(payload) is int and I32_MIN <= payload <= I32_MAX
        and type(lost) is int and I32_MIN <= lost <= I32_MAX
        and len(sl) <= 10 and len(delay) <= 7
        and set(map(type, counts)) == _INT and min(counts) >= 0 and max(counts) <= U32
        and type(avgjitter) is float and 0.0 <= avgjitter <= _JITTER_MAX
        and type(maxjitter) is float and 0.0 <= maxjitter <= _JITTER_MAX
        and _optional(m1, 0.0, _MOS_MAX) and _optional(m2, 0.0, _MOS_MAX)
        and _optional(m3, 0.0, _MOS_MAX)
        and _optional(s.rtcp_fraclost, -1e300, 1e300) and _optional(s.rtcp_jitter, -1e300, 1e300)
        and _optional(s.rtcp_rtt, -1e300, 1e300)
        and base_ms is not None and _optional(first, 0.0, MAX_EPOCH)
        and _optional(last, 0.0, MAX_EPOCH)
        and type(codec) is str and len(codec) <= _CODEC_LEN and codec.isascii()
    ):
        return None
    saddr = ip_bytes(s.saddr)
    base = base_ms / 1000
    received, duplicates, reordered = counts[0], counts[1], counts[2]
    row = (
        index, saddr, sport, ip_bytes(s.daddr), dport, ssrc, payload, received, lost,
        None if first is None else round(first - base, 6),
        None if last is None else round(last - base, 6), round(maxjitter * 10), avgjitter,
        maxjitter, m1, m2, m3, codec, duplicates, reordered, ",".join(map(str, sl)),
        ",".join(map(str, delay)), s.rtcp_fraclost, s.rtcp_jitter, s.rtcp_rtt,
        1 if s.tied_to_sip else 0,
    )
    side = (
        payload, saddr, received, lost, reordered, round(avgjitter * 10), round(maxjitter),
        *sl, *_PAD[:10 - len(sl)], *delay, *_PAD[:7 - len(delay)],
        None if m1 is None else round(m1 * 10), None if m2 is None else round(m2 * 10),
        None if m3 is None else round(m3 * 10),
    )
    return row, side


def encode_stream(s: RtpStream, index: int, base_ms: int | None
                  ) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    return _stream_fast(s, index, base_ms) or _stream_careful(s, index, base_ms)


# -- CDRs ---------------------------------------------------------------------------


def _loss_perc_mult1000(stream: RtpStream) -> int:
    lost = max(clamp(stream.lost, I32_MIN, I32_MAX) or 0, 0)
    expected = (unsigned(stream.received, U32) or 0) + lost
    if expected <= 0:
        return 0
    return clamp(round(lost * 100000 / expected), 0, U32) or 0


def _side_index(index: Any) -> int | None:
    return index if type(index) is int and 0 <= index <= U16 else None


def _extra_json(extra: Any) -> str | None:
    """``Cdr.extra`` as JSON text, or a note of why it is not there (never cut mid-JSON).
    ASCII JSON: any string, even one with a lone surrogate, comes back as it went in."""
    if not extra:
        return None
    try:
        data = json.dumps(extra, sort_keys=True, default=str)
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


def encode(cdr: Cdr, response_id: Any, a_ua_id: Any, b_ua_id: Any, pcap_on: str | None
           ) -> tuple[tuple[Any, ...], tuple[Any, ...], list[tuple[Any, ...]]]:
    """(the ``cdr`` row in ``CDR_COLUMNS`` order, the ``cdr_next`` row and the ``cdr_rtp``
    rows, both without their leading cdr_ID) of a CDR, given its lookup ids."""
    base_ms = epoch_ms(cdr.calldate)
    streams = cdr.rtp[:U16 + 1]
    encoded = [encode_stream(s, i, base_ms) for i, s in enumerate(streams)]
    a_index, b_index = _side_index(cdr.a_index), _side_index(cdr.b_index)
    a = streams[a_index] if a_index is not None and a_index < len(streams) else None
    b = streams[b_index] if b_index is not None and b_index < len(streams) else None
    a_side = encoded[a_index][1] if a is not None else _NO_SIDE
    b_side = encoded[b_index][1] if b is not None else _NO_SIDE
    present = [s for s in (a, b) if s is not None]
    jitters = [j for j in (real(s.avgjitter) for s in present) if j is not None]
    moses = [m for s in present for m in (real(s.mos_f1), real(s.mos_f2), real(s.mos_adapt))
             if m is not None]
    main = a or b
    whohanged = cdr.whohanged if cdr.whohanged in ("caller", "callee") else None
    ports = ints((cdr.sipcallerport, cdr.sipcalledport, cdr.lastSIPresponseNum), 0, U16)
    row = (
        cdr.id_sensor, uid(cdr.sensor_cdr_uid), datetime_text(cdr.calldate) or _NO_TIME,
        datetime_text(cdr.callend) or _NO_TIME, dec3(cdr.duration), dec3(cdr.connect_duration),
        text(cdr.caller, _LEN["caller"]), text(cdr.caller_domain, _LEN["caller_domain"]),
        text(cdr.callername, _LEN["callername"]), text(cdr.called, _LEN["called"]),
        text(cdr.called_domain, _LEN["called_domain"]),
        ip_bytes(cdr.sipcallerip), ports[0], ip_bytes(cdr.sipcalledip), ports[1],
        whohanged, unsigned(cdr.bye, U8), response_id, ports[2], a_ua_id, b_ua_id,
        a_index, *a_side, b_index, *b_side,
        clamp(main.payload, I32_MIN, I32_MAX) if main is not None else None,
        mult10(max(jitters)) if jitters else None,
        mult10(min(moses), U8) if moses else None,
        max(_loss_perc_mult1000(s) for s in present) if present else None,
    )
    has_pcap = bool(cdr.sip_pcap or cdr.rtp_pcap)
    extra = _extra_json(cdr.extra)
    next_row = (
        text(cdr.callid, _CALLID_LEN), text(cdr.fbasename, _FBASENAME_LEN),
        datetime_text(cdr.connect_time), text(cdr.sip_pcap, _PATH_LEN),
        text(cdr.rtp_pcap, _PATH_LEN), pcap_on if has_pcap and pcap_on in PCAP_ON else None,
        extra,
    )
    return row, next_row, [row for row, _side in encoded]


def encode_cdr(cdr: Cdr, response_id: Any = None, a_ua_id: Any = None,
               b_ua_id: Any = None) -> tuple[Any, ...]:
    """Just the ``cdr`` row (``CDR_COLUMNS`` order)."""
    return encode(cdr, response_id, a_ua_id, b_ua_id, None)[0]


def encode_next(cdr: Cdr, cdr_id: int, pcap_on: str | None) -> tuple[Any, ...]:
    """Just the ``cdr_next`` row (``NEXT_COLUMNS`` order)."""
    return (cdr_id, *encode(cdr, None, None, None, pcap_on)[1])


def encode_rtp(cdr: Cdr, cdr_id: int) -> list[tuple[Any, ...]]:
    """Just the ``cdr_rtp`` rows (``RTP_COLUMNS`` order)."""
    return [(cdr_id, *row) for row in encode(cdr, None, None, None, None)[2]]


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
    "n.extra",
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
     pcap_on, extra) = row
    start = epoch(calldate)
    cdr = Cdr(
        sensor_cdr_uid=sensor_cdr_uid, callid=callid or "", id_sensor=id_sensor,
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
        extra=_extra_data(extra),
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
    row, next_tail, rtp_tails = encode(cdr, None, None, None, pcap_on)
    values = dict(zip(CDR_COLUMNS, row, strict=True))
    nxt = dict(zip(NEXT_COLUMNS, (0, *next_tail), strict=True))
    read = {
        "c.ID": 0, "r.lastSIPresponse": response, "ua.ua": a_ua, "ub.ua": b_ua,
        **{f"c.{k}": v for k, v in values.items()}, **{f"n.{k}": v for k, v in nxt.items()},
    }
    _, stored, stored_pcap_on = decode_cdr([read[c] for c in READ_COLUMNS], rtp_tails)
    return stored, stored_pcap_on
