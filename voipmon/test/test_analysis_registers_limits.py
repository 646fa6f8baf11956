"""REGISTER tracking: VoIPmonitor's options, register_time_info, and memory bounds under
floods (every refusal counted, nothing unbounded)."""

from __future__ import annotations

import dataclasses

from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.registers import RegisterSettings, RegisterTracker
from voipmon.records import register as rec
from voipmon.records.alert import Alert
from voipmon.test.regsupport import REGISTRAR, Wire, latest, of, register, reply
from voipmon.test.test_analysis_registers import ALICE, PHONE, PHONE2, T0


def tracker(**options: object) -> tuple[RegisterTracker, list, Wire]:
    records: list = []
    t = RegisterTracker(RegisterSettings(**options), 3, records.append)  # type: ignore[arg-type]
    return t, records, Wire(t)


def ok(wire: Wire, t: float, callid: str, user: str = "alice", phone: str = PHONE,
       contact: str = ALICE, expires: int = 3600, ua: str = "TestPhone/1.0") -> None:
    request = register(callid, 1, user=user, contacts=[contact], expires=expires, ua=ua)
    wire.send(t, phone, REGISTRAR, request)
    wire.send(t + 0.01, REGISTRAR, phone, reply(request, 200, contacts=[contact]))


class OptionTests(SynchronousTestCase):

    def test_settings_are_checked(self) -> None:
        for bad in ({"sip_register": "no"}, {"sip_register_timeout": 0},
                    {"sip_register_max_registers": 0}, {"expire_grace": -1},
                    {"max_pending": 0}):
            self.assertRaises(ValueError, RegisterSettings, **bad)

    def test_nodb_keeps_state_and_writes_no_rows(self) -> None:
        t, records, wire = tracker(sip_register="nodb")
        ok(wire, T0, "a")
        request = register("b", 1, user="bob")
        wire.send(T0 + 1, PHONE, REGISTRAR, request)
        wire.send(T0 + 1.01, REGISTRAR, PHONE, reply(request, 403))
        wire.advance(T0 + 600)
        t.finish()
        self.assertEqual(records, [])
        self.assertEqual([r["to_num"] for r in t.registrations()], ["alice"])

    def test_timeout_disable_save_failed(self) -> None:
        t, records, wire = tracker(sip_register_timeout_disable_save_failed=True)
        wire.send(T0, PHONE, REGISTRAR, register("lost", 1))
        wire.advance(T0 + 10)
        t.finish()
        self.assertEqual(of(records, rec.RegisterFailed), [])
        self.assertEqual((t.stats.timeouts, t.stats.failed_not_saved), (1, 1))

    def test_ignore_res401(self) -> None:
        _t, records, wire = tracker(sip_register_ignore_res401=True)
        request = register("ab", 1)
        wire.send(T0, PHONE, REGISTRAR, request)
        wire.send(T0 + 0.01, REGISTRAR, PHONE, reply(request, 401, challenge="x"))
        wire.advance(T0 + 10)
        self.assertEqual(of(records, rec.RegisterFailed), [])

    def test_nonce_has_changed(self) -> None:
        for option, failures in ((False, 1), (True, 0)):
            _t, records, wire = tracker(sip_register_ignore_res401_nonce_has_changed=option)
            request = register("nc", 1, auth="alice")
            wire.send(T0, PHONE, REGISTRAR, request)
            wire.send(T0 + 0.01, REGISTRAR, PHONE,
                      reply(request, 401, "Unauthorized (nonce has changed)", challenge="x"))
            retry = register("nc", 2, auth="alice")
            wire.send(T0 + 0.02, PHONE, REGISTRAR, retry)
            wire.send(T0 + 0.03, REGISTRAR, PHONE, reply(retry, 200, contacts=[ALICE]))
            self.assertEqual(len(of(records, rec.RegisterFailed)), failures)

    def test_compare_sipcallerip(self) -> None:
        for option, registrations in ((False, 1), (True, 2)):
            t, _records, wire = tracker(sip_register_compare_sipcallerip=option)
            ok(wire, T0, "a", phone=PHONE)
            ok(wire, T0 + 1, "b", phone=PHONE2)      # the same contact from another address
            self.assertEqual(len(t.registrations()), registrations)

    def test_compare_to_domain(self) -> None:
        for option, registrations in ((True, 2), (False, 1)):
            t, _records, wire = tracker(sip_register_compare_to_domain=option)
            for k, domain in enumerate(("a.example", "b.example")):
                request = register(f"d{k}", 1, domain=domain)
                wire.send(T0 + k, PHONE, REGISTRAR, request)
                wire.send(T0 + k + 0.01, REGISTRAR, PHONE, reply(request, 200,
                                                                contacts=[ALICE]))
            self.assertEqual(len(t.registrations()), registrations)

    def test_state_compare_ua(self) -> None:
        for option, rows in ((False, 1), (True, 2)):
            _t, records, wire = tracker(sip_register_state_compare_ua=option)
            ok(wire, T0, "a", ua="Phone/1.0")
            ok(wire, T0 + 60, "a2", ua="Phone/2.0")   # a firmware upgrade
            self.assertEqual(len(of(records, rec.RegisterState)), rows)

    def test_max_registers_option(self) -> None:
        _t, records, wire = tracker(sip_register_max_registers=2)
        for cseq in range(1, 4):
            wire.send(T0 + 0.1 * cseq, PHONE, REGISTRAR, register("m", cseq))
        self.assertEqual([r.state for r in of(records, rec.RegisterState)],
                         [rec.STATE_MANY_REG_MESSAGES])


