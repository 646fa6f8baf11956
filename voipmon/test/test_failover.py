"""Tests for voipmon.protocols.failover: ClientService over the failover endpoint, on a Clock."""

from __future__ import annotations

from twisted.application.internet import ClientService
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from voipmon.protocols.failover import (
    FailbackProber,
    FailoverEndpoint,
    FailoverRoundFailed,
    describe_failure,
)
from voipmon.test.fakes_channel import FakeEndpoint


class Recorder(protocol.Protocol):
    pass


class Harness:
    """A ClientService over a FailoverEndpoint of three fake centrals."""

    def __init__(self, test: SynchronousTestCase, count: int = 3, jitter: float = 0.5) -> None:
        self.clock = Clock()
        self.children = [FakeEndpoint(f"c{i}") for i in range(count)]
        self.endpoint = FailoverEndpoint([(f"c{i}:60024", e) for i, e in enumerate(self.children)],
                                         self.clock, jitter=lambda: jitter)
        self.service = ClientService(self.endpoint, protocol.Factory.forProtocol(Recorder),
                                     retryPolicy=self.endpoint.retry_delay, clock=self.clock)
        self.service.startService()

        def stop() -> None:
            self.service.stopService()
            test.assertEqual(self.clock.getDelayedCalls(), [])

        test.addCleanup(stop)

    def pending(self) -> list[int]:
        return [len(child.queue) for child in self.children]

    def fail_round(self) -> None:
        for child in self.children:
            child.fail()


class OrderTests(SynchronousTestCase):
    def test_first_central_first(self) -> None:
        """Starting tries only the primary."""
        h = Harness(self)
        self.assertEqual(h.pending(), [1, 0, 0])

    def test_next_tried_at_once(self) -> None:
        """A failure moves to the next central immediately, without waiting."""
        h = Harness(self)
        h.children[0].fail()
        self.assertEqual(h.pending(), [0, 1, 0])
        h.children[1].fail()
        self.assertEqual(h.pending(), [0, 0, 1])

    def test_connected_to_backup(self) -> None:
        """The first central that accepts wins; whenConnected fires with its protocol."""
        h = Harness(self)
        h.children[0].fail()
        proto = h.children[1].succeed()
        self.assertIs(self.successResultOf(h.service.whenConnected()), proto._protocol)
        self.assertEqual(h.endpoint.connected_index, 1)
        self.assertEqual(h.endpoint.current, "c1:60024")
        self.assertEqual(h.pending(), [0, 0, 0])

    def test_every_round_starts_from_the_first(self) -> None:
        """After a whole round fails, the next round begins again with the primary."""
        h = Harness(self)
        h.fail_round()
        self.assertEqual(h.pending(), [0, 0, 0])
        h.clock.advance(1.0)
        self.assertEqual(h.pending(), [1, 0, 0])

    def test_round_failure_lists_every_central(self) -> None:
        """whenConnected(failAfterFailures=1) fails with each central's reason."""
        h = Harness(self)
        d = h.service.whenConnected(failAfterFailures=1)
        h.fail_round()
        failure = self.failureResultOf(d, FailoverRoundFailed)
        text = str(failure.value)
        for i in range(3):
            self.assertIn(f"c{i}:60024: Connection was refused by other side: c{i} refused",
                          text)
        self.assertEqual(len(failure.value.attempts), 3)

    def test_exception_from_child_connect(self) -> None:
        """A child whose connect() raises counts as a failed attempt."""
        clock = Clock()

        class Broken:
            def connect(self, factory):
                raise RuntimeError("bad endpoint")

        good = FakeEndpoint("good")
        endpoint = FailoverEndpoint([("bad", Broken()), ("good", good)], clock)
        d = endpoint.connect(protocol.Factory.forProtocol(Recorder))
        self.assertEqual(len(good.queue), 1)
        good.fail()
        self.assertIn("bad: bad endpoint", str(self.failureResultOf(d).value))

    def test_needs_endpoints(self) -> None:
        self.assertRaises(ValueError, FailoverEndpoint, [], Clock())


