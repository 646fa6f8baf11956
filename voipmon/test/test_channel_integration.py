"""Loopback integration of the channel: real TLS sockets, real processes, real MariaDB.

``LoopbackTests`` run a central and a sensor service in this process over real TLS on
127.0.0.1. ``ProcessTests`` run ``twistd voipmon-central`` and ``twistd voipmon-sensor``
as processes and kill them, the database or the network as the acceptance list of the
issue says. Tests that need MariaDB skip when it is unreachable, and fail instead when
VOIPMON_REQUIRE_MYSQL=1 (CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import time
import urllib.parse
import urllib.request

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from voipmon.analysis.engine import Engine
from voipmon.config import load_central_config, load_sensor_config
from voipmon.packet.readers import read_capture
from voipmon.protocols.wire import HEADER, FrameDecoder, MessageType, decode_json
from voipmon.records.cdr import Cdr
from voipmon.records.keys import callid_bytes
from voipmon.sensor.service import SensorService
from voipmon.store.rows import stored_form
from voipmon.test.channel_support import (
    PrivateMariaDB,
    analyze,
    count_cdrs,
    free_port,
    mysql_connect,
    stored_uids,
    temp_dir,
    twistd,
    wait_until,
    write_calls_pcap,
    write_conf,
)
from voipmon.test.common import data_path, missing_tool, mysql_test_database, mysql_unavailable
from voipmon.test.fakes import FakeStore
from voipmon.test.hostile_calls import HostileCall, write_capture
from voipmon.test.services import build_central, build_sensor

CAPTURES = [data_path("sipp_uac_pcap_rtp_echo_lo_3calls.pcap"),
            data_path("sipp_tcp_2calls_udp_486_2calls_lo.pcap")]
CODECS = ("zstd", "gzip", "lzo", "none")
HOSTILE_CALLS = [HostileCall(callid=b"plain@example.org"),
                 HostileCall(callid=b"id-\xff\xfe\x00\xf0\x9f\x98\x80\"'\\@h",
                             from_user=b"\xc3(", ua_a=b"\xff" * 700),
                 HostileCall(callid=b"\xed\xa0\x80" + b"L" * 1100)]
PASSWORD = "integration-secret"


def engine_uids(path: str, id_sensor: int) -> set[tuple[int, str]]:
    out: list[Cdr] = []
    engine = Engine(id_sensor=id_sensor, on_cdr=out.append)
    engine.feed_all(read_capture(path))
    engine.finish()
    return {(id_sensor, cdr.sensor_cdr_uid) for cdr in out}


# -- in this process, real TLS ---------------------------------------------------------


class LoopbackTests(TestCase):
    """A CentralService and a SensorService in this process, over real TLS on 127.0.0.1."""

    timeout = 60

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.store = FakeStore()

    @defer.inlineCallbacks
    def start_central(self) -> defer.Deferred:
        text = (f"server_bind = 127.0.0.1\nserver_password = {PASSWORD}\n"
                f"spooldir = {self.base}/central\nhttp_port = 0\n")
        settings = load_central_config("central.conf", text=text)
        self.central = build_central(settings, reactor, store=self.store, port=0)
        self.central.startService()
        self.addCleanup(self.central.stopService)
        port = yield self.central.channel.listening
        return port.getHost().port

    def sensor(self, port: int, **extra: str) -> tuple[SensorService, defer.Deferred]:
        keys = {"id_sensor": "9", "server_destination": f"127.0.0.1:{port}",
                "server_password": PASSWORD, "spooldir": f"{self.base}/sensor",
                "managerport": "0", **extra}
        settings = load_sensor_config(
            "sensor.conf", text="".join(f"{k} = {v}\n" for k, v in keys.items()))
        done: defer.Deferred = defer.Deferred()
        svc = build_sensor(settings, reactor, read_pcap=CAPTURES[0],
                           on_exit=lambda status, message: done.callback((status, message)))
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc, done

    @defer.inlineCallbacks
    def test_pinned_local_replay(self) -> None:
        """A pinned sensor delivers its CDRs over TLS; the central stores them once."""
        port = yield self.start_central()
        pin = self.central.certificate.fingerprint
        svc, done = self.sensor(port, server_certificate_sha256=pin)
        status, message = yield done
        self.assertEqual(status, 0, message)
        self.assertEqual({(c.id_sensor, c.sensor_cdr_uid) for c in self.store.stored_cdrs()},
                         engine_uids(CAPTURES[0], 9))
        yield svc.stopService()

    @defer.inlineCallbacks
    def test_mirror_each_codec(self) -> None:
        """Mirroring over real TLS works with every codec."""
        port = yield self.start_central()
        for number, codec in enumerate(CODECS):
            svc, done = self.sensor(port, id_sensor=str(40 + number), packetbuffer_sender="yes",
                                    server_type_compress=codec,
                                    spooldir=f"{self.base}/sensor{number}")
            status, message = yield done
            self.assertEqual(status, 0, message)
            yield svc.stopService()
            stored = {c.sensor_cdr_uid for c in self.store.stored_cdrs()
                      if c.id_sensor == 40 + number}
            self.assertEqual({(40 + number, uid) for uid in stored},
                             engine_uids(CAPTURES[0], 40 + number), codec)

    @defer.inlineCallbacks
    def test_wrong_pin_gives_up(self) -> None:
        """A central whose certificate does not match the pin gets nothing: exit 2."""
        port = yield self.start_central()
        _svc, done = self.sensor(port, server_certificate_sha256="AB" * 32)
        status, message = yield done
        self.assertEqual(status, 2)
        self.assertIn("not the pinned server_certificate_sha256", message)
        self.assertEqual(self.store.cdr_count, 0)


# -- processes --------------------------------------------------------------------------


class ProcessBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = temp_dir()
        self.addCleanup(shutil.rmtree, self.base, True)
        self.processes: list = []
        self.addCleanup(self.stop_all)

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()

    def need_mysql(self) -> str:
        return mysql_test_database(self, "voipmon_it")

    def private_mariadb(self) -> PrivateMariaDB:
        """A running MariaDB server of the test's own (to stop and start), destroyed after."""
        if shutil.which("mariadb-install-db") is None:
            raise mysql_unavailable("mariadb-install-db is not installed")
        server = PrivateMariaDB(os.path.join(self.base, "mariadb"))
        self.addCleanup(server.destroy)
        server.start()
        return server

    def central(self, name: str, port: int, database: str | None = None,
                mysqlport: int = 3306, http_port: int = 0, **extra: object):
        keys: dict[str, object] = dict(server_bind="127.0.0.1", server_bind_port=port,
                                       server_password=PASSWORD,
                                       spooldir=f"{self.base}/{name}/spool",
                                       http_port=http_port)
        if database:
            keys.update(mysqlhost="127.0.0.1", mysqlport=mysqlport, mysqldb=database)
        else:
            keys["sqlite_path"] = f"{self.base}/{name}/db.sqlite"
        keys.update(extra)
        process = twistd("voipmon-central", write_conf(f"{self.base}/{name}.conf", **keys),
                         name=name)
        self.processes.append(process)
        process.wait_for(r"listening for sensors on 127\.0\.0\.1:\d+", 60)
        process.wait_for(r"store ready", 60)
        return process

    def sensor(self, name: str, id_sensor: int, ports: list[int], pcap: str | None,
               exit_when_done: bool = True, prefix: list[str] | None = None,
               **extra: object):
        keys: dict[str, object] = dict(
            id_sensor=id_sensor, name_sensor=name, server_password=PASSWORD,
            server_destination=", ".join(f"127.0.0.1:{p}" for p in ports),
            spooldir=f"{self.base}/{name}/spool", managerport=0, interface="lo")
        keys.update(extra)
        args = []
        if pcap:
            args += ["--read-pcap", pcap]
        if exit_when_done:
            args.append("--exit-when-done")
        process = twistd("voipmon-sensor", write_conf(f"{self.base}/{name}.conf", **keys),
                         *args, name=name, prefix=prefix)
        self.processes.append(process)
        return process


