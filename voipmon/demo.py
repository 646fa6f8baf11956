"""The README's main job: a central and six sensors on loopback, then what was stored.

``python -m voipmon.demo`` (``make demo``) writes configs under ``.demo/``, starts
``twistd voipmon-central`` (embedded SQLite, TLS with a self-signed certificate), replays
the bundled captures through three sensors over TLS — one analysing locally and sending
CDRs, one mirroring raw packets for the central to analyse, one sending calls whose
Call-IDs are not UTF-8 (shown coming back byte for byte), one mirroring calls with RTP
(their quality over time and audio are then fetched from the API), and three that follow
SIP that is not a call (SIPp phones registering with kamailio, sipvicious scanning it, a
PBX's OPTIONS pings; the scanner is flagged) — waits until each has every
CDR or packet acknowledged (``--exit-when-done``), replays the first capture once more
through a flood of 300 idle connections on the sensor port (voipmon.test.flood, in its own
process: the sensor still gets in, and the central logs the flood once per 10 s), runs a
fourth sensor that captures nothing but takes HEP (the SIP, RTP and RTCP of a bundled
capture, sent over TCP by the test suite's HEP encoder as a proxy or agent would), prints
the CDRs the central's HTTP API returns and a few fleet figures from its Prometheus
/metrics (a mirroring sensor's CDRs are safe on the
central's disk when it exits and reach the database a moment later: the demo waits for
them). The sensors open no port (``managerport = 0``): the local-processing ones then
stay connected (replaying an empty capture), and the demo fetches a call's pcap from the
central's API, which asks the sensor for it over the channel the sensor opened. Then it
stops everything cleanly. Everything it starts, it stops. With ``--serve`` the central and
those sensors keep running (web page and API: every call's pcap and ladder open) until
Ctrl-C.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import wave
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from voipmon.records.times import iso_ms, parse_iso_ms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "voipmon", "test", "data")
PASSWORD = "demo-password-change-me"
SENSORS = (
    # id, name, packetbuffer_sender, capture
    (1, "local-processing", "no", "sipp_uac_pcap_rtp_echo_lo_3calls.pcap"),
    (2, "packet-mirroring", "yes", "sipp_tcp_2calls_udp_486_2calls_lo.pcap"),
    # calls whose Call-IDs hold bytes that are not UTF-8 (Latin-1, garbage): kept exactly
    (3, "odd-call-ids", "no", "hostile_callids.pcap"),
    # calls with RTP mirrored to the central: their quality and audio come from its spool
    # (sensor 4 is the HEP input, below)
    (5, "mirrored-rtp", "yes", "sipp_uac_pcap_rtp_echo_lo_3calls.pcap"),
    # registrations: SIPp phones against kamailio (REGISTER tracking on the sensor), and
    # sipvicious scanning it (mirrored: the central's engine tracks them); a PBX's OPTIONS
    (6, "registrar", "no", "register_kamailio_sipp_lo.pcap"),
    (7, "scanned-registrar", "yes", "register_sipvicious_lo.pcap"),
    (8, "pbx-pings", "no", "sipmsg_kamailio_sipp_lo.pcap"),
)
#: the sensors that follow SIP that is not a call (VoIPmonitor's options)
NONCALL = "sip-register = yes\nsip-options = yes\nsip-subscribe = yes\nsip-notify = yes\n" \
          "sip-message = yes\n"


def api(http_port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/{path}",
                                timeout=30) as answer:
        return json.load(answer)


def show_registrations(http_port: int) -> None:
    """Print what the registrations view shows: flagged sources, the current state of
    each registration, OPTIONS qualify. A mirroring sensor's records are stored a moment
    after it exits: wait for its alerts."""
    deadline = time.monotonic() + 30
    while not api(http_port, "alerts?limit=100")["alerts"] and time.monotonic() < deadline:
        time.sleep(0.1)
    print("\nflagged sources (GET /api/alerts):")
    for alert in api(http_port, "alerts?limit=100")["alerts"]:
        print(f"  {alert['kind']:<20} from {alert['sipcallerip']}: {alert['failures']} failures "
              f"on {alert['extension_count']} extensions, User-Agent {alert['ua']!r}")
    rows = api(http_port, "registrations?current=yes&limit=100")["registrations"]
    print("\nregistrations, current state (GET /api/registrations?current=yes):")
    for row in sorted(rows, key=lambda r: (r["id_sensor"], r["to_num"])):
        print(f"  sensor {row['id_sensor']}: {row['to_num']}@{row['to_domain']} from "
              f"{row['sipcallerip']}:{row['sipcallerport']}  {row['state_name']}")
    failed = api(http_port, "register_failed?limit=1000")["register_failed"]
    print(f"\nfailed registrations: {sum(r['counter'] for r in failed)} attempts in "
          f"{len(failed)} register_failed rows")
    pings = api(http_port, "sip_messages?method=OPTIONS&limit=100")["sip_messages"]
    print("OPTIONS qualify (GET /api/sip_messages?method=OPTIONS):")
    for ping in pings:
        print(f"  {ping['ip_dst']} {ping['number_dst']}: "
              f"{ping['response_number'] or 'no answer'} in {ping['response_duration_ms']} ms, "
              f"qualify {'OK' if ping['qualify_ok'] else 'failed'}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the central exited with {process.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the central did not listen on {port} within {timeout:.0f} s; see {log}")


def write(path: str, text: str) -> str:
    with open(path, "w") as handle:
        handle.write(text)
    return path


def twistd(name: str, workdir: str, *args: str) -> list[str]:
    bindir = os.path.dirname(sys.executable)
    return [os.path.join(bindir, "twistd"), "--nodaemon", "--pidfile=",
            f"--logfile={os.path.join(workdir, name + '.log')}", *args]


def api_cdrs(http_port: int, query: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/cdrs?{query}",
                                timeout=30) as answer:
        body = json.load(answer)
    return body["cdrs"] if isinstance(body, dict) else body


def show_dashboard(http_port: int, cdrs: list[dict[str, Any]]) -> str:
    """Print the dashboard's figures over the 24 hours up to the newest call (the captures
    keep their own dates); return the page's address for that range."""
    if not cdrs:
        return "#/dashboard"
    newest = max(parse_iso_ms(c["calldate"]) or 0 for c in cdrs)
    end = (int(newest) // 60 + 1) * 60
    query = f"from={iso_ms(end - 86400)}&to={iso_ms(end)}&step=1h"
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/stats?{query}",
                                timeout=30) as response:
        totals = json.loads(response.read())["totals"]

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f} %"

    acd = "-" if totals["acd"] is None else f"{totals['acd']:.1f} s"
    print(f"\ndashboard, the 24 hours up to the newest call: {totals['calls']} calls, "
          f"ASR {pct(totals['asr'])}, NER {pct(totals['ner'])}, ACD {acd}, MOS below 3.1: "
          f"{pct(totals['mos_below_share'])} of {totals['mos_known']} calls with a MOS")
    return f"#/dashboard?{query}"


