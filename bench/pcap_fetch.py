"""MB/s of a 50 MB call pcap fetched through the central's HTTP API, on loopback: over the
channel the sensor opened (TLS, the requests of issue 15), beside the old way (the central
dials the sensor's management port: TLS + password proof) and a plain local file copy;
and the CDR round trip (queued on the sensor -> acknowledged by the central after its
database committed it) idle and while the tunnel fetch runs.

Two fetches each way: a call whose RTP pcap is 50 MB and SIP pcap small (INVITE .. ACK
before the RTP, BYE and 200 after it: merged by time on the sensor, every RTP record
between them gone over) and a call with only its 50 MB pcap (passed through).
Targets (issue 15): tunnel >= 100 MB/s and >= 25 % of the local copy; CDR latency during
the fetch <= 2x idle. Everything in this one process (the reactor serves both ends).
Run: .venv/bin/python bench/pcap_fetch.py [MB]
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import tempfile
import time

from twisted.internet import defer, endpoints, task
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from voipmon.central.sessions import CentralSessions
from voipmon.manager.commands import ManagerCommands
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
from voipmon.web.api import find_sensor
from voipmon.web.pcaps import CallPcaps, SensorLink
from voipmon.web.site import make_site

PASSWORD = "bench"
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
def tunnel(reactor, work: str, spool: str, store, certificate):
    """A central listening for sensors (TLS) and a sensor connected to it with a command
    registry over ``spool``; returns (the central's registry, the uplink, cleanup)."""
    sessions = CentralSessions(store, reactor)
    factory = CentralFactory(derive_key(PASSWORD), 5.0, sessions, reactor,
                             tls.exporter_binding, central_name="bench",
                             registry=sessions.registry)
    listening = yield endpoints.SSL4ServerEndpoint(
        reactor, 0, certificate.options(), interface="127.0.0.1").listen(factory)
    queue = DurableQueue(os.path.join(work, "queue"))
    uplink = TimedUplink(queue, reactor, batch_records=1, first_batch=1)
    key = derive_key(PASSWORD)
    endpoint = AuthenticatingEndpoint(
        endpoints.wrapClientTLS(tls.client_creator("127.0.0.1"), endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", listening.getHost().port)),
        lambda: ClientHandshake(key, id_sensor=1, name="bench", version="bench", mode="local",
                                compression="zstd", instance="ab" * 8,
                                seconds=reactor.seconds, capabilities=SUPPORTED),
        "zstd", reactor, tls.exporter_binding, commands=ManagerCommands(spool))
    session = yield endpoint.connect(UplinkFactory(uplink))

    @defer.inlineCallbacks
    def cleanup():
        session.transport.loseConnection()
        yield task.deferLater(reactor, 0.2, lambda: None)
        yield listening.stopListening()
        sessions.stop()
        queue.close()

    return factory.registry, uplink, cleanup


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


@defer.inlineCallbacks
def main(reactor, megabytes: str = "50"):
    size = int(float(megabytes) * 1024 * 1024)
    work = tempfile.mkdtemp(prefix="voipmon-bench-")
    try:
        spool = os.path.join(work, "sensor")
        merged_cdr = make_cdr(1, id_sensor=1)
        minute = minute_dir(merged_cdr.calldate)
        paths = {"sip": f"{minute}/SIP/big.pcap", "rtp": f"{minute}/RTP/big.pcap",
                 "only": f"{minute}/RTP/only.pcap"}
        for rel in paths.values():
            os.makedirs(os.path.dirname(os.path.join(spool, rel)), exist_ok=True)
        rtp_end = write_rtp_pcap(os.path.join(spool, paths["rtp"]), size,
                                 merged_cdr.calldate + 1)
        write_sip_pcap(os.path.join(spool, paths["sip"]), merged_cdr.calldate, rtp_end + 0.5)
        shutil.copyfile(os.path.join(spool, paths["rtp"]), os.path.join(spool, paths["only"]))

        cert, key = tls.generate_self_signed("localhost")
        certificate = tls.ServerCertificate(cert, (), key, tls.fingerprint(cert), "", True)
        factory = ManagerServerFactory(ManagerCommands(spool), reactor, key=derive_key(PASSWORD),
                                       id_sensor=1, binding=tls.exporter_binding)
        mport = yield endpoints.SSL4ServerEndpoint(reactor, 0, certificate.options(),
                                                   interface="127.0.0.1").listen(factory)
        store = SqlStore(sqlite_dialect(os.path.join(work, "db.sqlite")), reactor)
        yield store.start()
        yield store.upsert_sensor({"id_sensor": 1, "name": "bench", "mode": "local",
                                   "manager_host": "127.0.0.1",
                                   "manager_port": mport.getHost().port})
        cdrs = [make_cdr(1, id_sensor=1, fbasename="big", sip_pcap=paths["sip"],
                         rtp_pcap=paths["rtp"]),
                make_cdr(2, id_sensor=1, fbasename="only", sip_pcap="", rtp_pcap=paths["only"])]
        yield store.store_cdrs(cdrs)
        ids = {c["fbasename"]: c["id"] for c in (yield store.list_cdrs({}))}
        lookup = lambda i: find_sensor(store, i)  # noqa: E731
        dialled = CallPcaps(work, SensorLink(None, lookup, "",
                                             ManagerConnector(reactor, PASSWORD)))
        registry, uplink, close_tunnel = yield tunnel(reactor, work, spool, store, certificate)
        tunnelled = CallPcaps(work, SensorLink(registry, lookup, "bench"))
        agent = Agent(reactor)
        sites = {}
        for way, pcaps in (("tunnel", tunnelled), ("5029", dialled)):
            port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
                make_site(store, pcaps))
            sites[way] = port

        @defer.inlineCallbacks
        def fetch(way: str, name: str):
            started = time.perf_counter()
            url = (f"http://127.0.0.1:{sites[way].getHost().port}"
                   f"/api/cdrs/{ids[name]}/pcap").encode()
            response = yield agent.request(b"GET", url, Headers({}))
            body = yield readBody(response)
            elapsed = time.perf_counter() - started
            if response.code != 200:
                raise SystemExit(f"fetch failed: {response.code} {body[:200]!r}")
            return len(body), len(body) / elapsed / 1e6

        results = []
        for way in ("tunnel", "5029"):
            for label, name in (("merged SIP+RTP", "big"), ("single pcap", "only")):
                best = 0.0
                for _ in range(3):
                    nbytes, rate = yield fetch(way, name)
                    best = max(best, rate)
                results.append((way, label, nbytes, best))

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

        src = os.path.join(spool, paths["only"])
        best = 0.0
        for i in range(3):
            dst = os.path.join(work, f"copy{i}.pcap")
            started = time.perf_counter()
            shutil.copyfile(src, dst)
            with open(dst, "rb") as handle:  # as the HTTP client did: bytes in hand
                handle.read()
            best = max(best, os.path.getsize(src) / (time.perf_counter() - started) / 1e6)
            os.remove(dst)

        print("pcap fetch through the central's HTTP API, loopback, best of 3")
        for way, label, nbytes, rate in results:
            how = ("over the sensor's channel (tunnel)" if way == "tunnel"
                   else "dialling the sensor's 5029")
            print(f"  {how:35s} {label:16s} {nbytes / 1e6:7.1f} MB  {rate:8.1f} MB/s")
        print(f"  reference: plain local file copy  {'':35s}{os.path.getsize(src) / 1e6:7.1f} MB"
              f"  {best:8.1f} MB/s")
        for label in ("single pcap", "merged SIP+RTP"):
            rate = {way: r for way, lab, _, r in results if lab == label}
            print(f"  tunnel, {label}: {rate['tunnel']:.1f} MB/s (target >= 100), "
                  f"{100 * rate['tunnel'] / best:.0f} % of the local copy (target >= 25 %); "
                  f"5029: {rate['5029']:.1f} MB/s")
        print(f"CDR round trip (queued on the sensor -> acknowledged after the commit), median: "
              f"idle {1000 * median(idle):.2f} ms ({len(idle)} CDRs), during the tunnel fetch "
              f"{1000 * median(during):.2f} ms ({len(during)} CDRs), ratio "
              f"{median(during) / median(idle):.2f} (target <= 2); worst during "
              f"{1000 * max(during):.1f} ms")
        for port in sites.values():
            yield port.stopListening()
        yield close_tunnel()
        yield mport.stopListening()
        yield store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
