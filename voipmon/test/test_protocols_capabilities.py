"""Capabilities in HELLO and ACCEPT: agreed on both ends, politely degraded."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from voipmon.protocols.capabilities import (
    FRAME_CAPABILITY,
    SUPPORTED,
    Capabilities,
    capability_of,
    check_frame,
    parse,
    unknown_frame,
)
from voipmon.protocols.handshake import Hello
from voipmon.protocols.wire import MessageType, ProtocolError, decode_json, encode_json


def hello_body(**extra: object) -> dict:
    body = Hello(id_sensor=1, name="s", version="1", mode="local", compression="zstd",
                 time=1.0, nonce=b"\x00" * 32, instance="ab").to_json()
    body.update(extra)
    return body


class NegotiationTests(SynchronousTestCase):
    def test_both_ends_agree_on_the_same_set_at_the_lower_level(self) -> None:
        sensor = Capabilities({"requests": 2, "capture_clock": 1, "future": 3})
        central = Capabilities({"requests": 1, "other": 1})
        # Each end computes it from what the other said, with no further round trip.
        on_sensor = sensor.negotiate(parse(central.advertise(), "ACCEPT"))
        on_central = central.negotiate(parse(sensor.advertise(), "HELLO"))
        self.assertEqual(on_sensor, Capabilities({"requests": 1}))
        self.assertEqual(on_central, on_sensor)
        self.assertEqual(on_central.level("requests"), 1)
        self.assertEqual(on_central.level("capture_clock"), 0)
        self.assertEqual(on_central.describe(), "requests 1")
        self.assertEqual(Capabilities().describe(), "none")

    def test_an_older_peer_offers_nothing(self) -> None:
        ours = Capabilities(SUPPORTED)
        agreed = ours.negotiate(parse({"proof": "00"}, "ACCEPT"))
        self.assertNotIn("requests", agreed)
        self.assertFalse(agreed.allows(MessageType.REQUEST))
        self.assertTrue(agreed.allows(MessageType.CDRS))

    def test_what_a_later_version_says_is_ignored_not_refused(self) -> None:
        theirs = parse({"capabilities": {"requests": 1, "streams": {"v": 2}, "Bad-Name": 1,
                                         "zero": 0, "flag": True, "x" * 40: 1}}, "HELLO")
        self.assertEqual(theirs, Capabilities({"requests": 1}))

    def test_malformed(self) -> None:
        for value in ([], "requests", {f"c{i}": 1 for i in range(65)}):
            exc = self.assertRaises(ProtocolError, parse, {"capabilities": value}, "HELLO")
            self.assertIn("malformed HELLO message: bad 'capabilities'", str(exc))
        self.assertRaises(ValueError, Capabilities, {"requests": 0})
        self.assertRaises(ValueError, Capabilities, {"Requests": 1})

    def test_the_top_level_capture_clock_flag_is_the_same_capability(self) -> None:
        # A central that offered it as ACCEPT {"capture_clock": true}...
        self.assertEqual(parse({"proof": "00", "capture_clock": True}, "ACCEPT"),
                         Capabilities({"capture_clock": 1}))
        self.assertEqual(parse({"capture_clock": "yes"}, "ACCEPT"), Capabilities())
        # ...and one of this version, to a sensor that reads only the flag.
        offer = Capabilities({"requests": 1, "capture_clock": 1})
        self.assertEqual(offer.advertise(), {"capabilities": {"requests": 1,
                                                              "capture_clock": 1},
                                             "capture_clock": True})
        self.assertEqual(offer.advertise(legacy=False),
                         {"capabilities": {"requests": 1, "capture_clock": 1}})
        self.assertEqual(parse(offer.advertise(), "ACCEPT"), offer)

    def test_a_hello_with_capabilities_is_read_by_a_central_that_knows_none(self) -> None:
        body = hello_body(**Capabilities(SUPPORTED).advertise())
        hello = Hello.from_json(decode_json(MessageType.HELLO, encode_json(body)))
        self.assertEqual(hello.id_sensor, 1)
        self.assertEqual(parse(body, "HELLO"), Capabilities(SUPPORTED))


class FrameRuleTests(SynchronousTestCase):
    def test_which_frames_need_which_capability(self) -> None:
        for kind in (MessageType.REQUEST, MessageType.ANSWER, MessageType.CREDIT,
                     MessageType.CANCEL):
            self.assertEqual(capability_of(kind), "requests")
        self.assertEqual(FRAME_CAPABILITY["CLOCK"], "capture_clock")
        for kind in MessageType:
            if kind <= MessageType.CLOSE:
                self.assertIsNone(capability_of(kind), kind)
            else:
                self.assertIsNotNone(capability_of(kind), kind)

    def test_a_frame_without_its_capability_is_refused_naming_what_was_agreed(self) -> None:
        agreed = Capabilities({"capture_clock": 1})
        check_frame(MessageType.CDRS, agreed)
        exc = self.assertRaises(ProtocolError, check_frame, MessageType.REQUEST, agreed)
        self.assertEqual(str(exc), "REQUEST sent without the 'requests' capability (agreed on "
                                   "this channel: capture_clock 1)")

    def test_an_unknown_frame_type_names_what_this_side_speaks(self) -> None:
        self.assertEqual(str(unknown_frame(42, Capabilities({"requests": 1}))),
                         "unknown frame type 42: a peer must send only the base protocol "
                         "and agreed capabilities (requests 1)")
        self.assertIn("not agreed yet", str(unknown_frame(42, None)))
