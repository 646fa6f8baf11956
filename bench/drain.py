"""CDRs/s into one central from sensors whose queues are full, and the central's
responsiveness and memory meanwhile (bench/channel.py's "cdrs" part).

In one run, against one ``twistd voipmon-central`` process on MariaDB:

- 1 sensor, then 4 sensors at once, each with its durable queue filled before it
  connects (so the central's rate is what is measured): CDRs/s end to end (first
  connection to the last acknowledgement; acknowledged only after commit), and the rows
  found in the database exactly once;
- beside them, in the same run, ``SqlStore.store_cdrs`` writing the same kind of CDRs
  straight into MariaDB (bench/store.py's ``store_rate``, batches of 1000, four in flight:
  the store's direct rate) and a plain driver ``executemany`` of the same rows
  (bench/store.py's ``raw_insert``);
- during the 4-sensor drain: the TLS handshake (connect to ACCEPT) of a new sensor, every
  0.5 s, and the PING round trip of an idle sensor connected before, every 0.1 s, median
  and worst; the central's RSS every second (its peak, and its rise over the drain).

The draining sensors run in a child process (this file with ``--worker``), so the probes
here measure the central, not a reactor busy sending.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from twisted.internet import defer, task, threads

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import store as store_bench  # noqa: E402  (bench/store.py)

from voipmon.config import load_sensor_config  # noqa: E402
from voipmon.protocols.wire import MessageType  # noqa: E402
from voipmon.queue import DurableQueue  # noqa: E402
from voipmon.store import testing  # noqa: E402
from voipmon.store.migrate import migrate  # noqa: E402
from voipmon.store.sqlstore import SqlStore  # noqa: E402
from voipmon.test.channel_support import mysql_connect, stored_uids  # noqa: E402
from voipmon.test.live_support import IdleSource  # noqa: E402
from voipmon.test.services import build_sensor  # noqa: E402

TARGET_RATE = 10_000
TARGET_RATIO = 0.90
TARGET_LATENCY = 0.200
PASSWORD = "bench-secret"


def make_sensor(reactor: Any, base: str, name: str, id_sensor: int, port: int) -> Any:
    keys = {"id_sensor": str(id_sensor), "server_password": PASSWORD,
            "server_destination": f"127.0.0.1:{port}",
            "spooldir": f"{base}/{name}", "managerport": "0"}
    settings = load_sensor_config(f"{name}.conf", text="".join(
        f"{k} = {v}\n" for k, v in keys.items()))
    return build_sensor(settings, reactor, source=IdleSource())


def prefill(base: str, name: str, first: int, count: int, id_sensor: int) -> None:
    queue = DurableQueue(os.path.join(base, name, "queue"))
    for n in range(first, first + count):
        queue.append(testing.make_cdr(n, id_sensor=id_sensor).to_wire())
        if queue.buffered >= 1000:
            queue.flush()
    queue.close()


def attached_at(sensor: Any, marks: list[float], cpu: list[float] | None = None) -> None:
    real = sensor.uplink.attach

    def attach(transport: Any) -> None:
        marks.append(time.time())
        if cpu is not None:
            cpu.append(time.process_time())
        real(transport)

    sensor.uplink.attach = attach


# -- the child: sensors draining their full queues -----------------------------------------


@defer.inlineCallbacks
def worker(reactor: Any, base: str, port: int, names: str) -> Any:
    """Start the sensors ``names`` (name:id,...), print when the first attached and when
    all are drained (wall clock), and the CPU time between, as one JSON line."""
    sensors, marks, cpu = [], [], []
    for entry in names.split(","):
        name, id_sensor = entry.split(":")
        sensor = make_sensor(reactor, base, name, int(id_sensor), port)
        attached_at(sensor, marks, cpu)
        sensor.uplink.source_done = True
        sensors.append(sensor)
    done = [s.uplink.when_done() for s in sensors]
    for sensor in sensors:
        sensor.startService()
    yield defer.gatherResults(done)
    finished = time.time()
    delivered = sum(s.uplink.delivered for s in sensors)
    for sensor in sensors:
        yield sensor.stopService()
    print(json.dumps({"first": min(marks), "done": finished, "delivered": delivered,
                      "cpu": time.process_time() - min(cpu)}), flush=True)


# -- CPU accounting ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mariadb_pid() -> int | None:
    """The machine's shared mariadbd (not a test's private one, started --no-defaults)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"mariadbd" and b"--no-defaults" not in argv:
            return int(entry)
    return None


