"""A flood of idle connections against the real listeners: a sensor still gets in.

``twistd voipmon-central`` listens on 127.0.0.1 (TLS, an ephemeral port). A flooder
process (voipmon.test.flood) holds 300 idle TCP connections to it and reopens each one as
soon as the central drops it, for 30 s. Meanwhile a real ``twistd voipmon-sensor
--read-pcap ... --exit-when-done`` starts, and must connect, deliver its CDRs and exit 0
while the flood goes on. The time it took is printed (bench/flood.py measures it beside a
run without a flood); the test's own bound is the flood itself, not a timer.

``ManagerFloodTests`` does the same, smaller, to a sensor's management port (TLS and the
password proof) served in this process: the central's command still gets its answer, and
the port holds a bounded number of connections, dropping idle ones.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import time

from twisted.internet import defer, reactor, threads
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import TestCase

from voipmon.manager.service import ManagerConnector
from voipmon.test.channel_support import Process, free_port
from voipmon.test.services import manager_service
from voipmon.test.test_channel_integration import CAPTURES, ProcessBase, engine_uids
from voipmon.test.test_manager_commands import FakeSensor
from voipmon.test.test_manager_service import PASSWORD, sensor_settings

log = Logger()

FLOOD_CONNECTIONS = 300
FLOOD_SECONDS = 30.0


def start_flood(port: int, connections: int = FLOOD_CONNECTIONS,
                seconds: float = FLOOD_SECONDS) -> Process:
    """The flooder process, once it has opened all its connections."""
    flood = Process([sys.executable, "-m", "voipmon.test.flood", "127.0.0.1", str(port),
                     "--connections", str(connections), "--seconds", str(seconds)], "flood")
    flood.wait_for(rf"flooding: {connections} connections", 30)
    return flood


def flood_totals(flood: Process) -> dict:
    return json.loads(flood.wait_for(r"^flood done: (.*)$", 60).group(1))


class HandshakeFloodTests(ProcessBase):
    def test_sensor_delivers_during_a_flood_of_idle_connections(self) -> None:
        """300 idle connections, each reopened as soon as it is dropped, for 30 s: a sensor
        with the right password connects, delivers and exits 0 while the flood goes on,
        and the central logs the flood once per interval, not once per connection."""
        port = free_port()
        central = self.central("central", port)
        flood = start_flood(port)
        self.processes.append(flood)
        flood_started = time.monotonic()
        flood.wait_for(r"^flood: ", 5)  # a full second of flooding before the sensor starts
        started = time.monotonic()
        sensor = self.sensor("edge", 71, [port], CAPTURES[0])
        remaining = FLOOD_SECONDS - (time.monotonic() - flood_started) - 1.0
        status = sensor.wait(remaining) if remaining > 0 else None
        elapsed = time.monotonic() - started
        self.assertIsNone(flood.proc.poll(), "the flood ended before the sensor did")
        self.assertEqual(status, 0, sensor.text()[-3000:])
        figure = (f"sensor delivered and exited 0 in {elapsed:.2f} s under a flood of "
                  f"{FLOOD_CONNECTIONS} idle connections (target: 5 s)")
        sys.stdout.write(f"\n{figure}\n")
        log.info("{figure}", figure=figure, seconds=elapsed)
        self.assertEqual(flood.wait(60), 0)
        totals = flood_totals(flood)
        # The flood was real: it had all its connections open at once, and the central had
        # to drop far more connections than the flood holds to keep room.
        self.assertEqual(totals["max_open"], FLOOD_CONNECTIONS)
        self.assertGreater(totals["dropped"], 10 * FLOOD_CONNECTIONS)
        sensor.wait_for(r"done: every CDR acknowledged")
        stored = _stored_uids(os.path.join(self.base, "central", "db.sqlite"), 71)
        self.assertEqual(stored, engine_uids(CAPTURES[0], 71))
        summaries = [line for line in central.lines if "connections in their handshake" in line]
        self.assertGreater(len(summaries), 0, central.text()[-3000:])
        self.assertLess(len(summaries), FLOOD_SECONDS / 10 + 3)
        self.assertEqual([line for line in central.lines if "closing connection with" in line],
                         [])


def _stored_uids(path: str, id_sensor: int) -> set[tuple[int, str]]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT id_sensor, sensor_cdr_uid FROM cdr WHERE id_sensor = ?",
                                  (id_sensor,)).fetchall()
    return {(int(a), str(b)) for a, b in rows}




class CountingFactory(WrappingFactory):
    """Counts the server's live connections (and their most at once); ``all_gone`` fires
    once none is left."""

    def __init__(self, wrapped: object) -> None:
        super().__init__(wrapped)
        self.live = self.most = 0
        self._waiting: list[defer.Deferred] = []

    def registerProtocol(self, p: object) -> None:
        super().registerProtocol(p)
        self.live += 1
        self.most = max(self.most, self.live)

    def unregisterProtocol(self, p: object) -> None:
        super().unregisterProtocol(p)
        self.live -= 1
        if not self.live:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def all_gone(self) -> defer.Deferred:
        if not self.live:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d


class ManagerFloodTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_command_answered_during_a_flood(self) -> None:
        """100 idle connections to the management port, each reopened as soon as it is
        dropped: the central's command is answered meanwhile, and the port drops idle
        connections instead of holding all of them."""
        spool = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(spool, "x"))
        with open(os.path.join(spool, "x", "f.pcap"), "wb") as handle:
            handle.write(b"pcap bytes")
        settings = sensor_settings(spool, managerport="5029")
        svc = manager_service(settings, reactor, FakeSensor(), FakeSensor(), port=0)
        svc.factory = counting = CountingFactory(svc.factory)
        svc.startService()
        listening: defer.Deferred = defer.Deferred()
        svc._waitingForPort.addCallback(lambda p: listening.callback(p) or p)
        port = (yield listening).getHost().port
        flood = Process([sys.executable, "-m", "voipmon.test.flood", "127.0.0.1", str(port),
                         "--connections", "100", "--seconds", "10", "--settle", "1"],
                        "flood")
        self.addCleanup(flood.stop)
        yield threads.deferToThread(flood.wait_for, r"flooding: 100 connections", 30)
        data = yield ManagerConnector(reactor, PASSWORD).query("127.0.0.1", port, 7,
                                                               "getfile x/f.pcap")
        self.assertEqual(data, b"pcap bytes")
        self.assertIsNone(flood.proc.poll(), "the flood ended before the command did")
        line = yield threads.deferToThread(flood.wait_for, r"^flood: ", 5, len(flood.lines))
        flood.stop()
        yield counting.all_gone()
        yield svc.stopService()
        # The port dropped idle connections all along (it holds 32 per address, plus
        # those not read yet) rather than keeping each one for its 30 s timeout.
        dropped = int(re.search(r"(\d+) dropped", line.string).group(1))
        self.assertGreater(dropped, 100)
        self.assertGreater(svc.factory.wrappedFactory.gate.totals["evicted"], 100)
