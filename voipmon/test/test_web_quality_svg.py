"""Tests for voipmon.web.quality_svg: the quality chart of real captures is SVG that an XML
parser accepts, with one lane per stream and the marks of the call."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.replay import replay
from voipmon.analysis.timeline import QualityObserver
from voipmon.test.common import public_pcaps
from voipmon.web.quality_svg import quality_svg

NS = "{http://www.w3.org/2000/svg}"


class QualitySvgTests(SynchronousTestCase):
    def test_public_captures(self) -> None:
        charts = 0
        for path in public_pcaps():
            observer = QualityObserver()
            ports = (5060, 6060) if "tcp_fragmented" in path else (5060,)
            for cdr in replay(path, observer, sip_ports=ports)[:20]:
                timeline = observer.timeline(cdr)
                root = ET.fromstring(quality_svg(timeline))
                self.assertEqual(root.tag, f"{NS}svg")
                lanes = [g for g in root.iter(f"{NS}g") if g.get("class") == "lane"]
                self.assertEqual(len(lanes), len(cdr.rtp), path)
                self.assertEqual([int(g.get("data-stream")) for g in lanes],
                                 list(range(len(cdr.rtp))))
                marks = [g for g in root.iter(f"{NS}g") if "mark" in g.get("class", "")]
                self.assertEqual(len(marks), len(timeline["marks"]))
                charts += 1
        self.assertGreater(charts, 50)

    def test_long_call_is_binned_to_the_width(self) -> None:
        n = 3600
        stream = {"index": 0, "ssrc": "0x00000001", "saddr": "10.0.0.1", "sport": 4000,
                  "daddr": "10.0.0.2", "dport": 4002, "side": "caller", "codec": "PCMU/8000",
                  "cdr": {"received": 50 * n, "lost": n, "maxjitter": 3.0, "mos_f1": 4.1,
                          "mos_f2": 4.2, "mos_adapt": 4.3},
                  "offset": 0, "packets": [50] * n, "lost": [1] * n,
                  "jitter_max": [3.0] * n, "jitter_mean": [1.0] * n,
                  "mos_f1": [4.1] * n, "mos_f2": [4.2] * n, "mos_adapt": [None] + [4.3] * (n - 1)}
        svg = quality_svg({"callid": "x<&>", "interval": 1.0, "intervals": n,
                           "mos_window": 10.0, "streams": [stream],
                           "marks": [{"t": 1.0, "kind": "dtmf", "label": "DTMF <5>",
                                      "digit": "<", "side": "caller"}]})
        root = ET.fromstring(svg)
        bars = [r for r in root.iter(f"{NS}rect") if r.get("class") == "packets"]
        self.assertLessEqual(len(bars), 430)
        self.assertLess(len(svg), 200_000)
        lost = [r for r in root.iter(f"{NS}rect") if r.get("class") == "lost"]
        self.assertEqual(sum(int(r.find(f"{NS}title").text.split()[0]) for r in lost), n)

    def test_a_call_without_rtp(self) -> None:
        root = ET.fromstring(quality_svg({"callid": "c", "interval": 1.0, "intervals": 3,
                                          "mos_window": 10.0, "streams": [], "marks": []}))
        self.assertIn("No RTP stream", "".join(root.itertext()))
