"""Brute force, scan and possible-compromise rules (wave-2 research B.4 defaults)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.regalerts import AlertSettings, RegisterAlerts
from voipmon.analysis.registers import RegisterSettings, RegisterTracker
from voipmon.records.alert import BRUTE_FORCE, POSSIBLE_COMPROMISE, SCAN, Alert
from voipmon.test.regsupport import REGISTRAR, Wire, latest, of, register, reply

T0 = 1_700_000_000.0
ATTACKER, SERVER = "203.0.113.9", "10.0.0.100"


class RuleTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.records: list[Alert] = []
        self.alerts = RegisterAlerts(AlertSettings(), 4, self.records.append)

    def fail(self, t: float, user: str, src: str = ATTACKER) -> None:
        self.alerts.advance(t)
        self.alerts.failure(t, src, SERVER, user, "friendly-scanner")

    def test_brute_force_at_ten_failures_on_one_user(self) -> None:
        for k in range(9):
            self.fail(T0 + k, "1001")
        self.assertEqual(self.records, [])
        self.fail(T0 + 9, "1001")
        [alert] = self.records
        self.assertEqual((alert.kind, alert.sipcallerip, alert.sipcalledip, alert.failures,
                          alert.extension_count, alert.extensions, alert.ua, alert.created_at,
                          alert.window_start, alert.revision, alert.closed),
                         (BRUTE_FORCE, ATTACKER, SERVER, 10, 1, "1001", "friendly-scanner",
                          T0 + 9, T0, 0, False))
        self.assertIn("10 failed REGISTER attempts from 203.0.113.9", alert.message)

    def test_failures_outside_the_window_do_not_count(self) -> None:
        for k in range(15):                      # one every 40 s: 8 per 5 minutes at most
            self.fail(T0 + 40 * k, "1001")
        self.assertEqual(self.records, [])

    def test_scan_at_25_failures_across_5_users(self) -> None:
        for k in range(24):
            self.fail(T0 + k * 0.1, str(1000 + k))
        self.assertEqual(self.records, [])
        self.fail(T0 + 2.4, "1024")
        [alert] = self.records
        self.assertEqual((alert.kind, alert.failures, alert.extension_count),
                         (SCAN, 25, 25))
        self.assertEqual(alert.extensions.split(",")[:3], ["1000", "1001", "1002"])

    def test_spread_over_four_users_is_neither(self) -> None:
        for k in range(36):                      # 9 each on 4 users
            self.fail(T0 + k, str(2000 + k % 4))
        self.assertEqual(self.records, [])

    def test_success_after_brute_force_is_a_possible_compromise(self) -> None:
        for k in range(30):
            self.fail(T0 + k, "1001")
        self.alerts.success(T0 + 31, ATTACKER, SERVER, "1001")
        kinds = [a.kind for a in self.records]
        self.assertEqual(kinds[0], BRUTE_FORCE)
        [compromise] = [a for a in self.records if a.kind == POSSIBLE_COMPROMISE]
        self.assertEqual((compromise.extensions, compromise.failures, compromise.successes,
                          compromise.closed), ("1001", 30, 1, True))
        self.assertIn("possible compromise: 1001 registered from 203.0.113.9",
                      compromise.message)
        self.alerts.success(T0 + 40, ATTACKER, SERVER, "1001")     # said once
        self.assertEqual(len([a for a in self.records if a.kind == POSSIBLE_COMPROMISE]), 1)

    def test_a_few_failures_then_success_is_normal(self) -> None:
        for k in range(3):
            self.fail(T0 + k, "1001", src="10.0.0.1")
        self.alerts.success(T0 + 4, "10.0.0.1", SERVER, "1001")
        self.assertEqual(self.records, [])

    def test_incident_grows_closes_and_reopens(self) -> None:
        for k in range(10):
            self.fail(T0 + k, "1001")
        for k in range(10, 100):
            self.fail(T0 + k, f"u{k % 3}")            # more users join in
        self.alerts.advance(T0 + 100)
        updates = [a for a in self.records if a.kind == BRUTE_FORCE]
        self.assertEqual([a.revision for a in updates], [0, 1])     # one update a minute
        self.alerts.advance(T0 + 99 + 300)
        closed = [a for a in self.records if a.kind == BRUTE_FORCE][-1]
        self.assertTrue(closed.closed)
        self.assertEqual((closed.failures, closed.window_end), (100, T0 + 99))
        self.assertEqual(closed.extensions.split(",")[0], "u0")   # most tried first
        uid = closed.uid
        for k in range(10):                                       # back within the hour
            self.fail(T0 + 1000 + k, "1001")
        again = [a for a in self.records if a.kind == BRUTE_FORCE][-1]
        self.assertEqual((again.uid, again.closed, again.failures), (uid, False, 110))
        self.alerts.advance(T0 + 1009 + 300)
        for k in range(10):                                       # after the suppression
            self.fail(T0 + 1009 + 300 + 3600 + k, "1001")
        fresh = [a for a in self.records if a.kind == BRUTE_FORCE][-1]
        self.assertNotEqual(fresh.uid, uid)
        self.assertEqual((fresh.revision, fresh.failures), (0, 10))

    def test_thresholds_are_settings(self) -> None:
        records: list[Alert] = []
        alerts = RegisterAlerts(AlertSettings(brute_force_failures=3, window=10), 4,
                                records.append)
        for k in range(3):
            alerts.failure(T0 + k, ATTACKER, SERVER, "1001")
        self.assertEqual([a.kind for a in records], [BRUTE_FORCE])
        self.assertRaises(ValueError, AlertSettings, window=0)
        self.assertRaises(ValueError, AlertSettings, scan_extensions=0)

    def test_sources_are_bounded(self) -> None:
        alerts = RegisterAlerts(AlertSettings(max_sources=100), 4, self.records.append)
        for k in range(1000):
            alerts.failure(T0 + k * 0.01, f"198.51.{k // 250}.{k % 250}", SERVER, "1001")
        self.assertEqual(len(alerts._sources), 100)
        self.assertEqual(alerts.stats.sources_dropped, 900)
        alerts.advance(T0 + 1000)
        self.assertEqual(len(alerts._sources), 0)

    def test_finish_closes_open_incidents(self) -> None:
        for k in range(10):
            self.fail(T0 + k, "1001")
        self.alerts.finish()
        self.assertEqual([(a.revision, a.closed) for a in self.records], [(0, False), (1, True)])
        self.assertEqual([a.uid for a in self.alerts.alerts()], [self.records[0].uid])


class ThroughTheTrackerTests(SynchronousTestCase):

    def test_challenges_of_many_phones_raise_nothing(self) -> None:
        records: list = []
        wire = Wire(RegisterTracker(RegisterSettings(), 4, records.append))
        for k in range(60):        # 60 phones behind one NAT, each challenged once per login
            phone = f"192.0.2.1:{5060 + k}"
            first = register(f"p{k}", 1, user=f"{100 + k}")
            wire.send(T0 + k, phone, REGISTRAR, first)
            wire.send(T0 + k + 0.01, REGISTRAR, phone, reply(first, 401, challenge="x"))
            second = register(f"p{k}", 2, user=f"{100 + k}", auth=f"{100 + k}")
            wire.send(T0 + k + 0.02, phone, REGISTRAR, second)
            wire.send(T0 + k + 0.03, REGISTRAR, phone, reply(second, 200, contacts=[
                f"<sip:{100 + k}@192.0.2.1:{5060 + k}>"]))
        wire.advance(T0 + 600)
        self.assertEqual(of(records, Alert), [])

    def test_enumeration_by_abandoned_challenges_and_404s_is_a_scan(self) -> None:
        records: list = []
        tracker = RegisterTracker(RegisterSettings(), 4, records.append)
        wire = Wire(tracker)
        scanner = f"{ATTACKER}:5060"
        for k in range(40):                        # svwar: one REGISTER per extension
            request = register(f"s{k}", 1, user=str(1000 + k), ua="friendly-scanner")
            wire.send(T0 + k * 0.01, scanner, REGISTRAR, request)
            answer = reply(request, 401, challenge="x") if k < 3 else reply(request, 404)
            wire.send(T0 + k * 0.01 + 0.001, REGISTRAR, scanner, answer)
        wire.advance(T0 + 10)
        tracker.finish()
        [scan] = latest(records, Alert)
        self.assertEqual((scan.kind, scan.failures, scan.extension_count, scan.ua,
                          scan.closed), (SCAN, 40, 40, "friendly-scanner", True))
