"""``/api/cdrs/<id>/quality`` and ``/audio`` on a real socket, over the real SqlStore, with
the call's pcap fetched through ``CallPcaps`` (the sensor's management port on loopback,
or the central's spool).

The known-audio call is built with real tools (sox's tones, G.711-encoded by sox, packets
dropped and reordered on purpose; ``test_audio.tone_call``), analysed by the engine into a
spool as a sensor would, stored, then fetched back through the API: the WAV and Ogg/Opus
must last as long as the call, carry each tone in its channel and be silent exactly where
packets were dropped. The quality of every call of the public captures and the SIPp ones,
through the API, adds up to the stored CDR.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import xml.etree.ElementTree as ET

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.engine import Engine
from voipmon.audio.render import HEADER_ONLY
from voipmon.packet.readers import CaptureReader
from voipmon.spool.writer import SpoolWriter
from voipmon.test.audiosupport import CallCapture, decode_file, peak_frequency, rms
from voipmon.test.test_analysis_timeline import all_captures
from voipmon.test.test_audio import DROPPED, GAP, TONE_START, tone_call
from voipmon.test.test_web_api import AuthTests, WebBase
from voipmon.web.callmedia import FileSink, MediaCache
from voipmon.web.pcaps import PcapUnavailable


def analyse(source, spool: str, id_sensor: int, sip_ports=(5060,), **options) -> list:
    """The CDRs of a capture (path or bytes), its call pcaps written under ``spool``."""
    cdrs = []
    engine = Engine(id_sensor=id_sensor, on_cdr=cdrs.append, spool=SpoolWriter(spool),
                    sip_ports=sip_ports, **options)
    with CaptureReader(io.BytesIO(source) if isinstance(source, bytes) else source) as reader:
        engine.feed_all(reader)
    engine.finish()
    return cdrs


class MediaBase(WebBase):
    @defer.inlineCallbacks
    def store_call(self, pcap: bytes, **options):
        """Analyse ``pcap`` as sensor 1 (local processing) and store its one call: its id
        and the stored CDR."""
        (cdr,) = analyse(pcap, self.sensor_spool, 1, **options)
        yield self.store.store_cdrs([cdr])
        stored = yield self.store.list_cdrs({b"callid": [cdr.callid.encode()]})
        return stored[0]["id"], stored[0]


class ToneCallTests(MediaBase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        call, bye = tone_call()
        self.cid, self.cdr = yield self.store_call(call.pcap(bye))
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def check_tones(self, samples, rate: int, exact: bool) -> None:
        self.assertApproximates(samples.shape[1] / rate, self.cdr["duration"], 0.020)
        left, right = samples

        def at(seconds: float) -> int:
            return round(seconds * rate)
        tone = slice(at(TONE_START + 0.1), at(TONE_START + 0.9))
        self.assertApproximates(peak_frequency(left[tone], rate), 1000.0, 3.0)
        self.assertApproximates(peak_frequency(right[tone], rate), 2000.0, 3.0)
        if not exact:
            return
        start = at(TONE_START)
        per = rate // 50
        for first, last in ((50, 55), (120, 121)):   # DROPPED
            self.assertTrue((left[start + first * per:start + last * per] == 0).all())
            self.assertGreater(rms(left[start + (first - 1) * per:start + first * per]), 0.3)
            self.assertGreater(rms(left[start + last * per:start + (last + 1) * per]), 0.3)
        callee = at(TONE_START + 0.005)
        self.assertTrue((right[callee + GAP[0] * per:callee + GAP[1] * per] == 0).all())
        self.assertGreater(rms(right[callee + (GAP[0] - 1) * per:callee + GAP[0] * per]), 0.3)
        self.assertTrue((samples[:, :start] == 0).all())
        self.assertEqual(DROPPED, frozenset({*range(50, 55), 120}))

    @defer.inlineCallbacks
    def test_wav_from_the_sensor(self):
        response, data = yield self.request("GET", f"/api/cdrs/{self.cid}/audio")
        self.assertEqual(response.code, 200, data)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"audio/wav"])
        self.assertEqual(response.length, len(data))
        samples, rate = decode_file(data)
        self.assertEqual(rate, 8000)
        self.check_tones(samples, rate, exact=True)
        # logged with the user (none: this site has no credentials) and the call
        (event,) = [e for e in self.events if e.get("audio_format") == "wav" and "cdr_id" in e]
        self.assertEqual((event["cdr_id"], event["callid"], event["user"]),
                         (self.cid, self.cdr["callid"], ""))
        # served from the cache next time: the sensor's pcaps may be gone
        for rel in (self.cdr["sip_pcap"], self.cdr["rtp_pcap"]):
            os.remove(os.path.join(self.sensor_spool, rel))
        response, again = yield self.request("GET", f"/api/cdrs/{self.cid}/audio")
        self.assertEqual((response.code, again), (200, data))
        # a player's range request
        response, part = yield self.request("GET", f"/api/cdrs/{self.cid}/audio",
                                            headers={"Range": "bytes=44-99"})
        self.assertEqual((response.code, part), (206, data[44:100]))

    @defer.inlineCallbacks
    def test_ogg_opus(self):
        response, data = yield self.request("GET", f"/api/cdrs/{self.cid}/audio?format=ogg")
        self.assertEqual(response.code, 200, data)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"audio/ogg"])
        self.assertEqual(data[:4], b"OggS")
        samples, rate = decode_file(data)
        self.check_tones(samples, rate, exact=False)
        body = yield self.get_json(f"/api/cdrs/{self.cid}/audio?format=mp3", status=400)
        self.assertIn("wav or ogg", body["error"])

    @defer.inlineCallbacks
    def test_quality(self):
        body = yield self.get_json(f"/api/cdrs/{self.cid}/quality")
        self.assertEqual(body["interval"], 1.0)
        self.assertEqual(body["id"], self.cid)
        self.assertEqual(len(body["streams"]), len(self.cdr["rtp"]))
        for stream, stored in zip(body["streams"], self.cdr["rtp"], strict=True):
            self.assertEqual(sum(stream["packets"]), stored["received"])
            self.assertEqual(sum(stream["lost"]), stored["lost"])
        caller = body["streams"][0]
        self.assertEqual(caller["side"], "caller")
        # the tone starts at 1.0 s: 50 packets a second, 5 dropped in the 2nd second
        self.assertEqual(caller["offset"], 1)
        self.assertEqual(caller["packets"][:2], [50, 45])
        self.assertEqual(caller["lost"][:2], [0, 5])
        kinds = [m["kind"] for m in body["marks"]]
        self.assertEqual(kinds, ["invite", "ringing", "answer", "bye"])
        half = yield self.get_json(f"/api/cdrs/{self.cid}/quality?interval=0.5")
        self.assertEqual(half["interval"], 0.5)
        self.assertEqual(half["intervals"], 2 * body["intervals"] - 1
                         if self.cdr["duration"] % 1 <= 0.5 else 2 * body["intervals"])
        self.assertEqual(sum(half["streams"][0]["packets"]), self.cdr["rtp"][0]["received"])
        for bad in ("0", "-1", "x", "nan", "5000"):
            body = yield self.get_json(f"/api/cdrs/{self.cid}/quality?interval={bad}",
                                       status=400)
            self.assertIn("interval must be", body["error"])

    @defer.inlineCallbacks
    def test_quality_chart(self):
        response, data = yield self.request("GET", f"/api/cdrs/{self.cid}/quality?format=svg")
        self.assertEqual(response.code, 200, data)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"image/svg+xml; charset=utf-8"])
        root = ET.fromstring(data)
        lanes = root.findall(".//{http://www.w3.org/2000/svg}g[@class='lane']")
        self.assertEqual(len(lanes), 2)
        marks = root.findall(".//{http://www.w3.org/2000/svg}g")
        self.assertIn("mark answer", [g.get("class") for g in marks])

    @defer.inlineCallbacks
    def test_one_fetch_for_requests_at_once(self):
        sent = []
        original = self.pcaps.send

        def counting(cdr, consumer, on_size, sip_only=False):
            sent.append(cdr["id"])
            return original(cdr, consumer, on_size, sip_only)
        self.pcaps.send = counting
        answers = yield defer.gatherResults([
            self.request("GET", f"/api/cdrs/{self.cid}/quality"),
            self.request("GET", f"/api/cdrs/{self.cid}/audio"),
            self.request("GET", f"/api/cdrs/{self.cid}/audio?format=ogg")])
        self.assertEqual([r.code for r, _ in answers], [200, 200, 200])
        self.assertEqual(sent, [self.cid])


class UnplayableTests(MediaBase):
    @defer.inlineCallbacks
    def test_header_only_pcap_says_so(self):
        call, bye = tone_call()
        cdr_id, cdr = yield self.store_call(call.pcap(bye), savertp="header")
        body = yield self.get_json(f"/api/cdrs/{cdr_id}/audio", status=422)
        self.assertIn(HEADER_ONLY, body["error"])
        # the quality needs the headers only
        quality = yield self.get_json(f"/api/cdrs/{cdr_id}/quality")
        self.assertEqual(sum(quality["streams"][0]["packets"]), cdr["rtp"][0]["received"])

    @defer.inlineCallbacks
    def test_codec_without_decoder_is_named(self):
        call = CallCapture(offer_pts=(96,), rtpmap={96: ("SILK", 16000)})
        call.caller.send([b"\x01" * 40] * 50, 96, 320, call.start + 1.0)
        cdr_id, _cdr = yield self.store_call(call.pcap(call.start + 3.0))
        for fmt in ("wav", "ogg"):
            body = yield self.get_json(f"/api/cdrs/{cdr_id}/audio?format={fmt}", status=422)
            self.assertIn("codec SILK/16000 (payload type 96) cannot be decoded", body["error"])

    @defer.inlineCallbacks
    def test_no_pcap_and_no_rtp_pcap(self):
        body = yield self.get_json(f"/api/cdrs/{self.ids[self.nopcap.callid]}/audio",
                                   status=404)
        self.assertIn("has no pcap", body["error"])
        body = yield self.get_json(f"/api/cdrs/{self.ids[self.sip_only.callid]}/quality",
                                   status=404)
        self.assertIn("has no RTP pcap", body["error"])
        body = yield self.get_json("/api/cdrs/999999/audio", status=404)
        self.assertIn("no call 999999", body["error"])

    @defer.inlineCallbacks
    def test_unreachable_sensor_is_a_502(self):
        call, bye = tone_call()
        cdr_id, _cdr = yield self.store_call(call.pcap(bye))
        yield self.store.upsert_sensor({"id_sensor": 1, "manager_host": "127.0.0.1",
                                        "manager_port": 1})
        body = yield self.get_json(f"/api/cdrs/{cdr_id}/audio", status=502)
        self.assertIn("sensor 1 (edge-1)", body["error"])
        self.assertEqual(os.listdir(os.path.join(self.central_spool, "media")), [])


class CaptureTotalsTests(MediaBase):
    timeout = 300

    @defer.inlineCallbacks
    def test_intervals_add_up_to_the_stored_cdrs(self):
        """Every call with RTP of the public and SIPp captures, stored as mirrored (its
        pcaps in the central's spool): the API's intervals sum to the stored CDR."""
        streams = 0
        for path, ports in all_captures():
            cdrs = analyse(path, self.central_spool, 2, sip_ports=ports)
            yield self.store.store_cdrs(cdrs, pcap_on="central")
            for cdr in cdrs:
                if not cdr.rtp or not cdr.rtp_pcap:
                    continue
                found = yield self.store.list_cdrs({b"callid": [cdr.callid.encode()],
                                                    b"id_sensor": [b"2"]})
                (stored,) = [c for c in found if c["sensor_cdr_uid"] == cdr.sensor_cdr_uid]
                body = yield self.get_json(f"/api/cdrs/{stored['id']}/quality")
                for stream, rtp in zip(body["streams"], stored["rtp"], strict=True):
                    where = f"{os.path.basename(path)} {cdr.callid} {stream['ssrc']}"
                    streams += 1
                    self.assertEqual(sum(stream["packets"]), rtp["received"], where)
                    self.assertEqual(sum(stream["lost"]), rtp["lost"], where)
                    jitter = max([j for j in stream["jitter_max"] if j is not None],
                                 default=0.0)
                    self.assertApproximates(jitter, rtp["maxjitter"], 0.001, where)
        self.assertGreater(streams, 50)


class AuthMediaTests(WebBase):
    user = AuthTests.user
    password = AuthTests.password
    auth = AuthTests.auth

    @defer.inlineCallbacks
    def test_audio_and_quality_need_the_password_and_log_the_user(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        call, bye = tone_call()
        (cdr,) = analyse(call.pcap(bye), self.sensor_spool, 1)
        yield self.store.store_cdrs([cdr])
        cdr_id = (yield self.store.list_cdrs({b"callid": [cdr.callid.encode()]}))[0]["id"]
        for path in (f"/api/cdrs/{cdr_id}/audio", f"/api/cdrs/{cdr_id}/quality",
                     f"/api/cdrs/{cdr_id}/audio?format=ogg"):
            for headers in ({}, self.auth("admin", "wrong")):
                response, _ = yield self.request("GET", path, headers=headers)
                self.assertEqual(response.code, 401, path)
        self.assertFalse([e for e in events if "cdr_id" in e])
        response, data = yield self.request("GET", f"/api/cdrs/{cdr_id}/audio",
                                            headers=self.auth("admin", self.password))
        self.assertEqual(response.code, 200, data)
        (event,) = [e for e in events if "cdr_id" in e and "user" in e]
        self.assertEqual((event["user"], event["cdr_id"], event["callid"]),
                         ("admin", cdr_id, cdr.callid))


class CacheTests(SynchronousTestCase):
    def test_least_recently_used_go_first(self):
        root = self.mktemp()
        cache = MediaCache(root, 2500)
        for n, key in enumerate(("a", "b", "c")):
            tmp = cache.temporary(key, ".bin")
            with open(tmp, "wb") as handle:
                handle.write(b"x" * 1000)
            path = cache.put(key, "data.bin", tmp)
            os.utime(path, (1000 + n, 1000 + n))
        self.assertEqual(cache.get("a", "data.bin"), os.path.join(root, "a", "data.bin"))
        cache.hold("b")
        self.assertEqual(cache.trim(), ["c"])      # a was just used, b is in use
        self.assertEqual(sorted(os.listdir(root)), ["a", "b"])
        cache.limit = 0
        cache.release("b")                          # trims: everything not in use
        self.assertEqual(os.listdir(root), [])
        self.assertIsNone(cache.get("a", "data.bin"))
        shutil.rmtree(root, ignore_errors=True)

    def test_keys_stay_in_the_cache(self):
        cache = MediaCache("/nowhere", 1)
        self.assertEqual(cache.directory("../../etc-x"), "/nowhere/.._.._etc-x")
        json.dumps(cache.trim())

    def test_a_pcap_over_the_limit_is_a_413(self):
        path = self.mktemp()
        sink = FileSink(path, 10)
        self.assertRaises(PcapUnavailable, sink.check, 11)
        sink.write(b"x" * 8)
        sink.write(b"x" * 8)
        sink.close()
        exc = self.assertRaises(PcapUnavailable, sink.verify)
        self.assertEqual(exc.status, 413)
        with open(path, "rb") as handle:
            self.assertEqual(handle.read(), b"x" * 8)
