"""A sensor's time to deliver through a flood of idle connections, beside no flood.

A ``twistd voipmon-central`` (TLS on 127.0.0.1, embedded SQLite) and, for each run, a
``twistd voipmon-sensor --read-pcap ... --exit-when-done``: the figure is the time from
starting the sensor process to its exit 0 (its CDRs acknowledged by the central). The
reference is the same run with nothing else on the port; then the same with a flooder
process (voipmon.test.flood) holding 300 idle TCP connections to the port and reopening
each one as soon as the central drops it. Target: within 5 s under the flood. The central's
drops per second are printed too (what the flood costs it).

    .venv/bin/python bench/flood.py [--runs 5] [--connections 300]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from voipmon.test.channel_support import Process, free_port, temp_dir, twistd, write_conf
from voipmon.test.common import data_path

PASSWORD = "bench-secret"
TARGET = 5.0
CAPTURE = data_path("sipp_uac_pcap_rtp_echo_lo_3calls.pcap")


def run_sensor(base: str, port: int, number: int) -> float:
    conf = write_conf(f"{base}/sensor{number}.conf", id_sensor=100 + number,
                      server_password=PASSWORD, server_destination=f"127.0.0.1:{port}",
                      spooldir=f"{base}/sensor{number}", managerport=0, interface="lo")
    started = time.monotonic()
    sensor = twistd("voipmon-sensor", conf, "--read-pcap", CAPTURE, "--exit-when-done",
                    name=f"sensor{number}")
    status = sensor.wait(120)
    elapsed = time.monotonic() - started
    if status:
        sys.exit(f"sensor {number} exited {status}:\n{sensor.text()[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--connections", type=int, default=300)
    options = parser.parse_args()
    base = temp_dir("voipmon-bench-")
    port = free_port()
    central = twistd("voipmon-central", write_conf(
        f"{base}/central.conf", server_bind="127.0.0.1", server_bind_port=port,
        server_password=PASSWORD, spooldir=f"{base}/central", http_port=0,
        sqlite_path=f"{base}/central.sqlite"), name="central")
    flood = None
    try:
        central.wait_for(r"listening for sensors", 60)
        central.wait_for(r"store ready", 60)
        quiet = [run_sensor(base, port, n) for n in range(options.runs)]
        seconds = 5.0 * options.runs + 60
        flood = Process([sys.executable, "-m", "voipmon.test.flood", "127.0.0.1", str(port),
                         "--connections", str(options.connections), "--seconds",
                         str(seconds)], "flood")
        flood.wait_for(rf"flooding: {options.connections} connections", 60)
        before = _dropped(flood)
        flood_started = time.monotonic()
        flooded = [run_sensor(base, port, options.runs + n) for n in range(options.runs)]
        rate = (_dropped(flood) - before) / (time.monotonic() - flood_started)
    finally:
        if flood is not None:
            flood.stop()
        central.stop()
        shutil.rmtree(base, ignore_errors=True)
    flooding = f"{options.connections} idle connections"
    print(f"time to deliver, {options.runs} runs each:   median    worst")
    print(f"  {'no flood (reference)':<28}{statistics.median(quiet):6.2f} s {max(quiet):6.2f} s")
    print(f"  {flooding:<28}{statistics.median(flooded):6.2f} s {max(flooded):6.2f} s"
          f"   (target <= {TARGET:g} s)")
    print(f"  the central dropped {rate:,.0f} idle connections per second meanwhile")


def _dropped(flood: Process) -> int:
    lines = [line for line in flood.lines if line.startswith("flood: ")]
    if not lines:
        flood.wait_for(r"^flood: ", 5)
        lines = [line for line in flood.lines if line.startswith("flood: ")]
    return int(re.search(r"(\d+) dropped", lines[-1]).group(1))


if __name__ == "__main__":
    main()
