"""The call view's quality chart and audio player in a real headless Chromium.

A call with known audio (``test_audio.tone_call``: sox's tones as G.711 RTP) is analysed
as a sensor would and stored; the page opens it: the chart under the SIP ladder has one
lane per stream and the call's marks, and the player loads the call's audio, whose
duration in the page is the call's. A call whose codec has no decoder shows the API's
message instead of a player.
"""

from __future__ import annotations

import os

from twisted.internet import defer, threads

from voipmon.test.audiosupport import CallCapture
from voipmon.test.test_audio import tone_call
from voipmon.test.test_browser import _selenium, open_chromium
from voipmon.test.test_web_media import MediaBase


class CallMediaBrowserTests(MediaBase):
    timeout = 120

    @defer.inlineCallbacks
    def test_chart_and_player(self):
        _webdriver, _Service, By, EC, _Wait = _selenium()
        call, bye = tone_call()
        cid, cdr = yield self.store_call(call.pcap(bye))
        silk = CallCapture(offer_pts=(96,), rtpmap={96: ("SILK", 16000)},
                           callid="silk@example.org")
        silk.caller.send([b"\x01" * 40] * 50, 96, 320, silk.start + 1.0)
        silk_id, _ = yield self.store_call(silk.pcap(silk.start + 3.0))
        out = os.path.abspath(self.mktemp())
        os.makedirs(out)
        driver, wait = yield open_chromium(self, out, 30)

        def call_view():
            driver.get(f"{self.base}/#/call/{cid}")
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "svg.ladder g.message")))
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#quality svg.quality")))
            lanes = len(driver.find_elements(By.CSS_SELECTOR, "#quality svg.quality g.lane"))
            marks = [e.get_attribute("class") for e in
                     driver.find_elements(By.CSS_SELECTOR, "#quality svg.quality g.mark")]
            # the chart comes after the ladder in the page
            below = driver.execute_script(
                "return document.querySelector('#ladder').compareDocumentPosition("
                "document.querySelector('#quality')) & Node.DOCUMENT_POSITION_FOLLOWING;")
            wait.until(lambda d: d.execute_script(
                "return document.querySelector('#call-audio').readyState") >= 1)
            audio = driver.execute_script(
                "const a = document.querySelector('#call-audio');"
                "return [a.duration, a.currentSrc, a.hidden, a.error && a.error.code];")
            status = driver.find_element(By.ID, "audio-status").text
            driver.save_screenshot(os.path.join(out, "call-media.png"))
            driver.find_element(By.ID, "quality").screenshot(os.path.join(out, "quality.png"))
            # the same call's chart is styled by the page (quality.css), not by its <style>
            styles = len(driver.find_elements(By.CSS_SELECTOR, "#quality style"))
            fill = driver.execute_script(
                "return getComputedStyle(document.querySelector("
                "'#quality svg.quality rect.packets')).fill;")
            return lanes, marks, below, audio, status, styles, fill

        lanes, marks, below, audio, status, styles, fill = yield threads.deferToThread(call_view)
        self.assertEqual(lanes, 2)
        self.assertEqual(marks, ["mark invite", "mark ringing", "mark answer", "mark bye"])
        self.assertTrue(below)
        duration, src, hidden, error = audio
        self.assertApproximates(duration, cdr["duration"], 0.020)
        self.assertTrue(src.endswith(f"/api/cdrs/{cid}/audio"), src)
        self.assertEqual((hidden, error), (False, None))
        self.assertIn("caller left", status)
        self.assertEqual(styles, 0)
        self.assertEqual(fill, "rgb(184, 196, 214)")

        def silk_view():
            driver.get(f"{self.base}/#/call/{silk_id}")
            wait.until(lambda d: "cannot be decoded" in d.find_element(By.ID, "audio-status").text)
            driver.save_screenshot(os.path.join(out, "call-media-silk.png"))
            return (driver.find_element(By.ID, "audio-status").text,
                    driver.execute_script("return document.querySelector('#call-audio').hidden"),
                    len(driver.find_elements(By.CSS_SELECTOR, "#quality svg.quality g.lane")))

        text, hidden, lanes = yield threads.deferToThread(silk_view)
        self.assertIn("codec SILK/16000 (payload type 96) cannot be decoded", text)
        self.assertTrue(hidden)
        yield threads.deferToThread(lambda: wait.until(lambda d: len(d.find_elements(
            By.CSS_SELECTOR, "#quality svg.quality g.lane")) == 1))