def wait_for_mirrored_cdrs(http_port: int, id_sensor: int, log: str,
                           timeout: float = 30) -> None:
    """A mirroring sensor exits once its CDRs are durable on the central (its log says how
    many); the central then stores them. Wait until the API shows them all."""
    with open(log, errors="replace") as handle:
        match = re.search(r"done: .*\((\d+) CDRs made there", handle.read())
    expected = int(match.group(1)) if match else 0
    deadline = time.monotonic() + timeout
    while len(api_cdrs(http_port, f"id_sensor={id_sensor}&limit={max(expected, 1)}")) < expected:
        if time.monotonic() > deadline:
            print(f"sensor {id_sensor}: the central has not stored its {expected} CDRs within "
                  f"{timeout:.0f} s", file=sys.stderr)
            return
        time.sleep(0.1)


def show_call_media(http_port: int, cdrs: list[dict[str, Any]]) -> str:
    """Fetch the quality over time and the audio of one call with RTP whose pcap is on the
    central; print what they hold and their URLs. The call's page (``#/call/<id>``)."""
    calls = [c for c in cdrs if c.get("pcap_on") == "central" and c.get("rtp_pcap")]
    if not calls:
        print("\nno mirrored call with RTP: no quality or audio to show")
        return ""
    cdr = calls[0]
    base = f"http://127.0.0.1:{http_port}/api/cdrs/{cdr['id']}"
    with urllib.request.urlopen(f"{base}/quality", timeout=60) as response:
        quality = json.load(response)
    with urllib.request.urlopen(f"{base}/audio", timeout=60) as response:
        audio = response.read()
    with wave.open(io.BytesIO(audio)) as wav:
        seconds, rate, channels = wav.getnframes() / wav.getframerate(), wav.getframerate(), \
            wav.getnchannels()
    print(f"\ncall {cdr['id']} ({cdr['callid']}, {cdr['duration']:.2f} s), from its pcap:")
    for stream, stored in zip(quality["streams"], cdr["rtp"], strict=True):
        print(f"  {stream['side'] or 'stream'} {stream['saddr']}:{stream['sport']} -> "
              f"{stream['daddr']}:{stream['dport']}: {len(stream['packets'])} intervals of "
              f"{quality['interval']:g} s, {sum(stream['packets'])} packets "
              f"(the CDR: {stored['received']}), {sum(stream['lost'])} lost")
    print(f"  marks: {', '.join(m['label'] for m in quality['marks'])}")
    print(f"  audio: {len(audio)} bytes of WAV, {seconds:.2f} s, {rate} Hz, {channels} channels")
    print(f"  quality: {base}/quality (chart: ?format=svg)\n  audio: {base}/audio "
          f"(Ogg/Opus: ?format=ogg)")
    return f"#/call/{cdr['id']}"


