"""The dashboard in a real headless Chromium (see test_browser): it is the page's first
view; its tiles show the figures computed independently from the stored rows; a tile, a
bar of the calls chart and a bar of the loss distribution each open the calls view with
exactly the calls they count; a sensor's row opens that sensor's dashboard."""

from __future__ import annotations

import os

from twisted.internet import defer, threads

from voipmon.test.test_browser import _selenium, open_chromium
from voipmon.test.test_store_stats import DAY, call, iso, reference, stored_rows
from voipmon.test.test_web_api import WebBase

GOOD = (1000, 0, 2.0, 4.4)        # received, lost, jitter ms, MOS
POOR = (95, 5, 31.0, 2.6)         # 5 % lost


def calls_of_the_hour() -> list:
    spec = [  # (minute, sensor, code, connected seconds, sides)
        (1, 1, 200, 61.5, (GOOD, GOOD)), (3, 1, 200, 0.0, (GOOD,)), (7, 2, 200, 30.0, (POOR,)),
        (14, 1, 486, 0.0, ()), (16, 2, 487, 0.0, ()), (22, 1, 503, 0.0, ()),
        (29, 2, 200, 120.25, (POOR, GOOD)), (31, 1, 404, 0.0, ()), (44, 1, 0, 0.0, ()),
        (47, 2, 603, 0.0, ()), (52, 1, 200, 8.0, (GOOD, GOOD)), (59, 2, 200, 15.0, ()),
    ]
    return [call(100 + n, DAY + minute * 60 + 7.25, sensor, code, connect, sides)
            for n, (minute, sensor, code, connect, sides) in enumerate(spec)]


class DashboardBrowserTests(WebBase):
    timeout = 120

    @defer.inlineCallbacks
    def test_dashboard_figures_and_click_through(self):
        _webdriver, _Service, By, _EC, _Wait = _selenium()
        yield self.store.store_cdrs(calls_of_the_hour())
        expected, lists = reference(stored_rows(self.store.dialect), DAY, DAY + 3600, 900,
                                    None, 3.1)
        totals = expected["totals"]
        out = os.path.abspath(self.mktemp())
        os.makedirs(out)
        # the page replaces what it shows when the figures arrive
        driver, wait = yield open_chromium(self, out, 20)
        rows = (By.CSS_SELECTOR, "#calls tbody tr.call")
        dashboard = f"{self.base}/#/dashboard?from={iso(DAY)}&to={iso(DAY + 3600)}&step=900"

        def tile(name):
            element = driver.find_element(By.ID, f"tile-{name}")
            value = element.get_attribute("data-value")
            return (float(value) if value else None,
                    element.find_element(By.CSS_SELECTOR, ".value").text)

        def open_dashboard():
            driver.get(self.base + "/")
            wait.until(lambda d: d.find_element(By.ID, "view-dashboard").is_displayed())
            driver.get(dashboard)
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#tile-calls .value").text
                       == str(totals["calls"]))

        def figures():
            open_dashboard()
            driver.save_screenshot(os.path.join(out, "dashboard.png"))
            bars = {chart: len(driver.find_elements(By.CSS_SELECTOR, f"#chart-{chart} a.bar"))
                    for chart in ("calls", "asr", "loss", "jitter")}
            sensors = [r.get_attribute("data-id") for r in
                       driver.find_elements(By.CSS_SELECTOR, "#dash-sensors tbody tr")]
            return {name: tile(name) for name in ("calls", "asr", "ner", "acd", "mos")}, \
                bars, sensors

        shown, bars, sensors = yield threads.deferToThread(figures)
        self.assertEqual(shown["calls"], (12.0, "12"))
        self.assertEqual(shown["asr"], (totals["asr"], f"{100 * totals['asr']:.1f} %"))
        self.assertEqual(shown["ner"][0], totals["ner"])
        self.assertEqual(shown["acd"][0], totals["acd"])
        self.assertEqual(shown["mos"][0], totals["mos_below_share"])
        self.assertEqual((totals["answered"], totals["ineffective"]), (6, 3))
        self.assertEqual(bars, {"calls": 4, "asr": 4, "loss": 6, "jitter": 6})
        self.assertEqual(sensors, ["1", "2"])

        def click(selector):
            # The page may draw a view again (a refresh, a late answer) between finding an
            # element and clicking it; a stale element is found again, never skipped.
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, selector).click() is None)

        def click_through(selector, want):
            open_dashboard()
            click(selector)
            wait.until(lambda d: "#/calls?" in d.current_url
                       and (len(d.find_elements(*rows)) == want
                            if want else "No calls" in d.find_element(By.ID,
                                                                       "calls-status").text))
            return {int(r.get_attribute("data-id")) for r in driver.find_elements(*rows)}, \
                driver.current_url

        for selector, key in (
            ("#tile-asr", ("totals", "answered")),
            ("#link-ineffective", ("totals", "ineffective")),
            ("#chart-calls a.bar[data-index='1']", ("series", "1", "calls")),
            ("#chart-loss a.bar[data-index='4']", ("loss", "4")),
        ):
            want = lists[key]
            ids, url = yield threads.deferToThread(click_through, selector, len(want))
            self.assertEqual(ids, want, (selector, url))
        self.assertEqual(len(lists[("loss", "4")]), 2)   # the two calls that lost 5 %

        second = next(s for s in expected["sensors"] if s["id_sensor"] == 2)

        def one_sensor():
            open_dashboard()
            click("#dash-sensors tbody tr[data-id='2'] a")
            wait.until(lambda d: "id_sensor=2" in d.current_url and d.find_element(
                By.CSS_SELECTOR, "#tile-calls .value").text == str(second["calls"]))
            driver.save_screenshot(os.path.join(out, "dashboard-sensor-2.png"))
            return tile("asr")[0]

        asr = yield threads.deferToThread(one_sensor)
        self.assertEqual((second["calls"], asr), (5, second["asr"]))
        for name in ("dashboard.png", "dashboard-sensor-2.png"):
            with open(os.path.join(out, name), "rb") as handle:
                self.assertEqual(handle.read(8), b"\x89PNG\r\n\x1a\n")
