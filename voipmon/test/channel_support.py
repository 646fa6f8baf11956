"""Support for the channel's integration tests and bench/channel.py: real twistd processes
on loopback, a private MariaDB server that can be stopped, and synthetic call captures.

Waiting is event-driven where it can be (a log line a process prints, a process exiting);
each wait has a deadline that fails the test with what the process said, instead of
hanging. Nothing here sleeps on a reactor: these are plain processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from voipmon.packet.writers import pcap_global_header, pcap_record
from voipmon.test.callsupport import rtp, sdp, sip_message, udp_frame
from voipmon.test.common import ROOT

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_conf(path: str, **keys: Any) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        for key, value in keys.items():
            handle.write(f"{key} = {value}\n")
    return path


class Process:
    """A child process whose output lines are collected as they come."""

    def __init__(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.lines: list[str] = []
        self._cond = threading.Condition()
        environment = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        environment.update(env or {})
        # A session of its own: signals go to the whole group, so a wrapper such as
        # faketime cannot leave its child behind.
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env=environment, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        with self.proc.stdout:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 30.0, start: int = 0) -> re.Match:
        """The first output line from index ``start`` matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    match = regex.search(self.lines[index])
                    if match:
                        return match
                    index += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None
                                      and not self._reader.is_alive()):
                    raise AssertionError(
                        f"{self.name}: no line matching {pattern!r} within {timeout:g} s; "
                        f"output:\n" + "\n".join(self.lines[-60:]))
                self._cond.wait(min(remaining, 0.5))

    def wait(self, timeout: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout:g} s; output:\n"
                                 + "\n".join(self.lines[-60:]))
        self._reader.join(5)
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process and anything it started (its process group)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not go; returns the exit status."""
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait()
        else:
            self.kill(signal.SIGKILL)  # whatever it left in its group
        self._reader.join(10)
        return self.proc.returncode

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


def twistd(tapname: str, config: str, *extra: str, name: str | None = None,
           prefix: list[str] | None = None) -> Process:
    argv = [*(prefix or []), TWISTD, "-n", "--pidfile=", tapname, "--config", config, *extra]
    return Process(argv, name or tapname)


# -- a MariaDB server of the test's own ------------------------------------------------


class PrivateMariaDB:
    """A mariadbd on its own port and data directory, which a test may stop and start.

    Stopping the machine's shared MariaDB would break everyone else's tests; this one
    belongs to the test alone.
    """

    def __init__(self, base: str) -> None:
        self.base = base
        self.datadir = os.path.join(base, "data")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        os.makedirs(base, exist_ok=True)
        result = subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True, timeout=120)
        if result.returncode:
            raise RuntimeError(f"mariadb-install-db failed: {result.stdout[-2000:]}")

    def start(self) -> None:
        log = open(os.path.join(self.base, "server.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [shutil.which("mariadbd") or "/usr/sbin/mariadbd", "--no-defaults",
             f"--datadir={self.datadir}", "--user=root", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.base}/sock",
             f"--pid-file={self.base}/pid", "--skip-log-bin", "--innodb-buffer-pool-size=64M",
             "--skip-name-resolve"], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mariadbd exited at start; see " + self.base)
            try:
                self.connect().close()
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("mariadbd did not accept connections within 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.proc = None

    def connect(self, database: str | None = None) -> Any:
        import pymysql

        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="",
                               database=database, autocommit=True, connect_timeout=2)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def mysql_connect(host: str, port: int, database: str | None = None) -> Any:
    import pymysql

    return pymysql.connect(host=host, port=port, user="root", password="", database=database,
                           autocommit=True, connect_timeout=5)


def stored_uids(connection: Any, id_sensor: int | None = None) -> list[tuple[int, str]]:
    """Every (id_sensor, sensor_cdr_uid) in the cdr table (duplicates would show twice)."""
    with connection.cursor() as cursor:
        if id_sensor is None:
            cursor.execute("SELECT id_sensor, sensor_cdr_uid FROM cdr")
        else:
            cursor.execute("SELECT id_sensor, sensor_cdr_uid FROM cdr WHERE id_sensor = %s",
                           (id_sensor,))
        return [(int(a), str(b)) for a, b in cursor.fetchall()]


def count_cdrs(connection: Any) -> int:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM cdr")
            return int(cursor.fetchone()[0])
    except Exception:
        return 0


# -- captures ------------------------------------------------------------------------


def write_calls_pcap(path: str, calls: int, start: float = 1_700_000_000.0,
                     rtp_packets: int = 0, spacing: float = 0.002) -> str:
    """A capture of ``calls`` complete SIP calls over UDP 5060 (INVITE, 100, 180, 200, ACK,
    optional RTP both ways, BYE, 200), each with its own addresses; calls overlap."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    records: list[tuple[float, bytes]] = []
    for n in range(calls):
        t = start + n * spacing
        a = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        b = f"10.200.{(n >> 8) & 255}.{n & 255}"
        callid = f"call-{n}@synthetic.example"
        tag = f"f{n}"
        rtp_a, rtp_b = 20000 + 2 * (n % 10000), 30000 + 2 * (n % 10000)
        invite = sip_message(f"INVITE sip:bob@{b} SIP/2.0", callid, "1 INVITE", tag,
                             body=sdp(a, rtp_a), caller=f"1{n:06d}", called=f"2{n:06d}")
        steps = [
            (0.000, a, 5060, b, 5060, invite),
            (0.001, b, 5060, a, 5060, sip_message("SIP/2.0 100 Trying", callid, "1 INVITE",
                                                  tag, caller=f"1{n:06d}",
                                                  called=f"2{n:06d}")),
            (0.010, b, 5060, a, 5060, sip_message("SIP/2.0 180 Ringing", callid, "1 INVITE",
                                                  tag, "t", caller=f"1{n:06d}",
                                                  called=f"2{n:06d}")),
            (0.020, b, 5060, a, 5060, sip_message("SIP/2.0 200 OK", callid, "1 INVITE", tag,
                                                  "t", body=sdp(b, rtp_b),
                                                  caller=f"1{n:06d}", called=f"2{n:06d}")),
            (0.021, a, 5060, b, 5060, sip_message(f"ACK sip:bob@{b} SIP/2.0", callid, "1 ACK",
                                                  tag, "t", caller=f"1{n:06d}",
                                                  called=f"2{n:06d}")),
        ]
        end = 0.021
        for i in range(rtp_packets):
            when = 0.030 + i * 0.020
            steps.append((when, a, rtp_a, b, rtp_b, rtp(i, i * 160, 0x1000 + n)))
            steps.append((when + 0.001, b, rtp_b, a, rtp_a, rtp(i, i * 160, 0x800000 + n)))
            end = when + 0.001
        steps.append((end + 0.5, a, 5060, b, 5060,
                      sip_message(f"BYE sip:bob@{b} SIP/2.0", callid, "2 BYE", tag, "t",
                                  caller=f"1{n:06d}", called=f"2{n:06d}")))
        steps.append((end + 0.501, b, 5060, a, 5060,
                      sip_message("SIP/2.0 200 OK", callid, "2 BYE", tag, "t",
                                  caller=f"1{n:06d}", called=f"2{n:06d}")))
        for offset, src, sport, dst, dport, payload in steps:
            records.append((t + offset, udp_frame(src, sport, dst, dport, payload)))
    return write_frames(path, records)


def write_frames(path: str, records: list[tuple[float, bytes]]) -> str:
    """A pcap (Ethernet) of ``(time, frame)`` records, in time order."""
    records.sort(key=lambda r: r[0])
    with open(path, "wb") as handle:
        handle.write(pcap_global_header(1))
        for ts, frame in records:
            handle.write(pcap_record(ts, frame))
    return path


def analyze(path: str, id_sensor: int, *extra: str) -> list[dict[str, Any]]:
    """What ``voipmon-analyze --json`` prints for ``path``."""
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from voipmon.cli import main; sys.exit(main())",
         "--json", "--id-sensor", str(id_sensor), *extra, path],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=300)
    if result.returncode:
        raise AssertionError(f"voipmon-analyze failed: {result.stderr[-2000:]}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def temp_dir(prefix: str = "voipmon-it-") -> str:
    """A short temporary directory (mariadbd socket paths must stay short)."""
    return tempfile.mkdtemp(prefix=prefix)


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` (a database count, say) until it is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def iter_lines(process: Process, pattern: str) -> Iterator[str]:
    regex = re.compile(pattern)
    return (line for line in list(process.lines) if regex.search(line))
