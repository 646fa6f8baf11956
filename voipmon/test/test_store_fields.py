"""Value fitting (voipmon.store.fields): every value ends up one a column takes."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from voipmon.store import fields
from voipmon.store.fields import (
    U8,
    U16,
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
)


class TextTests(unittest.SynchronousTestCase):
    def test_fits_length_and_encoding(self) -> None:
        self.assertEqual(text("abc", 2), "ab")
        self.assertIsNone(text(None, 5))
        self.assertEqual(text("Zoë 😀", 10), "Zoë 😀")
        self.assertEqual(text("a\udcffb", 10), "a?b")     # a lone surrogate cannot be stored
        self.assertEqual(text(42, 10), "42")
        self.assertEqual(text("x" * 300, 255), "x" * 255)

    def test_lookup_text(self) -> None:
        self.assertEqual(lookup_text("  Asterisk 20  ", 512), "  Asterisk 20")
        self.assertIsNone(lookup_text("   ", 512))
        self.assertIsNone(lookup_text("", 512))

    def test_uid(self) -> None:
        good = "0123456789abcdef0123456789abcdef"
        self.assertEqual(uid(good), good)
        for odd in ("", "x" * 65, "with space", "ünïcode", "tab\there", 12345):
            fitted = uid(odd)
            self.assertRegex(fitted, r"^h:[0-9a-f]{40}$")
            self.assertEqual(uid(odd), fitted)          # stable: a replay finds the same key
        self.assertNotEqual(uid("x" * 65), uid("x" * 66))


class NumberTests(unittest.SynchronousTestCase):
    def test_clamp(self) -> None:
        self.assertEqual(clamp(5, 0, 10), 5)
        self.assertEqual(clamp(-5, 0, 10), 0)
        self.assertEqual(clamp(50, 0, 10), 10)
        self.assertEqual(clamp(7.9, 0, 10), 7)
        self.assertEqual(clamp(True, 0, 10), 1)
        self.assertIsNone(clamp(None, 0, 10))
        self.assertIsNone(clamp("seven", 0, 10))
        self.assertIsNone(clamp(float("nan"), 0, 10))
        self.assertEqual(clamp(1 << 80, 0, U16), U16)

    def test_ints(self) -> None:
        values = (1, 2, 3)
        self.assertIs(ints(values, 0, 10), values)          # the fast path returns it as is
        self.assertEqual(ints((1, None, 99, -1, 2.5), 0, 10), (1, None, 10, 0, 2))
        self.assertEqual(ints((), 0, 1), ())
        self.assertEqual(ints((True,), 0, 9), (1,))

    def test_real(self) -> None:
        self.assertEqual(real(1.5), 1.5)
        self.assertEqual(real(3), 3.0)
        self.assertEqual(real("2.5"), 2.5)
        for bad in (None, float("nan"), float("inf"), -float("inf"), "x", [1]):
            self.assertIsNone(real(bad))

    def test_mult10_and_dec3(self) -> None:
        self.assertEqual(mult10(4.21), 42)
        self.assertEqual(mult10(4.26), 43)
        self.assertEqual(mult10(99.0, U8), U8)
        self.assertEqual(mult10(-1.0), 0)
        self.assertIsNone(mult10(float("nan")))
        self.assertEqual(dec3(12.34567), 12.346)
        self.assertEqual(dec3(1e12), 999999.999)
        self.assertIsNone(dec3(None))


class TimeTests(unittest.SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.one_of(st.floats(min_value=0, max_value=fields.MAX_EPOCH),
                     st.floats(min_value=1.6e9, max_value=1.9e9),
                     st.integers(min_value=0, max_value=int(fields.MAX_EPOCH))))
    def test_datetime_text_matches_the_calendar(self, moment: float) -> None:
        ms = epoch_ms(moment)
        reference = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        self.assertEqual(datetime_text(moment), f"{reference}.{ms % 1000:03d}")
        self.assertEqual(epoch(datetime_text(moment)), ms / 1000)

    def test_datetime_edges(self) -> None:
        self.assertEqual(datetime_text(0), "1970-01-01 00:00:00.000")
        self.assertEqual(datetime_text(-5), "1970-01-01 00:00:00.000")
        self.assertEqual(datetime_text(1e20), "9999-12-31 23:59:59.999")
        self.assertEqual(datetime_text(1_700_000_000.9996), "2023-11-14 22:13:21.000")
        self.assertIsNone(datetime_text(float("nan")))
        self.assertIsNone(datetime_text(None))

    def test_epoch_reads_both_back_ends(self) -> None:
        from_mysql = datetime(2023, 11, 14, 22, 13, 20, 123000)
        self.assertEqual(epoch(from_mysql), 1_700_000_000.123)
        self.assertEqual(epoch("2023-11-14 22:13:20.123"), 1_700_000_000.123)
        self.assertIsNone(epoch(None))


class AddressTests(unittest.SynchronousTestCase):
    def test_round_trip(self) -> None:
        for address, packed_length in (("192.0.2.1", 4), ("2001:db8::1", 16),
                                       ("::ffff:192.0.2.1", 16)):
            packed = ip_bytes(address)
            self.assertEqual(len(packed), packed_length)
            self.assertEqual(ip_text(packed), address)
        self.assertEqual(ip_text(ip_bytes("2001:DB8:0:0::1")), "2001:db8::1")
        self.assertEqual(ip_text(ip_bytes("fe80::1%eth0")), "fe80::1")

    def test_not_addresses(self) -> None:
        for bad in ("", None, "999.1.1.1", "host.example.com", "1.2.3", 7, ":::"):
            self.assertIsNone(ip_bytes(bad))
        self.assertEqual(ip_text(None), "")
        self.assertEqual(ip_text(b"\x01\x02"), "")

    def test_the_cache_stays_bounded(self) -> None:
        for n in range(9000):
            ip_bytes(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
        self.assertLessEqual(len(fields._ADDRESSES), 8193)
        self.assertEqual(ip_bytes("10.0.0.1"), b"\n\x00\x00\x01")


class IntListTests(unittest.SynchronousTestCase):
    def test_round_trip(self) -> None:
        self.assertEqual(int_list((3, 0, 12)), "3,0,12")
        self.assertEqual(parse_int_list("3,0,12"), (3, 0, 12))
        self.assertEqual(int_list(()), "")
        self.assertEqual(parse_int_list(""), ())
        self.assertEqual(parse_int_list(None), ())
        self.assertEqual(int_list((1, None, 2.7)), "1,0,2")
        self.assertTrue(math.isfinite(float(int_list((1 << 70,)))))