def show_metrics(http_port: int) -> None:
    """A few fleet figures from the central's Prometheus /metrics."""
    url = f"http://127.0.0.1:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    wanted = {"voipmon_sensor_up": "up", "voipmon_sensor_packets_total": "packets",
              "voipmon_rtp_packets_total": "RTP", "voipmon_hep_messages_total": "HEP messages",
              "voipmon_cdrs_made_total": "CDRs made",
              "voipmon_cdrs_stored_total": "CDRs stored",
              "voipmon_sensor_queue_records": "queue",
              "voipmon_sensor_clock_skew_seconds": "skew s"}
    per: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted and "id_sensor" in sample.labels:
                figures = per.setdefault(sample.labels["id_sensor"], {})
                label = wanted[sample.name]     # a family with more labels: their sum
                figures[label] = figures.get(label, 0.0) + sample.value
    print(f"\nPrometheus metrics of the whole fleet: {url}")
    for id_sensor, figures in sorted(per.items(), key=lambda item: int(item[0])):
        shown = ", ".join(f"{label} {figures[label]:g}" for label in wanted.values()
                          if label in figures)
        print(f"  sensor {id_sensor}: {shown}")
    print("  (up 0: each sensor exited after its replay; its figures as it stopped stay)")


def table(cdrs: list[dict[str, Any]]) -> str:
    columns = [("id_sensor", "sensor"), ("calldate", "calldate (UTC)"), ("caller", "caller"),
               ("called", "called"), ("duration", "dur s"), ("lastSIPresponseNum", "last"),
               ("bye", "bye"), ("a_received", "a pkts"), ("a_lost", "a lost"),
               ("a_maxjitter", "a jit ms"), ("a_mos_f1", "a MOS"), ("b_received", "b pkts"),
               ("b_mos_f1", "b MOS")]

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if key == "calldate":
            return str(value).replace("T", " ").rstrip("Z")
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    rows = [[title for _, title in columns]]
    rows += [[cell(cdr, key) for key, _ in columns] for cdr in cdrs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def stay_connected(workdir: str, http_port: int) -> list[subprocess.Popen]:
    """Start the local-processing sensors again on an empty capture: they replay nothing,
    stay connected, and answer the central's requests (pcaps, live calls) over their
    channel. Returns them once the central's API reaches each."""
    empty = os.path.join(workdir, "nothing.pcap")
    with open(empty, "wb") as handle:   # a pcap global header and no packet
        handle.write(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    serving = []
    for id_sensor, _name, mirror, _capture in SENSORS:
        if mirror == "no":
            serving.append(subprocess.Popen(twistd(
                f"sensor{id_sensor}-serving", workdir, "voipmon-sensor", "--config",
                os.path.join(workdir, f"sensor{id_sensor}.conf"), "--read-pcap", empty),
                cwd=workdir))
    deadline = time.monotonic() + 60
    for id_sensor, _name, mirror, _capture in SENSORS:
        while mirror == "no":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/sensors/"
                                            f"{id_sensor}/calls", timeout=30):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"sensor {id_sensor} did not connect again; see "
                                     f".demo/sensor{id_sensor}-serving.log")
                time.sleep(0.2)
    return serving


def pcap_through_the_tunnel(http_port: int, cdrs: list[dict[str, Any]]) -> None:
    """One local-processing call's pcap, asked of the central, which asks the sensor."""
    calls = [c for c in cdrs if c.get("pcap_on") == "sensor" and c.get("rtp_pcap")]
    if not calls:
        return
    cdr = calls[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/cdrs/{cdr['id']}/pcap",
                                timeout=60) as answer:
        data = answer.read()
    packets, offset = 0, 24
    while offset + 16 <= len(data):
        offset += 16 + int.from_bytes(data[offset + 8:offset + 12], "little")
        packets += 1
    print(f"\nthe pcap of call {cdr['id']} (sensor {cdr['id_sensor']}, {cdr['caller']} -> "
          f"{cdr['called']}): {len(data)} bytes, {packets} packets (SIP and RTP merged), "
          f"fetched by the central over the channel the sensor opened; the sensor listens on "
          f"no port (managerport = 0)")


