"""MB/s of a 50 MB call pcap fetched through the central's HTTP API, on loopback: over the
channel the sensor opened (TLS, the requests of issue 15), beside the old way (the central
dials the sensor's management port: TLS + password proof) and a plain local file copy;
and the CDR round trip (queued on the sensor -> acknowledged by the central after its
database committed it) idle and while the tunnel fetch runs.

Two fetches each way: a call whose RTP pcap is 50 MB and SIP pcap small (INVITE .. ACK
before the RTP, BYE and 200 after it: merged by time on the sensor, every RTP record
between them gone over) and a call with only its 50 MB pcap (passed through). Every body
is checked byte for byte against what the sensor's own ``getcallpcap`` makes.
Targets (issue 15): tunnel >= 100 MB/s and >= 25 % of the local copy; CDR latency during
the fetch <= 2x idle.

Two modes, both printed by default: three processes, as deployed (the sensor in a child
process: this file with ``--worker``; the central in this process; ``curl`` as the HTTP
client, with each one's CPU share), then one process (sensor, central and Twisted's
Agent on this one reactor), where the CDR round trip is measured.
Run: .venv/bin/python bench/pcap_fetch.py [MB] [--one-process]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, endpoints, task, threads
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import drain  # bench/drain.py: the sensor of a child process

from voipmon.central.sessions import CentralSessions
from voipmon.manager.commands import ManagerCommands, merged_call_pcap
from voipmon.manager.server import ManagerServerFactory
from voipmon.manager.service import ManagerConnector
from voipmon.protocols import tls
from voipmon.protocols.capabilities import SUPPORTED
from voipmon.protocols.client import AuthenticatingEndpoint
from voipmon.protocols.handshake import ClientHandshake, derive_key
from voipmon.protocols.server import CentralFactory
from voipmon.queue import DurableQueue
from voipmon.sensor.uplink import CdrUplink, UplinkFactory
from voipmon.spool.layout import minute_dir
from voipmon.store.sqlstore import SqlStore
from voipmon.store.testing import make_cdr, sqlite_dialect
from voipmon.test.channel_support import free_port
from voipmon.web.api import find_sensor
from voipmon.web.pcaps import CallPcaps, SensorLink
from voipmon.web.site import make_site

PASSWORD = drain.PASSWORD  # the child's sensor (drain.make_sensor) knows this one
CDRS = 40          # CDR round trips measured idle


class TimedUplink(CdrUplink):
    """A CdrUplink that says when its CDRs were acknowledged."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.waiting: list[tuple[int, defer.Deferred]] = []

    def on_cdr_ack(self, body) -> None:
        super().on_cdr_ack(body)
        still = []
        for count, d in self.waiting:
            if self.delivered >= count:
                d.callback(None)
            else:
                still.append((count, d))
        self.waiting = still

    def round_trip(self, number: int) -> defer.Deferred:
        """Queue one CDR; fires with the seconds until the central acknowledged it."""
        started = time.perf_counter()
        self.add(make_cdr(number, id_sensor=1))
        d: defer.Deferred = defer.Deferred()
        self.waiting.append((self.delivered + 1, d))
        return d.addCallback(lambda _: time.perf_counter() - started)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


@defer.inlineCallbacks
def central(reactor, store, certificate):
    """A central listening for sensors (TLS) on loopback: (its registry of connected
    sensors, its port, a stop function)."""
    sessions = CentralSessions(store, reactor)
    factory = CentralFactory(derive_key(PASSWORD), 5.0, sessions, reactor,
                             tls.exporter_binding, central_name="bench",
                             registry=sessions.registry)
    listening = yield endpoints.SSL4ServerEndpoint(
        reactor, 0, certificate.options(), interface="127.0.0.1").listen(factory)

    @defer.inlineCallbacks
    def stop():
        yield listening.stopListening()
        sessions.stop()

    return factory.registry, listening.getHost().port, stop