# -- the probes -------------------------------------------------------------------------------


class Probes:
    """Handshakes of new sensors and pings of an idle one, while something else runs."""

    def __init__(self, reactor: Any, base: str, port: int, central: Any) -> None:
        self.reactor = reactor
        self.base = base
        self.port = port
        self.central = central
        self.handshakes: list[float] = []
        self.rtts: list[float] = []
        self.rss: list[tuple[float, int]] = []
        self.idle: Any = None
        self.channel: Any = None
        self.next_id = 900
        self.watching = False
        self.calls: list[task.LoopingCall] = []

    @defer.inlineCallbacks
    def start_idle(self) -> Any:
        sensor = make_sensor(self.reactor, self.base, "idle", 899, self.port)
        channels: list[Any] = []
        real = sensor.uplink.attach

        def attach(transport: Any) -> None:
            channels.append(transport)
            real(transport)

        sensor.uplink.attach = attach
        sensor.startService()
        while not channels:
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        self.idle, self.channel = sensor, channels[0]

    def _watch_pongs(self) -> None:
        handlers = self.channel.dispatcher.handlers
        decode, real = handlers[MessageType.PONG]

        def on_pong(body: dict[str, Any]) -> None:
            real(body)
            if isinstance(body.get("probe"), float):
                self.rtts.append(time.perf_counter() - body["probe"])

        handlers[MessageType.PONG] = (decode, on_pong)
        self.watching = True

    def ping(self) -> None:
        if self.channel.dispatcher is None:
            return
        if not self.watching:
            self._watch_pongs()
        self.channel.send_message(MessageType.PING, {"t": self.reactor.seconds(),
                                                     "probe": time.perf_counter()})

    @defer.inlineCallbacks
    def handshake(self) -> Any:
        self.next_id += 1
        sensor = make_sensor(self.reactor, self.base, f"new-{self.next_id}", self.next_id,
                             self.port)
        marks: list[float] = []
        attached_at(sensor, marks)
        began = time.time()
        sensor.startService()
        while not marks and time.time() - began < 30:
            yield task.deferLater(self.reactor, 0.005, lambda: None)
        if marks:
            self.handshakes.append(marks[0] - began)
        yield sensor.stopService()

    def sample_rss(self) -> None:
        self.rss.append((time.time(), self.central.rss_kb()))

    def start(self, rss_every: float) -> None:
        self.handshakes, self.rtts, self.rss = [], [], []
        for every, call in ((0.1, self.ping), (0.5, self.handshake),
                            (rss_every, self.sample_rss)):
            loop = task.LoopingCall(call)
            loop.start(every, now=False)
            self.calls.append(loop)

    def stop(self) -> None:
        for loop in self.calls:
            loop.stop()
        self.calls = []

    @defer.inlineCallbacks
    def close(self) -> Any:
        if self.idle is not None:
            yield self.idle.stopService()


