"""Tests for voipmon.analysis.sdp: media endpoints and codecs from SDP."""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.sdp import pack_ip, parse_sdp

OFFER = b"""v=0
o=- 1 1 IN IP4 192.0.2.9
s=-
c=IN IP4 192.0.2.1
t=0 0
a=sendrecv
m=audio 49170 RTP/AVP 0 96 101
a=rtpmap:96 opus/48000/2
a=rtpmap:101 telephone-event/8000
a=ptime:20
a=rtcp:49200
m=video 51372 RTP/AVP 99
c=IN IP6 2001:db8::5
a=rtpmap:99 H264/90000
a=rtcp-mux
a=recvonly
m=image 0 udptl t38
""".replace(b"\n", b"\r\n")


class ParseSdpTests(SynchronousTestCase):
    def test_offer(self) -> None:
        sdp = parse_sdp(OFFER)
        self.assertEqual(sdp.origin_ip, socket.inet_aton("192.0.2.9"))
        audio, video, image = sdp.media
        self.assertEqual(audio.kind, "audio")
        self.assertEqual(audio.ip, socket.inet_aton("192.0.2.1"))
        self.assertEqual(audio.port, 49170)
        self.assertTrue(audio.is_rtp)
        self.assertEqual(audio.payloads, (0, 96, 101))
        self.assertEqual(audio.codec(96), ("opus", 48000))
        self.assertEqual(audio.codec(0), ("PCMU", 8000))
        self.assertEqual(audio.codec(101), ("telephone-event", 8000))
        self.assertEqual(audio.ptime, 20.0)
        self.assertEqual(audio.rtcp_port, 49200)
        self.assertEqual(audio.direction, "sendrecv")
        self.assertEqual(video.ip, socket.inet_pton(socket.AF_INET6, "2001:db8::5"))
        self.assertTrue(video.rtcp_mux)
        self.assertEqual(video.direction, "recvonly")
        self.assertEqual(image.port, 0)
        self.assertFalse(image.is_rtp)

    def test_garbage_lines_are_skipped(self) -> None:
        sdp = parse_sdp(b"garbage\r\nc=IN IP4 not-an-ip\r\nm=audio x RTP/AVP 0 abc 300\r\n"
                        b"a=rtpmap:zz foo/1\r\na=rtpmap:8 PCMA/notanumber\r\na=ptime:-3\r\n"
                        b"m=\r\n\xff\xfe=\r\n")
        (audio,) = sdp.media
        self.assertIsNone(audio.ip)
        self.assertEqual(audio.port, 0)
        self.assertEqual(audio.payloads, (0,))
        self.assertEqual(audio.rtpmap, {8: ("PCMA", 0)})
        self.assertIsNone(audio.ptime)

    def test_media_count_is_bounded(self) -> None:
        body = b"c=IN IP4 10.0.0.1\r\n" + b"m=audio 1000 RTP/AVP 0\r\n" * 100
        self.assertEqual(len(parse_sdp(body).media), 16)

    def test_pack_ip(self) -> None:
        self.assertEqual(pack_ip("10.1.2.3"), b"\n\x01\x02\x03")
        self.assertEqual(pack_ip("224.2.1.1/127/3"), socket.inet_aton("224.2.1.1"))
        self.assertEqual(len(pack_ip("[::1]") or b""), 16)
        self.assertIsNone(pack_ip("example.com"))
        self.assertIsNone(pack_ip("1.2.3.999"))
