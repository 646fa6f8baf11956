"""Tests for voipmon.sensor.service: the whole sensor against in-memory centrals, on a Clock.

The sensor's real pieces run (replay of a bundled capture, the analysis engine, the
durable queue, the uplinks, ClientService over the failover endpoint); only the network is
in memory (iosim) and the central is a real CentralFactory with CentralSessions over the
FakeStore.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.engine import Engine
from voipmon.central.cdrqueue import CentralCdrQueue
from voipmon.central.mirror import MirrorAnalyses
from voipmon.central.service import mirror_engine_factory
from voipmon.central.sessions import CentralSessions
from voipmon.config import load_central_config, load_sensor_config
from voipmon.packet.readers import read_capture
from voipmon.queue import DurableQueue
from voipmon.records.cdr import BYE_CONFIRMED, Cdr
from voipmon.records.keys import callid_bytes
from voipmon.sensor.service import SensorService
from voipmon.spool.deadletter import DeadLetters, RecordRefused
from voipmon.spool.deadletter import read as read_dead_letters
from voipmon.store.rows import stored_form
from voipmon.test.channel_support import write_calls_pcap
from voipmon.test.common import data_path
from voipmon.test.fakes import FakeStore
from voipmon.test.fakes_channel import ChannelPair, fixed_binding
from voipmon.test.hostile_calls import HostileCall, write_capture
from voipmon.test.live_support import IdleSource
from voipmon.test.services import build_sensor

CAPTURE = data_path("sipp_uac_pcap_rtp_echo_lo_3calls.pcap")
# Calls whose Call-IDs (and other headers) hold bytes that are not UTF-8, and more.
HOSTILE = [
    HostileCall(callid=b"plain@example.org"),
    HostileCall(callid=b"id-\xff\xfe\x00\xf0\x9f\x98\x80\"'\\@h", from_display=b"\xc3(",
                from_user=b"\x00\xff", to_user=b"\\\"", ua_a=b"UA \xe9" + b"x" * 600),
    HostileCall(callid=b"refused-\xff", reason=b"\xff" * 300),
]
TWO_CAPTURE = data_path("sipp_tcp_2calls_udp_486_2calls_lo.pcap")


def expected_cdrs(path: str, id_sensor: int = 7) -> list:
    """What the engine alone makes of the capture (as voipmon-analyze would)."""
    out: list = []
    engine = Engine(id_sensor=id_sensor, on_cdr=out.append)
    engine.feed_all(read_capture(path))
    engine.finish()
    return out


def comparable(cdr) -> object:
    """A CDR as JSON carries it (times to the millisecond) and the store keeps it, without
    where its pcaps are (the two modes keep them in different spools)."""
    stored, _ = stored_form(Cdr.from_json(cdr.to_json()))
    return dataclasses.replace(stored, sip_pcap="", rtp_pcap="")


class Central:
    """A central in memory: CentralFactory + CentralSessions (+ mirroring) + a store (the
    FakeStore unless given), wired as CentralService wires them (its dead letters too)."""

    def __init__(self, clock: Clock, spool: str, password: str = "pw",
                 store: Any = None) -> None:
        self.store = store if store is not None else FakeStore(clock)
        self.pair = ChannelPair(clock=clock, handler=None, central_password=password)
        text = (f"server_bind = 127.0.0.1\nserver_password = {password}\n"
                f"spooldir = {spool}\nhttp_port = 0\n")
        settings = load_central_config("central.conf", text=text)
        self.dead_letters = DeadLetters(os.path.join(spool, "deadletter"), clock)
        self.cdr_queue = CentralCdrQueue(DurableQueue(os.path.join(spool, "central-queue")),
                                      self.store, clock, dead_letters=self.dead_letters)
        self.cdr_queue.start()
        self.mirrors = MirrorAnalyses(mirror_engine_factory(settings.spool.spooldir,
                                                            self.dead_letters),
                                      self.cdr_queue, clock)
        self.sessions = CentralSessions(self.store, clock, self.pair.factory.registry,
                                        self.mirrors, dead_letters=self.dead_letters)
        self.pair.factory.handler = self.sessions

    def stop(self) -> None:
        self.pair.close_all()
        self.mirrors.stop()
        self.cdr_queue.stop()
        self.sessions.stop()


class Base(SynchronousTestCase):
    destinations = "primary, backup"

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.base = os.path.abspath(self.mktemp())
        self.centrals = {name: Central(self.clock, os.path.join(self.base, name))
                         for name in ("primary", "backup")}
        self.exits: list[tuple[int, str]] = []
        self.services: list[SensorService] = []
        self.addCleanup(self.cleanup)

    def cleanup(self) -> None:
        for svc in self.services:
            if svc.running:
                svc.stopService()
        for central in self.centrals.values():
            central.stop()
        self.clock.advance(30)
        for central in self.centrals.values():
            central.pair.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def settings(self, **extra: str):
        lines = {"id_sensor": "7", "server_destination": self.destinations,
                 "server_password": "pw", "spooldir": os.path.join(self.base, "sensor"),
                 "managerport": "0", **extra}
        text = "".join(f"{k} = {v}\n" for k, v in lines.items())
        return load_sensor_config("sensor.conf", text=text)

    def sensor(self, read_pcap: str | None = CAPTURE, exit_when_done: bool = True,
               source: object = None, **extra: str) -> SensorService:
        svc = build_sensor(self.settings(**extra), None, read_pcap=read_pcap, source=source,
                           clock=self.clock,
                           connect=lambda d: self.centrals[d.host].pair.network,
                           binding=fixed_binding,
                           on_exit=(lambda status, message: self.exits.append((status, message)))
                           if exit_when_done else None)
        self.services.append(svc)
        return svc

    def advance(self, seconds: float = 5.0, step: float = 0.05) -> None:
        """Let time pass in small steps, moving bytes between the steps."""
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            for central in self.centrals.values():
                central.pair.flush()


class HostileCases:
    """Calls with hostile headers, in the mode of the class (``mode``: sensor options)."""

    mode: dict[str, str] = {}

    def test_callid_that_is_not_utf8_is_stored_exactly(self) -> None:
        """Issue 13: a Call-ID holding bytes that are not UTF-8 made the CDR unencodable; the
        call was lost (by the sensor's engine, or the central's when mirroring) and the
        sensor still exited 0. Now it is stored, byte for byte."""
        svc = self.sensor(read_pcap=self.hostile_capture(), **self.mode)
        svc.startService()
        self.advance()
        self.assertEqual(self.exits[0][0], 0, self.exits)
        self.assertStoredExactly(self.centrals["primary"].store)
        self.assertEqual(svc.sniffer_stat()["dead_letters"], 0)

    def hostile_capture(self) -> str:
        os.makedirs(self.base, exist_ok=True)
        return write_capture(os.path.join(self.base, "hostile.pcap"), HOSTILE)

    def assertStoredExactly(self, store: FakeStore) -> None:
        self.assertEqual(sorted(callid_bytes(c.callid) for c in store.stored_cdrs()),
                         sorted(call.callid for call in HOSTILE))
        self.assertEqual(sorted(map(comparable, store.stored_cdrs()), key=repr),
                         sorted(map(comparable, expected_cdrs(self.hostile_capture())),
                                key=repr))


class LocalTests(HostileCases, Base):
    def test_replay_delivers_what_the_engine_makes(self) -> None:
        """The central stores exactly the CDRs the engine makes of the capture; exit 0."""
        svc = self.sensor()
        svc.startService()
        self.advance()
        store = self.centrals["primary"].store
        self.assertEqual(sorted(map(comparable, store.stored_cdrs()), key=repr),
                         sorted(map(comparable, expected_cdrs(CAPTURE)), key=repr))
        self.assertEqual(len(store.stored_cdrs()), 3)
        self.assertEqual(self.exits[0][0], 0)
        self.assertIn("every CDR acknowledged", self.exits[0][1])
        self.assertEqual(svc.queue.depth, 0)
        self.assertEqual(self.centrals["backup"].store.cdr_count, 0)

    def test_pcaps_in_sensor_spool(self) -> None:
        """In local processing the call pcaps stay in the sensor's spool."""
        svc = self.sensor()
        svc.startService()
        self.advance()
        [cdr, *_] = self.centrals["primary"].store.stored_cdrs()
        self.assertTrue(cdr.sip_pcap)
        self.assertTrue(os.path.exists(os.path.join(self.base, "sensor", cdr.sip_pcap)))

    def test_failover_to_backup(self) -> None:
        """With the primary down, the same round delivers to the backup."""
        self.centrals["primary"].pair.network.fail_with = ConnectionRefusedError("down")
        svc = self.sensor()
        svc.startService()
        self.advance()
        self.assertEqual(self.centrals["backup"].store.cdr_count, 3)
        self.assertEqual(svc.failover.connected_index, 1)
        self.assertEqual(self.exits[0][0], 0)

    def test_fail_back_to_primary(self) -> None:
        """While on the backup the primary is probed; when it answers the sensor returns."""
        self.centrals["primary"].pair.network.fail_with = ConnectionRefusedError("down")
        svc = self.sensor(read_pcap=None, exit_when_done=False, source=IdleSource(),
                          failback_probe_interval="30", interface="lo")
        svc.startService()
        self.advance(5)
        self.assertEqual(svc.failover.connected_index, 1)
        self.centrals["primary"].pair.network.fail_with = None
        self.advance(31)
        self.assertEqual(svc.failover.connected_index, 0)
        self.assertEqual(svc.failover.switches, 1)
        self.assertEqual(len(self.centrals["primary"].sessions.registry), 1)

    def test_every_central_refuses(self) -> None:
        """A wrong password everywhere ends --exit-when-done with status 2 and the reason."""
        svc = self.sensor(server_password="wrong")
        svc.startService()
        self.advance(2)
        [(status, message)] = self.exits
        self.assertEqual(status, 2)
        self.assertIn("cannot deliver: every central refused this sensor", message)
        self.assertIn("primary:60024: bad password", message)
        self.assertIn("backup:60024: bad password", message)

    def test_no_central_gives_up(self) -> None:
        """With no central at all, --exit-when-done gives up after 300 s, status 1."""
        for central in self.centrals.values():
            central.pair.network.fail_with = ConnectionRefusedError("down")
        svc = self.sensor()
        svc.startService()
        self.advance(1)
        self.clock.pump([10] * 30)
        [(status, message)] = self.exits
        self.assertEqual((status, message), (1, "cannot deliver: no central reachable for 300 s"))
        self.assertEqual(svc.queue.depth, 3)

    def test_stats_sent(self) -> None:
        """Every 10 s the sensor reports its counters to the central."""
        svc = self.sensor(exit_when_done=False)
        svc.startService()
        self.advance(10.5)
        stats = self.centrals["primary"].sessions.reported[7]
        self.assertEqual(stats["packets"], 1494)
        self.assertEqual(stats["cdrs"], 3)
        self.assertEqual(svc.sniffer_stat()["central"], "primary:60024")

    def test_restart_sends_leftovers(self) -> None:
        """CDRs queued by a sensor that stopped before delivering go with the next start."""
        for central in self.centrals.values():
            central.pair.network.fail_with = ConnectionRefusedError("down")
        first = self.sensor(exit_when_done=False)
        first.startService()
        self.advance(1)
        first.stopService()
        self.assertEqual(self.centrals["primary"].store.cdr_count, 0)
        for central in self.centrals.values():
            central.pair.network.fail_with = None
        second = self.sensor(read_pcap=TWO_CAPTURE)
        second.startService()
        self.advance(5)
        self.assertEqual(self.centrals["primary"].store.cdr_count,
                         3 + len(expected_cdrs(TWO_CAPTURE)))
        self.assertEqual(self.exits[-1][0], 0)

    def test_unusable_spool(self) -> None:
        blocker = os.path.join(self.base, "file")
        os.makedirs(self.base, exist_ok=True)
        with open(blocker, "w") as handle:
            handle.write("x")
        with self.assertRaises(usage.UsageError) as caught:
            self.sensor(spooldir=blocker)
        self.assertIn("cannot use the CDR queue", str(caught.exception))


    def test_cdr_the_queue_cannot_take_is_a_dead_letter(self) -> None:
        """Issue 13: a CDR its consumer cannot take is not dropped: it is kept in
        spooldir/deadletter with its record in full, counted (sniffer_stat, STATS), logged,
        and --exit-when-done exits 3 saying so; the other calls are delivered."""
        to_wire = Cdr.to_wire

        def refuse(cdr: Cdr) -> bytes:
            if cdr.callid.startswith("refused"):
                raise OSError("disk on fire")
            return to_wire(cdr)

        self.patch(Cdr, "to_wire", refuse)
        svc = self.sensor(read_pcap=self.hostile_capture(), exit_when_done=True)
        svc.startService()
        self.advance(10.5)
        [(status, message)] = self.exits
        self.assertEqual(status, 3)
        self.assertIn("not delivered: 1 records could not be taken", message)
        self.assertIn(os.path.join(self.base, "sensor", "deadletter"), message)
        [entry] = list(read_dead_letters(os.path.join(self.base, "sensor", "deadletter")))
        self.assertEqual((entry["kind"], entry["id_sensor"]), ("cdr", 7))
        self.assertEqual(entry["reason"], "OSError: disk on fire")
        self.assertIn("refuse", entry["traceback"])
        kept = Cdr.from_wire(entry["record"])
        [made] = [c for c in expected_cdrs(self.hostile_capture())
                  if c.callid.startswith("refused")]
        self.assertEqual(kept, dataclasses.replace(made, sip_pcap=kept.sip_pcap,
                                                   rtp_pcap=kept.rtp_pcap))
        self.assertEqual(callid_bytes(entry["callid"]), b"refused-\xff")
        self.assertEqual(svc.sniffer_stat()["dead_letters"], 1)
        self.assertEqual(svc.engine.stats.undelivered, 1)
        self.assertEqual(self.centrals["primary"].sessions.reported[7]["dead_letters"], 1)
        stored = self.centrals["primary"].store.stored_cdrs()
        self.assertEqual(len(stored), len(HOSTILE) - 1)

