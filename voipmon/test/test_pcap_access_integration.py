"""Acceptance of PCAP access (issue 6): a call's pcap asked of the central's HTTP API is the
file the node holding it has, byte for byte, and tshark reads it.

Real processes on loopback: ``twistd voipmon-central`` (embedded SQLite in a temp dir, the
channel over TLS, the HTTP API on a free port) and ``twistd voipmon-sensor`` replaying a
capture made of the two bundled SIPp captures: three calls with RTP, four with SIP only.

What "the file the node has" means. The spool writer keeps a call in a SIP pcap and, when
it had media, an RTP pcap; the CDR names both (spool-relative ``sip_pcap``, ``rtp_pcap``).

- A call with only a SIP pcap is served as that file, unchanged.
- A call with both is served as their merge: the SIP file's global header, then the
  records of both files merged by timestamp (the SIP record first on a tie). The test
  builds that from the raw records of the spool files and compares byte for byte; it also
  checks that the served file holds exactly the frames of both files (the multiset of
  (timestamp, frame) read by CaptureReader), and, for a local-processing sensor, that it
  equals the sensor's own merge: what its command registry's ``getcallpcap`` (the one the
  management port and the channel run) makes of its spool files.

Local processing: the files are in the sensor's spool, and the central asks the sensor for
them over the channel the sensor opened (issue 15: the sensor has ``managerport = 0`` and
listens on nothing). The sensor replays without ``--exit-when-done`` so it stays
connected; the test waits until the API shows its CDRs, fetches, then stops the sensor:
the same requests get a 502 naming it as offline.
Mirroring: the files are in the central's spool (under the sensor's id), served after the
sensor has exited.

Every wait has a deadline that fails with what the processes said; every process is
stopped by cleanup. tshark is required: it skips without it, and fails in CI.
"""

from __future__ import annotations

import heapq
import http.client
import json
import os
import shutil
import signal
import struct
import subprocess
from collections import Counter
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.engine import Engine
from voipmon.manager.commands import ManagerCommands
from voipmon.packet.readers import CaptureReader, read_capture
from voipmon.packet.writers import pcap_global_header, pcap_record
from voipmon.test.channel_support import (
    Process,
    free_port,
    temp_dir,
    twistd,
    wait_until,
    write_conf,
)
from voipmon.test.common import data_path, require_tshark

PASSWORD = "pcap-access-secret"
CAPTURES = ("sipp_uac_pcap_rtp_echo_lo_3calls.pcap", "sipp_tcp_2calls_udp_486_2calls_lo.pcap")
TIMEOUT = 60.0
_RECORD = struct.Struct("<IIII")
_PCAP_US_LE = b"\xd4\xc3\xb2\xa1"


def combined_capture(path: str) -> str:
    """Both bundled captures in one file, by time (they do not overlap in time)."""
    records: list[tuple[float, bytes]] = []
    linktypes = set()
    for name in CAPTURES:
        with CaptureReader(data_path(name)) as reader:
            for ts, linktype, frame in reader:
                records.append((ts, frame))
                linktypes.add(linktype)
    assert len(linktypes) == 1, linktypes
    records.sort(key=lambda record: record[0])
    with open(path, "wb") as handle:
        handle.write(pcap_global_header(linktypes.pop()))
        for ts, frame in records:
            handle.write(pcap_record(ts, frame))
    return path


def expected_callids(path: str) -> set[str]:
    """The calls the engine makes of ``path``: what the central must end up with."""
    cdrs: list[Any] = []
    engine = Engine(id_sensor=0, on_cdr=cdrs.append)
    engine.feed_all(read_capture(path))
    engine.finish()
    return {cdr.callid for cdr in cdrs}


