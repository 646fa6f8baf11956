"""The web page in headless Chromium over a sensor that listens on nothing (issue 15).

A central and a local-processing sensor (``managerport = 0``) in this process, on loopback
over TLS, as their taps build them; the sensor replays a capture and stays connected. The
browser opens the sensors view, follows a sensor's "active calls" link (the view asks the
central, which asks the sensor over its channel, and refreshes by itself), then opens a
call and downloads its pcap, which the central fetches over the same channel: the file is
what the sensor's own ``getcallpcap`` makes of its spool.

The replay has closed its calls by the time the browser looks, so the sensor's call table
is an engine's that read the capture up to its first BYE (calls in progress, RTP flowing):
the view shows each call's duration so far and each stream's MOS, loss and jitter up to
now. listcalls during real calls is test_sipp_live's.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import TestCase

from voipmon.analysis.engine import Engine
from voipmon.config import load_central_config, load_sensor_config
from voipmon.manager.commands import ManagerCommands
from voipmon.packet.readers import read_capture
from voipmon.test.common import data_path
from voipmon.test.services import build_central, build_sensor
from voipmon.test.test_browser import _selenium, open_chromium

PASSWORD = "browser-live-secret"
CAPTURE = "sipp_uac_pcap_rtp_echo_lo_3calls.pcap"


class CallsInProgress:
    """The sensor's call table, as listcalls shows it: a real engine that has read the
    capture up to its first BYE, so its calls are in progress with RTP flowing."""

    def __init__(self, path: str) -> None:
        self.engine = Engine(on_cdr=lambda cdr: None, id_sensor=1)
        for ts, linktype, frame in read_capture(path):
            if b"BYE sip:" in frame:
                break
            self.engine.feed(ts, linktype, frame)

    def list_active_calls(self) -> list[dict[str, Any]]:
        return self.engine.active_calls()


def secs(value: float) -> str:
    """The page's ``fmt.secs``."""
    whole = round(value)
    return f"{whole // 60}:{whole % 60:02d}" if whole >= 60 else f"{value:.1f} s"


def stream_line(stream: dict[str, Any]) -> str:
    """What the page shows of one stream so far."""
    mos = min(stream["mos_f1"], stream["mos_f2"], stream["mos_adapt"])
    return (f"{stream['direction']} {stream['src']} → {stream['dst']} {stream['codec']} "
            f"MOS {mos:.2f} · loss {stream['loss']:.1f} % ({stream['lost']:,} of "
            f"{stream['received'] + stream['lost']:,}) · jitter {stream['jitter']:.1f} ms "
            f"(max {stream['maxjitter']:.1f})")


class LiveBrowserTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_active_calls_and_a_pcap_through_the_sensors_channel(self) -> Any:
        _webdriver, _Service, By, _EC, _Wait = _selenium()
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
        calls = CallsInProgress(data_path(CAPTURE))
        expected = calls.list_active_calls()
        self.assertTrue(expected and all(call["rtp"] for call in expected))
        commands.calls = calls
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
        driver, wait = yield open_chromium(self, downloads, 20)
        page = f"http://127.0.0.1:{http_port}/"
        live_rows = (By.CSS_SELECTOR, "#live tbody tr")

        def active_calls() -> tuple[str, list[str], str, str]:
            driver.get(page + "#/sensors")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sensors a.live-link"))
            driver.find_element(By.CSS_SELECTOR, "#sensors a.live-link").click()
            wait.until(lambda d: len(d.find_elements(*live_rows)) == len(expected))
            first = driver.find_element(By.ID, "live-status").text
            # it refreshes by itself: the status names the time of the last answer
            wait.until(lambda d: d.find_element(By.ID, "live-status").text != first)
            driver.save_screenshot(os.path.join(out, "live.png"))
            streams = [[line.text for line in row.find_elements(By.CSS_SELECTOR,
                                                                 ".live-stream")]
                       for row in driver.find_elements(*live_rows)]
            durations = [cell.text for cell in
                         driver.find_elements(By.CSS_SELECTOR, "#live td.live-duration")]
            return (driver.find_element(By.ID, "live-title").text,
                    [row.text for row in driver.find_elements(*live_rows)], first,
                    driver.current_url, streams, durations)

        title, rows, status, url, streams, durations = yield threads.deferToThread(
            active_calls)
        self.assertIn("#/sensors/1/calls", url)
        self.assertEqual(title, "Calls in progress on edge-live")
        count = f"{len(expected)} call{'' if len(expected) == 1 else 's'}"
        self.assertIn(f"{count} in progress, asked of the sensor over its channel", status)
        for row, call, lines, duration in zip(rows, expected, streams, durations,
                                              strict=True):
            self.assertIn(call["callid"], row)
            self.assertIn(call["state"], row)
            # duration so far, and each stream's MOS, loss and jitter up to now
            self.assertEqual(duration, secs(call["duration"]))
            self.assertEqual(lines, [stream_line(s) for s in call["rtp"]])

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
