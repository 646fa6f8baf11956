"""The central's HTTP API on a real socket, over the real SqlStore (SQLite), with a real
sensor management port on loopback for the local-processing pcap path."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.parse

from twisted.internet import defer, endpoints, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from voipmon.manager.commands import ManagerCommands
from voipmon.manager.pcapmerge import plan_merge
from voipmon.manager.server import ManagerServerFactory
from voipmon.manager.service import ManagerConnector
from voipmon.protocols import tls
from voipmon.protocols.handshake import derive_key
from voipmon.records.keys import callid_bytes
from voipmon.spool.layout import minute_dir
from voipmon.store.sqlstore import SqlStore
from voipmon.store.testing import make_cdr, sqlite_dialect
from voipmon.test.common import data_path, require_tshark
from voipmon.test.test_manager_pcapmerge import write_pcap
from voipmon.test.test_manager_service import TrackingFactory
from voipmon.web.api import find_sensor
from voipmon.web.callmedia import CallMedia, MediaCache
from voipmon.web.pcaps import CallPcaps, SensorLink
from voipmon.web.site import make_site

PASSWORD = "sensor secret"


def write_call(spool: str, cdr) -> None:
    for rel, records in ((cdr.sip_pcap, [(cdr.calldate, b"INVITE"), (cdr.callend, b"BYE")]),
                         (cdr.rtp_pcap, [(cdr.calldate + 1 + i / 50, b"rtp") for i in range(50)])):
        if not rel:
            continue
        os.makedirs(os.path.dirname(os.path.join(spool, rel)), exist_ok=True)
        write_pcap(os.path.join(spool, rel), records)


def with_paths(n: int, id_sensor: int, **extra):
    """A CDR whose pcap paths follow the spool layout (minute of its calldate)."""
    minute = minute_dir(make_cdr(n, id_sensor=id_sensor).calldate)
    name = f"call{n}-{id_sensor}"
    fields = {"fbasename": name, "sip_pcap": f"{minute}/SIP/{name}.pcap",
              "rtp_pcap": f"{minute}/RTP/{name}.pcap", **extra}
    return make_cdr(n, id_sensor=id_sensor, **fields)


class WebBase(TestCase):
    user = ""
    password = ""

    @defer.inlineCallbacks
    def setUp(self):
        base = os.path.abspath(self.mktemp())
        self.central_spool = os.path.join(base, "central")
        self.sensor_spool = os.path.join(base, "sensor")
        os.makedirs(self.central_spool)
        os.makedirs(self.sensor_spool)
        self.store = SqlStore(sqlite_dialect(os.path.join(base, "db.sqlite")), reactor)
        yield self.store.start()
        self.addCleanup(self.store.close)
        # sensor 1: local processing, its pcaps on its own spool behind a management port
        # sensor 2: mirroring, its pcaps on the central's spool
        self.local = with_paths(1, 1)
        self.mirrored = with_paths(2, 2)
        self.sip_only = with_paths(3, 1, rtp_pcap="")
        self.nopcap = with_paths(4, 1, sip_pcap="", rtp_pcap="")
        write_call(self.sensor_spool, self.local)
        write_call(self.sensor_spool, self.sip_only)
        write_call(self.central_spool, self.mirrored)
        self.manager_port = yield self.start_manager()
        yield self.store.upsert_sensor({"id_sensor": 1, "name": "edge-1", "host": "127.0.0.1",
                                        "mode": "local", "version": "0.1",
                                        "manager_host": "127.0.0.1",
                                        "manager_port": self.manager_port,
                                        "packets": 1234, "drops": 5, "queue_depth": 2})
        yield self.store.upsert_sensor({"id_sensor": 2, "name": "mirror-2", "mode": "mirror"})
        yield self.store.store_cdrs([self.local, self.sip_only, self.nopcap])
        yield self.store.store_cdrs([self.mirrored], pcap_on="central")
        self.ids = {}
        for cdr in (yield self.store.list_cdrs({})):
            self.ids[cdr["callid"]] = cdr["id"]
        connector = ManagerConnector(reactor, PASSWORD, timeout=10, connect_timeout=5)
        # sensor 1 is not connected to this central: its management port is dialled
        # (sensor_manager_dial); the channel's way is in test_web_tunnel
        self.pcaps = pcaps = CallPcaps(self.central_spool, SensorLink(
            None, lambda id_sensor: find_sensor(self.store, id_sensor), "", connector))
        media = CallMedia(pcaps, MediaCache(os.path.join(self.central_spool, "media"),
                                            64 << 20), reactor)
        site = make_site(self.store, pcaps, self.user, self.password, media=media)
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.agent = Agent(reactor)

    @defer.inlineCallbacks
    def start_manager(self):
        cert, key = tls.generate_self_signed("localhost")
        certificate = tls.ServerCertificate(cert, (), key, tls.fingerprint(cert), "", True)
        self.manager_factory = TrackingFactory(ManagerServerFactory(
            ManagerCommands(self.sensor_spool), Clock(), key=derive_key(PASSWORD), id_sensor=1,
            binding=tls.exporter_binding))
        port = yield endpoints.SSL4ServerEndpoint(
            reactor, 0, certificate.options(), interface="127.0.0.1").listen(self.manager_factory)
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: defer.DeferredList(self.manager_factory.lost))
        return port.getHost().port

    @defer.inlineCallbacks
    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None):
        all_headers = {"Connection": ["close"]}
        for name, value in (headers or {}).items():
            all_headers[name] = [value]
        producer = FileBodyProducer(__import__("io").BytesIO(body)) if body is not None else None
        response = yield self.agent.request(method.encode(), (self.base + path).encode(),
                                            Headers(all_headers), producer)
        data = yield readBody(response)
        return response, data

    @defer.inlineCallbacks
    def get_json(self, path: str, status: int = 200, **kw):
        response, data = yield self.request("GET", path, **kw)
        self.assertEqual(response.code, status, data)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"application/json; charset=utf-8"])
        return json.loads(data)


class ApiTests(WebBase):
    @defer.inlineCallbacks
    def test_sensors(self):
        body = yield self.get_json("/api/sensors")
        by_id = {s["id_sensor"]: s for s in body["sensors"]}
        self.assertEqual(by_id[1]["name"], "edge-1")
        self.assertEqual((by_id[1]["packets"], by_id[1]["drops"], by_id[1]["queue_depth"]),
                         (1234, 5, 2))
        self.assertEqual(by_id[2]["mode"], "mirror")

    @defer.inlineCallbacks
    def test_cdrs_filters_and_paging(self):
        body = yield self.get_json("/api/cdrs?id_sensor=1")
        self.assertEqual({c["id_sensor"] for c in body["cdrs"]}, {1})
        self.assertEqual(len(body["cdrs"]), 3)
        page = yield self.get_json("/api/cdrs?limit=2&offset=2")
        self.assertEqual((len(page["cdrs"]), page["limit"], page["offset"]), (2, 2, 2))
        caller = urllib.parse.quote(self.local.caller)  # "+4930...": '+' would be a space
        body = yield self.get_json(f"/api/cdrs?caller={caller}")
        self.assertEqual([c["callid"] for c in body["cdrs"]], [self.local.callid])
        callid = urllib.parse.quote(self.local.callid)
        body = yield self.get_json(f"/api/cdrs?callid={callid}")
        self.assertEqual([c["callid"] for c in body["cdrs"]], [self.local.callid])

    @defer.inlineCallbacks
    def test_callid_of_any_bytes(self):
        """Issue 13: a Call-ID holding bytes that are not UTF-8 is found by those bytes
        (percent-encoded in the URL) and served as JSON whose escapes (\\udcff for the
        byte 0xFF) give back the same bytes."""
        raw = b"evil-\xff\xfe\x00\xf0\x9f\x98\x80\"\\@h"
        cdr = make_cdr(40, id_sensor=1, callid=raw.decode("utf-8", "surrogateescape"))
        yield self.store.store_cdrs([cdr])
        body = yield self.get_json(f"/api/cdrs?callid={urllib.parse.quote_from_bytes(raw)}")
        [found] = body["cdrs"]
        self.assertEqual(callid_bytes(found["callid"]), raw)
        one = yield self.get_json(f"/api/cdrs/{found['id']}")
        self.assertEqual(one["cdr"]["callid"], cdr.callid)

    @defer.inlineCallbacks
    def test_bad_parameters_are_400_with_a_message(self):
        for query, word in (("limit=abc", "limit"), ("limit=0", "limit"),
                            ("offset=-1", "offset"), ("from=yesterday", "from"),
                            ("id_sensor=x", "id_sensor"), ("mos_below=9", "mos_below"),
                            ("colour=red", "colour")):
            body = yield self.get_json(f"/api/cdrs?{query}", status=400)
            self.assertIn(word, body["error"], query)
        body = yield self.get_json("/api/cdrs/abc", status=400)
        self.assertIn("whole number", body["error"])

    @defer.inlineCallbacks
    def test_one_cdr_and_missing(self):
        body = yield self.get_json(f"/api/cdrs/{self.ids[self.local.callid]}")
        self.assertEqual(body["cdr"]["callid"], self.local.callid)
        self.assertEqual(len(body["cdr"]["rtp"]), 2)
        body = yield self.get_json("/api/cdrs/999999", status=404)
        self.assertEqual(body["error"], "no call 999999")
        body = yield self.get_json("/api/nothing", status=404)
        self.assertIn("no such resource", body["error"])

    @defer.inlineCallbacks
    def test_method_not_allowed(self):
        response, data = yield self.request("POST", "/api/cdrs", body=b"{}")
        self.assertEqual(response.code, 405)
        self.assertIn(b"not allowed", data)

    @defer.inlineCallbacks
    def test_rename(self):
        json_type = {"Content-Type": "application/json"}
        response, data = yield self.request("PATCH", "/api/sensors/2",
                                            body=b'{"name": "  Frankfurt  "}', headers=json_type)
        self.assertEqual(response.code, 200, data)
        self.assertEqual(json.loads(data)["sensor"]["name"], "Frankfurt")
        body = yield self.get_json("/api/sensors")
        self.assertIn("Frankfurt", [s["name"] for s in body["sensors"]])
        for payload, status in ((b"not json", 400), (b'{"name": ""}', 400),
                                (b'{"name": "a\\u0000b"}', 400), (b"[]", 400)):
            response, data = yield self.request("PATCH", "/api/sensors/2", body=payload,
                                                headers=json_type)
            self.assertEqual(response.code, status, payload)
            self.assertIn(b'"error"', data)
        response, _ = yield self.request("PATCH", "/api/sensors/77", body=b'{"name": "x"}',
                                         headers=json_type)
        self.assertEqual(response.code, 404)
        response, _ = yield self.request("PATCH", "/api/sensors/2", body=b'{"name": "x"}',
                                         headers={"Content-Type": "text/plain"})
        self.assertEqual(response.code, 415)

    @defer.inlineCallbacks
    def test_static_page_and_headers(self):
        response, data = yield self.request("GET", "/")
        self.assertEqual(response.code, 200)
        self.assertIn(b"<title>voipmon</title>", data)
        self.assertEqual(response.headers.getRawHeaders(b"x-frame-options"), [b"DENY"])
        self.assertIn(b"script-src 'self'",
                      response.headers.getRawHeaders(b"content-security-policy")[0])
        response, data = yield self.request("GET", "/app.js")
        self.assertEqual(response.code, 200)
        self.assertIn(b"function ladder", data)


def merged(spool: str, cdr) -> bytes:
    return b"".join(plan_merge([os.path.join(spool, p) for p in (cdr.sip_pcap, cdr.rtp_pcap)
                                if p]).chunks())


class PcapTests(WebBase):
    @defer.inlineCallbacks
    def test_local_processing_pcap_is_fetched_from_the_sensor(self):
        response, data = yield self.request("GET", f"/api/cdrs/{self.ids[self.local.callid]}/pcap")
        self.assertEqual(response.code, 200, data)
        self.assertEqual(data, merged(self.sensor_spool, self.local))
        self.assertEqual(response.length, len(data))  # Content-Length, as the client parsed it
        self.assertEqual(response.headers.getRawHeaders(b"content-disposition"),
                         [b'attachment; filename="call1-1.pcap"'])
        tshark = require_tshark()
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as handle:
            handle.write(data)
        frames = subprocess.run([tshark, "-r", path, "-T", "fields", "-e", "frame.number"],
                                capture_output=True, text=True, check=True).stdout.split()
        self.assertEqual(len(frames), 52)  # 2 SIP + 50 RTP records

    @defer.inlineCallbacks
    def test_sip_only_call_is_the_sensors_file(self):
        _response, data = yield self.request("GET",
                                             f"/api/cdrs/{self.ids[self.sip_only.callid]}/pcap")
        with open(os.path.join(self.sensor_spool, self.sip_only.sip_pcap), "rb") as handle:
            self.assertEqual(data, handle.read())

    @defer.inlineCallbacks
    def test_mirrored_pcap_is_served_from_the_central(self):
        response, data = yield self.request("GET",
                                            f"/api/cdrs/{self.ids[self.mirrored.callid]}/pcap")
        self.assertEqual(response.code, 200, data)
        self.assertEqual(data, merged(self.central_spool, self.mirrored))

    @defer.inlineCallbacks
    def test_no_pcap_is_a_clear_404(self):
        body = yield self.get_json(f"/api/cdrs/{self.ids[self.nopcap.callid]}/pcap", status=404)
        self.assertIn("has no pcap", body["error"])
        os.remove(os.path.join(self.central_spool, self.mirrored.sip_pcap))
        os.remove(os.path.join(self.central_spool, self.mirrored.rtp_pcap))
        body = yield self.get_json(f"/api/cdrs/{self.ids[self.mirrored.callid]}/pcap", status=404)
        self.assertIn("no longer in the central's spool", body["error"])
        os.remove(os.path.join(self.sensor_spool, self.local.sip_pcap))
        os.remove(os.path.join(self.sensor_spool, self.local.rtp_pcap))
        body = yield self.get_json(f"/api/cdrs/{self.ids[self.local.callid]}/pcap", status=404)
        self.assertIn("sensor 1 (edge-1) no longer has the pcap", body["error"])

    @defer.inlineCallbacks
    def test_unreachable_sensor_is_a_502_naming_it(self):
        # a port where nothing listens: take one, then close it
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            __import__("twisted.internet.protocol", fromlist=["Factory"]).Factory())
        dead = port.getHost().port
        yield port.stopListening()
        yield self.store.upsert_sensor({"id_sensor": 1, "manager_host": "127.0.0.1",
                                        "manager_port": dead})
        body = yield self.get_json(f"/api/cdrs/{self.ids[self.local.callid]}/pcap", status=502)
        self.assertIn(f"sensor 1 (edge-1) at 127.0.0.1:{dead} is unreachable", body["error"])
        self.assertIn("refused", body["error"].lower())

    @defer.inlineCallbacks
    def test_sensor_with_wrong_password_is_a_502(self):
        self.manager_factory.inner.key = derive_key("another password")
        body = yield self.get_json(f"/api/cdrs/{self.ids[self.local.callid]}/pcap", status=502)
        self.assertIn("sensor 1 (edge-1)", body["error"])
        self.assertIn("bad password", body["error"])

    @defer.inlineCallbacks
    def test_sip_messages_for_the_ladder(self):
        # the SIP pcap of the call is a real SIPp capture
        with open(data_path("sipp_uac_pcap_rtp_echo_lo_3calls.pcap"), "rb") as src, \
                open(os.path.join(self.sensor_spool, self.local.sip_pcap), "wb") as dst:
            dst.write(src.read())
        body = yield self.get_json(f"/api/cdrs/{self.ids[self.local.callid]}/sip")
        labels = [m["label"] for m in body["messages"][:6]]
        self.assertEqual(labels, ["INVITE", "180 Ringing", "200 OK", "ACK", "BYE", "200 OK"])
        first = body["messages"][0]
        self.assertEqual((first["src"], first["sport"], first["dst"], first["dport"]),
                         ("127.0.0.1", 5061, "127.0.0.1", 5070))
        self.assertEqual(first["cseq"], "1 INVITE")
        body = yield self.get_json(f"/api/cdrs/{self.ids[self.nopcap.callid]}/sip", status=404)
        self.assertIn("no SIP pcap", body["error"])

    @defer.inlineCallbacks
    def test_sip_messages_of_a_call_in_the_centrals_spool(self):
        # a mirrored call: its SIP pcap is in the central's own spool, read without a sensor
        with open(data_path("sipp_uac_pcap_rtp_echo_lo_3calls.pcap"), "rb") as src, \
                open(os.path.join(self.central_spool, self.mirrored.sip_pcap), "wb") as dst:
            dst.write(src.read())
        body = yield self.get_json(f"/api/cdrs/{self.ids[self.mirrored.callid]}/sip")
        labels = [m["label"] for m in body["messages"][:6]]
        self.assertEqual(labels, ["INVITE", "180 Ringing", "200 OK", "ACK", "BYE", "200 OK"])


class AuthTests(WebBase):
    user = "admin"
    password = "pa:ss word"

    def auth(self, user: str, password: str) -> dict:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    @defer.inlineCallbacks
    def test_basic_auth_required(self):
        for headers in ({}, self.auth("admin", "wrong"), self.auth("root", self.password),
                        {"Authorization": "Basic !!!"}, {"Authorization": "Bearer x"}):
            for path in ("/", "/api/sensors", "/app.js"):
                response, _data = yield self.request("GET", path, headers=headers)
                self.assertEqual(response.code, 401, (path, headers))
                self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                                 [b'Basic realm="voipmon", charset="UTF-8"'])
        body = yield self.get_json("/api/sensors", headers=self.auth("admin", self.password))
        self.assertEqual(len(body["sensors"]), 2)

    def test_refuses_to_serve_beyond_loopback_without_credentials(self):
        exc = self.assertRaises(ValueError, make_site, self.store, None, bind="0.0.0.0")
        self.assertIn("http_user and http_password are required", str(exc))
        make_site(self.store, None, "u", "p", bind="0.0.0.0")
