"""Tests for voipmon.protocols.admission: the gate on a Clock, its Twisted glue over
StringTransport, and the central's channel behind it (iosim) under a flood."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from voipmon.protocols.admission import (
    GREETED,
    OPENED,
    SECURED,
    SPOKE,
    AdmissionGate,
    AdmissionPolicy,
    source_key,
)
from voipmon.protocols.gated import GatedFactory, IGated, innermost
from voipmon.protocols.server import CentralChannel
from voipmon.test.fakes_channel import ChannelPair


def addr(host: str, port: int = 40000) -> Any:
    return (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)


class GateCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.evicted: list[tuple[str, str]] = []
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def gate(self, **policy: Any) -> AdmissionGate:
        gate = AdmissionGate("test port", self.clock, AdmissionPolicy(**policy))
        self.addCleanup(self.no_timer_left, gate)
        return gate

    def no_timer_left(self, gate: AdmissionGate) -> None:
        gate.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def admit(self, gate: AdmissionGate, name: str, host: str = "192.0.2.1"):
        return gate.admit(addr(host), lambda reason: self.evicted.append((name, reason)),
                          label=f"{host}:40000")

    def flood_lines(self) -> list[str]:
        return [formatEvent(e) for e in self.observer
                if "connections in their handshake" in formatEvent(e)]


class EvictionTests(GateCase):
    def test_newcomer_evicts_the_oldest_idle_connection(self) -> None:
        """At capacity a newcomer gets in and the connection idle the longest goes."""
        gate = self.gate(capacity=3, per_source=10)
        tickets = [self.admit(gate, name, f"192.0.2.{n}") for n, name in enumerate("abc", 1)]
        self.clock.advance(0.1)
        d = self.admit(gate, "d", "192.0.2.4")
        self.assertEqual([name for name, _ in self.evicted], ["a"])
        self.assertIn("evicted to make room: 3 connections in their handshake (the limit is 3)",
                      self.evicted[0][1])
        self.assertEqual((tickets[0].state, d.state, gate.pending), ("evicted", "waiting", 3))
        for ticket in (*tickets, d):
            ticket.release()
        self.assertEqual(gate.pending, 0)

    def test_progress_protects_a_connection(self) -> None:
        """A connection that sent bytes, or got further, outranks every idle one: the idle
        ones go first however old the others are, newest idle connections included."""
        gate = self.gate(capacity=3, per_source=10)
        sensor = self.admit(gate, "sensor")
        sensor.progress(SPOKE)
        self.clock.advance(1)
        for n in range(20):
            self.admit(gate, f"idle{n}")
            self.clock.advance(0.01)
        self.assertEqual(sensor.state, "waiting")
        self.assertEqual([name for name, _ in self.evicted], [f"idle{n}" for n in range(18)])
        sensor.progress(SECURED)
        sensor.progress(GREETED)
        sensor.done()
        self.assertEqual(gate.pending, 2)
        self.assertEqual(gate.totals["done"], 1)

    def test_lowest_stage_first_then_longest_without_progress(self) -> None:
        """Among connections of one stage the one whose last progress is oldest goes; a
        connection being closed anyway goes before all."""
        gate = self.gate(capacity=3, per_source=10)
        a, b, c = (self.admit(gate, name) for name in "abc")
        b.progress(SPOKE)
        self.clock.advance(1)
        a.progress(SPOKE)
        c.progress(SECURED)
        self.admit(gate, "d")                      # b spoke before a did: b goes
        self.assertEqual(self.evicted[-1][0], "b")
        c.closing()
        self.admit(gate, "e")                      # c is being closed: it goes first
        self.assertEqual(self.evicted[-1][0], "c")
        self.clock.advance(0)                      # d and e had their turn to speak
        self.admit(gate, "f")                      # then the oldest idle one: d
        self.assertEqual([name for name, _ in self.evicted], ["b", "c", "d"])
        self.assertEqual(a.stage, SPOKE)

    def test_per_source_limit_evicts_that_source_only(self) -> None:
        """A source at its limit makes room among its own connections; others keep theirs
        even though they are older."""
        gate = self.gate(capacity=10, per_source=2)
        other = self.admit(gate, "other", "198.51.100.9")
        self.clock.advance(1)
        x1 = self.admit(gate, "x1", "203.0.113.5")
        self.admit(gate, "x2", "203.0.113.5")
        self.clock.advance(0)
        self.admit(gate, "x3", "203.0.113.5")
        self.assertEqual([name for name, _ in self.evicted], ["x1"])
        self.assertIn("2 connections from 203.0.113.5 in their handshake (the limit per "
                      "address is 2)", self.evicted[0][1])
        self.assertEqual((other.state, x1.state), ("waiting", "evicted"))
        self.assertEqual(gate.from_source(addr("203.0.113.5")), 2)
        self.assertEqual(gate.pending, 3)

    def test_newcomers_have_a_turn_to_speak(self) -> None:
        """A burst accepted in one turn of the event loop cannot push out a connection of
        the same burst before it could be read: the table goes over its limit meanwhile,
        and settles on the next arrivals once they had their turn."""
        gate = self.gate(capacity=4, per_source=4, hard_limit=64)
        sensor = self.admit(gate, "sensor")
        for n in range(20):                        # same turn: nobody is evicted
            self.admit(gate, f"idle{n}")
        self.assertEqual((self.evicted, gate.pending), ([], 21))
        sensor.progress(SPOKE)                     # its bytes are read in the next turn
        self.clock.advance(0)
        self.admit(gate, "late")
        self.assertEqual(self.evicted[0][0], "idle0")
        for n in range(40):
            self.admit(gate, f"more{n}")
            self.clock.advance(0)
        self.assertEqual(sensor.state, "waiting")
        self.assertEqual(gate.pending, 4)

    def test_hard_limit_evicts_even_newcomers(self) -> None:
        """Past hard_limit the oldest goes even if it has not had its turn yet."""
        gate = self.gate(capacity=2, per_source=2, hard_limit=5)
        for n in range(8):
            self.admit(gate, f"c{n}")
        self.assertEqual([name for name, _ in self.evicted], ["c0", "c1", "c2"])
        self.assertEqual(gate.pending, 5)

    def test_unread_bytes_count_as_speaking(self) -> None:
        """Before an idle connection is evicted the gate asks whether bytes wait unread
        on it: a sensor whose ClientHello the loop has not read yet is not taken for idle."""
        gate = self.gate(capacity=2, per_source=2)
        sensor = gate.admit(addr("192.0.2.1"), lambda reason: self.evicted.append(("s", reason)),
                            has_input=lambda: True)
        idle = self.admit(gate, "idle")
        self.clock.advance(0)
        self.admit(gate, "newcomer")
        self.assertEqual([name for name, _ in self.evicted], ["idle"])
        self.assertEqual((sensor.stage, idle.state), (SPOKE, "evicted"))

    def test_source_keys(self) -> None:
        """IPv4 by address, IPv6 by /64, IPv4-mapped IPv6 as IPv4."""
        self.assertEqual(source_key(addr("192.0.2.1")), "192.0.2.1")
        self.assertEqual(source_key(addr("2001:db8:1:2::5")), "2001:db8:1:2::/64")
        self.assertEqual(source_key(addr("2001:db8:1:2:ffff::9")), "2001:db8:1:2::/64")
        self.assertNotEqual(source_key(addr("2001:db8:1:3::5")), "2001:db8:1:2::/64")
        self.assertEqual(source_key(addr("::ffff:192.0.2.1")), "192.0.2.1")
        self.assertEqual(source_key(addr("fe80::1%eth0")), "fe80::/64")
        self.assertEqual(source_key(object()), "?")

    def test_eviction_failure_logged(self) -> None:
        """A connection that cannot be dropped is logged; admission goes on."""
        gate = self.gate(capacity=1)

        def broken(reason: str) -> None:
            raise RuntimeError("transport gone")

        first = gate.admit(addr("192.0.2.1"), broken)
        self.clock.advance(0)
        second = self.admit(gate, "second")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual((first.state, second.state), ("evicted", "waiting"))
        second.release()


class DeadlineTests(GateCase):
    def test_deadline_without_pressure(self) -> None:
        """Without pressure a connection has the whole deadline (TLS included), progress
        or not; one that authenticates in time is out of the gate."""
        gate = self.gate(capacity=10, deadline=10.0)
        idle = self.admit(gate, "idle")
        slow = self.admit(gate, "slow")
        quick = self.admit(gate, "quick")
        self.clock.advance(5)
        slow.progress(SECURED)
        quick.progress(GREETED)
        quick.done()
        self.clock.advance(4.5)
        self.assertEqual(self.evicted, [])
        self.clock.advance(0.5)
        self.assertEqual(sorted(name for name, _ in self.evicted), ["idle", "slow"])
        self.assertIn("handshake not completed within 10 s", self.evicted[0][1])
        self.assertEqual((idle.state, slow.state, quick.state), ("expired", "expired", "done"))

    def test_idle_limit_shrinks_under_pressure(self) -> None:
        """Past the pressure mark a connection gets less time without progress, down to
        min_idle when the table is full; one that keeps making progress stays until the
        deadline."""
        policy = AdmissionPolicy(capacity=10, pressure=0.5, deadline=10.0, min_idle=2.0)
        self.assertEqual(policy.idle_limit(5), 10.0)
        self.assertEqual(policy.idle_limit(10), 2.0)
        self.assertAlmostEqual(policy.idle_limit(8), 5.2)
        gate = self.gate(capacity=10, pressure=0.5, deadline=10.0, min_idle=2.0)
        busy = self.admit(gate, "busy")
        for n in range(9):
            self.admit(gate, f"idle{n}")
        self.clock.advance(1)
        busy.progress(SPOKE)
        self.clock.advance(1)
        self.assertEqual(len(self.evicted), 9)
        self.assertIn("no progress for 2.0 s with 10 connections in their handshake",
                      self.evicted[0][1])
        self.assertEqual(busy.state, "waiting")
        # alone again: no pressure, the rest of its deadline
        self.clock.pump([0.5] * 15)
        self.assertEqual(busy.state, "waiting")
        self.clock.pump([0.5] * 2)
        self.assertEqual(busy.state, "expired")

    def test_no_timer_once_empty(self) -> None:
        gate = AdmissionGate("port", self.clock)
        ticket = self.admit(gate, "a")
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)   # deadlines, event turns
        ticket.progress(SPOKE)
        ticket.done()
        ticket.release()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(gate.counters()["pending"], 0)


class ReportTests(GateCase):
    def test_flood_logged_once_per_interval(self) -> None:
        """A flood of a thousand evictions over 25 s: one line at once, then one per 10 s,
        each with its counts, and nothing per connection."""
        gate = self.gate(capacity=4, per_source=4, report_interval=10.0)
        tickets = []
        for n in range(1000):
            tickets.append(self.admit(gate, f"c{n}", "203.0.113.7"))
            self.clock.advance(0.025)
        gate.stop()
        lines = self.flood_lines()
        self.assertEqual(len(lines), 4, lines)
        self.assertIn("test port: connections in their handshake: 1 evicted to make room and "
                      "0 timed out in 0 s (1 had sent nothing; most from 203.0.113.7: 1)",
                      lines[0])
        events = [e for e in self.observer if "evicted" in e]
        self.assertEqual(sum(e["evicted"] for e in events), 996)
        self.assertApproximates(events[1]["seconds"], 10.0, 0.03)   # within a step
        self.assertIn("203.0.113.7:40000 (opened): evicted to make room", lines[1])
        self.assertEqual(len(self.observer), 4)
        for ticket in tickets:
            ticket.release()

    def test_quiet_then_one_timeout(self) -> None:
        """A lone timeout is reported at once, naming the peer."""
        gate = self.gate(capacity=4)
        self.admit(gate, "a", "198.51.100.3")
        self.clock.pump([0.5] * 20)
        [line] = self.flood_lines()
        self.assertIn("0 evicted to make room and 1 timed out", line)
        self.assertIn("198.51.100.3:40000 (opened): handshake not completed within 10 s", line)


@implementer(IGated)
class _Application(protocol.Protocol):
    admission = None
    data = b""

    def connectionMade(self) -> None:
        self.seen_at_connect = self.admission

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class GlueTests(GateCase):
    def connect(self, factory: GatedFactory, host: str = "192.0.2.1"):
        proto = factory.buildProtocol(addr(host))
        transport = StringTransport(peerAddress=addr(host))
        proto.makeConnection(transport)
        return proto, transport

    def test_ticket_reaches_the_application_and_first_bytes_count(self) -> None:
        """The application gets its ticket before connectionMade; the first bytes make it
        SPOKE; eviction aborts the TCP connection; losing it releases the ticket."""
        gate = self.gate(capacity=1)
        factory = GatedFactory(gate, protocol.Factory.forProtocol(_Application))
        first, first_io = self.connect(factory)
        application = innermost(first)
        self.assertIs(application.seen_at_connect, first.ticket)
        self.assertEqual(first.ticket.stage, OPENED)
        first.dataReceived(b"\x16\x03\x01")
        self.assertEqual((first.ticket.stage, application.data), (SPOKE, b"\x16\x03\x01"))
        self.clock.advance(0)
        second, _ = self.connect(factory, "192.0.2.2")
        self.assertTrue(first_io.disconnected)  # aborted: no goodbye to an unknown peer
        first.connectionLost(None)
        second.connectionLost(None)
        self.assertEqual(gate.pending, 0)

    def test_unread_bytes_seen_in_the_socket(self) -> None:
        """has_input looks into the socket without taking anything from it."""
        gate = self.gate(capacity=4)
        factory = GatedFactory(gate, protocol.Factory.forProtocol(_Application))
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        transport = StringTransport(peerAddress=addr("192.0.2.1"))
        transport.getHandle = lambda: ours
        proto = factory.buildProtocol(addr("192.0.2.1"))
        proto.makeConnection(transport)
        self.assertFalse(proto.ticket.has_input())
        theirs.send(b"\x16")
        self.assertTrue(proto.ticket.has_input())
        self.assertEqual(ours.recv(10), b"\x16")       # still there to be read
        self.assertFalse(proto.ticket.has_input())
        proto.connectionLost(None)

    def test_stop_listening_flushes_the_report(self) -> None:
        gate = self.gate(capacity=1)
        factory = GatedFactory(gate, protocol.Factory.forProtocol(_Application))
        factory.doStart()
        protos = []
        for n in range(1, 5):
            protos.append(self.connect(factory, f"192.0.2.{n}")[0])
            self.clock.advance(0)
        for proto in protos:
            proto.connectionLost(None)
        self.assertEqual(len(self.flood_lines()), 1)
        factory.doStop()
        self.assertEqual(len(self.flood_lines()), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ChannelFloodTests(SynchronousTestCase):
    """The central's channel behind a gate, in memory: a sensor gets in through a flood of
    idle connections from its own address, each reopened as soon as it is dropped."""

    def setUp(self) -> None:
        self.gate_policy = AdmissionPolicy(capacity=16, per_source=8)
        self.pair = ChannelPair()
        self.gate = AdmissionGate("sensor port", self.pair.clock, self.gate_policy)
        self.pair.network.server_factory = GatedFactory(self.gate, self.pair.factory)
        self.idle: list[Any] = []

    def open_idle(self) -> None:
        self.pair.network.connect(protocol.Factory.forProtocol(protocol.Protocol))
        self.idle.append(self.pair.network.pumps[-1])

    def keep_flooding(self, connections: int) -> int:
        """One turn of the event loop: bytes move, then every idle connection the central
        dropped is opened again at once; returns how many were dropped."""
        self.pair.clock.advance(0)
        self.pair.flush()
        dropped = [pump for pump in self.idle if pump.server.transport.disconnected]
        for pump in dropped:
            self.idle.remove(pump)
        while len(self.idle) < connections:
            self.open_idle()
        return len(dropped)

    def test_sensor_gets_in_through_the_flood(self) -> None:
        for _ in range(40):
            self.open_idle()
            self.pair.clock.advance(0)
        self.assertEqual(self.gate.pending, 8)          # 8 per address
        d = self.pair.endpoint().connect(protocol.Factory.forProtocol(protocol.Protocol))
        sensor_pump = self.pair.network.pumps[-1]
        for _ in range(30):                              # a burst in the same turn
            self.open_idle()
        dropped = 0
        for _ in range(10):                              # the flood goes on meanwhile
            dropped += self.keep_flooding(70)
        session = self.successResultOf(d)
        self.assertIsNotNone(session)
        self.assertGreater(dropped, 40)
        channel = innermost(sensor_pump.server)
        self.assertIsInstance(channel, CentralChannel)
        self.assertEqual((channel.authenticated, channel.admission.state), (True, "done"))
        self.assertEqual(len(self.pair.handler.sessions), 1)

    def test_gate_keeps_the_deadline(self) -> None:
        """Behind a gate the channel sets no handshake timer of its own; the gate's
        deadline closes a silent connection (without a per-connection log line)."""
        self.open_idle()
        channel = innermost(self.idle[0].server)
        self.assertIsNone(channel._handshake_timer)
        self.pair.clock.advance(9.5)
        self.assertFalse(self.idle[0].server.transport.disconnecting)
        self.pair.clock.advance(0.5)
        self.assertTrue(self.idle[0].server.transport.disconnecting)
        self.pair.flush()
        self.assertEqual(self.gate.pending, 0)
        self.assertEqual(self.pair.clock.getDelayedCalls(), [])
