"""The row codec (voipmon.store.rows): columns, the fast path against the careful one,
round trips, summaries and batch validation."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from voipmon.records.cdr import Cdr, RtpStream
from voipmon.store import testing
from voipmon.store.fields import (
    I32_MAX,
    I32_MIN,
    U8,
    U16,
    U32,
    clamp,
    datetime_text,
    dec3,
    epoch_ms,
    exact_text,
    ints,
    ip_bytes,
    mult10,
    real,
    text,
    uid,
    unsigned,
)
from voipmon.store.rows import (
    CDR_COLUMNS,
    NEXT_COLUMNS,
    READ_COLUMNS,
    RTP_COLUMNS,
    batch_items,
    cdr_json,
    decode_cdr,
    encode,
    stored_form,
)
from voipmon.store.rtprows import stream_careful, stream_fast
from voipmon.store.schema import TABLES

_NO_TIME = "1970-01-01 00:00:00.000"
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

anything_numeric = st.one_of(
    st.none(), st.integers(-(1 << 70), 1 << 70), st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True), st.just("12"), st.just("x"),
)
counter = st.one_of(st.integers(0, 5000), anything_numeric)
ms_float = st.one_of(st.floats(0.0, 60.0), anything_numeric)


@st.composite
def streams(draw: Any, wild: bool = True) -> RtpStream:
    """RTP streams: mostly plausible values, with odd ones mixed in when ``wild``."""
    def either(plausible: Any, odd: Any) -> Any:
        return st.one_of(plausible, odd) if wild else plausible

    def pick(plausible: Any, odd: Any) -> Any:
        return draw(either(plausible, odd))

    return RtpStream(
        saddr=pick(st.sampled_from(["10.0.0.1", "2001:db8::7"]),
                   st.sampled_from(["", "fe80::1%lo", "bogus", "300.1.1.1"])),
        sport=pick(st.integers(0, 65535), anything_numeric),
        daddr=pick(st.just("192.0.2.9"), st.just("nope")),
        dport=pick(st.integers(0, 65535), anything_numeric),
        ssrc=pick(st.integers(0, 0xFFFFFFFF), anything_numeric),
        payload=pick(st.integers(0, 127), anything_numeric),
        received=pick(st.integers(0, 10**6), counter),
        lost=pick(st.integers(-5, 1000), anything_numeric),
        avgjitter=pick(st.floats(0, 500), ms_float), maxjitter=pick(st.floats(0, 900), ms_float),
        mos_f1=pick(st.one_of(st.none(), st.floats(1, 4.5)), anything_numeric),
        mos_f2=pick(st.one_of(st.none(), st.floats(1, 4.5)), anything_numeric),
        mos_adapt=pick(st.one_of(st.none(), st.floats(1, 4.5)), anything_numeric),
        codec=pick(st.sampled_from(["PCMU/8000", "opus/48000/2", ""]),
                   st.sampled_from(["x" * 80, "Zoë", 5])),
        duplicates=pick(st.integers(0, 10), counter), reordered=pick(st.integers(0, 10), counter),
        sl=tuple(draw(st.lists(either(st.integers(0, 50), counter), max_size=12))),
        delay=tuple(draw(st.lists(either(st.integers(0, 50), counter), max_size=9))),
        firsttime=pick(st.one_of(st.none(), st.floats(1.7e9, 1.7e9 + 100)), anything_numeric),
        lasttime=pick(st.one_of(st.none(), st.floats(1.7e9, 1.7e9 + 100)), anything_numeric),
        rtcp_fraclost=pick(st.one_of(st.none(), st.floats(0, 100)), anything_numeric),
        rtcp_jitter=pick(st.one_of(st.none(), st.floats(0, 100)), anything_numeric),
        rtcp_rtt=pick(st.one_of(st.none(), st.floats(0, 100)), anything_numeric),
        tied_to_sip=draw(st.booleans()),
    )


@st.composite
def cdrs(draw: Any) -> Cdr:
    rtp = tuple(draw(st.lists(streams(), max_size=3)))
    return testing.make_cdr(
        draw(st.integers(0, 10**6)), id_sensor=draw(st.integers(0, 65535)), rtp=rtp,
        calldate=draw(st.one_of(st.floats(1.6e9, 1.8e9), st.floats(allow_nan=True),
                                st.floats(-1e3, 1e12))),
        callend=draw(st.one_of(st.floats(1.6e9, 1.8e9), st.floats(allow_nan=True))),
        a_index=draw(st.one_of(st.none(), st.integers(-1, 4))),
        b_index=draw(st.one_of(st.none(), st.integers(-1, 4))),
        caller=draw(st.text(max_size=300)), called=draw(st.text(max_size=20)),
        duration=draw(st.one_of(st.floats(0, 1e7), st.floats(allow_nan=True))),
        sipcallerport=draw(st.integers(-10, 70000)),
        lastSIPresponse=draw(st.text(max_size=20)), a_ua=draw(st.text(max_size=20)),
        extra=draw(st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text()),
                                   max_size=3)),
        hep_capture_id=draw(st.one_of(st.none(), st.integers(-5, 1 << 33))),
    )


def kinds(table: str) -> dict[str, str]:
    return {c.name: c.type.partition(":")[0] for c in TABLES[table].columns}


RANGES = {"u8": (0, 0xFF), "u16": (0, 0xFFFF), "u32": (0, 0xFFFFFFFF), "bool": (0, 1),
          "u64": (0, (1 << 64) - 1), "i32": (-(1 << 31), (1 << 31) - 1),
          "i64": (-(1 << 63), (1 << 63) - 1), "id": (1, (1 << 63) - 1)}


def check_types(case: unittest.SynchronousTestCase, table: str, columns: tuple[str, ...],
                row: tuple[Any, ...]) -> None:
    """Every value is None or one its column takes under MySQL's strict mode: the Python
    type the renderer formats that column kind with, in range, within length, encodable."""
    schema = {c.name: c for c in TABLES[table].columns}
    for name, value in zip(columns, row, strict=True):
        column = schema[name]
        kind, _, arg = column.type.partition(":")
        where = f"{table}.{name} = {value!r}"
        if value is None:
            case.assertTrue(column.null, where)
        elif kind in RANGES:
            case.assertIs(type(value), int, where)
            low, high = RANGES[kind]
            case.assertTrue(low <= value <= high, where)
        elif kind in ("double", "dec3"):
            case.assertIs(type(value), float, where)
            case.assertTrue(math.isfinite(value), where)
            if kind == "dec3":
                case.assertLessEqual(abs(value), 999999.999, where)
        elif kind == "ip":
            case.assertIs(type(value), bytes, where)
            case.assertIn(len(value), (4, 16), where)
        elif kind == "blob":
            case.assertIs(type(value), bytes, where)
        else:
            case.assertIs(type(value), str, where)
            value.encode("utf-8")                      # no lone surrogates
            if kind in ("text", "bintext", "ascii"):
                case.assertLessEqual(len(value), int(arg), where)
            if kind == "ascii":
                case.assertTrue(value.isascii(), where)
            if kind == "enum":
                case.assertIn(value, arg.split(","), where)
            if kind == "datetime":
                case.assertRegex(value, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$", where)


def reference_encode(cdr: Cdr, response_id: Any, a_ua_id: Any, b_ua_id: Any,
                     pcap_on: str, cdr_id: int | None = None) -> tuple[Any, ...]:
    """The row codec written plainly, field by field through voipmon.store.fields (as it
    was before encode() got its inline checks): what encode() must equal."""
    def fit(value: Any, name: str) -> Any:
        return text(value, TABLES["cdr_next"].column(name).length or 0)

    def loss(stream: RtpStream) -> int:
        lost = max(clamp(stream.lost, I32_MIN, I32_MAX) or 0, 0)
        expected = (unsigned(stream.received, U32) or 0) + lost
        return 0 if expected <= 0 else clamp(round(lost * 100000 / expected), 0, U32) or 0

    base_ms = epoch_ms(cdr.calldate)
    streams = cdr.rtp[:U16 + 1]
    encoded = [stream_careful(s, i, base_ms, cdr_id) for i, s in enumerate(streams)]
    indexes = [i if type(i) is int and 0 <= i <= U16 else None
               for i in (cdr.a_index, cdr.b_index)]
    chosen = [streams[i] if i is not None and i < len(streams) else None for i in indexes]
    sides = [encoded[i][1] if s is not None else (None,) * 27   # the columns after {s}_index
             for i, s in zip(indexes, chosen, strict=True)]
    present = [s for s in chosen if s is not None]
    jitters = [j for j in (real(s.avgjitter) for s in present) if j is not None]
    moses = [m for s in present for m in (real(s.mos_f1), real(s.mos_f2), real(s.mos_adapt))
             if m is not None]
    ports = ints((cdr.sipcallerport, cdr.sipcalledport, cdr.lastSIPresponseNum), 0, U16)
    row = (
        cdr_id, cdr.id_sensor, uid(cdr.sensor_cdr_uid),
        datetime_text(cdr.calldate) or _NO_TIME,
        datetime_text(cdr.callend) or _NO_TIME, dec3(cdr.duration), dec3(cdr.connect_duration),
        *(text(getattr(cdr, name), 255) for name in (
            "caller", "caller_domain", "callername", "called", "called_domain")),
        ip_bytes(cdr.sipcallerip), ports[0], ip_bytes(cdr.sipcalledip), ports[1],
        cdr.whohanged if cdr.whohanged in ("caller", "callee") else None,
        unsigned(cdr.bye, U8), response_id, ports[2], a_ua_id, b_ua_id,
        indexes[0], *sides[0], indexes[1], *sides[1],
        clamp(present[0].payload, I32_MIN, I32_MAX) if present else None,
        mult10(max(jitters)) if jitters else None,
        mult10(min(moses), U8) if moses else None,
        max(loss(s) for s in present) if present else None,
    )
    extra = json.dumps(cdr.extra, sort_keys=True, default=str) if cdr.extra else None
    callid, callid_raw = exact_text(cdr.callid, TABLES["cdr_next"].column("callid").length or 0)
    next_row = (
        cdr_id, callid, fit(cdr.fbasename, "fbasename"),
        datetime_text(cdr.connect_time), fit(cdr.sip_pcap, "sip_pcap"),
        fit(cdr.rtp_pcap, "rtp_pcap"), pcap_on if cdr.sip_pcap or cdr.rtp_pcap else None,
        extra, callid_raw,
        unsigned(cdr.hep_capture_id, U32),
    )
    return row, next_row, [row for row, _side in encoded]


def identical(a: Any, b: Any) -> bool:
    """Equal, of the same types all the way down (1 is not 1.0 nor True; -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


class ColumnTests(unittest.SynchronousTestCase):
    def test_rows_cover_their_tables(self) -> None:
        self.assertEqual(set(CDR_COLUMNS), set(kinds("cdr")))
        self.assertEqual(len(CDR_COLUMNS), len(set(CDR_COLUMNS)))
        self.assertEqual(set(NEXT_COLUMNS), set(kinds("cdr_next")))
        self.assertEqual(set(RTP_COLUMNS), set(kinds("cdr_rtp")))
        for name in READ_COLUMNS:
            alias, _, column = name.partition(".")
            table = {"c": "cdr", "n": "cdr_next", "r": "cdr_sip_response", "ua": "cdr_ua",
                     "ub": "cdr_ua"}[alias]
            self.assertIn(column, kinds(table))


class EncodeTests(unittest.SynchronousTestCase):
    def test_plausible_streams_take_the_fast_path(self) -> None:
        for n in range(50):
            for i in range(3):
                stream = testing.make_stream(n, i, testing.BASE_TIME)
                fast = stream_fast(stream, i, round(testing.BASE_TIME * 1000))
                self.assertIsNotNone(fast)
                self.assertEqual(fast, stream_careful(stream, i, round(testing.BASE_TIME * 1000)))

    @SETTINGS
    @given(streams(), st.integers(0, 5), st.one_of(st.none(), st.integers(0, 2 * 10**12)))
    def test_the_fast_path_agrees_with_the_careful_one(self, stream: RtpStream, index: int,
                                                       base_ms: int | None) -> None:
        fast = stream_fast(stream, index, base_ms, 5)
        careful = stream_careful(stream, index, base_ms, 5)
        if fast is not None:
            self.assertTrue(identical(fast, careful))
        row, _side = careful
        check_types(self, "cdr_rtp", RTP_COLUMNS, row)

    @SETTINGS
    @given(cdrs(), st.sampled_from(["sensor", "central"]))
    def test_encode_equals_the_plain_reference(self, cdr: Cdr, pcap_on: str) -> None:
        expected = reference_encode(cdr, 3, 4, None, pcap_on)
        if len(expected[1][6] or "") > (1 << 20):
            return   # the reference does not shorten huge extras (tested below)
        self.assertTrue(identical(encode(cdr, 3, 4, None, pcap_on), expected))
        key = uid(cdr.sensor_cdr_uid)
        self.assertTrue(identical(encode(cdr, 3, 4, None, pcap_on, key, 77),
                                  reference_encode(cdr, 3, 4, None, pcap_on, 77)))

    def test_plausible_cdrs_encode_as_the_reference(self) -> None:
        for n in range(200):
            cdr = testing.make_cdr(n, id_sensor=n % 5, streams=n % 4)
            self.assertTrue(identical(encode(cdr, n, None, 7, "central"),
                                      reference_encode(cdr, n, None, 7, "central")))

    @SETTINGS
    @given(cdrs(), st.sampled_from(["sensor", "central"]))
    def test_any_cdr_encodes_to_storable_values(self, cdr: Cdr, pcap_on: str) -> None:
        row, nxt, rtp = encode(cdr, 3, 4, None, pcap_on, cdr_id=12)
        check_types(self, "cdr", CDR_COLUMNS, row)
        check_types(self, "cdr_next", NEXT_COLUMNS, nxt)
        for r in rtp:
            check_types(self, "cdr_rtp", RTP_COLUMNS, r)
        self.assertEqual({row[0], nxt[0], *(r[0] for r in rtp)}, {12})
        values = dict(zip(CDR_COLUMNS, row, strict=True))
        self.assertEqual((values["lastSIPresponse_id"], values["a_ua_id"], values["b_ua_id"]),
                         (3, 4, None))
        self.assertLessEqual(len(values["caller"]), 255)

    @SETTINGS
    @given(cdrs())
    def test_stored_form_is_stable(self, cdr: Cdr) -> None:
        once, pcap_on = stored_form(cdr)
        self.assertEqual(stored_form(once), (once, pcap_on))

    def test_plausible_cdrs_survive_unchanged(self) -> None:
        for n in range(40):
            cdr = testing.make_cdr(n, id_sensor=n % 5, streams=n % 4)
            self.assertEqual(stored_form(cdr), (cdr, "sensor"))

    def test_voipmonitor_summaries(self) -> None:
        cdr = testing.make_cdr(3)
        a, b = cdr.rtp
        values = dict(zip(CDR_COLUMNS, encode(cdr, None, None, None, "sensor")[0], strict=True))
        self.assertEqual(values["a_saddr"], bytes([10, 0, 0, 3]))
        self.assertEqual(values["a_avgjitter_mult10"], round(a.avgjitter * 10))
        self.assertEqual(values["b_maxjitter"], round(b.maxjitter))
        self.assertEqual(values["a_mos_f1_mult10"], round(a.mos_f1 * 10))
        self.assertEqual([values[f"a_sl{i}"] for i in range(1, 11)], list(a.sl))
        self.assertEqual([values[f"b_d{d}"] for d in (50, 70, 90, 120, 150, 200, 300)],
                         list(b.delay))
        self.assertEqual(values["payload"], a.payload)
        self.assertEqual(values["jitter_mult10"], round(max(a.avgjitter, b.avgjitter) * 10))
        lowest = min(m for s in (a, b) for m in (s.mos_f1, s.mos_f2, s.mos_adapt) if m)
        self.assertEqual(values["mos_min_mult10"], round(lowest * 10))
        worst = max(s.lost * 100000 / (s.received + s.lost) for s in (a, b))
        self.assertEqual(values["packet_loss_perc_mult1000"], round(worst))
        self.assertEqual(values["calldate"], "2023-11-14 22:13:24.623")

    def test_extra_that_cannot_be_json(self) -> None:
        huge = testing.make_cdr(1, extra={"blob": "x" * (1 << 21)})
        self.assertEqual(stored_form(huge)[0].extra, {"_too_long": (1 << 21) + 12})
        odd = testing.make_cdr(1, extra={"s": "lone \udcff surrogate", "n": {1: object}})
        self.assertEqual(stored_form(odd)[0].extra["s"], "lone \udcff surrogate")
        circular: dict = {}
        circular["self"] = circular
        self.assertIn("_unstorable", stored_form(testing.make_cdr(1, extra=circular))[0].extra)

    def test_times_that_are_not_times(self) -> None:
        cdr = testing.make_cdr(1, calldate=float("nan"), callend=float("inf"))
        values = dict(zip(CDR_COLUMNS, encode(cdr, None, None, None, "sensor")[0], strict=True))
        self.assertEqual((values["calldate"], values["callend"]),
                         ("1970-01-01 00:00:00.000", "1970-01-01 00:00:00.000"))

    def test_a_call_without_rtp(self) -> None:
        cdr = testing.make_cdr(1, rtp=(), a_index=None, b_index=None)
        row, _nxt, rtp = encode(cdr, None, None, None, "sensor")
        values = dict(zip(CDR_COLUMNS, row, strict=True))
        self.assertEqual(rtp, [])
        self.assertIsNone(values["a_received"])
        self.assertIsNone(values["mos_min_mult10"])
        self.assertEqual(stored_form(cdr)[0], cdr)


class DecodeTests(unittest.SynchronousTestCase):
    def read_row(self, cdr: Cdr, mysql_types: bool) -> list[Any]:
        row, nxt, _rtp = encode(cdr, None, None, None, "sensor", cdr_id=9)
        values = {f"c.{k}": v for k, v in zip(CDR_COLUMNS, row, strict=True)}
        values.update({f"n.{k}": v for k, v in zip(NEXT_COLUMNS, nxt, strict=True)})
        values.update({"r.lastSIPresponse": "200 OK", "ua.ua": "A", "ub.ua": "B"})
        if mysql_types:   # PyMySQL hands back datetime and Decimal objects
            for key in ("c.calldate", "c.callend", "n.connect_time"):
                if values[key]:
                    values[key] = datetime.fromisoformat(values[key])
            for key in ("c.duration", "c.connect_duration"):
                values[key] = Decimal(str(values[key]))
        return [values[c] for c in READ_COLUMNS]

    def test_both_back_ends_values_decode_alike(self) -> None:
        cdr = testing.make_cdr(11)
        rtp = [r[1:] for r in encode(cdr, None, None, None, "sensor")[2]]
        sqlite = decode_cdr(self.read_row(cdr, False), rtp)
        mysql = decode_cdr(self.read_row(cdr, True), rtp)
        self.assertEqual(sqlite, mysql)
        cdr_id, decoded, pcap_on = sqlite
        self.assertEqual((cdr_id, pcap_on), (9, "sensor"))
        self.assertEqual(decoded, dataclasses.replace(cdr, lastSIPresponse="200 OK", a_ua="A",
                                                      b_ua="B"))

    def test_json_is_to_json_plus_id_and_pcap_on(self) -> None:
        cdr = testing.make_cdr(4)
        data = cdr_json(17, cdr, "central")
        self.assertEqual(data, {**cdr.to_json(), "id": 17, "pcap_on": "central"})
        self.assertEqual(Cdr.from_json(data), cdr)


class BatchTests(unittest.SynchronousTestCase):
    def test_sorted_by_key_first_duplicate_kept(self) -> None:
        a, b, c = (testing.make_cdr(n, id_sensor=s) for n, s in ((1, 2), (2, 1), (3, 1)))
        twin = dataclasses.replace(a, callid="twin")
        items = batch_items([a, b, c, twin], "sensor")
        self.assertEqual([cdr.callid for _key, cdr in items],
                         [x.callid for x in sorted((a, b, c), key=lambda x: (
                             x.id_sensor, x.sensor_cdr_uid))])
        self.assertIn(a, [cdr for _key, cdr in items])

    def test_refusals_name_the_problem(self) -> None:
        cdr = testing.make_cdr(1)
        for batch, pcap_on, word in (
            (cdr, "sensor", "sequence"), ("abc", "sensor", "sequence"),
            ([cdr, {"callid": 1}], "sensor", "dict"), ([cdr], "nas", "pcap_on"),
            ([dataclasses.replace(cdr, id_sensor=-1)], "sensor", "id_sensor"),
            ([dataclasses.replace(cdr, id_sensor=True)], "sensor", "id_sensor"),
        ):
            error = self.assertRaises(ValueError, batch_items, batch, pcap_on)
            self.assertIn(word, str(error))
