"""The sensors view's live health in a real headless Chromium (voipmon.test.test_browser's):
a central and a sensor in this process over real TLS on loopback; the page shows the sensor
``ok`` with its figures, then, without a reload, ``offline`` once the sensor stops.

Selenium blocks, so each browser step runs in a thread while the reactor serves the page.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from voipmon.config import load_central_config, load_sensor_config
from voipmon.test.channel_support import free_port
from voipmon.test.fakes import FakeStore
from voipmon.test.services import build_central, build_sensor
from voipmon.test.test_browser import _selenium, open_chromium
from voipmon.test.test_channel_integration import CAPTURES, PASSWORD

ROW = '#sensors tbody tr[data-id="9"]'


class SensorHealthTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_state_ok_then_offline_when_the_sensor_stops(self) -> defer.Generator:
        _webdriver, _Service, By, _EC, _Wait = _selenium()
        base = os.path.abspath(self.mktemp())
        http = free_port()
        settings = load_central_config("central.conf", text=(
            f"server_bind = 127.0.0.1\nserver_password = {PASSWORD}\n"
            f"spooldir = {base}/central\nhttp_port = {http}\n"))
        central = build_central(settings, reactor, store=FakeStore(), port=0)
        central.startService()
        self.addCleanup(central.stopService)
        port = yield central.channel.listening
        keys = {"id_sensor": "9", "name_sensor": "edge-9",
                "server_destination": f"127.0.0.1:{port.getHost().port}",
                "server_password": PASSWORD, "spooldir": f"{base}/sensor", "managerport": "0"}
        sensor = build_sensor(load_sensor_config(
            "sensor.conf", text="".join(f"{k} = {v}\n" for k, v in keys.items())),
            reactor, read_pcap=CAPTURES[0])
        sensor.startService()
        self.addCleanup(sensor.stopService)

        driver, wait = yield open_chromium(self, None, 60)
        row = (By.CSS_SELECTOR, ROW)

        def state(d: object) -> str:
            found = driver.find_elements(*row)
            return found[0].get_attribute("data-state") if found else ""

        def online() -> tuple[str, str]:
            driver.get(f"http://127.0.0.1:{http}/#/sensors")
            wait.until(lambda d: state(d) == "ok")
            return driver.find_element(*row).text, driver.current_url

        text, url = yield threads.deferToThread(online)
        for piece in ("edge-9", "ok", "local processing"):
            self.assertIn(piece, text)
        sensor.stopService()

        def offline() -> tuple[str, str]:
            wait.until(lambda d: state(d) == "offline")     # refreshed, not reloaded
            return driver.find_element(*row).text, driver.current_url

        text, after = yield threads.deferToThread(offline)
        self.assertIn("offline", text)
        self.assertEqual(after, url)
