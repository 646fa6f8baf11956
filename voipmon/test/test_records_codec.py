"""Tests for voipmon.records.codec: every record type's compact, checked form on the wire
(the CDR's bytes as sensors have always written them), and the IRecordType seam."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from voipmon.records import alert, register, sipmsg
from voipmon.records.cdr import Cdr, RtpStream
from voipmon.records.interfaces import IRecordType
from voipmon.records.keys import callid_bytes
from voipmon.records.kinds import RECORD_TYPES, record_type_of
from voipmon.store.testing import make_cdr
from voipmon.test.common import data_path


def wire(cdr: Cdr) -> dict:
    return json.loads(cdr.to_wire())


class CodecTests(SynchronousTestCase):
    def test_round_trip_exact(self) -> None:
        """A CDR comes back equal, times to the last bit (no millisecond rounding)."""
        for n in range(20):
            cdr = make_cdr(n, id_sensor=3, calldate=1_700_000_000.123456 + n)
            self.assertEqual(Cdr.from_wire(wire(cdr)), cdr)

    def test_every_field_type_is_checked(self) -> None:
        """Every field of every record type (Cdr and its RtpStream included) has a known
        type (else it would go unchecked)."""
        self.assertIs(Cdr.CODEC.nested["rtp"].cls, RtpStream)
        for kind in RECORD_TYPES.values():
            self.assertEqual(kind.CODEC.unknown_annotations(), [], kind.KIND)

    def test_older_iso_form_accepted(self) -> None:
        """A record in the design's JSON form (ISO times) is still read."""
        cdr = make_cdr(4)
        self.assertEqual(Cdr.from_wire(cdr.to_json()), Cdr.from_json(cdr.to_json()))

    def test_unknown_keys_ignored_defaults_filled(self) -> None:
        """Newer senders may add fields; older ones may lack optional ones."""
        data = wire(make_cdr(1))
        data["from_the_future"] = 1
        del data["extra"], data["a_ua"]
        cdr = Cdr.from_wire(data)
        self.assertEqual((cdr.extra, cdr.a_ua), ({}, ""))

    def test_bad_values_named(self) -> None:
        """A wrong type or a missing required field raises ValueError naming the field, also
        once a record of the same shape has been seen (the fast path)."""
        good = wire(make_cdr(2))
        Cdr.from_wire(good)
        Cdr.from_wire(good)
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
                Cdr.from_wire(data)
            self.assertIn(needle, str(caught.exception))

    def test_integers_become_floats(self) -> None:
        data = wire(make_cdr(3))
        data["duration"] = 12
        self.assertIsInstance(Cdr.from_wire(data).duration, float)

    @settings(max_examples=50, deadline=None)
    @given(st.integers(0, 10**6), st.integers(1, 65535), st.integers(0, 3),
           st.text(max_size=40), st.floats(0, 4e9, allow_nan=False), st.binary(max_size=40))
    def test_round_trip_any(self, n: int, id_sensor: int, streams: int, text: str,
                            when: float, raw: bytes) -> None:
        """Any text and any bytes of a Call-ID (as the SIP parser keeps them) come back."""
        callid = raw.decode("utf-8", "surrogateescape")
        cdr = make_cdr(n, id_sensor=id_sensor, streams=streams, callername=text, calldate=when,
                       callid=callid, caller=callid)
        back = Cdr.from_wire(wire(cdr))
        self.assertEqual(back, cdr)
        self.assertEqual(callid_bytes(back.callid), raw)

    def test_bytes_that_are_not_utf8_in_every_text_field(self) -> None:
        """Issue 13: a Call-ID (or any text) holding bytes that are not UTF-8 made
        Cdr.to_wire raise, and the call was lost. Every text field, holding such bytes, NUL,
        4-byte characters, quotes and backslashes, now goes through exactly, as ASCII."""
        raw = b'\xff\xfe\x00\xf0\x9f\x98\x80"\'\\\xed\xa0\x80\xc3'
        hostile = raw.decode("utf-8", "surrogateescape")
        texts = {f.name: f"{f.name}={hostile}" for f in dataclasses.fields(Cdr)
                 if f.type == "str"}
        self.assertGreater(len(texts), 12)
        cdr = make_cdr(1, extra={"note": hostile}, **texts)
        data = cdr.to_wire()
        data.decode("ascii")
        self.assertIn(b"\\udcff\\udcfe\\u0000\\ud83d\\ude00", data)
        back = Cdr.from_wire(json.loads(data))
        self.assertEqual(back, cdr)
        self.assertEqual(callid_bytes(back.callid), b"callid=" + raw)

    def test_streams_are_streams(self) -> None:
        cdr = Cdr.from_wire(wire(make_cdr(5)))
        self.assertTrue(all(isinstance(s, RtpStream) for s in cdr.rtp))
        self.assertIsInstance(cdr.rtp[0].sl, tuple)
        self.assertEqual(dataclasses.asdict(cdr), dataclasses.asdict(make_cdr(5)))


