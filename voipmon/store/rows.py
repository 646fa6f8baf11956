"""Cdr objects to table rows and back: pure functions, no database, no reactor.

Writing turns one ``Cdr`` into a ``cdr`` row (VoIPmonitor's columns, ``_mult10`` integers),
a ``cdr_next`` row and one ``cdr_rtp`` row per stream, holding only int, float, str, bytes
and None, already fitted to the columns (strings cut to length, integers clamped, NaN as
NULL, lone surrogates replaced) so that no value can make a batch fail forever.

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
import math
import socket
import time
from calendar import timegm
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from voipmon.analysis.cdr import Cdr, RtpStream
from voipmon.store.schema import TABLES

U8, U16, U32 = 0xFF, 0xFFFF, 0xFFFFFFFF
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
_MAX_EPOCH = 253402300799.999      # 9999-12-31 23:59:59.999, MySQL's datetime limit
_MAX_DEC3 = 999999.999             # decimal(9,3)

SIDES = ("a", "b")
DELAY_BUCKETS = (50, 70, 90, 120, 150, 200, 300)

RESPONSE_LEN = TABLES["cdr_sip_response"].column("lastSIPresponse").length or 255
UA_LEN = TABLES["cdr_ua"].column("ua").length or 512


def _side_names(s: str) -> list[str]:
    return [f"{s}_index", f"{s}_payload", f"{s}_saddr", f"{s}_received", f"{s}_lost",
            f"{s}_reordered", f"{s}_avgjitter_mult10", f"{s}_maxjitter",
            *(f"{s}_sl{i}" for i in range(1, 11)), *(f"{s}_d{d}" for d in DELAY_BUCKETS),
            f"{s}_mos_f1_mult10", f"{s}_mos_f2_mult10", f"{s}_mos_adapt_mult10"]


# Column order of the tuples encode_cdr/encode_next/encode_rtp build.
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


_LEN = {name: _length("cdr", name) for name in
        ("caller", "caller_domain", "callername", "called", "called_domain")}
_CALLID_LEN = _length("cdr_next", "callid")
_FBASENAME_LEN = _length("cdr_next", "fbasename")
_PATH_LEN = _length("cdr_next", "sip_pcap")
_CODEC_LEN = _length("cdr_rtp", "codec")
_UID_LEN = _length("cdr", "sensor_cdr_uid")


# -- value fitting -------------------------------------------------------------------


def text(value: str | None, limit: int) -> str | None:
    """A string the database will take: cut to ``limit`` characters, valid UTF-8."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> '?'
    return value[:limit]


def ascii_text(value: str | None, limit: int) -> str | None:
    """A string for an ASCII column: other characters become '?'."""
    if value is None:
        return None
    return str(value).encode("ascii", "replace").decode("ascii")[:limit]


def lookup_text(value: str | None, limit: int) -> str | None:
    """A lookup-table key (user agent, response text): fitted, without trailing blanks."""
    fitted = text(value, limit)
    if fitted is None:
        return None
    fitted = fitted.rstrip()
    return fitted or None


def uid(value: str) -> str:
    """The idempotency key as stored: printable ASCII up to 64 characters, else its hash."""
    if (isinstance(value, str) and 0 < len(value) <= _UID_LEN and value.isascii()
            and value.isprintable() and " " not in value):
        return value
    import hashlib

    raw = str(value).encode("utf-8", "surrogateescape")
    return "h:" + hashlib.sha256(raw).hexdigest()[:40]


