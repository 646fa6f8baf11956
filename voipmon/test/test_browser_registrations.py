"""The registrations and SIP messages views in a real headless Chromium (Debian's, through
Selenium and the system chromedriver), over the engine's records of the bundled real
captures (SIPp phones and sipvicious against kamailio; a PBX's OPTIONS): a registered
user, the flagged scanner, failed attempts, and which trunk stopped answering its pings.
Screenshots are saved in the test's temporary directory."""

from __future__ import annotations

import os

from twisted.internet import defer, threads

from voipmon.test.recordsupport import ATTACKER
from voipmon.test.test_browser import _selenium, open_chromium
from voipmon.test.test_web_records import RecordsWeb


class RegistrationBrowserTests(RecordsWeb):
    timeout = 120

    @defer.inlineCallbacks
    def test_registrations_and_qualify_views(self):
        _webdriver, _Service, By, _EC, _Wait = _selenium()
        out = os.path.abspath(self.mktemp())
        os.makedirs(out)
        driver, wait = yield open_chromium(self, out, 20)
        css = By.CSS_SELECTOR

        def registrations_page():
            driver.get(self.base + "/#/registrations")
            wait.until(lambda d: d.find_elements(css, "#alerts tbody tr.flagged")
                       and d.find_elements(css, "#registrations tbody tr")
                       and d.find_elements(css, "#reg-failed tbody tr"))
            driver.save_screenshot(os.path.join(out, "registrations.png"))
            alerts = [(r.get_attribute("data-ip"), r.text)
                      for r in driver.find_elements(css, "#alerts tbody tr.flagged")]
            users = {r.get_attribute("data-user"): (r.get_attribute("class"), r.text)
                     for r in driver.find_elements(css, "#registrations tbody tr")}
            failed = [r.get_attribute("class")
                      for r in driver.find_elements(css, "#reg-failed tbody tr")]
            # filter to one user, as an operator asks "is carol registered?"
            driver.find_element(css, "#reg-form input[name=user]").send_keys("carol")
            driver.find_element(css, "#reg-form button[type=submit]").click()
            wait.until(lambda d: "user=carol" in d.current_url and len(
                d.find_elements(css, "#registrations tbody tr")) == 1)
            carol = driver.find_element(css, "#registrations tbody tr").text
            return alerts, users, failed, carol

        alerts, users, failed, carol = yield threads.deferToThread(registrations_page)
        self.assertEqual({ip for ip, _ in alerts}, {ATTACKER})
        texts = " ".join(text for _, text in alerts)
        for kind in ("scan", "brute-force", "possible-compromise"):
            self.assertIn(kind, texts)
        self.assertIn("carol", users)
        self.assertIn("OK", users["carol"][1])
        self.assertNotIn("flagged", users["carol"][0])
        # the user sipvicious broke into is listed as registered, from the flagged source
        self.assertIn("flagged", users["1001"][0])
        self.assertIn("flagged", failed)
        self.assertIn("carol", carol)

        def sipmsg_page():
            driver.find_element(By.ID, "nav-sipmsg").click()
            wait.until(lambda d: len(d.find_elements(css, "#qualify tbody tr")) == 2
                       and d.find_elements(css, "#sipmsgs tbody tr"))
            driver.save_screenshot(os.path.join(out, "sipmsg.png"))
            return {r.get_attribute("data-target"): (r.get_attribute("class"), r.text)
                    for r in driver.find_elements(css, "#qualify tbody tr")}

        targets = yield threads.deferToThread(sipmsg_page)
        self.assertEqual(sorted(targets), ["slow", "trunk"])
        self.assertIn("flagged", targets["slow"][0])
        self.assertIn("answering", targets["trunk"][1])
        self.assertNotIn("flagged", targets["trunk"][0])