class ProcessTests(ProcessBase):
    def test_each_mode_each_compression(self) -> None:
        """Eight sensors (each codec, each mode) into one central on MariaDB: the stored CDRs
        are what voipmon-analyze reports for the same captures."""
        database = self.need_mysql()
        port, http = free_port(), free_port()
        self.central("central", port, database, http_port=http)
        sensors = []
        for number, codec in enumerate(CODECS):
            for mode, base_id in (("no", 10), ("yes", 20)):
                id_sensor = base_id + number
                pcap = CAPTURES[number % 2]
                process = self.sensor(f"s{id_sensor}", id_sensor, [port], pcap,
                                      server_type_compress=codec, packetbuffer_sender=mode)
                sensors.append((id_sensor, pcap, process))
        for id_sensor, pcap, process in sensors:
            self.assertEqual(process.wait(120), 0, process.text()[-3000:])
            process.wait_for("done: ")
            want = {c["sensor_cdr_uid"]: _comparable_analyze(c) for c in analyze(pcap, id_sensor)}
            # A mirroring sensor is done once its CDRs are durable on the central, which
            # stores them a moment later.
            cdrs = self.api_cdrs_when(http, id_sensor, len(want))
            got = {c["sensor_cdr_uid"]: _comparable_api(c) for c in cdrs}
            self.assertEqual(sorted(got), sorted(want), id_sensor)
            for uid, record in want.items():
                differing = {k: (got[uid].get(k), v) for k, v in record.items()
                             if got[uid].get(k) != v}
                self.assertEqual(differing, {}, f"sensor {id_sensor}, call {record['callid']}")

    def test_hostile_call_ids_both_modes(self) -> None:
        """Issue 13, as an operator sees it: calls whose Call-IDs hold bytes that are not
        UTF-8 (and NUL, 4-byte characters, quotes, backslashes, 1100 bytes) reach MariaDB
        exactly, from a local-processing and a mirroring sensor, each exiting 0; the API
        finds each by its bytes. (The sensors exited 0 and the calls were missing.)"""
        database = self.need_mysql()
        port, http = free_port(), free_port()
        self.central("central", port, database, http_port=http)
        pcap = write_capture(f"{self.base}/hostile.pcap", HOSTILE_CALLS)
        sensors = [(id_sensor, self.sensor(f"s{id_sensor}", id_sensor, [port], pcap,
                                           packetbuffer_sender=mode))
                   for id_sensor, mode in ((61, "no"), (62, "yes"))]
        for id_sensor, process in sensors:
            self.assertEqual(process.wait(120), 0, process.text()[-3000:])
            process.wait_for("done: ")
            cdrs = self.api_cdrs_when(http, id_sensor, len(HOSTILE_CALLS))
            self.assertEqual(sorted(callid_bytes(c["callid"]) for c in cdrs),
                             sorted(call.callid for call in HOSTILE_CALLS))
            for call in HOSTILE_CALLS:
                url = (f"http://127.0.0.1:{http}/api/cdrs?id_sensor={id_sensor}&callid="
                       f"{urllib.parse.quote_from_bytes(call.callid)}")
                with urllib.request.urlopen(url, timeout=30) as response:
                    [found] = json.load(response)["cdrs"]
                self.assertEqual(callid_bytes(found["callid"]), call.callid)

    def api_cdrs_when(self, http: int, id_sensor: int, count: int) -> list[dict]:
        """The sensor's CDRs from the API, once there are ``count`` (30 s at most)."""
        found: list[dict] = []

        def enough() -> bool:
            found[:] = self.api_cdrs(http, id_sensor)
            return len(found) >= count

        wait_until(enough, 30, f"{count} CDRs of sensor {id_sensor} in the API")
        return found

    def api_cdrs(self, http: int, id_sensor: int) -> list[dict]:
        url = f"http://127.0.0.1:{http}/api/cdrs?id_sensor={id_sensor}&limit=1000"
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
        return body["cdrs"]

    def test_primary_killed_failover_exactly_once(self) -> None:
        """SIGKILL the primary mid-stream: the sensor fails over to the second central (same
        database) and every CDR is in the database exactly once."""
        database = self.need_mysql()
        calls = 4000
        pcap = write_calls_pcap(f"{self.base}/calls.pcap", calls)
        p1, p2 = free_port(), free_port()
        primary = self.central("primary", p1, database)
        self.central("backup", p2, database)
        sensor = self.sensor("edge", 51, [p1, p2], pcap)
        connection = mysql_connect("127.0.0.1", 3306, database)
        self.addCleanup(connection.close)
        sensor.wait_for(rf"connected to central 127\.0\.0\.1:{p1} \(primary\)", 60)
        at_kill = wait_until(lambda: count_cdrs(connection) >= 200 and count_cdrs(connection),
                             120, "the first CDRs in the database")
        primary.kill(signal.SIGKILL)
        primary.wait(30)
        self.assertLess(at_kill, calls, "the stream had ended before the kill")
        self.assertEqual(sensor.wait(180), 0, sensor.text()[-3000:])
        sensor.wait_for(rf"switched from central 127\.0\.0\.1:{p1} to 127\.0\.0\.1:{p2}")
        uids = stored_uids(connection, 51)
        self.assertEqual(len(uids), len(set(uids)))
        self.assertEqual(set(uids), engine_uids(pcap, 51))

    def test_sensor_killed_and_restarted(self) -> None:
        """SIGKILL the sensor mid-stream and start it again: nothing lost, nothing twice."""
        database = self.need_mysql()
        calls = 4000
        pcap = write_calls_pcap(f"{self.base}/calls.pcap", calls)
        port = free_port()
        self.central("central", port, database)
        connection = mysql_connect("127.0.0.1", 3306, database)
        self.addCleanup(connection.close)
        first = self.sensor("edge", 52, [port], pcap)
        at_kill = wait_until(lambda: count_cdrs(connection) >= 200 and count_cdrs(connection),
                             120, "the first CDRs in the database")
        first.kill(signal.SIGKILL)
        first.wait(30)
        self.assertLess(at_kill, calls, "the stream had ended before the kill")
        second = self.sensor("edge", 52, [port], pcap)
        self.assertEqual(second.wait(180), 0, second.text()[-3000:])
        uids = stored_uids(connection, 52)
        self.assertEqual(len(uids), len(set(uids)))
        self.assertEqual(set(uids), engine_uids(pcap, 52))

    def test_mirroring_central_killed_during_database_outage(self) -> None:
        """Mirroring while MariaDB is down: the replay still ends (END_ACK: the CDRs are on
        the central's disk), the central is SIGKILLed, MariaDB comes back, the central is
        started again on the same spool: every CDR is stored, exactly once."""
        server = self.private_mariadb()
        calls = 400
        pcap = write_calls_pcap(f"{self.base}/calls.pcap", calls)
        port = free_port()
        central = self.central("central", port, "mirrorkill", mysqlport=server.port)
        server.stop()
        sensor = self.sensor("edge", 54, [port], pcap, packetbuffer_sender="yes")
        self.assertEqual(sensor.wait(120), 0, sensor.text()[-3000:])
        done = sensor.wait_for(r"done: .*\((\d+) CDRs made there, safe on its disk")
        self.assertEqual(int(done.group(1)), calls)
        central.wait_for(r"cannot store CDRs from mirrored packets: ", 30)
        central.kill(signal.SIGKILL)
        central.wait(30)
        server.start()
        again = self.central("central", port, "mirrorkill", mysqlport=server.port)
        again.wait_for(rf"{calls} CDRs from mirrored packets wait in .* from before this start")
        connection = server.connect("mirrorkill")
        self.addCleanup(connection.close)
        wait_until(lambda: count_cdrs(connection) >= calls, 60, "the queued CDRs in the database")
        uids = stored_uids(connection, 54)
        self.assertEqual(len(uids), len(set(uids)))
        self.assertEqual(set(uids), engine_uids(pcap, 54))

    def test_database_outage(self) -> None:
        """Stop MariaDB for 10 s mid-stream: every CDR still arrives, once."""
        server = self.private_mariadb()
        calls = 3000
        pcap = write_calls_pcap(f"{self.base}/calls.pcap", calls)
        port = free_port()
        central = self.central("central", port, "outage", mysqlport=server.port)
        central.wait_for("store ready", 60)
        sensor = self.sensor("edge", 53, [port], pcap)
        connection = server.connect("outage")
        at_stop = wait_until(lambda: count_cdrs(connection) >= 100 and count_cdrs(connection),
                             120, "the first CDRs in the database")
        connection.close()
        server.stop()
        self.assertLess(at_stop, calls, "the stream had ended before the outage")
        central.wait_for("cannot store", 30)
        time.sleep(10)  # the outage itself: ten seconds without a database
        self.assertIsNone(sensor.proc.poll(), "the sensor gave up during the outage")
        server.start()
        self.assertEqual(sensor.wait(180), 0, sensor.text()[-3000:])
        central.wait_for("database reachable again", 30)
        connection = server.connect("outage")
        uids = stored_uids(connection, 53)
        connection.close()
        self.assertEqual(len(uids), len(set(uids)))
        self.assertEqual(set(uids), engine_uids(pcap, 53))