def clamp(value: Any, lo: int, hi: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return lo if number < lo else hi if number > hi else number


def unsigned(value: Any, hi: int) -> int | None:
    return clamp(value, 0, hi)


def real(value: Any) -> float | None:
    """A finite float or None (NaN and infinities have no SQL form)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def mult10(value: Any, hi: int = U32) -> int | None:
    number = real(value)
    if number is None:
        return None
    return clamp(round(number * 10), 0, hi)


def dec3(value: Any) -> float | None:
    number = real(value)
    if number is None:
        return None
    return round(min(max(number, -_MAX_DEC3), _MAX_DEC3), 3)


def epoch_ms(value: Any) -> int | None:
    """Epoch seconds to whole milliseconds within the datetime range, or None."""
    number = real(value)
    if number is None:
        return None
    return round(min(max(number, 0.0), _MAX_EPOCH) * 1000)


def datetime_text(value: Any) -> str | None:
    """Epoch seconds to ``YYYY-MM-DD HH:MM:SS.mmm`` (UTC), the form both back ends store."""
    ms = epoch_ms(value)
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    t = time.gmtime(seconds)
    return "%04d-%02d-%02d %02d:%02d:%02d.%03d" % (  # noqa: UP031 - hot path
        t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, millis)


def epoch(value: Any) -> float | None:
    """A stored datetime (a datetime from MySQL, a text from SQLite) to epoch seconds."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        ms = timegm(value.timetuple()) * 1000 + value.microsecond // 1000
        return ms / 1000
    return float(value)


def ip_bytes(address: str | None) -> bytes | None:
    """Text address to INET6_ATON's layout (4 or 16 bytes); None if it is not an address."""
    if not address:
        return None
    try:
        if ":" in address:
            return socket.inet_pton(socket.AF_INET6, address.partition("%")[0])
        return socket.inet_pton(socket.AF_INET, address)
    except (OSError, ValueError, TypeError):
        return None


def ip_text(packed: bytes | None) -> str:
    if not packed:
        return ""
    packed = bytes(packed)
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    if len(packed) == 16:
        return socket.inet_ntop(socket.AF_INET6, packed)
    return ""


def _csv(values: Sequence[int]) -> str:
    return ",".join(str(clamp(v, I64_MIN, I64_MAX) or 0) for v in values)


def _uncsv(value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    return tuple(int(item) for item in value.split(","))


# -- writing ------------------------------------------------------------------------


def lookup_keys(cdr: Cdr) -> tuple[str | None, str | None, str | None]:
    """The lookup-table texts a CDR refers to: (lastSIPresponse, a_ua, b_ua)."""
    return (lookup_text(cdr.lastSIPresponse, RESPONSE_LEN), lookup_text(cdr.a_ua, UA_LEN),
            lookup_text(cdr.b_ua, UA_LEN))


_NO_SIDE = (None,) * (len(_side_names("a")) - 1)


def _side(stream: RtpStream | None, index: int | None) -> tuple[Any, ...]:
    if stream is None:
        return (index, *_NO_SIDE)
    sl = tuple(stream.sl[:10]) + (None,) * (10 - min(len(stream.sl), 10))
    delay = tuple(stream.delay[:7]) + (None,) * (7 - min(len(stream.delay), 7))
    maxjitter = real(stream.maxjitter)
    return (
        index, clamp(stream.payload, I32_MIN, I32_MAX), ip_bytes(stream.saddr),
        unsigned(stream.received, U32), clamp(stream.lost, I32_MIN, I32_MAX),
        unsigned(stream.reordered, U32), mult10(stream.avgjitter),
        None if maxjitter is None else clamp(round(maxjitter), 0, U32),
        *(unsigned(v, U32) for v in sl), *(unsigned(v, U32) for v in delay),
        mult10(stream.mos_f1, U8), mult10(stream.mos_f2, U8), mult10(stream.mos_adapt, U8),
    )


def _loss_perc_mult1000(stream: RtpStream | None) -> int | None:
    if stream is None:
        return None
    expected = stream.received + max(stream.lost, 0)
    if expected <= 0:
        return 0
    return clamp(round(max(stream.lost, 0) * 100000 / expected), 0, U32)


def encode_cdr(cdr: Cdr, response_id: Any, a_ua_id: Any, b_ua_id: Any) -> tuple[Any, ...]:
    """The ``cdr`` row (``CDR_COLUMNS`` order) of a CDR, given its lookup ids."""
    a, b = cdr.side("a"), cdr.side("b")
    a_index = clamp(cdr.a_index, 0, U16) if cdr.a_index is not None and cdr.a_index >= 0 else None
    b_index = clamp(cdr.b_index, 0, U16) if cdr.b_index is not None and cdr.b_index >= 0 else None
    jitters = [j for j in (real(s.avgjitter) for s in (a, b) if s) if j is not None]
    moses = [m for s in (a, b) if s for m in (real(s.mos_f1), real(s.mos_f2), real(s.mos_adapt))
             if m is not None]
    losses = [p for p in (_loss_perc_mult1000(a), _loss_perc_mult1000(b)) if p is not None]
    main = a or b
    whohanged = cdr.whohanged if cdr.whohanged in ("caller", "callee") else None
    return (
        cdr.id_sensor, uid(cdr.sensor_cdr_uid), datetime_text(cdr.calldate),
        datetime_text(cdr.callend), dec3(cdr.duration), dec3(cdr.connect_duration),
        text(cdr.caller, _LEN["caller"]), text(cdr.caller_domain, _LEN["caller_domain"]),
        text(cdr.callername, _LEN["callername"]), text(cdr.called, _LEN["called"]),
        text(cdr.called_domain, _LEN["called_domain"]),
        ip_bytes(cdr.sipcallerip), unsigned(cdr.sipcallerport, U16),
        ip_bytes(cdr.sipcalledip), unsigned(cdr.sipcalledport, U16),
        whohanged, unsigned(cdr.bye, U8), response_id,
        unsigned(cdr.lastSIPresponseNum, U16), a_ua_id, b_ua_id,
        *_side(a, a_index), *_side(b, b_index),
        clamp(main.payload, I32_MIN, I32_MAX) if main else None,
        mult10(max(jitters)) if jitters else None,
        mult10(min(moses), U8) if moses else None,
        max(losses) if losses else None,
    )


def encode_next(cdr: Cdr, cdr_id: int, pcap_on: str | None) -> tuple[Any, ...]:
    """The ``cdr_next`` row (``NEXT_COLUMNS`` order)."""
    has_pcap = bool(cdr.sip_pcap or cdr.rtp_pcap)
    extra = (json.dumps(cdr.extra, sort_keys=True, default=str, ensure_ascii=False)
             if cdr.extra else None)
    return (
        cdr_id, text(cdr.callid, _CALLID_LEN), text(cdr.fbasename, _FBASENAME_LEN),
        datetime_text(cdr.connect_time), text(cdr.sip_pcap, _PATH_LEN),
        text(cdr.rtp_pcap, _PATH_LEN), pcap_on if has_pcap and pcap_on in PCAP_ON else None,
        None if extra is None else text(extra, 1 << 24),
    )


def _relative(moment: Any, base_ms: int | None) -> float | None:
    number = real(moment)
    if number is None or base_ms is None:
        return None
    return round(number - base_ms / 1000, 6)


def encode_rtp(cdr: Cdr, cdr_id: int) -> list[tuple[Any, ...]]:
    """One ``cdr_rtp`` row (``RTP_COLUMNS`` order) per stream."""
    base = epoch_ms(cdr.calldate)
    rows = []
    for index, s in enumerate(cdr.rtp[: U16 + 1]):
        ssrc = clamp(s.ssrc, I64_MIN, I64_MAX)
        rows.append((
            cdr_id, index, ip_bytes(s.saddr), unsigned(s.sport, U16), ip_bytes(s.daddr),
            unsigned(s.dport, U16), None if ssrc is None else ssrc & U32,
            clamp(s.payload, I32_MIN, I32_MAX), unsigned(s.received, U32),
            clamp(s.lost, I32_MIN, I32_MAX), _relative(s.firsttime, base),
            _relative(s.lasttime, base), mult10(s.maxjitter), real(s.avgjitter),
            real(s.maxjitter), real(s.mos_f1), real(s.mos_f2), real(s.mos_adapt),
            text(s.codec, _CODEC_LEN), unsigned(s.duplicates, U32), unsigned(s.reordered, U32),
            _csv(s.sl[:10]), _csv(s.delay[:7]), real(s.rtcp_fraclost), real(s.rtcp_jitter),
            real(s.rtcp_rtt), 1 if s.tied_to_sip else 0,
        ))
    return rows


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
        duplicates=duplicates or 0, reordered=reordered or 0, sl=_uncsv(sl),
        delay=_uncsv(delay),
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
        extra=json.loads(extra) if extra else {},
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
    row = encode_cdr(cdr, None, None, None)
    values = dict(zip(CDR_COLUMNS, row, strict=True))
    nxt = dict(zip(NEXT_COLUMNS, encode_next(cdr, 0, pcap_on), strict=True))
    read = {
        "c.ID": 0, "r.lastSIPresponse": response, "ua.ua": a_ua, "ub.ua": b_ua,
        **{f"c.{k}": v for k, v in values.items()}, **{f"n.{k}": v for k, v in nxt.items()},
    }
    rtp = [r[1:] for r in encode_rtp(cdr, 0)]
    _, stored, stored_pcap_on = decode_cdr([read[c] for c in READ_COLUMNS], rtp)
    return stored, stored_pcap_on
