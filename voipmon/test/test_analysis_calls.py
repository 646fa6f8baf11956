"""Tests for voipmon.analysis.calls: dialog state, who sent what, closing rules."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.calls import (
    ABSOLUTE,
    CALLEE,
    CALLER,
    END,
    RTP_TIMEOUT,
    SIP_WITHOUT_RTP,
    Call,
)
from voipmon.analysis.sip import parse_sip
from voipmon.packet.datagram import Datagram
from voipmon.records import cdr as cdrmod
from voipmon.test.callsupport import packed, sip_message

A = (packed("10.0.0.1"), 5060)
B = (packed("10.0.0.2"), 5060)


def dgram(ts: float, src: tuple, dst: tuple, raw: bytes) -> Datagram:
    return Datagram(ts, 17, src[0], src[1], dst[0], dst[1], raw, 1, ((ts, raw),))


def msg(first: str, cseq: str, from_tag: str = "ft", to_tag: str = ""):
    parsed = parse_sip(sip_message(first, "cid", cseq, from_tag, to_tag))
    assert parsed is not None
    return parsed


class CallTests(SynchronousTestCase):
    def setUp(self) -> None:
        invite = msg("INVITE sip:bob@example.com SIP/2.0", "1 INVITE")
        self.call = Call.from_invite(dgram(10.0, A, B, b""), invite)

    def feed(self, ts: float, src: tuple, dst: tuple, message) -> str:
        return self.call.on_message(dgram(ts, src, dst, b""), message, 5.0, 32.0)

    def test_from_invite(self) -> None:
        call = self.call
        self.assertEqual((call.callid, call.caller, call.called), ("cid", "alice", "bob"))
        self.assertEqual((call.first_ts, call.invite_cseq, call.from_tag), (10.0, 1, "ft"))

    def test_sender_by_tags_and_addresses(self) -> None:
        self.assertEqual(self.feed(10.1, B, A, msg("SIP/2.0 180 Ringing", "1 INVITE",
                                                   to_tag="tt")), CALLEE)
        # a BYE from the callee carries the callee's tag in From
        self.assertEqual(self.feed(11.0, B, A, msg("BYE sip:a SIP/2.0", "5 BYE", "tt", "ft")),
                         CALLEE)
        self.assertEqual(self.feed(11.1, A, B, msg("SIP/2.0 200 OK", "5 BYE", "tt", "ft")),
                         CALLER)
        untagged = msg("SIP/2.0 200 OK", "1 INVITE", from_tag="")
        self.assertEqual(self.feed(11.2, B, A, untagged), CALLEE)

    def test_answer_bye_and_codes(self) -> None:
        self.feed(10.5, B, A, msg("SIP/2.0 180 Ringing", "1 INVITE", to_tag="tt"))
        self.assertEqual(self.call.last_code, 180)
        self.feed(12.0, B, A, msg("SIP/2.0 200 OK", "1 INVITE", to_tag="tt"))
        self.assertEqual(self.call.connect_time, 12.0)
        self.assertEqual(self.call.bye_code(END), cdrmod.BYE_ANSWERED_NO_BYE)
        # a failed re-INVITE does not change the answered call's code
        self.feed(20.0, A, B, msg("INVITE sip:b SIP/2.0", "2 INVITE", to_tag="tt"))
        self.feed(20.1, B, A, msg("SIP/2.0 488 Not Acceptable Here", "2 INVITE", to_tag="tt"))
        self.assertEqual(self.call.last_code, 200)
        self.assertIsNone(self.call.close_at)
        self.feed(30.0, B, A, msg("BYE sip:a SIP/2.0", "9 BYE", "tt", "ft"))
        self.assertEqual(self.call.whohanged, CALLEE)
        self.assertEqual(self.call.bye_code(END), cdrmod.BYE_SEEN)
        self.assertEqual(self.call.close_at, 62.0)
        self.feed(30.1, A, B, msg("SIP/2.0 200 OK", "9 BYE", "tt", "ft"))
        self.assertEqual(self.call.bye_code(END), cdrmod.BYE_CONFIRMED)
        self.assertEqual(self.call.close_at, 35.1)
        self.assertEqual(self.call.due(35.0, 300, 3600, 14400), None)
        self.assertEqual(self.call.due(35.1, 300, 3600, 14400), END)

    def test_487_sticks_unless_a_new_invite_is_answered(self) -> None:
        self.feed(10.5, B, A, msg("SIP/2.0 487 Request Terminated", "1 INVITE", to_tag="tt"))
        self.feed(10.6, B, A, msg("SIP/2.0 500 Oops", "1 INVITE", to_tag="tt"))
        self.assertEqual(self.call.last_code, 487)
        self.feed(11.0, A, B, msg("INVITE sip:bob@example.com SIP/2.0", "2 INVITE"))
        self.feed(11.5, B, A, msg("SIP/2.0 200 OK", "2 INVITE", to_tag="t2"))
        self.assertEqual(self.call.last_code, 200)

    def test_due_reasons(self) -> None:
        self.assertEqual(self.call.due(10.0 + 3600, 300, 3600, 14400), SIP_WITHOUT_RTP)
        self.assertEqual(self.call.due(10.0 + 100, 300, 3600, 50), ABSOLUTE)
        self.assertEqual(self.call.bye_code(ABSOLUTE), cdrmod.BYE_ABSOLUTE_TIMEOUT)
        self.assertEqual(self.call.bye_code(RTP_TIMEOUT), cdrmod.BYE_RTP_TIMEOUT)
        self.assertEqual(self.call.bye_code(SIP_WITHOUT_RTP),
                         cdrmod.BYE_SIP_WITHOUT_RTP_TIMEOUT)
        self.assertEqual(self.call.bye_code(END), cdrmod.BYE_ONE_WAY)  # nothing came back

    def test_cdr_without_streams(self) -> None:
        self.feed(10.5, B, A, msg("SIP/2.0 486 Busy Here", "1 INVITE", to_tag="tt"))
        cdr = self.call.to_cdr(3, END, [], "", "")
        self.assertEqual((cdr.id_sensor, cdr.lastSIPresponseNum, cdr.bye), (3, 486, 0))
        self.assertEqual((cdr.a_index, cdr.b_index, cdr.rtp), (None, None, ()))
        self.assertEqual(cdr.sipcalledip, "10.0.0.2")
        self.assertAlmostEqual(cdr.duration, 0.5)
