"""Tests for voipmon.protocols.cdrcodec: the CDR's compact, checked form on the wire."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.cdr import Cdr, RtpStream, callid_bytes
from voipmon.protocols.cdrcodec import cdr_from_wire, cdr_to_wire, unknown_annotations
from voipmon.store.testing import make_cdr


def wire(cdr: Cdr) -> dict:
    return json.loads(cdr_to_wire(cdr))


class CodecTests(SynchronousTestCase):
    def test_round_trip_exact(self) -> None:
        """A CDR comes back equal, times to the last bit (no millisecond rounding)."""
        for n in range(20):
            cdr = make_cdr(n, id_sensor=3, calldate=1_700_000_000.123456 + n)
            self.assertEqual(cdr_from_wire(wire(cdr)), cdr)

    def test_every_field_type_is_checked(self) -> None:
        """Every field of Cdr and RtpStream has a known type (else it would go unchecked)."""
        self.assertEqual(unknown_annotations(), [])

    def test_older_iso_form_accepted(self) -> None:
        """A record in the design's JSON form (ISO times) is still read."""
        cdr = make_cdr(4)
        self.assertEqual(cdr_from_wire(cdr.to_json()), Cdr.from_json(cdr.to_json()))

    def test_unknown_keys_ignored_defaults_filled(self) -> None:
        """Newer senders may add fields; older ones may lack optional ones."""
        data = wire(make_cdr(1))
        data["from_the_future"] = 1
        del data["extra"], data["a_ua"]
        cdr = cdr_from_wire(data)
        self.assertEqual((cdr.extra, cdr.a_ua), ({}, ""))

    def test_bad_values_named(self) -> None:
        """A wrong type or a missing required field raises ValueError naming the field, also
        once a record of the same shape has been seen (the fast path)."""
        good = wire(make_cdr(2))
        cdr_from_wire(good)
        cdr_from_wire(good)
        cases = [
            ({**good, "duration": "long"}, "cdr.duration"),
            ({**good, "id_sensor": True}, "cdr.id_sensor"),
            ({**good, "callid": None}, "cdr.callid"),
            ({**good, "extra": []}, "cdr.extra"),
            ({**good, "rtp": {}}, "cdr.rtp"),
            ({**good, "rtp": [{**good["rtp"][0], "ssrc": 1.5}]}, "rtp.ssrc"),
            ({**good, "rtp": [{**good["rtp"][0], "sl": ["x"]}]}, "rtp.sl"),
            ({**good, "rtp": ["stream"]}, "rtp: not an object"),
            ({k: v for k, v in good.items() if k != "calldate"}, "missing 'calldate'"),
            ([1, 2], "not an object"),
            ({**good, "calldate": "yesterday"}, "not a CDR record"),
        ]
        for data, needle in cases:
            with self.assertRaises(ValueError, msg=needle) as caught:
                cdr_from_wire(data)
            self.assertIn(needle, str(caught.exception))

    def test_integers_become_floats(self) -> None:
        data = wire(make_cdr(3))
        data["duration"] = 12
        self.assertIsInstance(cdr_from_wire(data).duration, float)

    @settings(max_examples=50, deadline=None)
    @given(st.integers(0, 10**6), st.integers(1, 65535), st.integers(0, 3),
           st.text(max_size=40), st.floats(0, 4e9, allow_nan=False), st.binary(max_size=40))
    def test_round_trip_any(self, n: int, id_sensor: int, streams: int, text: str,
                            when: float, raw: bytes) -> None:
        """Any text and any bytes of a Call-ID (as the SIP parser keeps them) come back."""
        callid = raw.decode("utf-8", "surrogateescape")
        cdr = make_cdr(n, id_sensor=id_sensor, streams=streams, callername=text, calldate=when,
                       callid=callid, caller=callid)
        back = cdr_from_wire(wire(cdr))
        self.assertEqual(back, cdr)
        self.assertEqual(callid_bytes(back.callid), raw)

    def test_bytes_that_are_not_utf8_in_every_text_field(self) -> None:
        """Issue 13: a Call-ID (or any text) holding bytes that are not UTF-8 made
        cdr_to_wire raise, and the call was lost. Every text field, holding such bytes, NUL,
        4-byte characters, quotes and backslashes, now goes through exactly, as ASCII."""
        raw = b'\xff\xfe\x00\xf0\x9f\x98\x80"\'\\\xed\xa0\x80\xc3'
        hostile = raw.decode("utf-8", "surrogateescape")
        texts = {f.name: f"{f.name}={hostile}" for f in dataclasses.fields(Cdr)
                 if f.type == "str"}
        self.assertGreater(len(texts), 12)
        cdr = make_cdr(1, extra={"note": hostile}, **texts)
        data = cdr_to_wire(cdr)
        data.decode("ascii")
        self.assertIn(b"\\udcff\\udcfe\\u0000\\ud83d\\ude00", data)
        back = cdr_from_wire(json.loads(data))
        self.assertEqual(back, cdr)
        self.assertEqual(callid_bytes(back.callid), b"callid=" + raw)

    def test_streams_are_streams(self) -> None:
        cdr = cdr_from_wire(wire(make_cdr(5)))
        self.assertTrue(all(isinstance(s, RtpStream) for s in cdr.rtp))
        self.assertIsInstance(cdr.rtp[0].sl, tuple)
        self.assertEqual(dataclasses.asdict(cdr), dataclasses.asdict(make_cdr(5)))
