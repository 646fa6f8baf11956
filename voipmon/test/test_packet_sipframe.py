"""Tests for voipmon.packet.sipframe: SIP stream framing, resynchronisation, WebSocket
unmasking."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from voipmon.packet.sipframe import GARBAGE, INCOMPLETE, resync, sip_message_length, unmask
from voipmon.test.test_packet_tcp import SDP, sip


class SipFramingTests(SynchronousTestCase):
    def test_lengths(self):
        msg = sip(body=SDP)
        self.assertEqual(sip_message_length(msg, 1 << 20), len(msg))
        self.assertEqual(sip_message_length(msg + b"INV", 1 << 20), len(msg))
        self.assertEqual(sip_message_length(msg[:-1], 1 << 20), INCOMPLETE)
        self.assertEqual(sip_message_length(msg[:10], 1 << 20), INCOMPLETE)
        self.assertEqual(sip_message_length(b"\x16\x03\x01\x02\x00", 1 << 20), GARBAGE)
        self.assertEqual(sip_message_length(sip(body=SDP, compact=True), 1 << 20),
                         len(sip(body=SDP, compact=True)))
        self.assertEqual(sip_message_length(msg, 100), GARBAGE)

    def test_resync_keeps_split_start_line(self):
        buf = bytearray(b"garbage\r\nmore garbage\r\nINVITE sip:a@b SIP/2.0\r\nVia: x\r\n")
        self.assertEqual(resync(buf), 23)
        self.assertTrue(buf.startswith(b"INVITE"))
        buf = bytearray(b"junk\r\nREGIS")
        resync(buf)
        self.assertEqual(bytes(buf), b"REGIS")

    def test_unmask(self):
        self.assertEqual(unmask(unmask(b"hello world", b"abcd"), b"abcd"), b"hello world")
        self.assertEqual(unmask(b"\x00\x00\x00\x00\x00", b"\x01\x02\x03\x04"),
                         b"\x01\x02\x03\x04\x01")
