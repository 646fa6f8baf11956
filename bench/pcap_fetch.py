"""MB/s of a 50 MB call pcap fetched through the central's HTTP API from a sensor's
management port (TLS + password proof) on loopback, beside a plain local file copy.

Two fetches: a call whose RTP pcap is 50 MB and SIP pcap small (merged by time on the
sensor, record by record) and a call with only its 50 MB pcap (passed through as it is).
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

from voipmon.manager.commands import ManagerCommands
from voipmon.manager.server import ManagerServerFactory
from voipmon.manager.service import ManagerConnector
from voipmon.protocols import tls
from voipmon.protocols.handshake import derive_key
from voipmon.spool.layout import minute_dir
from voipmon.store.sqlstore import SqlStore
from voipmon.store.testing import make_cdr, sqlite_dialect
from voipmon.web.api import find_sensor
from voipmon.web.pcaps import CallPcaps, SensorLink
from voipmon.web.site import make_site

PASSWORD = "bench"


def write_rtp_pcap(path: str, size: int, start: float) -> None:
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
        write_rtp_pcap(os.path.join(spool, paths["rtp"]), size, merged_cdr.calldate + 1)
        write_rtp_pcap(os.path.join(spool, paths["sip"]), 50_000, merged_cdr.calldate)
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
        pcaps = CallPcaps(work, SensorLink(None, lambda i: find_sensor(store, i), "",
                                           ManagerConnector(reactor, PASSWORD)))
        hport = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            make_site(store, pcaps))
        agent = Agent(reactor)
        base = f"http://127.0.0.1:{hport.getHost().port}"

        results = []
        for label, name in (("merged SIP+RTP", "big"), ("single pcap", "only")):
            best = 0.0
            for _ in range(3):
                started = time.perf_counter()
                url = f"{base}/api/cdrs/{ids[name]}/pcap".encode()
                response = yield agent.request(b"GET", url, Headers({}))
                body = yield readBody(response)
                elapsed = time.perf_counter() - started
                if response.code != 200:
                    raise SystemExit(f"fetch failed: {response.code} {body[:200]!r}")
                best = max(best, len(body) / elapsed / 1e6)
            results.append((label, len(body), best))

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

        print("pcap fetch through central HTTP <- sensor 5029 (TLS, proof), loopback, best of 3")
        for label, nbytes, rate in results:
            print(f"  {label:16s} {nbytes / 1e6:7.1f} MB  {rate:8.1f} MB/s")
        print(f"  reference: plain local file copy  {os.path.getsize(src) / 1e6:7.1f} MB  "
              f"{best:8.1f} MB/s")
        print(f"  ratio (single pcap / local copy): {results[1][2] / best:.2f}")
        yield hport.stopListening()
        yield mport.stopListening()
        yield store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