class BackoffTests(SynchronousTestCase):
    def test_backoff_doubles_to_thirty(self) -> None:
        """Rounds are 1, 2, 4, 8, 16, 30, 30 s apart (jitter at its midpoint)."""
        h = Harness(self)
        for expected in (1, 2, 4, 8, 16, 30, 30):
            h.fail_round()
            h.clock.advance(expected - 0.001)
            self.assertEqual(h.pending(), [0, 0, 0], expected)
            h.clock.advance(0.001)
            self.assertEqual(h.pending(), [1, 0, 0], expected)

    def test_jitter_bounds(self) -> None:
        """Jitter spreads a delay over 0.75x..1.25x."""
        for jitter, expected in ((0.0, 0.75), (1.0, 1.25)):
            endpoint = FailoverEndpoint([("a", FakeEndpoint())], Clock(), jitter=lambda j=jitter: j)
            endpoint.failed_rounds = 1
            self.assertAlmostEqual(endpoint.retry_delay(1), expected)
            endpoint.failed_rounds = 10
            self.assertAlmostEqual(endpoint.retry_delay(1), 30 * expected)

    def test_huge_round_count(self) -> None:
        """A very long outage keeps the delay at the maximum."""
        endpoint = FailoverEndpoint([("a", FakeEndpoint())], Clock(), jitter=lambda: 0.5)
        endpoint.failed_rounds = 10_000
        self.assertEqual(endpoint.retry_delay(1), 30.0)

    def test_success_then_stable_loss_reconnects_quickly(self) -> None:
        """Losing a connection that was up a while starts a new round within 0.25 s."""
        h = Harness(self, jitter=1.0)
        h.fail_round()
        h.clock.advance(1.25)
        proto = h.children[0].succeed()
        h.clock.advance(60)
        proto.transport.loseConnection()
        self.assertEqual(h.endpoint.connected_index, None)
        h.clock.advance(0.249)
        self.assertEqual(h.pending(), [0, 0, 0])
        h.clock.advance(0.001)
        self.assertEqual(h.pending(), [1, 0, 0])
        self.assertEqual(h.endpoint.failed_rounds, 0)

    def test_flapping_connection_backs_off(self) -> None:
        """A connection that dies at once counts as a failure: 1 s, then 2 s."""
        h = Harness(self)
        for expected in (1, 2, 4):
            proto = h.children[0].succeed()
            proto.transport.loseConnection()
            h.clock.advance(expected - 0.001)
            self.assertEqual(h.pending(), [0, 0, 0])
            h.clock.advance(0.001)
            self.assertEqual(h.pending(), [1, 0, 0])

    def test_lost_backup_restarts_at_primary(self) -> None:
        """Losing a backup connection starts the next round from the primary."""
        h = Harness(self, jitter=0.0)
        h.children[0].fail()
        proto = h.children[1].succeed()
        h.clock.advance(20)
        proto.transport.loseConnection()
        h.clock.advance(0)
        self.assertEqual(h.pending(), [1, 0, 0])


class StopTests(SynchronousTestCase):
    def test_stop_cancels_attempt_in_flight(self) -> None:
        """Stopping mid-round cancels the child's attempt and leaves no timers."""
        h = Harness(self)
        h.children[0].fail()
        self.assertEqual(h.pending(), [0, 1, 0])
        self.successResultOf(h.service.stopService())
        self.assertEqual(h.children[1].cancelled, 1)
        self.assertEqual(h.pending(), [0, 0, 0])
        self.assertEqual(h.children[2].connects, 0)

    def test_stop_while_waiting(self) -> None:
        """Stopping between rounds cancels the scheduled round."""
        h = Harness(self)
        h.fail_round()
        self.successResultOf(h.service.stopService())
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stop_while_connected(self) -> None:
        """Stopping closes the connection."""
        h = Harness(self)
        proto = h.children[0].succeed()
        self.successResultOf(h.service.stopService())
        self.assertFalse(proto.transport.connected)