class TimeInfoTests(SynchronousTestCase):

    def test_failed_per_minute_and_pair_and_active_once_a_minute(self) -> None:
        t, records, wire = tracker()
        minute = 1_700_000_040.0                     # a minute starts here
        start = minute - 20
        ok(wire, start, "a")
        for k, (phone, second) in enumerate(((PHONE, 1), (PHONE, 2), (PHONE2, 3),
                                             (PHONE, 30))):
            request = register(f"f{k}", 1, user=f"u{k}")
            wire.send(start + second, phone, REGISTRAR, request)
            wire.send(start + second + 0.01, REGISTRAR, phone, reply(request, 404))
        wire.advance(minute + 40)     # the first minute is written once the lag has passed

        def failed() -> list:
            return [(r.created_at, r.sipcallerip, r.sipcalledip, r.counter, r.counter_2)
                    for r in of(records, rec.RegisterTimeInfo) if r.type_info == "failed"]

        self.assertEqual(failed(), [(minute - 60, "10.0.0.1", "10.0.0.100", 2, 0),
                                    (minute - 60, "10.0.0.2", "10.0.0.100", 1, 0)])
        active = [(r.created_at, r.counter, r.sipcallerip) for r in
                  of(records, rec.RegisterTimeInfo) if r.type_info == "active"]
        self.assertEqual(active, [(minute, 1, "")])    # at the minute it crossed
        t.finish()
        self.assertEqual(failed()[2:], [(minute, "10.0.0.1", "10.0.0.100", 1, 0)])
        rows = of(records, rec.RegisterTimeInfo)
        self.assertEqual(len({r.uid for r in rows}), len(rows))

    def test_details_above_the_per_minute_limit(self) -> None:
        t, records, wire = tracker(sip_register_failed_max_details_per_minute=5)
        for k in range(8):
            request = register(f"x{k}", 1, user=f"u{k}")
            wire.send(T0 + k, PHONE, REGISTRAR, request)
            wire.send(T0 + k + 0.01, REGISTRAR, PHONE, reply(request, 404))
        t.finish()
        self.assertEqual(len(latest(records, rec.RegisterFailed)), 5)
        [info] = [r for r in of(records, rec.RegisterTimeInfo) if r.type_info == "failed"]
        self.assertEqual((info.counter, info.counter_2), (8, 3))
        self.assertEqual(t.stats.failed_details_dropped, 3)


