"""The web page in headless Chromium over a sensor that listens on nothing (issue 15).

A central and a local-processing sensor (``managerport = 0``) in this process, on loopback
over TLS, as their taps build them; the sensor replays a capture and stays connected. The
browser opens the sensors view, follows a sensor's "active calls" link (the view asks the
central, which asks the sensor over its channel, and refreshes by itself), then opens a
call and downloads its pcap, which the central fetches over the same channel: the file is
what the sensor's own ``getcallpcap`` makes of its spool.

The replay has closed its calls by the time the browser looks, so the sensor's call table
is a fixed one here (two calls); listcalls during real calls is test_sipp_live's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import TestCase

from voipmon.config import load_central_config, load_sensor_config
from voipmon.manager.commands import ManagerCommands
from voipmon.test.common import data_path
from voipmon.test.services import build_central, build_sensor
from voipmon.test.test_browser import _selenium, start_chromium

PASSWORD = "browser-live-secret"
CAPTURE = "sipp_uac_pcap_rtp_echo_lo_3calls.pcap"


class FixedCalls:
    """The sensor's call table, as listcalls shows it."""

    def list_active_calls(self) -> list[dict[str, Any]]:
        return [{"callid": "live-a@example", "calldate": "2026-12-08T01:00:00.000Z",
                 "caller": "+4930111", "called": "+4930222", "state": "answered",
                 "lastSIPresponseNum": 200, "streams": 2},
                {"callid": "live-b@example", "calldate": "2026-12-08T01:00:05.000Z",
                 "caller": "+4930333", "called": "+4930444", "state": "ringing",
                 "lastSIPresponseNum": 180, "streams": 0}]


class LiveBrowserTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_active_calls_and_a_pcap_through_the_sensors_channel(self) -> Any:
        _webdriver, _Service, By, _EC, Wait = _selenium()
        base = os.path.abspath(self.mktemp())
        central = build_central(load_central_config("central.conf", text=(
            f"server_bind = 127.0.0.1\nserver_password = {PASSWORD}\n"
            f"spooldir = {base}/central\nsqlite_path = {base}/central.sqlite\n"
            "http_bind = 127.0.0.1\nhttp_port = 8080\n")), reactor, port=0, http_port=0)
        web: defer.Deferred = defer.Deferred()
        central.startService()
        self.addCleanup(central.stopService)
        central.getServiceNamed("http")._waitingForPort.addCallback(
            lambda port: (web.callback(port), port)[1])
        channel_port = (yield central.channel.listening).getHost().port
        http_port = (yield web).getHost().port
        yield central.store_service.started

        spool = os.path.join(base, "sensor")
        commands = ManagerCommands(spool)
        sensor = build_sensor(load_sensor_config("sensor.conf", text=(
            f"id_sensor = 1\nname_sensor = edge-live\nserver_password = {PASSWORD}\n"
            f"server_destination = 127.0.0.1:{channel_port}\nspooldir = {spool}\n"
            "managerport = 0\n")), reactor, read_pcap=data_path(CAPTURE), commands=commands)
        commands.calls = FixedCalls()
        sensor.startService()
        self.addCleanup(lambda: sensor.stopService() if sensor.running else None)

        store = central.store_service.store
        deadline = time.monotonic() + 60
        while len((yield store.list_cdrs({"id_sensor": "1"}))) < 3:
            self.assertLess(time.monotonic(), deadline, "the sensor's 3 CDRs never arrived")
            yield task.deferLater(reactor, 0.1, lambda: None)
        cdr = next(c for c in (yield store.list_cdrs({"id_sensor": "1"})) if c["rtp_pcap"])
        want = b"".join(commands.execute(
            "getcallpcap", f"{cdr['calldate']} {cdr['fbasename']}").chunks())

        out = os.path.abspath(self.mktemp())
        downloads = os.path.join(out, "downloads")
        os.makedirs(downloads)
        profile = tempfile.mkdtemp(prefix="voipmon-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        driver = yield threads.deferToThread(start_chromium, profile, downloads)
        self.addCleanup(lambda: threads.deferToThread(driver.quit))
        from selenium.common.exceptions import StaleElementReferenceException
        wait = Wait(driver, 20, ignored_exceptions=(StaleElementReferenceException,))
        page = f"http://127.0.0.1:{http_port}/"
        live_rows = (By.CSS_SELECTOR, "#live tbody tr")

        def active_calls() -> tuple[str, list[str], str, str]:
            driver.get(page + "#/sensors")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sensors a.live-link"))
            driver.find_element(By.CSS_SELECTOR, "#sensors a.live-link").click()
            wait.until(lambda d: len(d.find_elements(*live_rows)) == 2)
            first = driver.find_element(By.ID, "live-status").text
            # it refreshes by itself: the status names the time of the last answer
            wait.until(lambda d: d.find_element(By.ID, "live-status").text != first)
            driver.save_screenshot(os.path.join(out, "live.png"))
            return (driver.find_element(By.ID, "live-title").text,
                    [row.text for row in driver.find_elements(*live_rows)], first,
                    driver.current_url)

        title, rows, status, url = yield threads.deferToThread(active_calls)
        self.assertIn("#/sensors/1/calls", url)
        self.assertEqual(title, "Calls in progress on edge-live")
        self.assertIn("2 calls in progress, asked of the sensor over its channel", status)
        self.assertIn("+4930111", rows[0])
        self.assertIn("answered", rows[0])
        self.assertIn("ringing", rows[1])

        def download() -> bytes:
            driver.get(page + f"#/call/{cdr['id']}")
            wait.until(lambda d: d.find_element(By.ID, "call-download").get_attribute("href"))
            driver.find_element(By.ID, "call-download").click()
            deadline = time.monotonic() + 20   # the browser's download, in this thread
            while time.monotonic() < deadline:
                done = [n for n in os.listdir(downloads) if n.endswith(".pcap")]
                if done:
                    with open(os.path.join(downloads, done[0]), "rb") as handle:
                        return handle.read()
                time.sleep(0.1)
            raise AssertionError(f"no pcap downloaded: {os.listdir(downloads)}")

        got = yield threads.deferToThread(download)
        self.assertEqual(len(got), len(want))
        self.assertEqual(got, want, "the downloaded pcap is the sensor's own getcallpcap")
        registry = central.channel.central_factory.registry
        self.assertGreaterEqual(registry.get(1).requester.counters()["completed"], 3)
        yield sensor.stopService()