class RefusalProcessTests(ProcessBase):
    def test_wrong_password(self) -> None:
        """A wrong password: refused, the reason on both sides, the sensor exits 2."""
        port = free_port()
        central = self.central("central", port)
        sensor = self.sensor("edge", 61, [port], CAPTURES[0], server_password="not-it")
        self.assertEqual(sensor.wait(60), 2)
        reason = "bad password: the sensor's proof does not match server_password"
        sensor.wait_for(r"refused this sensor: " + re.escape(reason))
        sensor.wait_for(r"cannot deliver: every central refused this sensor")
        central.wait_for(r"refused sensor 61 from 127\.0\.0\.1:\d+: " + re.escape(reason))

    def test_clock_skew(self) -> None:
        """A sensor clock 37 s ahead (faketime): refused, saying the measured skew."""
        faketime = shutil.which("faketime")
        if faketime is None:
            raise missing_tool("faketime is not installed (make bootstrap installs it)")
        port = free_port()
        central = self.central("central", port)
        sensor = self.sensor("edge", 62, [port], CAPTURES[0], prefix=[faketime, "-f", "+37s"])
        pattern = (r"clock skew of 3[67]\.\d s exceeds client_server_connect_maximum_time_diff_s"
                   r" = 2 s \(the sensor's clock is 3[67]\.\d s ahead of the central's\)")
        sensor.wait_for(r"refused this sensor: " + pattern, 60)
        central.wait_for(r"refused sensor 62 from 127\.0\.0\.1:\d+: " + pattern, 10)

    def test_duplicate_id(self) -> None:
        """A second sensor process with a connected sensor's id is refused on both sides."""
        port = free_port()
        central = self.central("central", port)
        first = self.sensor("first", 63, [port], CAPTURES[0], exit_when_done=False)
        central.wait_for(r"sensor 63 \(first\) connected", 60)
        second = self.sensor("second", 63, [port], CAPTURES[0])
        pattern = r"id_sensor 63 is already connected from 127\.0\.0\.1:\d+ \(name 'first'"
        second.wait_for(r"refused this sensor: " + pattern, 60)
        central.wait_for(r"refused sensor 63 from 127\.0\.0\.1:\d+: " + pattern, 10)
        self.assertIsNone(first.proc.poll())

    def test_hostile_bytes_while_a_sensor_streams(self) -> None:
        """Garbage, a 4 GiB frame header and an oversized hello are refused, the central's
        memory does not grow, and a sensor streaming meanwhile never loses its connection."""
        port = free_port()
        central = self.central("central", port)
        pcap = write_calls_pcap(f"{self.base}/calls.pcap", 3000)
        good = self.sensor("good", 64, [port], pcap)
        central.wait_for(r"sensor 64 \(good\) connected", 60)
        before = central.rss_kb()
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        attacks = [
            ("plain garbage", None, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 10),
            ("garbage over TLS", context, b"\x00\x00\x00\x10\xee\x00" + b"\xfe" * 64),
            ("4 GiB header", context, HEADER.pack(0xFFFFFFFF, MessageType.CDRS, 0)),
            ("oversized hello", context, HEADER.pack(65537, MessageType.HELLO, 0)),
        ]
        for name, tls_context, data in attacks:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock = tls_context.wrap_socket(raw) if tls_context else raw
            try:
                sock.sendall(data)
                closed = _read_until_closed(sock, spam=tls_context is not None)
            finally:
                sock.close()
            self.assertIsNotNone(closed, name)
            if tls_context is not None and name != "garbage over TLS":
                self.assertIn("over the", closed, name)
        central.wait_for(r"closing connection with 127\.0\.0\.1:\d+: frame header announces "
                         r"4294967295 bytes, over the 65536-byte limit", 10)
        central.wait_for(r"closing connection with 127\.0\.0\.1:\d+: unknown frame type 238",
                         10)
        self.assertLess(central.rss_kb() - before, 8 * 1024)
        self.assertEqual(good.wait(120), 0, good.text()[-3000:])
        connects = [line for line in central.lines if re.search(r"sensor 64 \(good\) connected",
                                                               line)]
        self.assertEqual(len(connects), 1, "the good sensor had to reconnect")