class MirrorTests(HostileCases, Base):
    destinations = "primary"
    mode = {"packetbuffer_sender": "yes"}

    def test_same_cdrs_in_both_modes(self) -> None:
        """Mirrored to the central, the capture gives the same CDRs as local processing."""
        svc = self.sensor(packetbuffer_sender="yes")
        svc.startService()
        self.advance()
        store = self.centrals["primary"].store
        self.assertEqual(sorted(map(comparable, store.stored_cdrs()), key=repr),
                         sorted(map(comparable, expected_cdrs(CAPTURE)), key=repr))
        self.assertEqual(self.exits[0][0], 0)
        self.assertIn("1494 mirrored packets acknowledged", self.exits[0][1])
        self.assertIsNone(svc.queue)

    def test_pcaps_in_per_sensor_directory(self) -> None:
        """The central writes a mirroring sensor's pcaps under spooldir/<id_sensor>."""
        svc = self.sensor(packetbuffer_sender="yes")
        svc.startService()
        self.advance()
        cdr = self.centrals["primary"].store.stored_cdrs()[0]
        self.assertTrue(cdr.sip_pcap.startswith("7/"))
        self.assertTrue(os.path.exists(os.path.join(self.base, "primary", cdr.sip_pcap)))

    def test_cdr_the_central_cannot_take_is_a_dead_letter(self) -> None:
        """Issue 13, mirroring: a CDR the central's CDR queue cannot take is kept in the
        central's spooldir/deadletter and counted there; END_ACK says so and the sensor's
        --exit-when-done exits 3."""
        central = self.centrals["primary"]
        add = central.cdr_queue.add

        def refuse(cdr: Cdr) -> bool:
            if cdr.callid.startswith("refused"):
                raise RecordRefused("the queue is closed (test)")
            return add(cdr)

        self.patch(central.cdr_queue, "add", refuse)
        svc = self.sensor(read_pcap=self.hostile_capture(), **self.mode)
        svc.startService()
        self.advance()
        [(status, message)] = self.exits
        self.assertEqual(status, 3)
        self.assertIn("not delivered: 1 records could not be taken (dead letters, kept in the "
                      "dead-letter directory of central primary:60024", message)
        self.assertEqual(svc.uplink.central_undelivered, 1)
        self.assertEqual(central.dead_letters.count, 1)
        [entry] = list(read_dead_letters(os.path.join(self.base, "primary", "deadletter")))
        self.assertEqual((entry["kind"], entry["id_sensor"]), ("cdr", 7))
        self.assertEqual(callid_bytes(Cdr.from_wire(entry["record"]).callid), b"refused-\xff")
        self.assertEqual(len(central.store.stored_cdrs()), len(HOSTILE) - 1)

    def test_sensor_settings_reach_central_engine(self) -> None:
        """The sensor's sipport goes to the central's engine for its packets."""
        svc = self.sensor(packetbuffer_sender="yes", sipport="5060, 5080")
        svc.startService()
        self.advance()
        hello = self.centrals["primary"].mirrors.analyses[7].hello
        self.assertEqual(hello.analysis["sipport"], [5060, 5080])

    def test_live_calls_close_while_the_line_is_quiet(self) -> None:
        """A live mirroring sensor sends a complete call, then nothing, and stays connected:
        its capture clock (CLOCK, every second) lets the central's engine close the call as
        a local-processing sensor's engine would (BYE answered, then the linger), and store
        it, without waiting for the next packet."""
        svc = self.sensor(read_pcap=None, exit_when_done=False, source=IdleSource(),
                          packetbuffer_sender="yes", interface="lo")
        svc.startService()
        self.advance(1)
        pcap = write_calls_pcap(os.path.join(self.base, "call.pcap"), 1,
                                start=self.clock.seconds(), rtp_packets=10)
        for ts, linktype, frame in read_capture(pcap):
            svc.uplink.feed(ts, linktype, frame)
        self.advance(2)
        store = self.centrals["primary"].store
        self.assertEqual(store.cdr_count, 0)  # the call is over, but lingers (5 s)
        self.advance(8)
        cdrs = store.stored_cdrs()
        self.assertEqual(len(cdrs), 1, "the central closed no call while the line was quiet")
        cdr = cdrs[0]
        self.assertEqual((cdr.callid, cdr.bye), ("call-0@synthetic.example", BYE_CONFIRMED))
        self.assertEqual(comparable(cdr), comparable(expected_cdrs(pcap)[0]))
        self.assertEqual(len(self.centrals["primary"].sessions.registry), 1)
        self.assertEqual(svc.uplink.end_state, None)
