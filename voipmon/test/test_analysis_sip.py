"""Tests for voipmon.analysis.sip: SIP message parsing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.sip import (
    _bytes_headers,
    _text_headers,
    looks_like_sip,
    parse_name_addr,
    parse_sip,
    split_uri,
)

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice A." <sip:alice@example.org>;tag=1928301774\r\n'
    b"To: Bob <sip:bob@example.com>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.org\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@10.0.0.1>\r\n"
    b"User-Agent: TestPhone/1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 24\r\n"
    b"\r\n"
    b"v=0\r\nc=IN IP4 10.0.0.1\r\n"
    b"trailing garbage beyond content-length"
)


class ParseSipTests(SynchronousTestCase):
    def test_request(self) -> None:
        msg = parse_sip(INVITE)
        assert msg is not None
        self.assertTrue(msg.is_request)
        self.assertEqual(msg.method, "INVITE")
        self.assertEqual(msg.request_uri, "sip:bob@example.com")
        self.assertEqual(msg.call_id, "a84b4c76e66710@pc33.example.org")
        self.assertEqual((msg.cseq, msg.cseq_method), (314159, "INVITE"))
        self.assertEqual(msg.from_.user, "alice")
        self.assertEqual(msg.from_.display, "Alice A.")
        self.assertEqual(msg.from_.tag, "1928301774")
        self.assertEqual(msg.to.user, "bob")
        self.assertEqual(msg.to.host, "example.com")
        self.assertEqual(msg.to.tag, "")
        self.assertEqual(msg.header("user-agent"), "TestPhone/1.0")
        self.assertEqual(msg.body, b"v=0\r\nc=IN IP4 10.0.0.1\r\n")
        self.assertEqual(msg.sdp, msg.body)
        self.assertEqual(msg.transaction_method, "INVITE")

    def test_response_and_compact_headers(self) -> None:
        raw = (b"SIP/2.0 486 Busy Here\r\n"
               b"v: SIP/2.0/UDP 10.0.0.1\r\n"
               b"f: <sip:alice@example.org>;tag=abc\r\n"
               b"t: sip:bob@example.com;tag=xyz\r\n"
               b"i: compact-id\r\n"
               b"CSeq: 7 INVITE\r\n"
               b"l: 0\r\n\r\n")
        msg = parse_sip(raw)
        assert msg is not None
        self.assertFalse(msg.is_request)
        self.assertEqual((msg.status, msg.reason), (486, "Busy Here"))
        self.assertEqual(msg.call_id, "compact-id")
        self.assertEqual(msg.to.tag, "xyz")
        self.assertEqual(msg.to.uri, "sip:bob@example.com")
        self.assertEqual(msg.transaction_method, "INVITE")
        self.assertIsNone(msg.sdp)

    def test_folded_header_and_lf_only(self) -> None:
        raw = (b"BYE sip:bob@h SIP/2.0\n"
               b"Call-ID: x1\n"
               b"Subject: first\n"
               b"  second\n"
               b"CSeq: 2 BYE\n\n")
        msg = parse_sip(raw)
        assert msg is not None
        self.assertEqual(msg.header("subject"), "first second")
        self.assertEqual(msg.cseq_method, "BYE")

    def test_multipart_sdp(self) -> None:
        raw = (b"INVITE sip:b@h SIP/2.0\r\nCall-ID: m\r\nCSeq: 1 INVITE\r\n"
               b'Content-Type: multipart/mixed;boundary="unique-boundary-1"\r\n\r\n'
               b"--unique-boundary-1\r\nContent-Type: application/sdp\r\n\r\n"
               b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n"
               b"--unique-boundary-1\r\nContent-Type: application/isup\r\n\r\n\x01\x02\r\n"
               b"--unique-boundary-1--\r\n")
        msg = parse_sip(raw)
        assert msg is not None
        self.assertEqual(msg.sdp, b"v=0\r\nm=audio 4000 RTP/AVP 0")

    def test_call_id_bytes_round_trip(self) -> None:
        raw = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: id-\xff\xfe/../x\r\nCSeq: 1 OPTIONS\r\n\r\n"
        msg = parse_sip(raw)
        assert msg is not None
        self.assertEqual(msg.call_id.encode("utf-8", "surrogateescape"), b"id-\xff\xfe/../x")

    def test_garbage_is_not_sip(self) -> None:
        for raw in (b"", b"\x80\x08\x00\x01" + b"\x00" * 20, b"HTTP/1.1 200 OK\r\n\r\n",
                    b"GET / HTTP/1.1\r\n\r\n", b"SIP/2.0 999 Nope\r\n\r\n",
                    b"SIP/2.0 20 x\r\n\r\n", b"invite sip:x SIP/2.0\r\n\r\n",
                    b"INVITE sip:x SIP/3.0\r\n\r\n"):
            self.assertIsNone(parse_sip(raw), raw)

    def test_bad_numbers_do_not_raise(self) -> None:
        raw = (b"SIP/2.0 200 OK\r\nCall-ID: q\r\nCSeq: notanumber INVITE\r\n"
               b"Content-Length: banana\r\n\r\nbody")
        msg = parse_sip(raw)
        assert msg is not None
        self.assertEqual(msg.cseq, 0)
        self.assertEqual(msg.body, b"body")

    def test_looks_like_sip(self) -> None:
        self.assertTrue(looks_like_sip(INVITE))
        self.assertTrue(looks_like_sip(b"SIP/2.0 200 OK\r\n"))
        self.assertFalse(looks_like_sip(b"\x80\x00abc def"))
        self.assertFalse(looks_like_sip(b"hello world"))


class NameAddrTests(SynchronousTestCase):
    def test_forms(self) -> None:
        na = parse_name_addr('"Bob \\"B\\"" <sips:+1555@[2001:db8::1]:5061;user=phone>;tag=77')
        self.assertEqual(na.display, 'Bob "B"')
        self.assertEqual(na.user, "+1555")
        self.assertEqual(na.host, "2001:db8::1")
        self.assertEqual(na.tag, "77")
        bare = parse_name_addr("sip:carol@example.net;tag=9")
        self.assertEqual((bare.uri, bare.user, bare.tag), ("sip:carol@example.net", "carol", "9"))
        self.assertEqual(parse_name_addr(""), parse_name_addr("   ").__class__())

    def test_split_uri(self) -> None:
        self.assertEqual(split_uri("sip:alice:secret@example.com:5060;transport=tcp"),
                         ("alice", "example.com"))
        self.assertEqual(split_uri("tel:+15551234;phone-context=x"), ("+15551234", ""))
        self.assertEqual(split_uri("sip:example.com"), ("", "example.com"))
        self.assertEqual(split_uri("nonsense"), ("", ""))


class HeaderDecodeTests(SynchronousTestCase):
    """A header block that is valid UTF-8 is decoded once (``_text_headers``); it must give
    exactly what the line-by-line bytes path (``_bytes_headers``) gives."""

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(
        st.sampled_from(["Call-ID", "i", "From", " To ", "v", "X-Odd", "", "CSeq", "\t"]),
        st.text(alphabet=st.sampled_from(list(" \t\x0b\x0c\x1c\x85\xa0\u2003é:;<>ab@\r")),
                max_size=12),
        st.sampled_from(["\r\n", "\n", "\r\n ", "\n\t", "\r\r\n"])), max_size=12))
    def test_text_path_equals_bytes_path(self, parts: list[tuple[str, str, str]]) -> None:
        block = "INVITE sip:a@b SIP/2.0\r\n" + "".join(
            f"{name}:{value}{end}" for name, value, end in parts)
        raw = block.encode("utf-8")
        by_text: dict[str, list[str]] = {}
        by_bytes: dict[str, list[str]] = {}
        _text_headers(by_text, raw.decode("utf-8").split("\n"))
        _bytes_headers(by_bytes, raw.split(b"\n"))
        self.assertEqual(by_text, by_bytes)

    def test_invalid_utf8_takes_the_bytes_path(self) -> None:
        msg = parse_sip(b"BYE sip:a@b SIP/2.0\r\nCall-ID: \xff\xfe@x\r\nFrom: \xff <sip:a@b>"
                        b"\r\nCSeq: 2 BYE\r\n\r\n")
        assert msg is not None
        self.assertEqual(msg.call_id.encode("utf-8", "surrogateescape"), b"\xff\xfe@x")
        self.assertEqual(msg.header("from"), "\ufffd <sip:a@b>")