def _read_until_closed(sock: socket.socket, spam: bool) -> str | None:
    """Keep sending junk (when ``spam``) and reading until the central closes; return the
    CLOSE reason it gave (or "" for a close without one), None if it never closed."""
    sock.settimeout(10)
    decoder = FrameDecoder(1 << 20)
    reason = ""
    junk = b"\xab" * 65536
    for _ in range(400):  # up to ~26 MB of junk: the central must not buffer it
        try:
            if spam:
                sock.sendall(junk)
            data = sock.recv(65536)
        except (ConnectionError, ssl.SSLError, OSError):
            return reason
        if not data:
            return reason
        try:
            for frame in decoder.feed(data):
                if frame.kind == MessageType.CLOSE:
                    reason = decode_json(frame.kind, frame.payload).get("reason", "")
        except Exception:
            pass
        if not spam and not data:
            return reason
    return None


_NOT_COMPARED = ("id", "pcap_on", "sip_pcap", "rtp_pcap")


def _comparable_api(cdr: dict) -> dict:
    return {k: v for k, v in cdr.items() if k not in _NOT_COMPARED}


def _comparable_analyze(data: dict) -> dict:
    """voipmon-analyze's record as the database keeps it (its rounding), then as the API
    shows it."""
    stored, _ = stored_form(Cdr.from_json(data))
    return {k: v for k, v in stored.to_json().items() if k not in _NOT_COMPARED}
