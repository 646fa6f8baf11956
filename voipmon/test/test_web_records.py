"""The HTTP API of SIP that is not a call: registrations (current and history),
failed registrations, SIP messages (OPTIONS qualify), instant messages and alerts, over a
real SqlStore holding the engine's records of the bundled real captures."""

from __future__ import annotations

from collections import Counter

from twisted.internet import defer

from voipmon.test.recordsupport import ATTACKER, PBX, PHONES, SCANNED, engine_records
from voipmon.test.test_web_api import WebBase


class RecordsWeb(WebBase):
    """The web site over a store holding the records of the phones (sensor 1), the scan
    (sensor 2) and the PBX (sensor 3)."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        for name, id_sensor in ((PHONES, 1), (SCANNED, 2), (PBX, 3)):
            yield self.store.store_cdrs(engine_records(name, id_sensor=id_sensor))


class RecordApiTests(RecordsWeb):
    @defer.inlineCallbacks
    def test_registrations(self):
        body = yield self.get_json("/api/registrations?current=yes&id_sensor=1&limit=1000")
        current = Counter((r["to_num"], r["state_name"]) for r in body["registrations"]
                          if r["sipcallerip"] != ATTACKER)
        self.assertEqual(current, Counter({("alice", "Unregister"): 1, ("carol", "OK"): 1,
                                           ("dave", "OK"): 1, ("erin", "OK"): 2}))
        body = yield self.get_json("/api/registrations?user=alice&state=OK&id_sensor=1")
        [row] = body["registrations"]
        self.assertEqual((row["to_num"], row["state"], body["limit"]), ("alice", 1, 100))
        self.assertTrue(row["created_at"].endswith("Z"))
        page = yield self.get_json("/api/registrations?limit=2&offset=1")
        self.assertEqual((len(page["registrations"]), page["offset"]), (2, 1))

    @defer.inlineCallbacks
    def test_failures_and_alerts(self):
        body = yield self.get_json(f"/api/register_failed?ip={ATTACKER}&limit=1000")
        self.assertEqual(sum(r["counter"] for r in body["register_failed"]), 91)
        body = yield self.get_json(f"/api/alerts?ip={ATTACKER}")
        kinds = {a["kind"]: a for a in body["alerts"]}
        self.assertEqual(set(kinds), {"scan", "brute-force", "possible-compromise"})
        self.assertEqual(kinds["possible-compromise"]["extensions"], "1001")
        self.assertTrue(len(kinds["scan"]["extensions"].split(",")) >= 5)
        minutes = yield self.get_json("/api/register_time_info?type=failed")
        self.assertTrue(minutes["register_time_info"])

    @defer.inlineCallbacks
    def test_sip_messages(self):
        body = yield self.get_json("/api/sip_messages?method=OPTIONS&qualify=no")
        self.assertEqual([(r["number_dst"], r["method"]) for r in body["sip_messages"]],
                         [("slow", "OPTIONS")])
        body = yield self.get_json("/api/messages")
        self.assertEqual(len(body["messages"]), 1)

    @defer.inlineCallbacks
    def test_bad_filters_are_400(self):
        for path in ("/api/registrations?state=Bogus", "/api/sip_messages?method=INVITE",
                     "/api/alerts?ip=nowhere", "/api/registrations?unknown=1",
                     "/api/register_failed?limit=0"):
            body = yield self.get_json(path, status=400)
            self.assertTrue(body["error"], path)
        yield self.get_json("/api/registrations/1", status=404)