# -- pcap files ------------------------------------------------------------------------


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def raw_records(data: bytes, what: str) -> list[tuple[tuple[int, int], bytes]]:
    """((seconds, microseconds), record bytes with its header) of a little-endian
    microsecond pcap, the spool writer's format; a partial record is an error here."""
    if data[:4] != _PCAP_US_LE:
        raise AssertionError(f"{what}: not a little-endian microsecond pcap: {data[:4]!r}")
    out, pos = [], 24
    while pos < len(data):
        if pos + 16 > len(data):
            raise AssertionError(f"{what}: partial record header at offset {pos}")
        sec, usec, caplen, _origlen = _RECORD.unpack_from(data, pos)
        end = pos + 16 + caplen
        if end > len(data):
            raise AssertionError(f"{what}: partial record at offset {pos}")
        out.append(((sec, usec), data[pos:end]))
        pos = end
    return out


def reference_merge(sip: bytes, rtp: bytes) -> bytes:
    """The definition of a call's merged pcap, from its two spool files."""
    merged = heapq.merge(raw_records(sip, "SIP pcap"), raw_records(rtp, "RTP pcap"),
                         key=lambda record: record[0])
    return sip[:24] + b"".join(record for _, record in merged)


def differs(got: bytes, want: bytes) -> str:
    """Where two byte strings differ, for a failure message ("" if they are equal)."""
    if got == want:
        return ""
    common = min(len(got), len(want))
    at = next((i for i in range(common) if got[i] != want[i]), common)
    return (f"{len(got)} bytes against {len(want)}, first difference at offset {at}: "
            f"{got[at:at + 16].hex()} against {want[at:at + 16].hex()}")


def frames(path: str) -> Counter:
    """The multiset of (timestamp, frame) in a capture file."""
    with CaptureReader(path) as reader:
        return Counter((ts, frame) for ts, _linktype, frame in reader)


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its sockets in LISTEN state)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:   # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def spool_pcaps(root: str) -> set[str]:
    """Every .pcap under ``root``, relative to it."""
    found = set()
    for folder, _dirs, names in os.walk(root):
        for name in names:
            if name.endswith(".pcap"):
                found.add(os.path.relpath(os.path.join(folder, name), root))
    return found


# -- clients ---------------------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, body
    finally:
        connection.close()


def api_json(port: int, path: str) -> Any:
    status, _headers, body = http_get(port, path)
    if status != 200:
        raise AssertionError(f"GET {path}: HTTP {status}: {body[:500]!r}")
    return json.loads(body)


# -- the test --------------------------------------------------------------------------


class PcapAccessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tshark = require_tshark()
        self.base = temp_dir("voipmon-pcap-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.capture = combined_capture(os.path.join(self.base, "calls.pcap"))
        self.callids = expected_callids(self.capture)
        self.channel_port, self.http_port = free_port(), free_port()
        self.central_spool = os.path.join(self.base, "central", "spool")
        self.central = self.start(twistd("voipmon-central", write_conf(
            os.path.join(self.base, "central.conf"), server_bind="127.0.0.1",
            server_bind_port=self.channel_port, server_password=PASSWORD,
            spooldir=self.central_spool,
            sqlite_path=os.path.join(self.base, "central", "db.sqlite"),
            http_bind="127.0.0.1", http_port=self.http_port), name="central"))
        self.central.wait_for(r"listening for sensors on 127\.0\.0\.1:\d+ \(TLS", TIMEOUT)
        self.central.wait_for(r"store ready", TIMEOUT)

    def start(self, process: Process) -> Process:
        self.addCleanup(process.stop)
        return process

    def sensor(self, id_sensor: int, name: str, manager_port: int, *extra: str,
               **keys: Any) -> Process:
        conf = write_conf(os.path.join(self.base, f"{name}.conf"), id_sensor=id_sensor,
                          name_sensor=name, server_password=PASSWORD,
                          server_destination=f"127.0.0.1:{self.channel_port}",
                          spooldir=os.path.join(self.base, name, "spool"),
                          managerip="127.0.0.1", managerport=manager_port, **keys)
        return self.start(twistd("voipmon-sensor", conf, "--read-pcap", self.capture, *extra,
                                 name=name))

    def stored_cdrs(self, id_sensor: int, process: Process) -> list[dict[str, Any]]:
        """The sensor's CDRs once the API has one per expected call."""
        found: list[dict[str, Any]] = []

        def complete() -> bool:
            if process.proc.poll() not in (None, 0):
                raise AssertionError(f"{process.name} exited with {process.proc.returncode}:\n"
                                     + process.text()[-3000:])
            found[:] = api_json(self.http_port,
                                f"/api/cdrs?id_sensor={id_sensor}&limit=1000")["cdrs"]
            return len(found) >= len(self.callids)

        try:
            wait_until(complete, TIMEOUT, f"{len(self.callids)} CDRs of sensor {id_sensor} "
                                          "in the central's API")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; got {len(found)}\n{process.name}:\n"
                                 f"{process.text()[-2000:]}\ncentral:\n"
                                 f"{self.central.text()[-2000:]}")
        self.assertEqual(sorted(cdr["callid"] for cdr in found), sorted(self.callids))
        return found

    def assert_same(self, got: bytes, want: bytes, what: str) -> None:
        difference = differs(got, want)
        if difference:
            self.fail(f"{what}: {difference}")

    def fetch_pcap(self, cdr: dict[str, Any]) -> bytes:
        """GET /api/cdrs/<id>/pcap: a 200 with a pcap body of its announced length."""
        status, headers, body = http_get(self.http_port, f"/api/cdrs/{cdr['id']}/pcap")
        self.assertEqual(status, 200, f"call {cdr['callid']}: {body[:500]!r}")
        self.assertEqual(headers.get("content-type"), "application/vnd.tcpdump.pcap")
        self.assertEqual(int(headers["content-length"]), len(body), cdr["callid"])
        return body

    def check_against_spool(self, spool: str, cdrs: list[dict[str, Any]],
                            fetch_own_merge: Any = None) -> dict[str, int]:
        """Each call's served pcap against the files in ``spool``; returns how many calls
        had SIP only and SIP with RTP (the test must have seen both kinds)."""
        self.assertEqual(spool_pcaps(spool),
                         {p for cdr in cdrs for p in (cdr["sip_pcap"], cdr["rtp_pcap"]) if p},
                         "the spool holds exactly the pcaps the CDRs name")
        kinds = Counter()
        for cdr in cdrs:
            callid = cdr["callid"]
            self.assertTrue(cdr["sip_pcap"], f"call {callid} has no SIP pcap")
            served = self.fetch_pcap(cdr)
            served_path = os.path.join(self.base, f"served-{cdr['id_sensor']}-{cdr['id']}.pcap")
            with open(served_path, "wb") as handle:
                handle.write(served)
            sip_path = os.path.join(spool, cdr["sip_pcap"])
            sip = read_bytes(sip_path)
            if not cdr["rtp_pcap"]:
                kinds["sip only"] += 1
                self.assert_same(served, sip, f"call {callid}: not its SIP pcap byte for byte")
                expected = frames(sip_path)
            else:
                kinds["sip and rtp"] += 1
                rtp_path = os.path.join(spool, cdr["rtp_pcap"])
                rtp = read_bytes(rtp_path)
                self.assertEqual(sip[:24], rtp[:24], f"call {callid}: the spool files differ "
                                                     "in their global headers")
                self.assert_same(served, reference_merge(sip, rtp),
                                 f"call {callid}: not the merge of its SIP and RTP pcaps")
                expected = frames(sip_path) + frames(rtp_path)
                if fetch_own_merge is not None:
                    self.assert_same(served, fetch_own_merge(cdr),
                                     f"call {callid}: not the sensor's own merge")
            self.assertEqual(frames(served_path), expected,
                             f"call {callid}: not exactly the frames of its spool files")
            self.check_tshark(served_path, callid, sum(expected.values()))
        return dict(kinds)

    def check_tshark(self, path: str, callid: str, count: int) -> None:
        """tshark reads the file, every frame of it, and finds the call's SIP."""
        result = subprocess.run([self.tshark, "-n", "-r", path, "-T", "fields",
                                 "-e", "frame.number", "-e", "sip.Call-ID"],
                                capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(result.returncode, 0, f"tshark -r {path}: {result.stderr[-2000:]}")
        rows = [line.split("\t") for line in result.stdout.splitlines()]
        self.assertEqual(len(rows), count, f"tshark's frame count of call {callid}")
        call_ids = {part for row in rows for part in row[1:] if part}
        self.assertEqual(call_ids, {callid}, f"tshark's SIP Call-IDs in call {callid}'s pcap")

    def test_local_processing_sensor(self) -> None:
        """A sensor with managerport = 0 (no listening port at all): the central asks it for
        each call's pcap over the channel the sensor opened, and gets the sensor's own
        getcallpcap of its spool files, byte for byte; once the sensor has stopped, a 502
        naming it as offline."""
        sensor = self.sensor(1, "edge-local", 0)
        cdrs = self.stored_cdrs(1, sensor)
        self.assertEqual({cdr["pcap_on"] for cdr in cdrs}, {"sensor"})
        known = api_json(self.http_port, "/api/sensors/1")["sensor"]
        self.assertIsNone(known["manager_host"], "a sensor without a management port")
        self.assertEqual(listening_ports(sensor.proc.pid), set(),
                         "managerport = 0: the sensor listens on nothing")
        spool = os.path.join(self.base, "edge-local", "spool")
        commands = ManagerCommands(spool)

        def own_merge(cdr: dict[str, Any]) -> bytes:
            reply = commands.execute("getcallpcap", f"{cdr['calldate']} {cdr['fbasename']}")
            return b"".join(reply.chunks())

        kinds = self.check_against_spool(spool, cdrs, own_merge)
        self.assertEqual(spool_pcaps(self.central_spool), set(),
                         "the central kept a local-processing sensor's pcaps")
        self.assertEqual(set(kinds), {"sip only", "sip and rtp"}, kinds)
        self.assertIsNone(sensor.proc.poll(), "the sensor stopped while serving")

        # twistd shuts down cleanly on SIGTERM, then exits by that signal (not by SIGKILL)
        self.assertEqual(sensor.stop(), -signal.SIGTERM, sensor.text()[-3000:])
        sensor.wait_for(r"Server Shut Down\.", 10)
        self.central.wait_for(r"sensor 1 \(.*\) disconnected", TIMEOUT)
        for cdr in cdrs:
            status, headers, body = http_get(self.http_port, f"/api/cdrs/{cdr['id']}/pcap")
            self.assertEqual(status, 502, body[:500])
            self.assertTrue(headers.get("content-type", "").startswith("application/json"))
            error = json.loads(body)["error"]
            self.assertIn("sensor 1 (edge-local) is offline", error)

    def test_mirroring_sensor(self) -> None:
        """A mirroring sensor's calls are analysed on the central, whose spool keeps their
        pcaps: served from there, byte for byte, after the sensor has gone."""
        sensor = self.sensor(2, "edge-mirror", free_port(), "--exit-when-done",
                             packetbuffer_sender="yes")
        self.assertEqual(sensor.wait(TIMEOUT), 0, sensor.text()[-3000:])
        cdrs = self.stored_cdrs(2, sensor)
        self.assertEqual({cdr["pcap_on"] for cdr in cdrs}, {"central"})
        self.assertEqual(spool_pcaps(os.path.join(self.base, "edge-mirror", "spool")), set(),
                         "a mirroring sensor keeps no pcap")
        kinds = self.check_against_spool(self.central_spool, cdrs)
        self.assertEqual(set(kinds), {"sip only", "sip and rtp"}, kinds)