def stop(process: subprocess.Popen, name: str) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            print(f"{name} did not stop within 60 s; killed it", file=sys.stderr)


def through_a_flood(workdir: str, channel_port: int, conf: str) -> None:
    """Sensor 1's replay again (the central stores nothing twice) while 300 idle connections,
    each reopened as soon as it is dropped, try to keep the sensor port busy. The replay
    writes into a spool of its own: in sensor 1's spool, each call's pcap would hold every
    packet twice."""
    with open(conf) as handle:
        text = handle.read()
    conf = os.path.join(workdir, "sensor1-flood.conf")
    with open(conf, "w") as handle:
        spool = os.path.join(workdir, "sensor1-flood-spool")
        handle.write(re.sub(r"(?m)^spooldir = .*$", lambda _: f"spooldir = {spool}", text))
    flood = subprocess.Popen([sys.executable, "-m", "voipmon.test.flood", "127.0.0.1",
                              str(channel_port), "--connections", "300", "--seconds", "120",
                              "--settle", "1"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        for line in flood.stdout:
            if line.startswith("flooding:"):
                break
        print("sensor 1 replays again while 300 idle connections flood the sensor port ...",
              flush=True)
        started = time.monotonic()
        result = subprocess.run(
            twistd("sensor1-flood", workdir, "voipmon-sensor", "--config", conf, "--read-pcap",
                   os.path.join(DATA, SENSORS[0][3]), "--exit-when-done"),
            cwd=workdir, timeout=300)
        took = time.monotonic() - started
    finally:
        flood.terminate()
        rest = flood.communicate()[0]
    counts = re.findall(r'"dropped": (\d+)', rest)
    outcome = "delivered" if result.returncode == 0 else f"failed ({result.returncode})"
    print(f"  {outcome} in {took:.1f} s; the central dropped {counts[-1] if counts else '?'} "
          f"idle connections meanwhile (each reopened at once), and logs a flood once per "
          f"10 s, as:")
    with open(os.path.join(workdir, "central.log"), errors="replace") as handle:
        lines = [line for line in handle if "connections in their handshake" in line]
    for line in lines[:1]:
        print("  " + line.split("] ", 1)[-1].strip())


def through_hep(workdir: str, channel_port: int, http_port: int) -> None:
    """Sensor 4 listens for HEP (no interface, no root): a HEP agent sends it a bundled
    capture's SIP, RTP and RTCP over TCP with the password; the calls close once the
    line is quiet (in the HEP's own time) and reach the central like sniffed ones."""
    from voipmon.test.hepsupport import capture_as_hep  # an agent, for the demo
    hep_port = free_port()
    conf = write(os.path.join(workdir, "sensor4.conf"), f"""\
id_sensor = 4
name_sensor = hep-input
server_destination = 127.0.0.1:{channel_port}
server_password = {PASSWORD}
spooldir = {os.path.join(workdir, "sensor4-spool")}
managerport = {free_port()}
hep_bind_port = {hep_port}
hep_password = demo-hep-secret
""")
    capture = SENSORS[0][3]
    log = os.path.join(workdir, "sensor4.log")
    sensor = subprocess.Popen(twistd("sensor4", workdir, "voipmon-sensor", "--config", conf),
                              cwd=workdir)
    try:
        wait_for_port(hep_port, sensor, log)
        records = capture_as_hep(os.path.join(DATA, capture), capture_id=4242,
                                 auth_key=b"demo-hep-secret")
        print(f"sensor 4 (hep-input) takes HEP on 127.0.0.1:{hep_port} (UDP and TCP): "
              f"{len(records)} HEP messages of {capture} ...", flush=True)
        with socket.create_connection(("127.0.0.1", hep_port)) as sock:
            sock.sendall(b"".join(record.message for record in records))
        deadline = time.monotonic() + 90
        while len(api_cdrs(http_port, "id_sensor=4")) < 3:
            if time.monotonic() > deadline or sensor.poll() is not None:
                raise SystemExit(f"sensor 4: its HEP calls did not reach the central; see {log}")
            time.sleep(0.5)
        agents = {cdr.get("hep_capture_id") for cdr in api_cdrs(http_port, "id_sensor=4")}
        print(f"  its 3 calls are stored, with the capture agent id: hep_capture_id = "
              f"{', '.join(map(str, sorted(agents)))}")
    finally:
        sensor.send_signal(signal.SIGTERM)
        try:
            sensor.wait(timeout=60)
        except subprocess.TimeoutExpired:
            sensor.kill()
            sensor.wait()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    serve = "--serve" in args
    workdir = os.path.join(ROOT, ".demo")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    channel_port, http_port = free_port(), free_port()
    central_conf = write(os.path.join(workdir, "central.conf"), f"""\
server_bind = 127.0.0.1
server_bind_port = {channel_port}
server_password = {PASSWORD}
sqlite_path = {os.path.join(workdir, "central.sqlite")}
spooldir = {os.path.join(workdir, "central-spool")}
http_bind = 127.0.0.1
http_port = {http_port}
""")
    central_log = os.path.join(workdir, "central.log")
    print(f"starting the central: TLS on 127.0.0.1:{channel_port}, "
          f"HTTP on 127.0.0.1:{http_port}, SQLite in .demo/central.sqlite")
    central = subprocess.Popen(twistd("central", workdir, "voipmon-central", "--config",
                                      central_conf), cwd=workdir)
    serving: list[subprocess.Popen] = []
    try:
        wait_for_port(channel_port, central, central_log)
        for id_sensor, name, mirror, capture in SENSORS:
            conf = write(os.path.join(workdir, f"sensor{id_sensor}.conf"), f"""\
id_sensor = {id_sensor}
name_sensor = {name}
server_destination = 127.0.0.1:{channel_port}
server_password = {PASSWORD}
packetbuffer_sender = {mirror}
spooldir = {os.path.join(workdir, f"sensor{id_sensor}-spool")}
managerport = 0
{NONCALL if id_sensor >= 6 else ""}""")
            print(f"sensor {id_sensor} ({name}) replays {capture} ...", flush=True)
            result = subprocess.run(
                twistd(f"sensor{id_sensor}", workdir, "voipmon-sensor", "--config", conf,
                       "--read-pcap", os.path.join(DATA, capture), "--exit-when-done"),
                cwd=workdir, timeout=300)
            if result.returncode != 0:
                print(f"sensor {id_sensor} failed (exit {result.returncode}); "
                      f"see .demo/sensor{id_sensor}.log", file=sys.stderr)
                return 1
            if mirror == "yes":
                wait_for_mirrored_cdrs(http_port, id_sensor,
                                       os.path.join(workdir, f"sensor{id_sensor}.log"))
        through_a_flood(workdir, channel_port, os.path.join(workdir, "sensor1.conf"))
        through_hep(workdir, channel_port, http_port)
        cdrs = api_cdrs(http_port, "limit=100")
        cdrs = sorted(cdrs, key=lambda c: (c["id_sensor"], c["calldate"]))
        print(f"\nthe central stored {len(cdrs)} CDRs:\n")
        print(table(cdrs))
        print("\nCall-IDs that are not UTF-8, as the database gives them back:")
        for cdr in api_cdrs(http_port, "id_sensor=3"):
            raw = cdr["callid"].encode("utf-8", "surrogateescape")
            found = api_cdrs(http_port, f"callid={urllib.parse.quote_from_bytes(raw)}")
            print(f"  {raw!r}  (?callid= with these bytes finds {len(found)} call)")
        dashboard = show_dashboard(http_port, cdrs)
        call_page = show_call_media(http_port, cdrs)
        show_metrics(http_port)
        serving = stay_connected(workdir, http_port)
        pcap_through_the_tunnel(http_port, cdrs)
        show_registrations(http_port)
        print("\nlogs, configs, spools and the database: .demo/")
        if serve:
            print(f"web page and API: http://127.0.0.1:{http_port}/  (Ctrl-C stops the central "
                  "and the sensors, which stay connected: every call's pcap opens)")
            print(f"the dashboard of the calls above: http://127.0.0.1:{http_port}/{dashboard}")
            if call_page:
                print(f"a call's ladder, quality chart and audio player: "
                      f"http://127.0.0.1:{http_port}/{call_page}")
            print(f"registrations: http://127.0.0.1:{http_port}/#/registrations, "
                  f"OPTIONS qualify: http://127.0.0.1:{http_port}/#/sipmsg")
            try:
                central.wait()
            except KeyboardInterrupt:
                pass
        return 0 if cdrs else 1
    finally:
        for process in serving:
            stop(process, "a sensor")
        if central.poll() is None:
            central.send_signal(signal.SIGTERM)
            try:
                central.wait(timeout=60)
                print("central stopped")
            except subprocess.TimeoutExpired:
                central.kill()
                central.wait()
                print("central did not stop within 60 s; killed it", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
