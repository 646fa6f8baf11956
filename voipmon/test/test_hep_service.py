"""HEP into the sensor's HEP source from real senders on loopback, and through the whole
sensor service to a central.

- ``KamailioTests``: Debian's Kamailio (siptrace, trace_mode 1) relays SIPp calls and
  sends every message as HEP3 to a ``HepSource`` over UDP, and over TCP with SIP over TCP;
  a ``LiveCapture`` sniffs the same calls on ``lo``. The CDRs are the same, field for field
  (times within the few milliseconds between Kamailio's clock and the kernel's; the uid
  follows the first INVITE's time), and the HEP ones carry Kamailio's capture id.
- ``SngrepTests``: Debian's sngrep replays public captures as HEP3 over UDP into the
  source: the same SIP calls as the captures analysed directly.
- ``EncodedCaptureTests``: the SIP, RTP and RTCP of public captures, encoded as HEP by the
  test encoder (no packaged sender emits RTP as HEP), sent over TCP and over UDP to the
  source: the same CDRs and RTP quality as the captures analysed directly.
- ``SensorToCentralTests``: a HEP-only sensor (no interface), as its tap wires it, sends
  the CDRs of the HEP it receives to a central over the real TLS channel, in both channel
  modes; the stored rows are the captures' calls, and the per-call pcap opens in tshark
  with the call's SIP messages and RTP packets.

Needs kamailio, sngrep, SIPp, tshark (and root for the sniffing side): a missing one
skips, or fails when VOIPMON_REQUIRE_LIVE/SHARED=1 (CI).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import socket
import subprocess
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from voipmon.analysis.engine import Engine
from voipmon.config import load_central_config, load_sensor_config
from voipmon.records.cdr import Cdr
from voipmon.sources.hep import HepSource
from voipmon.sources.live import LiveCapture
from voipmon.store.dialect import dialect_for
from voipmon.store.sqlstore import SqlStore
from voipmon.test.common import require_tshark, shared_path
from voipmon.test.fakes import CommitCounter
from voipmon.test.hepsenders import (
    KAMAILIO_MODULES,
    Kamailio,
    require_program,
    run_sipp_calls,
    run_sngrep,
)
from voipmon.test.hepsupport import capture_as_hep
from voipmon.test.live_support import FunctionSink, free_udp_port, require_root
from voipmon.test.services import build_central, build_sensor
from voipmon.test.test_hep_pipeline import microseconds

TIME_FIELDS = ("calldate", "callend", "duration", "connect_duration", "connect_time")
#: Public captures with SIP, RTP and RTCP enough to compare quality figures.
MEDIA_CAPTURES = ("sipnab__sip-rtp-g711.pcap", "heplify__rtp_rtcp_sip_ipv4_udp.pcap",
                  "sipnab__sip-rtp-g722.pcap")
#: One answered call that ends with a BYE: closed while the line is quiet.
SERVICE_CAPTURE = "sipnab__sip-rtp-g722.pcap"


@defer.inlineCallbacks
def until(predicate: Callable[[], bool]) -> Any:
    """Wait (a reactor turn at a time, 20 ms apart) for ``predicate``; the test's timeout
    bounds it."""
    while not predicate():
        yield task.deferLater(reactor, 0.02, lambda: None)


def received(source: HepSource, count: int) -> defer.Deferred[None]:
    """Fires once ``source`` has taken ``count`` messages."""
    return until(lambda: source.intake.received >= count)


def engine() -> tuple[Engine, list[Cdr]]:
    cdrs: list[Cdr] = []
    return Engine(id_sensor=1, on_cdr=cdrs.append), cdrs


def file_cdrs(path: str) -> list[Cdr]:
    e, cdrs = engine()
    e.feed_all(microseconds(path))
    e.finish()
    return cdrs


def comparable(cdr: Cdr, times: bool = True) -> dict[str, Any]:
    data = dataclasses.asdict(cdr)
    del data["hep_capture_id"]
    if not times:
        for name in (*TIME_FIELDS, "sensor_cdr_uid"):
            del data[name]
    return data


def by_callid(cdrs: list[Cdr]) -> list[Cdr]:
    return sorted(cdrs, key=lambda c: c.callid)


def shared_capture(name: str) -> str:
    return shared_path("pcaps", "public", name)


class HepSourceCase(TestCase):
    timeout = 180

    def source(self, sink: Any) -> HepSource:
        source = HepSource(sink, reactor, host="127.0.0.1", port=0)
        source.startService()
        self.addCleanup(source.stopService)
        return source


class KamailioTests(HepSourceCase):
    def setUp(self) -> None:
        self.kamailio = require_program("kamailio", "kamailio", KAMAILIO_MODULES)
        self.sipp = require_program("sipp", "sip-tester")
        require_root()

    @defer.inlineCallbacks
    def relay(self, calls: int, hep_transport: str, sip_transport: str) -> Any:
        hep_engine, hep_cdrs = engine()
        source = self.source(hep_engine)
        workdir = os.path.abspath(self.mktemp())
        kam = Kamailio(reactor, workdir, self.kamailio, source.port, capture_id=4242,
                       hep_transport=hep_transport, sip_transport=sip_transport)
        self.addCleanup(kam.kill)
        sip_ports = [kam.sip_port, kam.uas_port]
        sniffed = Engine(id_sensor=1, on_cdr=(sniffed_cdrs := []).append,
                         sip_ports=sip_ports)
        capture = LiveCapture(["lo"], sip_ports, FunctionSink(sniffed.feed),
                              reactor=reactor, status_interval=0,
                              user_filter=f"port {kam.sip_port} or port {kam.uas_port}")
        capture.startService()
        self.addCleanup(lambda: capture.stopService() if capture.running else None)
        yield kam.start()
        yield run_sipp_calls(reactor, self.sipp, workdir, kam, calls, sip_transport)
        yield kam.stop()   # everything it sent is on its way
        yield received(source, 13 * calls)
        capture.stopService()   # drains the ring first
        hep_engine.finish()
        sniffed.finish()
        counters = source.counters()
        self.assertEqual((counters["received"], counters["dropped"]), (13 * calls, 0))
        self.assertEqual(capture.stats()["kernel_dropped"], 0)
        self.assertEqual(len(hep_cdrs), calls)
        self.assertEqual([comparable(c, times=False) for c in by_callid(hep_cdrs)],
                         [comparable(c, times=False) for c in by_callid(sniffed_cdrs)])
        for ours, theirs in zip(by_callid(hep_cdrs), by_callid(sniffed_cdrs), strict=True):
            for name in TIME_FIELDS[:3]:
                self.assertLess(abs(getattr(ours, name) - getattr(theirs, name)), 0.05, name)
            self.assertEqual((ours.hep_capture_id, theirs.hep_capture_id), (4242, None))
            self.assertEqual((ours.lastSIPresponseNum, ours.bye), (200, 3))

    def test_hep_over_udp(self) -> Any:
        return self.relay(3, "udp", "udp")

    def test_hep_over_tcp_with_sip_over_tcp(self) -> Any:
        return self.relay(3, "tcp", "tcp")


class SngrepTests(HepSourceCase):
    def setUp(self) -> None:
        self.sngrep = require_program("sngrep", "sngrep")

    @defer.inlineCallbacks
    def test_replays_give_the_calls_of_the_captures(self) -> Any:
        for name in ("sipnab__sip-rtp-g711.pcap", "heplify__sip_ipv6_udp.pcap",
                     "heplify__sip_ipv4_tcp.pcap", "sngrep__aaa.pcap",
                     "sipnab__register-invite-reinvite-bye.pcap"):
            path = shared_capture(name)
            expected = sum(1 for r in capture_as_hep(path) if r.proto_type == 1)
            hep_engine, cdrs = engine()
            source = self.source(hep_engine)
            yield run_sngrep(reactor, self.sngrep, os.path.abspath(self.mktemp()), path,
                             source.port)
            yield received(source, expected)
            hep_engine.finish()
            with self.subTest(capture=name):
                self.assertEqual((source.intake.received, source.counters()["dropped"]),
                                 (expected, 0))
                calls = Counter((c.callid, c.lastSIPresponseNum, c.calldate) for c in cdrs)
                self.assertEqual(calls, Counter((c.callid, c.lastSIPresponseNum, c.calldate)
                                                for c in file_cdrs(path)))
                self.assertEqual({c.hep_capture_id for c in cdrs}, {2002 << 16})


class EncodedCaptureTests(HepSourceCase):
    @defer.inlineCallbacks
    def send(self, transport: str) -> Any:
        compared = 0
        for name in MEDIA_CAPTURES:
            path = shared_capture(name)
            records = capture_as_hep(path)
            hep_engine, cdrs = engine()
            source = self.source(hep_engine)
            if transport == "tcp":
                with socket.create_connection(("127.0.0.1", source.port)) as sock:
                    sock.sendall(b"".join(r.message for r in records))
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.addCleanup(sock.close)
                for i, record in enumerate(records):   # paced: a reactor turn per 50
                    sock.sendto(record.message, ("127.0.0.1", source.port))
                    if i % 50 == 49:
                        yield received(source, i + 1)
            yield received(source, len(records))
            hep_engine.finish()
            expected = file_cdrs(path)
            with self.subTest(capture=name, transport=transport):
                self.assertEqual(source.counters()["dropped"], 0)
                self.assertEqual([comparable(c) for c in by_callid(cdrs)],
                                 [comparable(c) for c in by_callid(expected)])
            compared += sum(s.received for c in expected for s in c.rtp)
        self.assertGreater(compared, 1000)   # RTP packets whose quality was compared

    def test_over_tcp(self) -> Any:
        return self.send("tcp")

    def test_over_udp(self) -> Any:
        return self.send("udp")


class SensorToCentralTests(TestCase):
    """A HEP-only sensor, over the real TLS channel, to a central with SQLite."""

    timeout = 180
    password = "hep-service-secret"

    def setUp(self) -> None:
        self.tshark = require_tshark()
        self.base = os.path.abspath(self.mktemp())

    @defer.inlineCallbacks
    def deliver(self, mirroring: str) -> Any:
        path = shared_capture(SERVICE_CAPTURE)
        expected = file_cdrs(path)
        central_settings = load_central_config("central.conf", text=(
            f"server_bind = 127.0.0.1\nserver_password = {self.password}\n"
            f"spooldir = {self.base}/central\nsqlite_path = {self.base}/central.sqlite\n"
            "http_port = 0\n"))
        store = CommitCounter(SqlStore(dialect_for(central_settings.store), reactor),
                              expect=len(expected))
        central = build_central(central_settings, reactor, store=store, port=0)
        central.startService()
        self.addCleanup(central.stopService)
        port = (yield central.channel.listening).getHost().port
        hep_port = free_udp_port()
        sensor_settings = load_sensor_config("sensor.conf", text=(
            f"id_sensor = 31\nserver_destination = 127.0.0.1:{port}\n"
            f"server_password = {self.password}\nspooldir = {self.base}/sensor\n"
            f"managerport = 0\npacketbuffer_sender = {mirroring}\n"
            f"hep_bind_port = {hep_port}\nhep_password = s3cret\nhep_capture_id = 77\n"))
        sensor = build_sensor(sensor_settings, reactor)
        sensor.startService()
        self.addCleanup(lambda: sensor.stopService() if sensor.running else None)
        self.assertIsInstance(sensor.source, HepSource)
        records = capture_as_hep(path, capture_id=77)
        with socket.create_connection(("127.0.0.1", hep_port)) as sock:
            sock.sendall(b"".join(_with_auth(r.message, b"s3cret") for r in records))
        # the calls end in the HEP's own time; the engine (the sensor's, or the central's
        # on the sensor's capture clock) closes them a few seconds later
        timeout = reactor.callLater(120, store.done.cancel)
        yield store.done
        timeout.cancel()
        rows = yield store.list_cdrs({"id_sensor": "31"})
        self.assertEqual(sorted((r["callid"], r["lastSIPresponseNum"], r["hep_capture_id"])
                                for r in rows),
                         sorted((c.callid, c.lastSIPresponseNum, 77) for c in expected))
        streams = Counter((s["ssrc"], s["received"], s["lost"]) for r in rows
                          for s in r["rtp"])
        self.assertEqual(streams, Counter((s.ssrc, s.received, s.lost) for c in expected
                                          for s in c.rtp))
        self.check_pcaps(mirroring, expected)

    def check_pcaps(self, mirroring: str, expected: list[Cdr]) -> None:
        spool = f"{self.base}/{'central' if mirroring == 'yes' else 'sensor'}"
        [cdr] = expected
        [sip_pcap] = glob.glob(os.path.join(spool, "**", "SIP", "*.pcap"), recursive=True)
        [rtp_pcap] = glob.glob(os.path.join(spool, "**", "RTP", "*.pcap"), recursive=True)
        sip = self.tshark_lines(sip_pcap, "sip", "sip.Call-ID")
        self.assertEqual(set(sip), {cdr.callid})
        self.assertGreaterEqual(len(sip), 5)
        rtp = self.tshark_lines(rtp_pcap, "rtp", "rtp.ssrc", "-o", "rtp.heuristic_rtp:TRUE")
        self.assertEqual(Counter(int(x, 16) for x in rtp),
                         Counter({s.ssrc: s.received for s in cdr.rtp}))
        eth = self.tshark_lines(sip_pcap, "sip", "eth.src")
        self.assertEqual(set(eth), {"02:00:00:00:00:4d"})

    def tshark_lines(self, path: str, display: str, field: str, *options: str) -> list[str]:
        out = subprocess.run([self.tshark, "-n", "-r", path, *options, "-Y", display, "-T",
                              "fields", "-e", field], capture_output=True, text=True,
                             check=True, timeout=60)
        return out.stdout.split()

    def test_local_processing(self) -> Any:
        return self.deliver("no")

    def test_packet_mirroring(self) -> Any:
        return self.deliver("yes")


def _with_auth(message: bytes, key: bytes) -> bytes:
    """``message`` with an auth-key chunk (0x000e) appended."""
    chunk = (14).to_bytes(4, "big") + (6 + len(key)).to_bytes(2, "big") + key
    body = message[6:] + chunk
    return message[:4] + (6 + len(body)).to_bytes(2, "big") + body
