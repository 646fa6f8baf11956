"""The request messages' layouts: what goes on the wire, and what is refused."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from voipmon.protocols.rpc.messages import (
    CHUNK,
    ERROR,
    FIRST,
    LAST,
    MAX_ARGS,
    Answer,
    Cancel,
    Credit,
    Request,
    answer_data_head,
    answer_error,
    answer_head,
    decode_answer,
    decode_cancel,
    decode_credit,
    decode_request,
    encode_cancel,
    encode_credit,
    encode_request,
)
from voipmon.protocols.wire import MessageType, ProtocolError, encode_json

R, A, C, X = MessageType.REQUEST, MessageType.ANSWER, MessageType.CREDIT, MessageType.CANCEL


class TypeNumberTests(SynchronousTestCase):
    def test_numbers(self) -> None:
        # Fixed on the wire: peers of other versions rely on them.
        self.assertEqual((R, A, C, X), (17, 18, 19, 20))
        self.assertEqual(MessageType.CLOSE, 15)


class RequestTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        request = Request(7, "getcallpcap", "2023-11-14/22/13 call 1", 1 << 20, CHUNK)
        payload = encode_request(request)
        self.assertEqual(payload, b'{"id":7,"command":"getcallpcap","args":'
                                  b'"2023-11-14/22/13 call 1","window":1048576,"chunk":65536}')
        self.assertEqual(decode_request(R, payload), request)

    def bad(self, reason: str, **body: object) -> None:
        full = {"id": 1, "command": "getversion", "args": "", "window": 4096, "chunk": 4096}
        full.update(body)
        for key in [k for k, v in body.items() if v is None]:
            del full[key]
        exc = self.assertRaises(ProtocolError, decode_request, R, encode_json(full))
        self.assertIn(reason, str(exc))

    def test_refused(self) -> None:
        self.bad("'id'", id=0)
        self.bad("'id'", id=1 << 32)
        self.bad("'id'", id=True)
        self.bad("'id'", id=None)
        self.bad("'command'", command="")
        self.bad("'command'", command="get file")
        self.bad("'command'", command="x" * 65)
        self.bad("'command'", command=None)
        self.bad("'args'", args=["a"])
        self.bad("'args'", args="a" * (MAX_ARGS + 1))
        self.bad("'window'", window=-1)
        self.bad("'chunk'", chunk=100)
        self.bad("'chunk'", chunk=(1 << 20) + 1)
        exc = self.assertRaises(ProtocolError, decode_request, R, b"[1]")
        self.assertIn("not a JSON object", str(exc))

    def test_args_may_be_absent_and_are_text(self) -> None:
        request = decode_request(R, b'{"id":1,"command":"help","window":0,"chunk":1024}')
        self.assertEqual(request.args, "")
        request = decode_request(R, encode_json({"id": 2, "command": "getfile",
                                                 "args": "a b/\u00e9.pcap", "window": 1,
                                                 "chunk": 1024}))
        self.assertEqual(request.args, "a b/\u00e9.pcap")


class AnswerTests(SynchronousTestCase):
    def test_first_frame_layout(self) -> None:
        payload = answer_head(5, 1000, "application/json", last=False) + b"{"
        self.assertEqual(payload[:5], struct.pack(">IB", 5, FIRST))
        self.assertEqual(payload[5:14], struct.pack(">QB", 1000, 16))
        self.assertEqual(payload[14:30], b"application/json")
        self.assertEqual(decode_answer(A, payload),
                         Answer(5, FIRST, b"{", size=1000, content_type="application/json"))

    def test_data_frames_are_raw_bytes(self) -> None:
        data = bytes(range(256)) * 4   # every byte value, unescaped
        payload = answer_data_head(9, last=True) + data
        self.assertEqual(len(payload), 5 + len(data))
        answer = decode_answer(A, payload)
        self.assertEqual((answer.id, answer.last, answer.first, answer.data), (9, True, False,
                                                                               data))

    def test_empty_body_is_first_and_last(self) -> None:
        answer = decode_answer(A, answer_head(1, 0, "text/plain; charset=utf-8", last=True))
        self.assertTrue(answer.first and answer.last and not answer.error)
        self.assertEqual((answer.size, answer.content_type, answer.data),
                         (0, "text/plain; charset=utf-8", b""))

    def test_errors(self) -> None:
        answer = decode_answer(A, answer_error(3, "refused", "'../x' is outside the spool",
                                               first=True))
        self.assertEqual(answer, Answer(3, FIRST | LAST | ERROR, b"", code="refused",
                                        message="'../x' is outside the spool"))
        answer = decode_answer(A, answer_error(3, "internal", "reading failed \u00e9",
                                               first=False))
        self.assertEqual((answer.flags, answer.message), (LAST | ERROR, "reading failed \u00e9"))
        self.assertRaises(ValueError, answer_error, 3, "two words", "x", first=True)
        self.assertRaises(ValueError, answer_head, 3, 1, "caf\u00e9", last=True)

    def test_malformed(self) -> None:
        for payload, reason in [
            (b"\x00\x00\x00", "truncated header"),
            (struct.pack(">IB", 0, 0), "bad id 0"),
            (struct.pack(">IB", 1, 0x08), "flags 0x08"),
            (struct.pack(">IB", 1, ERROR) + b"\x01x", "bad error"),          # not LAST
            (struct.pack(">IB", 1, ERROR | LAST), "bad error"),             # no code
            (struct.pack(">IB", 1, ERROR | LAST) + b"\x05ab", "bad error"),  # short code
            (struct.pack(">IB", 1, ERROR | LAST) + b"\x02a b", "bad error code"),
            (struct.pack(">IB", 1, FIRST) + b"\x00" * 8, "truncated first chunk"),
            (struct.pack(">IB", 1, FIRST) + struct.pack(">QB", 1, 4) + b"ab",
             "bad content type"),
            (struct.pack(">IB", 1, FIRST) + struct.pack(">QB", 1, 0), "bad content type"),
        ]:
            exc = self.assertRaises(ProtocolError, decode_answer, A, payload)
            self.assertIn(reason, str(exc), payload)
            self.assertIn("malformed ANSWER message", str(exc))


class CreditCancelTests(SynchronousTestCase):
    def test_credit(self) -> None:
        self.assertEqual(encode_credit(4, 65536), b"\x00\x00\x00\x04\x00\x01\x00\x00")
        self.assertEqual(decode_credit(C, encode_credit(4, 65536)), Credit(4, 65536))
        for payload in (b"\x00" * 7, encode_credit(0, 1), encode_credit(1, 0),
                        encode_credit(1, 1 << 31)):
            self.assertRaises(ProtocolError, decode_credit, C, payload)

    def test_cancel(self) -> None:
        self.assertEqual(encode_cancel(2, "client left"), b"\x00\x00\x00\x02client left")
        self.assertEqual(decode_cancel(X, encode_cancel(2, "client left")),
                         Cancel(2, "client left"))
        self.assertEqual(decode_cancel(X, b"\x00\x00\x00\x02a\nb\x1b").reason, "a?b?")
        self.assertEqual(len(encode_cancel(2, "x" * 1000)), 4 + 200)
        for payload in (b"\x00" * 3, b"\x00" * 4, b"\x00\x00\x00\x01" + b"x" * 201):
            self.assertRaises(ProtocolError, decode_cancel, X, payload)