def spy_summary(path: str, top: int = 25) -> str:
    """py-spy's raw samples: each thread's share, then the functions where samples were
    (self) and the functions under which they were (inclusive), of all threads."""
    threads_seen: dict[str, int] = {}
    own: dict[str, int] = {}
    under: dict[str, int] = {}
    total = 0
    with open(path) as handle:
        for line in handle:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            total += count
            threads_seen[frames[0]] = threads_seen.get(frames[0], 0) + count
            own[frames[-1]] = own.get(frames[-1], 0) + count
            for frame in set(frames[1:]):
                under[frame] = under.get(frame, 0) + count
    lines = [f"py-spy: {total} samples (50/s, of the thread holding the GIL)", "by thread:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in
              sorted(threads_seen.items(), key=lambda x: -x[1])[:10]]
    lines.append("self (the function the sample was in):")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in
              sorted(own.items(), key=lambda x: -x[1])[:top]]
    lines.append("inclusive (the sample was under it):")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in
              sorted(under.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(lines)


def spread(values: list[float]) -> str:
    if not values:
        return "none measured"
    return (f"median {statistics.median(values) * 1000:.0f} ms, worst {max(values) * 1000:.0f} "
            f"ms ({len(values)} samples)")


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


# -- the part of bench/channel.py -------------------------------------------------------------


@defer.inlineCallbacks
def references(reactor: Any, bench: Any, count: int) -> Any:
    """(store_cdrs direct rate, plain executemany rate) for ``count`` fresh CDRs."""
    database = bench.database()
    store = SqlStore(testing.mysql_dialect(database), reactor, central_id="bench")
    yield store.start()
    numbers = store_bench.Numbers()
    try:
        direct = yield store_bench.store_rate(store, numbers.cdrs(count), 1000, in_flight=4)
    finally:
        yield store.close()
    with testing.mysql_database() as raw_db:
        dialect = testing.mysql_dialect(raw_db)
        conn = dialect.connect()
        migrate(dialect, conn, time.time())
        plain = store_bench.raw_insert(conn, "%s", numbers.cdrs(count), 1000, True)
        conn.close()
    return direct, plain


@defer.inlineCallbacks
def drain_once(reactor: Any, bench: Any, port: int, database: str, central: Any,
               probes: Probes | None, sensors: int, count: int, attempt: int,
               rss_every: float) -> Any:
    per = count // sensors
    names = []
    first_id = 10 + attempt * 10 + sensors * 100
    print(f"prefilling {sensors} sensor queue(s) with {per} CDRs each ...", flush=True)
    for k in range(sensors):
        name = f"drain-{first_id + k}"
        yield threads.deferToThread(prefill, bench.base, name, 0, per, first_id + k)
        names.append(f"{name}:{first_id + k}")
    if probes is not None:
        probes.start(rss_every)
    server = mariadb_pid()
    cpu_before = (cpu_seconds(central.pid), cpu_seconds(server) if server else 0.0)
    spy = None
    if probes is not None and bench.options.py_spy and attempt == 0:
        spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"),
                                "record", "--pid", str(central.pid), "--threads", "--gil",
                                "--nonblocking", "--format", "raw", "--rate", "50",
                                "-o", bench.options.py_spy], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    profile = os.environ.get("BENCH_SENSORS_PROFILE")     # cProfile of the sensors' process
    child = subprocess.Popen([sys.executable, *(["-m", "cProfile", "-o", profile] if profile
                                                else []), os.path.abspath(__file__), "--worker",
                              bench.base, str(port), ",".join(names)],
                             stdout=subprocess.PIPE, text=True)
    out, _ = yield threads.deferToThread(child.communicate)
    if probes is not None:
        probes.stop()
    if spy is not None:
        spy.send_signal(2)   # SIGINT: py-spy writes what it sampled
        yield threads.deferToThread(spy.wait)
    if child.returncode:
        raise RuntimeError(f"drain worker exited {child.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    elapsed = result["done"] - result["first"]
    cpu = {"central": cpu_seconds(central.pid) - cpu_before[0],
           "MariaDB": (cpu_seconds(server) - cpu_before[1]) if server else 0.0,
           "sensors": result["cpu"]}
    connection = mysql_connect(testing.mysql_settings()["host"],
                               testing.mysql_settings()["port"], database)
    uids = []
    for k in range(sensors):
        uids += stored_uids(connection, first_id + k)
    connection.close()
    exact = len(uids) == len(set(uids)) == per * sensors
    return per * sensors / elapsed, elapsed, exact, cpu


@defer.inlineCallbacks
def cdr_part(reactor: Any, bench: Any) -> Any:
    """bench/channel.py's "cdrs" part: the figures above, best of ``--runs``."""
    options = bench.options
    count = options.cdrs
    database = bench.database()
    central, port = yield bench.central("central-cdrs", database)
    probes = Probes(reactor, bench.base, port, central)
    yield probes.start_idle()
    best: dict[str, Any] = {}
    handshakes: list[float] = []
    rtts: list[float] = []
    rss: list[tuple[float, int]] = []
    rss_every = 1.0
    for attempt in range(options.runs):
        if count <= 100_000:
            direct, plain = yield references(reactor, bench, count)
            best["direct"] = max(best.get("direct", 0), direct)
            best["plain"] = max(best.get("plain", 0), plain)
        for sensors in (4,) if count > 100_000 else (1, 4):
            watched = probes if sensors == 4 else None
            result = yield drain_once(reactor, bench, port, database, central, watched,
                                      sensors, count, attempt, rss_every)
            if sensors not in best or result[0] > best[sensors][0]:
                best[sensors] = result
            if watched is not None:
                handshakes += probes.handshakes
                rtts += probes.rtts
                rss += probes.rss
                if count > 100_000:
                    for when, kb in probes.rss[::max(1, len(probes.rss) // 20)]:
                        print(f"  central RSS at +{when - probes.rss[0][0]:5.0f} s: "
                              f"{kb / 1024:7.1f} MB", flush=True)
    yield probes.close()
    if options.py_spy and os.path.exists(options.py_spy):
        print(spy_summary(options.py_spy), flush=True)
    runs = options.runs
    four = best[4]
    if 1 in best:
        one = best[1]
        bench.report(f"1 sensor:  {one[0]:10,.0f} CDRs/s queue -> TLS -> central -> MariaDB "
                     f"(best of {runs}: {count} CDRs in {one[1]:.2f} s, exactly once: {one[2]})")
    bench.report(f"4 sensors: {four[0]:10,.0f} CDRs/s (best of {runs}: {count} CDRs in "
                 f"{four[1]:.2f} s, exactly once: {four[2]})   target >= {TARGET_RATE:,}: "
                 f"{met(four[0] >= TARGET_RATE)}")
    cpu = four[3]
    total = sum(cpu.values())
    shares = ", ".join(f"{name} {seconds / count * 1e6:.0f} us ({seconds / four[1]:.0%} of "
                       "a core)" for name, seconds in cpu.items())
    bench.report(f"CPU per CDR in that 4-sensor drain: {shares}; together "
                 f"{total / count * 1e6:.0f} us/CDR, so {os.cpu_count()} cores allow at most "
                 f"{os.cpu_count() * count / total:,.0f} CDRs/s with everything on this machine")
    if "direct" in best:
        ratio = four[0] / best["direct"]
        bench.report(f"store_cdrs direct (1000 x 4 in flight): {best['direct']:10,.0f} CDRs/s;"
                     f" plain executemany: {best['plain']:10,.0f} CDRs/s; 4 sensors = "
                     f"{ratio:.0%} of the store's direct rate   target >= "
                     f"{TARGET_RATIO:.0%}: {met(ratio >= TARGET_RATIO)}")
    ok = handshakes and max(handshakes) < TARGET_LATENCY
    bench.report(f"during the 4-sensor drains: new sensor's handshake {spread(handshakes)}   "
                 f"target < {TARGET_LATENCY * 1000:.0f} ms: {met(bool(ok))}")
    ok = rtts and max(rtts) < TARGET_LATENCY
    bench.report(f"during the 4-sensor drains: idle sensor's ping round trip {spread(rtts)}   "
                 f"target < {TARGET_LATENCY * 1000:.0f} ms: {met(bool(ok))}")
    if rss:
        values = [kb for _, kb in rss]
        tenth = max(1, len(values) // 10)
        early, late = max(values[:tenth]), max(values[-tenth:])
        bench.report(f"central RSS during the drains: peak {max(values) / 1024:.1f} MB; "
                     f"first tenth's peak {early / 1024:.1f} MB, last tenth's "
                     f"{late / 1024:.1f} MB ({len(values)} samples)")


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    task.react(worker, sys.argv[2:])
