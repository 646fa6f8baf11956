"""The web page in a real headless Chromium (Debian's, driven by Selenium and the system
chromedriver; no browser download): filter calls, open one, see the SIP ladder, download
the pcap (fetched by the central from a sensor's management port), rename a sensor.

Selenium blocks, so each browser step runs in a thread while the reactor serves the page.
A screenshot of each view is saved in the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from voipmon.test.common import data_path, missing_tool
from voipmon.test.test_web_api import WebBase, merged

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--window-size=1400,1000")


def _selenium():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        raise missing_tool("selenium is not installed (pip install -e '.[test]')")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            raise missing_tool(f"{path} is absent (apt-get install chromium chromium-driver)")
    return webdriver, Service, By, expected_conditions, WebDriverWait


def start_chromium(profile: str, downloads: str):
    """A headless Chromium driven by Selenium (blocking: call it in a thread), its
    downloads going to ``downloads``."""
    webdriver, Service, _By, _EC, _Wait = _selenium()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_experimental_option("prefs", {
        "download.default_directory": downloads, "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.execute_cdp_cmd("Page.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": downloads})
    return driver


@defer.inlineCallbacks
def open_chromium(case: TestCase, downloads: str | None, timeout: float):
    """``(driver, wait)``: a headless Chromium with a profile of its own (quit and removed
    when ``case`` ends), its downloads going to ``downloads`` (the profile when None), and
    a wait of ``timeout`` seconds that reads again an element the self-refreshing page
    replaced meanwhile (StaleElementReferenceException)."""
    from selenium.common.exceptions import StaleElementReferenceException
    wait_class = _selenium()[4]
    profile = tempfile.mkdtemp(prefix="voipmon-chromium-")
    case.addCleanup(shutil.rmtree, profile, True)
    driver = yield threads.deferToThread(start_chromium, profile, downloads or profile)
    case.addCleanup(lambda: threads.deferToThread(driver.quit))
    return driver, wait_class(driver, timeout,
                              ignored_exceptions=(StaleElementReferenceException,))


class BrowserTests(WebBase):
    timeout = 120

    @defer.inlineCallbacks
    def test_calls_call_ladder_download_sensors(self):
        _webdriver, _Service, By, EC, _Wait = _selenium()
        shutil.copyfile(data_path("sipp_uac_pcap_rtp_echo_lo_3calls.pcap"),
                        os.path.join(self.sensor_spool, self.local.sip_pcap))
        want = merged(self.sensor_spool, self.local)
        out = os.path.abspath(self.mktemp())
        downloads = os.path.join(out, "downloads")
        os.makedirs(downloads)
        # the page replaces the table when an answer arrives: an element read meanwhile
        # is stale, and is read again
        driver, wait = yield open_chromium(self, downloads, 20)
        rows = (By.CSS_SELECTOR, "#calls tbody tr.call")

        def calls_page():
            driver.get(self.base + "/#/calls")
            wait.until(lambda d: len(d.find_elements(*rows)) == 4)
            driver.save_screenshot(os.path.join(out, "calls.png"))
            # filter: caller, then sensor
            caller = driver.find_element(By.NAME, "caller")
            caller.send_keys(self.local.caller)
            driver.find_element(By.ID, "apply").click()
            wait.until(lambda d: len(d.find_elements(*rows)) == 1)
            row = driver.find_element(*rows)
            by_caller = row.get_attribute("data-id"), row.text, driver.current_url
            # then by Call-ID alone (the caller filter cleared)
            driver.find_element(By.NAME, "caller").clear()
            driver.find_element(By.NAME, "callid").send_keys(self.local.callid)
            driver.find_element(By.ID, "apply").click()
            wait.until(lambda d: "callid=" in d.current_url
                       and len(d.find_elements(*rows)) == 1)
            return by_caller, wait.until(lambda d: d.find_element(*rows).get_attribute("data-id"))

        (row_id, row_text, url), by_callid = yield threads.deferToThread(calls_page)
        self.assertEqual(row_id, str(self.ids[self.local.callid]))
        self.assertIn(self.local.called, row_text)
        self.assertIn("caller=%2B4930", url)
        self.assertEqual(by_callid, row_id)

        def call_page():
            driver.find_element(*rows).click()
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "svg.ladder g.message")))
            labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR,
                                                           "svg.ladder text.label")]
            hosts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "svg.ladder text.host")]
            streams = len(driver.find_elements(By.CSS_SELECTOR, "#streams tbody tr"))
            driver.save_screenshot(os.path.join(out, "call.png"))
            driver.find_element(By.ID, "call-download").click()
            target = os.path.join(downloads, "call1-1.pcap")
            deadline = time.monotonic() + 20  # the browser's download, in this thread
            while not os.path.exists(target) and time.monotonic() < deadline:
                time.sleep(0.1)
            return labels, hosts, streams, target

        labels, hosts, streams, target = yield threads.deferToThread(call_page)
        self.assertEqual(labels[:4], ["INVITE (1 INVITE)", "180 Ringing (1 INVITE)",
                                      "200 OK (1 INVITE)", "ACK (1 ACK)"])
        self.assertEqual(hosts, ["127.0.0.1:5061", "127.0.0.1:5070"])
        self.assertEqual(streams, 2)
        with open(target, "rb") as handle:
            self.assertEqual(handle.read(), want)

        def sensors_page():
            driver.find_element(By.ID, "nav-sensors").click()
            srows = (By.CSS_SELECTOR, "#sensors tbody tr")
            wait.until(lambda d: len(d.find_elements(*srows)) == 2)
            text = wait.until(lambda d: d.find_elements(*srows)[0].text)
            # the view redraws itself every few seconds until a rename form is open: a row
            # redrawn between finding and clicking is found again
            wait.until(lambda d: d.find_elements(*srows)[0].find_element(
                By.CSS_SELECTOR, "button.rename").click() is None)
            box = driver.find_element(By.CSS_SELECTOR, "#sensors form.rename-form input")
            box.clear()
            box.send_keys("Berlin edge")
            driver.find_element(By.CSS_SELECTOR, "#sensors form.rename-form button").click()
            wait.until(lambda d: "Berlin edge" in d.find_element(By.ID, "sensors").text)
            driver.save_screenshot(os.path.join(out, "sensors.png"))
            return text

        text = yield threads.deferToThread(sensors_page)
        for piece in ("edge-1", "online", "local processing", "1,234", "5"):
            self.assertIn(piece, text)
        sensors = yield self.store.list_sensors()
        self.assertEqual(sensors[0]["name"], "Berlin edge")
        for name in ("calls.png", "call.png", "sensors.png"):
            with open(os.path.join(out, name), "rb") as handle:
                self.assertEqual(handle.read(8), b"\x89PNG\r\n\x1a\n")
