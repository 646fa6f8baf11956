"""GET /api/stats on a real socket over the real SqlStore (SQLite): the store's figures as
JSON, every figure's /api/cdrs query followed over HTTP lists as many calls as it counts,
and bad arguments (of /api/stats and of the new /api/cdrs filters) are 400s naming them."""

from __future__ import annotations

import random
import urllib.parse

from twisted.internet import defer

from voipmon.test.test_store_stats import DAY, iso, random_calls
from voipmon.test.test_web_api import WebBase


class StatsApiTests(WebBase):
    @defer.inlineCallbacks
    def test_figures_and_their_calls_over_http(self):
        start, end = DAY, DAY + 4 * 3600
        yield self.store.store_cdrs(random_calls(random.Random(3), 150, start, end, 3600,
                                                 first=100))
        query = f"from={iso(start)}&to={iso(end)}&step=1h&mos_below=3.2"
        stats = yield self.get_json(f"/api/stats?{query}")
        direct = yield self.store.cdr_stats(dict(urllib.parse.parse_qsl(query)))
        self.assertEqual(stats, direct)
        self.assertEqual(len(stats["series"]), 4)
        self.assertGreater(stats["totals"]["calls"], 60)
        for scope in (stats["totals"], stats["series"][1], stats["sensors"][0]):
            for name, extra in stats["filters"].items():
                listed = yield self.get_json(f"/api/cdrs?{scope['cdrs']}&"
                                             f"{urllib.parse.urlencode(extra)}&limit=1000")
                self.assertEqual(len(listed["cdrs"]), scope[name], (scope["cdrs"], name))
        for name in ("loss", "jitter"):
            for bucket in stats[name]["buckets"]:
                listed = yield self.get_json(f"/api/cdrs?{bucket['cdrs']}&limit=1000")
                self.assertEqual(len(listed["cdrs"]), bucket["calls"], bucket["cdrs"])

    @defer.inlineCallbacks
    def test_bad_arguments_are_400_naming_them(self):
        for path, words in (
            ("/api/stats?from=2024-05-01T00:00:30Z", "whole minute"),
            ("/api/stats?step=7s", "step = '7s'"),
            ("/api/stats?from=2024-05-01T00:00Z&to=2024-05-05T00:00Z&step=1m", "at most 1440"),
            ("/api/stats?bucket=5m", "unknown argument 'bucket'"),
            ("/api/stats?id_sensor=x", "id_sensor"),
            ("/api/cdrs?answered=maybe", "answered = 'maybe': allowed: yes or no"),
            ("/api/cdrs?ner=good", "ner = 'good'"),
            ("/api/cdrs?loss_from=0.0001", "loss_from = '0.0001': allowed: a number from 0 "
                                           "with at most 3 decimals"),
            ("/api/cdrs?jitter_to=-1", "jitter_to"),
            ("/api/cdrs?has_mos=", None),
        ):
            if words is None:   # an empty value is no filter
                yield self.get_json(path)
                continue
            body = yield self.get_json(path, status=400)
            self.assertIn(words, body["error"], path)
        response, _data = yield self.request("POST", "/api/stats")
        self.assertEqual(response.code, 405)
