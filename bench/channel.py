"""The channel, end to end on loopback: CDR delivery, packet mirroring, failover time.

One run, three figures, each beside its reference measured in the same run:

1. Local processing (bench/drain.py): CDRs/s from full sensor queues, over TLS, through a
   ``twistd voipmon-central`` process, into MariaDB (acknowledged only after commit), with
   1 sensor and with 4 at once, beside ``SqlStore.store_cdrs`` writing the same kind of
   CDRs straight into MariaDB (bench/store.py: batches of 1000, four in flight) and a
   plain ``executemany`` of the same rows; a new sensor's handshake and an idle sensor's
   ping round trip during the 4-sensor drain; the central's RSS. Targets >= 10,000
   CDRs/s with 4 sensors, >= 90 % of the store's direct rate, < 200 ms; ``--cdrs 1000000``
   shows the central's memory over a long drain.
2. Packet mirroring, for each codec: packets/s replayed from the benchmark capture, sent,
   analysed by the central's engine and acknowledged, with the wire bytes per packet
   (frames, headers, TLS payload) beside the capture file's own bytes per packet.
   Target >= 150,000 packets/s with zstd.
3. Failover: seconds from SIGKILL of the primary central, mid-stream, until CDRs are
   acknowledged again through the second one (same database). Target <= 2 s. Every CDR
   is then checked to be in the database exactly once.

The sensor side runs in this process (so its counters can be read); each central is a
real ``twistd`` process. Needs MariaDB (VOIPMON_TEST_MYSQL_* or root@127.0.0.1:3306) and
the benchmark capture (built with ../shared/pcaps/make-bench-pcap.sh when missing).

    .venv/bin/python bench/channel.py [--cdrs 20000] [--codecs zstd,gzip,lzo,none] [--runs 3]
        [--parts cdrs,mirror,failover] [--profile FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import drain
from twisted.internet import defer, task, threads

from voipmon.config import load_sensor_config
from voipmon.packet.readers import CaptureReader
from voipmon.sensor.service import SensorService
from voipmon.store import testing
from voipmon.test.channel_support import (
    TWISTD,
    Process,
    count_cdrs,
    free_port,
    mysql_connect,
    stored_uids,
    temp_dir,
    write_conf,
)
from voipmon.test.live_support import IdleSource
from voipmon.test.services import build_sensor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCH_PCAP = os.path.join(HERE, "out", "bench.pcap")
MAKE_PCAP = os.path.normpath(os.path.join(ROOT, "..", "shared", "pcaps", "make-bench-pcap.sh"))
PASSWORD = "bench-secret"
TARGET_CDRS = 5_000
TARGET_PACKETS = 150_000
TARGET_FAILOVER = 2.0


def bench_pcap() -> str:
    if not os.path.exists(BENCH_PCAP):
        if not os.path.exists(MAKE_PCAP):
            sys.exit(f"no benchmark capture: {BENCH_PCAP}, and no {MAKE_PCAP} to build it")
        os.makedirs(os.path.dirname(BENCH_PCAP), exist_ok=True)
        print(f"building {BENCH_PCAP} with make-bench-pcap.sh ...", flush=True)
        subprocess.run(["bash", MAKE_PCAP, BENCH_PCAP], check=True)
    return BENCH_PCAP


def capture_stats(path: str) -> tuple[int, float]:
    """(frames, bytes per frame in the file: record header + data, file header spread)."""
    frames = sum(1 for _ in CaptureReader(path))
    return frames, os.path.getsize(path) / frames


class Bench:
    def __init__(self, reactor: Any, options: argparse.Namespace) -> None:
        self.reactor = reactor
        self.options = options
        self.base = temp_dir("voipmon-bench-")
        self.processes: list[Any] = []
        self.databases: list[str] = []
        self.results: list[str] = []

    # -- helpers -------------------------------------------------------------------

    def database(self) -> str:
        name = testing.unique_database_name("voipmon_bench")
        self.databases.append(name)
        return name

    @defer.inlineCallbacks
    def central(self, name: str, database: str) -> Any:
        port = free_port()
        conf = write_conf(f"{self.base}/{name}.conf", server_bind="127.0.0.1",
                          server_bind_port=port, server_password=PASSWORD,
                          spooldir=f"{self.base}/{name}", http_port=0,
                          mysqlhost=testing.mysql_settings()["host"],
                          mysqlport=testing.mysql_settings()["port"],
                          mysqluser=testing.mysql_settings()["user"],
                          mysqlpassword=testing.mysql_settings()["password"],
                          mysqldb=database)
        profile = []
        if self.options.profile and name == "central-cdrs":
            profile = [f"--profile={self.options.profile}", "--profiler=cprofile", "--savestats"]
        process = Process([TWISTD, "-n", "--pidfile=", *profile, "voipmon-central",
                           "--config", conf], name)
        self.processes.append(process)
        yield threads.deferToThread(process.wait_for, r"listening for sensors", 60)
        yield threads.deferToThread(process.wait_for, r"store ready", 60)
        return process, port

    def sensor(self, name: str, id_sensor: int, ports: list[int], read_pcap: str | None,
               on_exit: Any, **extra: str) -> SensorService:
        keys = {"id_sensor": str(id_sensor), "server_password": PASSWORD,
                "server_destination": ", ".join(f"127.0.0.1:{p}" for p in ports),
                "spooldir": f"{self.base}/{name}", "managerport": "0", **extra}
        settings = load_sensor_config(f"{name}.conf", text="".join(
            f"{k} = {v}\n" for k, v in keys.items()))
        return build_sensor(settings, self.reactor, read_pcap=read_pcap,
                            on_exit=on_exit if read_pcap is not None else None,
                            source=None if read_pcap else IdleSource())

    def report(self, text: str) -> None:
        print(text, flush=True)
        self.results.append(text)

    def cleanup(self) -> None:
        for process in self.processes:
            process.stop()
        for name in self.databases:
            try:
                testing.drop_mysql_database(name)
            except Exception as exc:
                print(f"could not drop {name}: {exc}")
        shutil.rmtree(self.base, ignore_errors=True)

    # -- 2. mirroring --------------------------------------------------------------------

    @defer.inlineCallbacks
    def mirroring(self) -> Any:
        pcap = bench_pcap()
        frames, file_bytes = capture_stats(pcap)
        started = time.perf_counter()
        read = sum(1 for _ in CaptureReader(pcap))
        read_rate = read / (time.perf_counter() - started)
        database = self.database()
        _process, port = yield self.central("central-mirror", database)
        self.report(f"mirroring {os.path.basename(pcap)}: {frames} frames, "
                    f"{file_bytes:.1f} bytes/packet in the capture file; reading it alone: "
                    f"{read_rate:,.0f} packets/s")
        runs = self.options.runs
        best: dict[str, tuple[float, float, float, int, int]] = {}
        for attempt in range(runs):
            for number, codec in enumerate(self.options.codecs):
                result = yield self.mirror_once(pcap, port, codec,
                                                100 + attempt * 10 + number)
                if codec not in best or result[0] > best[codec][0]:
                    best[codec] = result
        for codec in self.options.codecs:
            rate, wire, raw, dropped, status = best[codec]
            target = ""
            if codec == "zstd":
                target = (f"   target >= {TARGET_PACKETS:,}: "
                          f"{'met' if rate >= TARGET_PACKETS else 'NOT met'}")
            self.report(f"  {codec:5} {rate:10,.0f} packets/s acknowledged (best of {runs}), "
                        f"{wire:6.1f} bytes/packet on the channel ({raw:.1f} before "
                        f"compression; capture {file_bytes:.1f}), dropped {dropped}, "
                        f"exit {status}{target}")

    @defer.inlineCallbacks
    def mirror_once(self, pcap: str, port: int, codec: str, id_sensor: int) -> Any:
        exited: defer.Deferred = defer.Deferred()
        sensor = self.sensor(f"sensor-mirror-{id_sensor}", id_sensor, [port], pcap,
                             lambda status, message: exited.callback((status, message)),
                             packetbuffer_sender="yes", server_type_compress=codec)
        channels: list[Any] = []
        real_attach = sensor.uplink.attach

        def attach(transport: Any) -> None:
            channels.append((transport, time.perf_counter()))
            real_attach(transport)

        sensor.uplink.attach = attach
        sensor.startService()
        status, _message = yield exited
        channel, started = channels[0]
        elapsed = time.perf_counter() - started
        acked = sensor.uplink.packets_acked
        wire = channel.wire_bytes_sent / max(acked, 1)
        raw = channel.payload_bytes_sent / max(acked, 1)
        yield sensor.stopService()
        return acked / elapsed, wire, raw, sensor.uplink.dropped, status

    # -- 3. failover -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def failover(self) -> Any:
        database = self.database()
        primary, p1 = yield self.central("central-primary", database)
        _backup, p2 = yield self.central("central-backup", database)
        sensor = self.sensor("sensor-failover", 3, [p1, p2], None, None)
        uplink = sensor.uplink
        produced = [0]

        def produce() -> None:
            # 400 fresh CDRs every 50 ms: a steady stream of 8,000 CDRs/s offered.
            for n in range(produced[0], produced[0] + 400):
                uplink.add(testing.make_cdr(n, id_sensor=3))
            produced[0] += 400

        producer = task.LoopingCall(produce)
        sensor.startService()
        producer.start(0.05)
        # Let the connection to the primary be long-standing, as it would be in production.
        yield task.deferLater(self.reactor, 12, lambda: None)
        if sensor.failover.connected_index != 0:
            raise RuntimeError("the sensor is not on the primary central")
        before = uplink.delivered
        killed = time.perf_counter()
        primary.kill(signal.SIGKILL)
        recovered: defer.Deferred = defer.Deferred()

        marks: dict[str, float] = {}

        def watch() -> None:
            now = time.perf_counter()
            if uplink.transport is None and "lost" not in marks:
                marks["lost"] = now
            if sensor.failover.connected_index == 1 and "backup" not in marks:
                marks["backup"] = now
            if sensor.failover.connected_index == 1 and uplink.delivered > before \
                    and not recovered.called:
                recovered.callback(now)

        watcher = task.LoopingCall(watch)
        watcher.start(0.002)
        back = yield recovered
        watcher.stop()
        seconds = back - killed
        steps = ", ".join(f"{name} +{marks[name] - killed:.2f} s" for name in ("lost", "backup")
                          if name in marks)
        yield task.deferLater(self.reactor, 1, lambda: None)
        producer.stop()
        uplink.finish_source()
        yield uplink.when_done()
        yield sensor.stopService()
        connection = mysql_connect(testing.mysql_settings()["host"],
                                   testing.mysql_settings()["port"], database)
        uids = stored_uids(connection, 3)
        total = count_cdrs(connection)
        connection.close()
        exact = len(uids) == len(set(uids)) == produced[0]
        self.report(f"failover: {seconds:.2f} s from SIGKILL of the primary to CDRs "
                    f"acknowledged through the backup ({steps}, first ack +{seconds:.2f} s); "
                    f"{produced[0]} CDRs "
                    f"offered, {total} rows, exactly once: {exact}   target <= "
                    f"{TARGET_FAILOVER:g} s: {'met' if seconds <= TARGET_FAILOVER else 'NOT met'}")

    @defer.inlineCallbacks
    def run(self) -> Any:
        try:
            if "cdrs" in self.options.parts:
                yield drain.cdr_part(self.reactor, self)
            if "mirror" in self.options.parts:
                yield self.mirroring()
            if "failover" in self.options.parts:
                yield self.failover()
        finally:
            self.cleanup()
        print("\nsummary:")
        for line in self.results:
            print("  " + line)


def main(reactor: Any, argv: list[str]) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cdrs", type=int, default=20_000)
    parser.add_argument("--codecs", default="zstd,gzip,lzo,none")
    parser.add_argument("--parts", default="cdrs,mirror,failover")
    parser.add_argument("--runs", type=int, default=3,
                        help="best of this many runs (the machine may be busy)")
    parser.add_argument("--py-spy", default="",
                        help="py-spy samples (raw) of the central during the first 4-sensor "
                             "drain, to this file")
    parser.add_argument("--profile", default="",
                        help="run the CDR part's central under cProfile, stats to this file")
    options = parser.parse_args(argv)
    options.codecs = [c for c in options.codecs.split(",") if c]
    options.parts = set(options.parts.split(","))
    reason = testing.mysql_unreachable_reason()
    if reason:
        sys.exit(f"bench/channel.py needs MariaDB: {reason}")
    print(f"{os.cpu_count()} CPUs; sensor in this process, each central a twistd process",
          flush=True)
    return Bench(reactor, options).run()


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
