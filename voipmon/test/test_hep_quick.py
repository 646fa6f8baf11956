"""The HEP source's hot path: ``quick_hep3`` (voipmon.packet.hep) and
``HepFrames.quick`` (voipmon.packet.synth) against the general decoder and framer.

A message of the common shape (Kamailio's and heplify's chunk order, IPv4, the payload
last) gives, through the quick path, the very frame and counters the general path gives;
every other shape is left to the general path (``quick_hep3`` says None); and Hypothesis
runs that any bytes, and any edit of a message of that shape, give either None or values
that agree with ``decode_hep3``.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voipmon.packet.hep import (
    Q_CAPTURE_ID,
    Q_DPORT,
    Q_DST,
    Q_IP_PROTO,
    Q_SEC,
    Q_SPORT,
    Q_SRC,
    Q_TYPE,
    Q_USEC,
    QUICK_PAYLOAD,
    HepError,
    decode_hep3,
    quick_hep3,
)
from voipmon.packet.synth import HepFrames
from voipmon.test.hepsupport import HEPLIFY, SNGREP, hep3_message
from voipmon.test.test_packet_hep import SETTINGS, SIP

RTP = bytes.fromhex("80000064000003e800001111") + b"\xff" * 160


def both(data: bytes) -> tuple[list, list, dict, dict]:
    """(frames, frames, counters, counters) of the general and the quick path."""
    general: list = []
    quick: list = []
    g, q = HepFrames(lambda *f: general.append(f)), HepFrames(lambda *f: quick.append(f))
    msg = decode_hep3(data)
    g.feed(msg, 5.0)
    t = quick_hep3(data)
    assert t is not None
    q.quick(t, data, 5.0)
    return general, quick, dict(g.counters()), dict(q.counters())


class QuickShapeTests(SynchronousTestCase):
    def test_same_frames_as_the_general_path(self) -> None:
        for payload, kind, ip_proto, capture_id in (
                (SIP, 1, 17, 0), (RTP, 4, 17, 7), (SIP, 1, 22, 2002), (b"x", 1, 17, 1 << 31),
                (b"y" * (65535 - QUICK_PAYLOAD), 4, 17, 5)):
            data = hep3_message("192.0.2.1", 5060, "198.51.100.250", 65535, payload,
                                proto_type=kind, ip_proto=ip_proto, capture_id=capture_id,
                                ts=(1700000000, 123456))
            general, quick, gc, qc = both(data)
            self.assertEqual(quick, general)
            self.assertEqual(qc, gc)
            self.assertEqual(len(quick), 1)

    def test_values(self) -> None:
        data = hep3_message("10.0.0.1", 5061, "10.0.0.2", 5062, SIP, proto_type=1,
                            ip_proto=22, capture_id=99, ts=(1700000000, 500000),
                            magic=b"EEP3")
        t = quick_hep3(data)
        assert t is not None
        self.assertEqual((t[Q_IP_PROTO], t[Q_SRC], t[Q_DST], t[Q_SPORT], t[Q_DPORT],
                          t[Q_SEC], t[Q_USEC], t[Q_TYPE], t[Q_CAPTURE_ID]),
                         (22, 0x0A000001, 0x0A000002, 5061, 5062, 1700000000, 500000, 1, 99))
        self.assertEqual(data[QUICK_PAYLOAD:], SIP)

    def test_other_shapes_are_left_to_the_general_path(self) -> None:
        a, b = "10.0.0.1", "10.0.0.2"
        for data in (hep3_message("2001:db8::1", 5060, "2001:db8::2", 5060, SIP),
                     hep3_message(a, 5060, b, 5060, SIP, order=SNGREP),
                     hep3_message(a, 5060, b, 5060, SIP, order=HEPLIFY, node_name=b"n"),
                     hep3_message(a, 5060, b, 5060, SIP, auth_key=b"k"),
                     hep3_message(a, 5060, b, 5060, SIP, correlation_id=b"c"),
                     hep3_message(a, 5060, b, 5060, SIP, compressed="gzip"),
                     hep3_message(a, 5060, b, 5060, SIP, vendor_chunks=[b"\0\1\0\x99\0\6"]),
                     hep3_message(a, 5060, b, 5060, b""),
                     hep3_message(a, 5060, b, 5060, SIP)[:-1],
                     hep3_message(a, 5060, b, 5060, SIP, ip_proto=6),
                     hep3_message(a, 5060, b, 5060, SIP, ip_proto=132),
                     hep3_message(a, 5060, b, 5060, b"{}", proto_type=5),
                     hep3_message(a, 5060, b, 5060, b"log", proto_type=100),
                     hep3_message(a, 5060, b, 5060, SIP) + b"\0"):
            self.assertIsNone(quick_hep3(data), data[:40])

    @given(st.binary(min_size=QUICK_PAYLOAD - 6, max_size=200))
    @settings(max_examples=1000, **SETTINGS)
    def test_any_bytes(self, data: bytes) -> None:
        for prefix in (b"", b"HEP3", b"HEP3\x00\xd0"):
            self.assertIsNone(quick_hep3(prefix + data) if (prefix + data)[20:24]
                              != b"\0\0\0\x03" else None)
            quick_hep3(prefix + data)   # never raises

    @given(st.lists(st.tuples(st.integers(0, 140), st.integers(0, 255)), max_size=4),
           st.integers(0, 160))
    @settings(max_examples=3000, **SETTINGS)
    def test_edited_messages(self, edits: list, cut: int) -> None:
        """Bytes replaced and cut: None, or the general path's very frame."""
        data = bytearray(hep3_message("10.0.0.1", 5060, "10.0.0.2", 5060, SIP[:40],
                                      proto_type=4))
        for pos, value in edits:
            if pos < len(data):
                data[pos] = value
        for sample in (bytes(data), bytes(data[:cut])):
            if quick_hep3(sample) is None:
                continue
            try:
                decode_hep3(sample)
            except HepError as e:   # pragma: no cover - a failure of the test
                self.fail(f"quick shape the decoder refuses: {e}")
            general, quick, gc, qc = both(sample)
            self.assertEqual((quick, qc), (general, gc))