class LogTests(SynchronousTestCase):
    def events(self) -> EventLoggingObserver:
        return EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def formats(self, observer: EventLoggingObserver) -> list[str]:
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in observer]

    def test_switch_logged_with_reason(self) -> None:
        """Moving from the primary to a backup logs both names and the primary's error."""
        observer = self.events()
        h = Harness(self, jitter=0.0)
        proto = h.children[0].succeed()
        h.clock.advance(30)
        proto.transport.loseConnection()
        h.clock.advance(0)
        h.children[0].fail(ConnectionRefusedError("Connection was refused"))
        h.children[1].succeed()
        lines = self.formats(observer)
        self.assertIn("connected to central c0:60024 (primary)", lines)
        switch = [line for line in lines if line.startswith("switched")]
        self.assertEqual(len(switch), 1)
        self.assertIn("from central c0:60024 to c1:60024 (backup 1)", switch[0])
        self.assertIn("Connection was refused", switch[0])
        self.assertEqual(h.endpoint.switches, 1)
        self.assertEqual(h.endpoint.counters(),
                         {"failed_rounds": 0, "switches": 1, "connected": 1})

    def test_failed_round_logged_with_delay(self) -> None:
        """A failed round is logged once with every reason and the wait."""
        observer = self.events()
        h = Harness(self)
        h.fail_round()
        lines = [line for line in self.formats(observer) if line.startswith("no central")]
        self.assertEqual(len(lines), 1)
        self.assertIn("(c0:60024: Connection was refused by other side: c0 refused.; c1:60024: ",
                      lines[0])
        self.assertIn("c2:60024: Connection was refused by other side: c2 refused.)", lines[0])
        self.assertIn("next round in 1.0 s", lines[0])

    def test_describe_failure(self) -> None:
        self.assertEqual(describe_failure(Failure(ValueError("a\nb"))), "a")
        self.assertEqual(describe_failure(Failure(ValueError())), "ValueError")
        self.assertEqual(describe_failure(Failure(defer.CancelledError())), "cancelled")


class FailbackTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self, jitter=0.0)
        self.probe = FakeEndpoint("probe")
        self.disconnects: list[str] = []
        self.prober = FailbackProber(self.h.endpoint, self.probe,
                                     protocol.Factory.forProtocol(Recorder), 30.0,
                                     self.h.clock, self.disconnect)
        self.prober.startService()
        self.addCleanup(self.prober.stopService)

    def disconnect(self, reason: str) -> None:
        self.disconnects.append(reason)
        self.current.transport.loseConnection()

    def on_backup(self) -> None:
        self.h.children[0].fail()
        self.current = self.h.children[1].succeed()

    def test_no_probe_on_primary(self) -> None:
        """While connected to the primary nothing is probed."""
        self.current = self.h.children[0].succeed()
        self.h.clock.advance(120)
        self.assertEqual(self.probe.connects, 0)

    def test_no_probe_while_disconnected(self) -> None:
        """While no central is connected the rounds do the work; no probes."""
        self.h.fail_round()
        self.h.clock.advance(30)
        self.assertEqual(self.probe.connects, 0)

    def test_probe_every_interval_while_on_backup(self) -> None:
        """On a backup the primary is probed every 30 s; failed probes change nothing."""
        self.on_backup()
        self.h.clock.advance(29.9)
        self.assertEqual(self.probe.connects, 0)
        self.h.clock.advance(0.1)
        self.assertEqual(self.probe.connects, 1)
        self.probe.fail()
        self.h.clock.advance(30)
        self.assertEqual(self.probe.connects, 2)
        self.probe.fail()
        self.assertEqual(self.disconnects, [])
        self.assertEqual(self.h.endpoint.connected_index, 1)
        self.assertEqual(self.prober.counters(), {"probes": 2})

    def test_probes_do_not_overlap(self) -> None:
        """A probe still in flight at the next tick is not duplicated."""
        self.on_backup()
        self.h.clock.advance(60)
        self.assertEqual(self.probe.connects, 1)
        self.probe.fail()

    def test_fail_back_when_primary_answers(self) -> None:
        """A successful probe closes the probe and the backup; the next round uses the primary."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.on_backup()
        self.h.clock.advance(30)
        probe_proto = self.probe.succeed()
        self.assertFalse(probe_proto.transport.connected)
        self.assertEqual(self.disconnects, ["failing back: primary c0:60024 answered the probe"])
        self.h.clock.advance(0.5)
        self.assertEqual(self.h.pending(), [1, 0, 0])
        self.h.children[0].succeed()
        self.assertEqual(self.h.endpoint.connected_index, 0)
        from twisted.logger import formatEvent
        switch = [formatEvent(e) for e in observer if formatEvent(e).startswith("switched")]
        self.assertEqual(switch[-1], "switched from central c1:60024 to c0:60024 (primary): "
                                     "failing back: primary c0:60024 answered the probe")

    def test_stop_cancels_probe(self) -> None:
        """Stopping the prober cancels a probe in flight and its timer."""
        self.on_backup()
        self.h.clock.advance(30)
        self.prober.stopService()
        self.assertEqual(self.probe.cancelled, 1)