class FloodTests(SynchronousTestCase):

    def test_unanswered_flood_is_bounded_and_counted(self) -> None:
        t, _records, wire = tracker(max_pending=100)
        for k in range(5000):          # spoofed REGISTERs, each its own Call-ID, no answer
            wire.send(T0 + k * 0.0005, f"10.1.{k // 250}.{k % 250}:5060", REGISTRAR,
                      register(f"flood{k}", 1, user=f"{1000 + k}"))
        self.assertLessEqual(t.counters()["pending"], 100)
        self.assertEqual(t.stats.refused_transactions, 4900)
        wire.advance(T0 + 60)
        self.assertEqual(t.counters()["pending"], 0)
        self.assertEqual(t.stats.timeouts, 100)

    def test_registrations_are_capped(self) -> None:
        t, _records, wire = tracker(max_registrations=50)
        for k in range(80):
            ok(wire, T0 + k, f"r{k}", user=f"u{k}", contact=f"<sip:u{k}@10.0.0.1:5060>")
        self.assertEqual(len(t.registrations()), 50)
        self.assertEqual(t.stats.registrations_refused, 30)

    def test_failure_runs_are_capped_and_end(self) -> None:
        t, records, wire = tracker(max_failed=10)
        for k in range(30):
            request = register(f"x{k}", 1, user=f"u{k}")
            wire.send(T0 + k * 0.01, PHONE, REGISTRAR, request)
            wire.send(T0 + k * 0.01 + 0.001, REGISTRAR, PHONE, reply(request, 404))
        self.assertEqual(t.counters()["failure_runs"], 10)
        self.assertEqual(t.stats.failed_runs_evicted, 20)
        self.assertEqual(len(latest(records, rec.RegisterFailed)), 30)   # none lost
        wire.advance(T0 + 120)
        self.assertEqual(t.counters()["failure_runs"], 0)

    def test_everything_is_forgotten_in_time(self) -> None:
        t, _records, wire = tracker()
        for k in range(200):
            ok(wire, T0 + k * 0.01, f"r{k}", user=f"u{k}", expires=60,
               contact=f"<sip:u{k}@10.0.0.1:5060>")
            request = register(f"f{k}", 1, user=f"v{k}")
            wire.send(T0 + k * 0.01, PHONE2, REGISTRAR, request)
            wire.send(T0 + k * 0.01 + 0.001, REGISTRAR, PHONE2, reply(request, 401,
                                                                       challenge="x"))
        wire.advance(T0 + 60 + 30 + 600 + 5)      # expiry, grace, state timeout
        stats = t.counters()
        self.assertEqual((stats["registrations"], stats["active"], stats["pending"],
                          stats["failure_runs"]), (0, 0, 0, 0))
        self.assertEqual(t.stats.expired, 200)
        self.assertEqual(stats["completed"], 0)
        self.assertEqual(t.stats.abandoned_challenges, 200)

    def test_a_consumer_failure_loses_no_state(self) -> None:
        calls: list = []

        def flaky(record: object) -> None:
            calls.append(record)
            if len(calls) == 1:
                raise RuntimeError("queue full")

        t = RegisterTracker(RegisterSettings(), 3, flaky)
        wire = Wire(t)
        ok(wire, T0, "a")
        ok(wire, T0 + 1, "b", user="bob", contact="<sip:bob@10.0.0.1:5060>")
        self.assertEqual(len(calls), 2)
        self.assertEqual(t.stats.errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(t.active_count, 2)

    def test_alert_records_share_the_emitter(self) -> None:
        _t, records, wire = tracker()
        for k in range(10):
            request = register(f"bf{k}", 1, user="1001")
            wire.send(T0 + k, PHONE, REGISTRAR, request)
            wire.send(T0 + k + 0.01, REGISTRAR, PHONE, reply(request, 403))
        [alert] = of(records, Alert)
        self.assertEqual((alert.kind, alert.sipcallerip, alert.failures, alert.extensions),
                         ("brute-force", "10.0.0.1", 10, "1001"))
        self.assertTrue(dataclasses.is_dataclass(alert))