@defer.inlineCallbacks
def tunnel(reactor, work: str, spool: str, store, certificate):
    """A central and, in this process, a sensor connected to it with a command registry
    over ``spool``; returns (the central's registry, the uplink, cleanup)."""
    registry, port, stop_central = yield central(reactor, store, certificate)
    queue = DurableQueue(os.path.join(work, "queue"))
    uplink = TimedUplink(queue, reactor, batch_records=1, first_batch=1)
    key = derive_key(PASSWORD)
    endpoint = AuthenticatingEndpoint(
        endpoints.wrapClientTLS(tls.client_creator("127.0.0.1"), endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", port)),
        lambda: ClientHandshake(key, id_sensor=1, name="bench", version="bench", mode="local",
                                compression="zstd", instance="ab" * 8,
                                seconds=reactor.seconds, capabilities=SUPPORTED),
        "zstd", reactor, tls.exporter_binding, commands=ManagerCommands(spool))
    session = yield endpoint.connect(UplinkFactory(uplink))

    @defer.inlineCallbacks
    def cleanup():
        session.transport.loseConnection()
        yield task.deferLater(reactor, 0.2, lambda: None)
        yield stop_central()
        queue.close()

    return registry, uplink, cleanup


def write_sip_pcap(path: str, start: float, end: float) -> None:
    """A call's SIP pcap: six messages at ``start`` (INVITE .. ACK), BYE and its 200 at
    ``end``, after the RTP (the merge interleaves them with every RTP record between)."""
    frame = bytes(14) + b"\x45" + bytes(27) + b"INVITE sip:bench SIP/2.0\r\n" + bytes(600)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ts in [start + i * 0.05 for i in range(6)] + [end, end + 0.01]:
            handle.write(struct.pack("<IIII", int(ts), int(ts * 1e6) % 1000000, len(frame),
                                     len(frame)) + frame)


def write_rtp_pcap(path: str, size: int, start: float) -> float:
    """A pcap of ~``size`` bytes of 214-byte Ethernet/IPv4/UDP/RTP frames, 20 ms apart."""
    frame = bytes(14) + b"\x45" + bytes(27) + b"\x80\x00" + bytes(170)
    record = struct.Struct("<IIII")
    with open(path, "wb") as handle:
        handle.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        written, n, chunk = 24, 0, bytearray()
        while written < size:
            ts = start + n * 0.02
            chunk += record.pack(int(ts), int(ts * 1e6) % 1000000, len(frame), len(frame))
            chunk += frame
            written += 16 + len(frame)
            n += 1
            if len(chunk) > 1 << 20:
                handle.write(chunk)
                chunk.clear()
        handle.write(chunk)
    return start + n * 0.02


def make_spool(spool: str, size: int) -> dict[str, str]:
    """The sensor's spool: a call whose RTP pcap is ``size`` bytes and SIP pcap small, and a
    call with only its RTP pcap (a copy); the relative paths by role."""
    merged_cdr = make_cdr(1, id_sensor=1)
    minute = minute_dir(merged_cdr.calldate)
    paths = {"sip": f"{minute}/SIP/big.pcap", "rtp": f"{minute}/RTP/big.pcap",
             "only": f"{minute}/RTP/only.pcap"}
    for rel in paths.values():
        os.makedirs(os.path.dirname(os.path.join(spool, rel)), exist_ok=True)
    rtp_end = write_rtp_pcap(os.path.join(spool, paths["rtp"]), size, merged_cdr.calldate + 1)
    write_sip_pcap(os.path.join(spool, paths["sip"]), merged_cdr.calldate, rtp_end + 0.5)
    shutil.copyfile(os.path.join(spool, paths["rtp"]), os.path.join(spool, paths["only"]))
    return paths


def expected_digests(spool: str, paths: dict[str, str]) -> dict[str, str]:
    """SHA-256 of what the sensor itself makes of each call's spool files (getcallpcap)."""
    digests = {}
    for name, relpaths in (("big", [paths["sip"], paths["rtp"]]), ("only", [paths["only"]])):
        digest = hashlib.sha256()
        for chunk in merged_call_pcap(spool, relpaths).chunks():
            digest.update(chunk)
        digests[name] = digest.hexdigest()
    return digests


def self_signed() -> tls.ServerCertificate:
    cert, key = tls.generate_self_signed("localhost")
    return tls.ServerCertificate(cert, (), key, tls.fingerprint(cert), "", True)


def listen_manager(reactor, spool: str, port: int = 0) -> defer.Deferred:
    """The sensor's management port (the old 5029 way) over ``spool``, TLS on loopback."""
    factory = ManagerServerFactory(ManagerCommands(spool), reactor, key=derive_key(PASSWORD),
                                   id_sensor=1, binding=tls.exporter_binding)
    return endpoints.SSL4ServerEndpoint(reactor, port, self_signed().options(),
                                        interface="127.0.0.1").listen(factory)


@defer.inlineCallbacks
def open_store(reactor, work: str, name: str, manager_port: int, paths: dict[str, str]):
    """A central's database (sqlite) knowing sensor 1 (its 5029) and the two calls:
    (the store, the calls' ids by fbasename)."""
    store = SqlStore(sqlite_dialect(os.path.join(work, f"{name}.sqlite")), reactor)
    yield store.start()
    yield store.upsert_sensor({"id_sensor": 1, "name": "bench", "mode": "local",
                               "manager_host": "127.0.0.1", "manager_port": manager_port})
    yield store.store_cdrs([
        make_cdr(1, id_sensor=1, fbasename="big", sip_pcap=paths["sip"], rtp_pcap=paths["rtp"]),
        make_cdr(2, id_sensor=1, fbasename="only", sip_pcap="", rtp_pcap=paths["only"])])
    return store, {c["fbasename"]: c["id"] for c in (yield store.list_cdrs({}))}


@defer.inlineCallbacks
def serve(reactor, work: str, store, registry) -> Any:
    """The central's HTTP API, one site per way: {way: listening port}."""
    lookup = lambda i: find_sensor(store, i)  # noqa: E731
    ways = {"tunnel": SensorLink(registry, lookup, "bench"),
            "5029": SensorLink(None, lookup, "", ManagerConnector(reactor, PASSWORD))}
    sites = {}
    for way, link in ways.items():
        sites[way] = yield endpoints.TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(make_site(store, CallPcaps(work, link)))
    return sites


def url(sites, way: str, id_cdr: int) -> str:
    return f"http://127.0.0.1:{sites[way].getHost().port}/api/cdrs/{id_cdr}/pcap"


def checked(name: str, digest: str, expected: dict[str, str], way: str) -> None:
    if digest != expected[name]:
        raise RuntimeError(f"{way} {name}: the bytes differ from the sensor's own getcallpcap")


CALLS = (("merged SIP+RTP", "big"), ("single pcap", "only"))


@defer.inlineCallbacks
def one_process(reactor, work: str, spool: str, paths, expected):
    """Sensor, central and HTTP client (Twisted's Agent) on this one reactor; the CDR round
    trip idle and during a tunnel fetch. ((way, label, bytes, MB/s), idle, during)."""
    mport = yield listen_manager(reactor, spool)
    store, ids = yield open_store(reactor, work, "one", mport.getHost().port, paths)
    registry, uplink, close_tunnel = yield tunnel(reactor, work, spool, store, self_signed())
    sites = yield serve(reactor, work, store, registry)
    agent = Agent(reactor)

    @defer.inlineCallbacks
    def fetch(way: str, name: str):
        started = time.perf_counter()
        response = yield agent.request(b"GET", url(sites, way, ids[name]).encode(), Headers({}))
        body = yield readBody(response)
        elapsed = time.perf_counter() - started
        if response.code != 200:
            raise RuntimeError(f"fetch failed: {response.code} {body[:200]!r}")
        checked(name, hashlib.sha256(body).hexdigest(), expected, way)
        return len(body), len(body) / elapsed / 1e6

    results = []
    for way in ("tunnel", "5029"):
        for label, name in CALLS:
            rates = []
            for _ in range(3):
                nbytes, rate = yield fetch(way, name)
                rates.append(rate)
            results.append((way, label, nbytes, max(rates)))
    idle = []
    for n in range(CDRS):
        idle.append((yield uplink.round_trip(1000 + n)))
    during = []
    fetching = fetch("tunnel", "only")
    n = 2000
    while not fetching.called:
        during.append((yield uplink.round_trip(n)))
        n += 1
    yield fetching
    for port in sites.values():
        yield port.stopListening()
    yield close_tunnel()
    yield mport.stopListening()
    yield store.close()
    return results, idle, during


def curl(address: str, out: str) -> tuple[float, float]:
    """``curl`` fetching ``address`` into ``out`` (in a thread): (seconds, curl's CPU s)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(["curl", "-s", "-S", "-f", "-o", out, address],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"curl {address}: exit {done.returncode} {done.stderr.strip()}")
    return elapsed, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


@defer.inlineCallbacks
def split(reactor, work: str, paths, expected):
    """The sensor in a child process (this file with --worker: its channel to the central and
    its 5029), the central here, ``curl`` as the HTTP client: (way, label, bytes, MB/s,
    CPU share of the sensor, the central, curl in the best run)."""
    mport = free_port()
    store, ids = yield open_store(reactor, work, "split", mport, paths)
    registry, port, stop_central = yield central(reactor, store, self_signed())
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", work,
                              str(port), str(mport)], stdout=subprocess.PIPE, text=True)
    try:
        line = yield threads.deferToThread(child.stdout.readline)
        if not line.startswith("ready"):
            raise RuntimeError(f"the sensor's process did not start ({child.wait()})")
        for _ in range(600):
            if registry.connected(1):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        else:
            raise RuntimeError("the sensor's process did not connect to the central")
        sites = yield serve(reactor, work, store, registry)
        out = os.path.join(work, "curl.pcap")
        results = []
        for way in ("tunnel", "5029"):
            for label, name in CALLS:
                runs = []
                for _ in range(3):
                    sensor_cpu, central_cpu = drain.cpu_seconds(child.pid), time.process_time()
                    elapsed, curl_cpu = yield threads.deferToThread(
                        curl, url(sites, way, ids[name]), out)
                    shares = (drain.cpu_seconds(child.pid) - sensor_cpu,
                              time.process_time() - central_cpu, curl_cpu)
                    with open(out, "rb") as handle:
                        checked(name, hashlib.file_digest(handle, "sha256").hexdigest(),
                                expected, way)
                    nbytes = os.path.getsize(out)
                    runs.append((nbytes / elapsed / 1e6, [s / elapsed for s in shares]))
                rate, shares = max(runs)
                results.append((way, label, nbytes, rate, *shares))
        for site in sites.values():
            yield site.stopListening()
    finally:
        child.terminate()
        yield threads.deferToThread(child.wait)
        yield stop_central()
        yield store.close()
    return results


@defer.inlineCallbacks
def worker(reactor, work: str, port: str, mport: str):
    """The child: sensor 1 over ``work``/sensor, connected to the central on ``port``, and
    its management port ``mport``; runs until terminated."""
    yield listen_manager(reactor, os.path.join(work, "sensor"), int(mport))
    sensor = drain.make_sensor(reactor, work, "sensor", 1, int(port))
    sensor.startService()
    print("ready", flush=True)
    yield defer.Deferred()


def local_copy(src: str, work: str) -> float:
    """MB/s of a plain copy of ``src`` then reading the copy (bytes in hand), best of 3."""
    best = 0.0
    for i in range(3):
        dst = os.path.join(work, f"copy{i}.pcap")
        started = time.perf_counter()
        shutil.copyfile(src, dst)
        with open(dst, "rb") as handle:  # as the HTTP client did: bytes in hand
            handle.read()
        best = max(best, os.path.getsize(src) / (time.perf_counter() - started) / 1e6)
        os.remove(dst)
    return best


def rows(results, copy: float) -> None:
    for way, label, nbytes, rate, *shares in results:
        how = ("over the sensor's channel (tunnel)" if way == "tunnel"
               else "dialling the sensor's 5029")
        cpu = ("  CPU of a core: sensor {:.0%}, central {:.0%}, curl {:.0%}".format(*shares)
               if shares else "")
        print(f"  {how:35s} {label:16s} {nbytes / 1e6:7.1f} MB  {rate:8.1f} MB/s{cpu}")
    for label, _ in CALLS:
        rate = {way: r for way, lab, _, r, *_ in results if lab == label}
        print(f"  tunnel, {label}: {rate['tunnel']:.1f} MB/s (target >= 100), "
              f"{100 * rate['tunnel'] / copy:.0f} % of the local copy (target >= 25 %); "
              f"5029: {rate['5029']:.1f} MB/s")


@defer.inlineCallbacks
def main(reactor, argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("megabytes", nargs="?", type=float, default=50.0)
    parser.add_argument("--one-process", action="store_true",
                        help="only the one-process mode (sensor, central and client here)")
    options = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="voipmon-bench-")
    try:
        spool = os.path.join(work, "sensor")
        paths = make_spool(spool, int(options.megabytes * 1024 * 1024))
        expected = expected_digests(spool, paths)
        separate = None if options.one_process else (yield split(reactor, work, paths, expected))
        together, idle, during = yield one_process(reactor, work, spool, paths, expected)
        src = os.path.join(spool, paths["only"])
        copy = local_copy(src, work)
        print(f"pcap fetch through the central's HTTP API, loopback, best of 3; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; every body "
              f"byte-identical to the sensor's own getcallpcap")
        print(f"  reference: plain local file copy  {'':35s}{os.path.getsize(src) / 1e6:7.1f} MB"
              f"  {copy:8.1f} MB/s")
        if separate is not None:
            print("three processes (default): the sensor in a child process, the central in "
                  "this one, curl as the HTTP client")
            rows(separate, copy)
        print("one process (--one-process): sensor, central and client (Twisted's Agent) on "
              "this one reactor")
        rows(together, copy)
        print(f"CDR round trip (one-process mode; queued on the sensor -> acknowledged after "
              f"the commit), median: idle {1000 * median(idle):.2f} ms ({len(idle)} CDRs), "
              f"during the tunnel fetch {1000 * median(during):.2f} ms ({len(during)} CDRs), "
              f"ratio {median(during) / median(idle):.2f} (target <= 2); worst during "
              f"{1000 * max(during):.1f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    task.react(worker, sys.argv[2:])
elif __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