class CompatibilityTests(SynchronousTestCase):
    """The CDR's wire bytes are those sensors have always written: records already in a
    durable queue, in dead-letter files or in flight from an older sensor read back, and a
    CDR is written as an older central expects."""

    def golden(self) -> bytes:
        with open(data_path("cdr_wire_v1.json"), "rb") as f:
            return f.read().rstrip(b"\n")

    def test_bytes_unchanged(self) -> None:
        """A CDR written by the codec before it moved to voipmon.records (a Call-ID of
        bytes that are not UTF-8, a NUL, a 4-byte character, quotes and a backslash)."""
        raw = b'\xff\xfe\x00\xf0\x9f\x98\x80"\'\\'
        text = raw.decode("utf-8", "surrogateescape")
        cdr = make_cdr(7, id_sensor=3, calldate=1_700_000_000.123456, extra={"note": text},
                       callid=text)
        self.assertEqual(cdr.to_wire(), self.golden())
        self.assertEqual(Cdr.from_wire(json.loads(self.golden())), cdr)


def register_state(**changes: object) -> register.RegisterState:
    values: dict = dict(
        uid="u1", id_sensor=4, created_at=1_700_000_000.25, state=register.STATE_OK,
        sipcallerip="192.0.2.10", sipcallerport=5060, sipcalledip="192.0.2.1",
        sipcalledport=5060, from_num="100", to_num="100", to_domain="pbx.example",
        contact_num="100", contact_domain="192.0.2.10", digestusername="100",
        digestrealm="pbx.example", expires=3600, ua="phone \udcff", rrd=12.5)
    values.update(changes)
    return register.RegisterState(**values)


class RecordTypeSeamTests(SynchronousTestCase):
    """Every record type provides IRecordType, through one codec."""

    def test_every_type_provides_the_interface(self) -> None:
        self.assertEqual(set(RECORD_TYPES), {
            "cdr", "register_state", "register_failed", "register_time_info", "sip_msg",
            "message", "alert"})
        for kind, cls in RECORD_TYPES.items():
            self.assertTrue(verifyObject(IRecordType, cls), kind)
            self.assertEqual((cls.KIND, cls.VERSION), (kind, 1))
            self.assertTrue(cls.TABLE)
            self.assertIs(record_type_of(kind), cls)
        for bad in ("nope", None, ["cdr"]):
            self.assertRaises(ValueError, record_type_of, bad)

    def test_keys(self) -> None:
        self.assertEqual(make_cdr(1, id_sensor=5).key(),
                         (5, make_cdr(1, id_sensor=5).sensor_cdr_uid))
        self.assertEqual(register_state().key(), (4, "u1"))
        failed = register.RegisterFailed(
            uid="f", id_sensor=2, created_at=1.0, counter=3, sipcallerip="", sipcallerport=0,
            sipcalledip="", sipcalledport=0, from_num="", to_num="", to_domain="",
            contact_num="", contact_domain="", digestusername="", digestrealm="",
            revision=4)
        self.assertEqual(failed.key(), (2, "f"))
        self.assertEqual(failed.key(), dataclasses.replace(failed, revision=5).key())

    def test_slotted_records_round_trip(self) -> None:
        record = register_state()
        data = record.to_wire()
        data.decode("ascii")
        self.assertEqual(list(json.loads(data)),
                         [f.name for f in dataclasses.fields(register.RegisterState)])
        self.assertEqual(register.RegisterState.from_wire(json.loads(data)), record)
        # twice: the second goes through the signature fast path
        self.assertEqual(register.RegisterState.from_wire(json.loads(data)), record)
        time_info = register.RegisterTimeInfo(uid="t", id_sensor=1, created_at=60.0,
                                              type_info="active", sipcallerip="",
                                              sipcalledip="", counter=3)
        self.assertEqual(register.RegisterTimeInfo.from_wire(json.loads(time_info.to_wire())),
                         time_info)

    def test_bad_values_named_for_any_type(self) -> None:
        good = json.loads(register_state().to_wire())
        register.RegisterState.from_wire(good)
        cases = [
            ({**good, "expires": "never"}, "register_state.expires: expected an integer"),
            ({**good, "rrd": "fast"}, "register_state.rrd: expected a number"),
            ({**good, "created_at": True}, "register_state.created_at"),
            ({k: v for k, v in good.items() if k != "uid"}, "register_state: missing 'uid'"),
            ("text", "register_state: not an object"),
        ]
        for data, needle in cases:
            with self.assertRaises(ValueError, msg=needle) as caught:
                register.RegisterState.from_wire(data)
            self.assertIn(needle, str(caught.exception))
        alert_data = {"uid": "a", "id_sensor": 1, "kind": alert.SCAN, "created_at": 1.0,
                      "sipcallerip": "", "sipcalledip": "", "window_start": 1.0,
                      "window_end": 2.0, "failures": 30, "extension_count": 6,
                      "extensions": "1,2", "closed": "yes"}
        with self.assertRaises(ValueError) as caught:
            alert.Alert.from_wire(alert_data)
        self.assertIn("alert.closed: expected true or false", str(caught.exception))
        message = {"uid": "m", "id_sensor": 1, "time": 1.0, "type": sipmsg.TYPE_OPTIONS}
        with self.assertRaises(ValueError) as caught:
            sipmsg.SipMsg.from_wire(message)
        self.assertIn("sip_msg: missing 'ip_src'", str(caught.exception))
