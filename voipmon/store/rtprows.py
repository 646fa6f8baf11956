"""One ``RtpStream`` to its ``cdr_rtp`` row and its ``cdr`` a_/b_ side columns.

This is the central's hot path (every CDR has a few streams), so each stream first goes
through ``stream_fast``, which checks every field at once and builds both column sets
directly; anything unusual (wrong type, out of range, NaN, too long) falls back to
``stream_careful``, the reference, field by field through ``voipmon.store.fields``
(tests check that both agree). Both return only int, float, str, bytes and None, fitted
to the columns.
"""

from __future__ import annotations

from typing import Any

from voipmon.records.cdr import RtpStream
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
    int_list,
    ints,
    ip_bytes,
    mult10,
    real,
    text,
)
from voipmon.store.schema import TABLES

CODEC_LEN = TABLES["cdr_rtp"].column("codec").length or 0
JITTER_MAX = U32 / 10 - 1            # ms; a_avgjitter_mult10 must fit an int unsigned
MOS_MAX = U8 / 10                    # _mult10 of a MOS must fit a tinyint unsigned
_PAD = (None,) * 10
_INT = {int}
_LISTS: dict[tuple[int, ...], str] = {}   # sl/delay texts: a few lists (mostly zeros) recur


def _relative(moment: Any, base_ms: int | None) -> float | None:
    number = real(moment)
    if number is None or base_ms is None:
        return None
    return round(min(max(number, 0.0), MAX_EPOCH) - base_ms / 1000, 6)


def stream_careful(s: RtpStream, index: int, base_ms: int | None, cdr_id: Any = None
                   ) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(the cdr_rtp row, starting with ``cdr_id``; the a_/b_ side columns after
    {s}_index): the reference encoding, field by field."""
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
        cdr_id, index, saddr, sport, ip_bytes(s.daddr), dport,
        None if ssrc is None else ssrc & U32,
        payload, received, lost, _relative(s.firsttime, base_ms),
        _relative(s.lasttime, base_ms), mult10(maxjitter), avgjitter, maxjitter,
        real(s.mos_f1), real(s.mos_f2), real(s.mos_adapt), text(s.codec, CODEC_LEN),
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


def _list_text(values: tuple[int, ...]) -> str:
    """``int_list`` of a tuple already checked to hold only ints in range, remembered."""
    listed = _LISTS.get(values)
    if listed is None:
        if len(_LISTS) > 4096:
            _LISTS.clear()
        listed = _LISTS[values] = ",".join(map(str, values))
    return listed


def stream_fast(s: RtpStream, index: int, base_ms: int | None, cdr_id: Any = None
                ) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """``stream_careful``'s result built directly, or None when any field is unusual."""
    sport, dport, ssrc, payload, lost = s.sport, s.dport, s.ssrc, s.payload, s.lost
    avgjitter, maxjitter, m1, m2, m3 = s.avgjitter, s.maxjitter, s.mos_f1, s.mos_f2, s.mos_adapt
    first, last, codec = s.firsttime, s.lasttime, s.codec
    fraclost, rtcp_jitter, rtt = s.rtcp_fraclost, s.rtcp_jitter, s.rtcp_rtt
    sl, delay = s.sl, s.delay
    counts = (s.received, s.duplicates, s.reordered, *sl, *delay)
    if not (
        type(sport) is int and type(dport) is int and 0 <= sport <= U16 and 0 <= dport <= U16
        and type(ssrc) is int and 0 <= ssrc <= U32
        and type(payload) is int and I32_MIN <= payload <= I32_MAX
        and type(lost) is int and I32_MIN <= lost <= I32_MAX
        and type(sl) is tuple and type(delay) is tuple and len(sl) <= 10 and len(delay) <= 7
        and set(map(type, counts)) == _INT and min(counts) >= 0 and max(counts) <= U32
        and type(avgjitter) is float and 0.0 <= avgjitter <= JITTER_MAX
        and type(maxjitter) is float and 0.0 <= maxjitter <= JITTER_MAX
        and (m1 is None or (type(m1) is float and 0.0 <= m1 <= MOS_MAX))
        and (m2 is None or (type(m2) is float and 0.0 <= m2 <= MOS_MAX))
        and (m3 is None or (type(m3) is float and 0.0 <= m3 <= MOS_MAX))
        and (fraclost is None or (type(fraclost) is float and -1e300 <= fraclost <= 1e300))
        and (rtcp_jitter is None or (type(rtcp_jitter) is float
             and -1e300 <= rtcp_jitter <= 1e300))
        and (rtt is None or (type(rtt) is float and -1e300 <= rtt <= 1e300))
        and base_ms is not None
        and (first is None or (type(first) is float and 0.0 <= first <= MAX_EPOCH))
        and (last is None or (type(last) is float and 0.0 <= last <= MAX_EPOCH))
        and type(codec) is str and len(codec) <= CODEC_LEN and codec.isascii()
    ):
        return None
    saddr = ip_bytes(s.saddr)
    base = base_ms / 1000
    received, reordered = counts[0], counts[2]
    row = (
        cdr_id, index, saddr, sport, ip_bytes(s.daddr), dport, ssrc, payload, received, lost,
        None if first is None else round(first - base, 6),
        None if last is None else round(last - base, 6), round(maxjitter * 10), avgjitter,
        maxjitter, m1, m2, m3, codec, counts[1], reordered, _list_text(sl),
        _list_text(delay), fraclost, rtcp_jitter, rtt, 1 if s.tied_to_sip else 0,
    )
    side = (
        payload, saddr, received, lost, reordered, round(avgjitter * 10), round(maxjitter),
        *sl, *_PAD[:10 - len(sl)], *delay, *_PAD[:7 - len(delay)],
        None if m1 is None else round(m1 * 10), None if m2 is None else round(m2 * 10),
        None if m3 is None else round(m3 * 10),
    )
    return row, side


def encode_stream(s: RtpStream, index: int, base_ms: int | None, cdr_id: Any = None
                  ) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    return stream_fast(s, index, base_ms, cdr_id) or stream_careful(s, index, base_ms, cdr_id)
