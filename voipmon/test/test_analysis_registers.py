"""REGISTER tracking: VoIPmonitor's states from synthetic REGISTER traffic (the parser is
the real one: every message goes through ``parse_sip``)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.registers import RegisterSettings, RegisterTracker
from voipmon.records import register as rec
from voipmon.test.regsupport import REGISTRAR, Wire, latest, of, register, reply

PHONE = "10.0.0.1:5060"
PHONE2 = "10.0.0.2:5060"
ALICE = "<sip:alice@10.0.0.1:5060>"
T0 = 1_700_000_000.0


class TrackerCase(SynchronousTestCase):
    settings = RegisterSettings()

    def setUp(self) -> None:
        self.records: list = []
        self.tracker = RegisterTracker(self.settings, 7, self.records.append)
        self.wire = Wire(self.tracker)

    def states(self) -> list[tuple[str, str, int]]:
        return [(r.to_num, r.contact_domain, r.state) for r in of(self.records,
                                                                   rec.RegisterState)]

    def failed(self) -> list[rec.RegisterFailed]:
        return latest(self.records, rec.RegisterFailed)

    def login(self, t: float, callid: str = "c1", cseq: int = 1, phone: str = PHONE,
              contact: str = ALICE, expires: int = 3600, granted: int | None = None,
              user: str = "alice") -> int:
        """REGISTER, 401, REGISTER with credentials, 200 (at t, +10 ms, +20 ms, +50 ms);
        the next CSeq."""
        first = register(callid, cseq, user=user, contacts=[contact], expires=expires)
        self.wire.send(t, phone, REGISTRAR, first)
        self.wire.send(t + 0.01, REGISTRAR, phone, reply(first, 401, challenge="example.com"))
        second = register(callid, cseq + 1, user=user, contacts=[contact], expires=expires,
                          auth=user)
        self.wire.send(t + 0.02, phone, REGISTRAR, second)
        binding = contact + (f";expires={granted if granted is not None else expires}"
                             if expires else "")
        self.wire.send(t + 0.05, REGISTRAR, phone,
                       reply(second, 200, contacts=[binding] if expires else []))
        return cseq + 2


class StateMachineTests(TrackerCase):

    def test_challenge_then_success(self) -> None:
        self.login(T0, granted=1800)
        [row] = of(self.records, rec.RegisterState)
        self.assertEqual((row.state, row.to_num, row.to_domain, row.contact_num,
                          row.contact_domain), (rec.STATE_OK, "alice", "example.com", "alice",
                                                "10.0.0.1"))
        self.assertEqual((row.sipcallerip, row.sipcallerport, row.sipcalledip,
                          row.sipcalledport), ("10.0.0.1", 5060, "10.0.0.100", 5060))
        self.assertEqual(row.expires, 1800)          # what the registrar granted
        self.assertAlmostEqual(row.rrd, 30.0)        # REGISTER with credentials to 200, ms
        self.assertEqual(row.created_at, T0 + 0.02)
        self.assertEqual((row.digestusername, row.digestrealm, row.ua, row.callid),
                         ("alice", "example.com", "TestPhone/1.0", "c1"))
        self.assertEqual(self.failed(), [])
        self.assertEqual(self.tracker.stats.challenges, 1)
        self.assertEqual(self.tracker.active_count, 1)
        [view] = self.tracker.registrations()
        self.assertEqual((view["state_name"], view["contact"]), ("OK", "alice@10.0.0.1:5060"))

    def test_403_and_404_fail(self) -> None:
        for i, status in enumerate((403, 404)):
            request = register(f"f{i}", 1, user=f"u{status}")
            self.wire.send(T0 + i, PHONE, REGISTRAR, request)
            self.wire.send(T0 + i + 0.01, REGISTRAR, PHONE, reply(request, status))
        self.assertEqual([(f.to_num, f.response, f.counter) for f in self.failed()],
                         [("u403", 403, 1), ("u404", 404, 1)])
        self.assertEqual(self.states(), [])
        self.assertEqual(self.tracker.active_count, 0)

    def test_wrong_password_is_one_failed_attempt_not_two_responses(self) -> None:
        for i in range(3):
            first = register(f"w{i}", 1)
            self.wire.send(T0 + i, PHONE, REGISTRAR, first)
            self.wire.send(T0 + i + 0.01, REGISTRAR, PHONE, reply(first, 401,
                                                                  challenge="example.com"))
            second = register(f"w{i}", 2, auth="alice")
            self.wire.send(T0 + i + 0.02, PHONE, REGISTRAR, second)
            self.wire.send(T0 + i + 0.03, REGISTRAR, PHONE, reply(second, 401,
                                                                  challenge="example.com"))
        self.tracker.finish()
        [row] = self.failed()
        self.assertEqual((row.counter, row.response, row.created_at, row.last_at),
                         (3, 401, T0 + 0.02, T0 + 2.02))
        self.assertEqual(row.callid, "w0")
        revisions = [r.revision for r in of(self.records, rec.RegisterFailed)]
        self.assertEqual(revisions, [0, 1])          # first attempt, then the folded total
        self.assertEqual(self.tracker.stats.rejected_credentials, 3)

    def test_expiry_in_capture_time(self) -> None:
        self.login(T0, expires=60)
        grace = self.settings.expire_grace
        self.wire.advance(T0 + 0.02 + 60 + grace - 1)
        self.assertEqual(self.states(), [("alice", "10.0.0.1", rec.STATE_OK)])
        self.wire.advance(T0 + 0.02 + 60 + grace + 1)
        self.assertEqual(self.states(), [("alice", "10.0.0.1", rec.STATE_OK),
                                         ("alice", "10.0.0.1", rec.STATE_EXPIRED)])
        expired = of(self.records, rec.RegisterState)[-1]
        self.assertEqual((expired.created_at, expired.expires), (T0 + 0.02 + 60, 0))
        self.assertEqual(self.tracker.active_count, 0)

    def test_refresh_every_minute_writes_nothing_until_the_state_timeout(self) -> None:
        cseq = 1
        for minute in range(10):          # each refresh is challenged again, same Call-ID
            cseq = self.login(T0 + 60 * minute, cseq=cseq, expires=120)
        self.assertEqual(self.states(), [("alice", "10.0.0.1", rec.STATE_OK)])
        self.assertEqual(self.failed(), [])
        self.login(T0 + 600.5, cseq=cseq, expires=120)   # 600 s after the row: rewritten
        self.assertEqual(len(self.states()), 2)
        self.assertEqual(self.tracker.stats.challenges, 11)
        self.assertEqual(self.tracker.stats.expired, 0)

    def test_unregister(self) -> None:
        cseq = self.login(T0)
        self.login(T0 + 30, cseq=cseq, expires=0)
        self.assertEqual([s for _, _, s in self.states()],
                         [rec.STATE_OK, rec.STATE_UNREGISTER])
        self.assertEqual(of(self.records, rec.RegisterState)[-1].expires, 0)
        self.assertEqual(self.tracker.active_count, 0)
        self.wire.advance(T0 + 7200)
        self.assertEqual(len(self.states()), 2)       # never Expired afterwards
        self.assertEqual(self.tracker.registrations(active_only=False), [])  # forgotten

    def test_wildcard_unregisters_every_contact(self) -> None:
        self.login(T0, callid="a", contact=ALICE)
        self.login(T0 + 1, callid="b", contact="<sip:alice@10.0.0.2:5060>", phone=PHONE2)
        request = register("a", 3, contacts=["*"], expires=0, auth="alice")
        self.wire.send(T0 + 2, PHONE, REGISTRAR, request)
        self.wire.send(T0 + 2.01, REGISTRAR, PHONE, reply(request, 200))
        self.assertEqual(sorted(self.states()[-2:]),
                         [("alice", "10.0.0.1", rec.STATE_UNREGISTER),
                          ("alice", "10.0.0.2", rec.STATE_UNREGISTER)])
        self.assertEqual(self.tracker.active_count, 0)

    def test_register_with_no_answer_fails_after_the_timeout(self) -> None:
        request = register("lost", 1)
        for delay in (0.0, 0.5, 1.5, 3.5):            # the client retransmits
            self.wire.send(T0 + delay, PHONE, REGISTRAR, request)
        self.wire.advance(T0 + 4.9)
        self.assertEqual(self.failed(), [])
        self.wire.advance(T0 + 5.0)
        [row] = self.failed()
        self.assertEqual((row.response, row.counter, row.created_at), (0, 1, T0))
        self.assertEqual(self.tracker.stats.retransmissions, 3)
        self.wire.send(T0 + 7.5, PHONE, REGISTRAR, request)   # one more copy: still one
        self.wire.advance(T0 + 20)
        self.tracker.finish()
        self.assertEqual(self.failed()[0].counter, 1)

    def test_several_contacts_are_several_registrations(self) -> None:
        self.login(T0, callid="desk", contact=ALICE, expires=60)
        self.login(T0 + 1, callid="mobile", contact="<sip:alice@10.0.0.2:5060>",
                   phone=PHONE2, expires=60)
        self.assertEqual(self.tracker.active_count, 2)
        cseq = 3
        for k in range(1, 4):      # only the mobile refreshes
            cseq = self.login(T0 + 1 + 50 * k, callid="mobile", cseq=cseq,
                              contact="<sip:alice@10.0.0.2:5060>", phone=PHONE2, expires=60)
        self.assertEqual(self.states(), [("alice", "10.0.0.1", rec.STATE_OK),
                                         ("alice", "10.0.0.2", rec.STATE_OK),
                                         ("alice", "10.0.0.1", rec.STATE_EXPIRED)])
        self.assertEqual(self.tracker.active_count, 1)

    def test_one_register_with_two_contacts(self) -> None:
        contacts = ["<sip:alice@10.0.0.1:5060>;expires=600", "<sip:alice@10.0.0.1:5062>"]
        request = register("two", 1, contacts=contacts, expires=300)
        self.wire.send(T0, PHONE, REGISTRAR, request)
        self.wire.send(T0 + 0.01, REGISTRAR, PHONE, reply(request, 200, contacts=[
            "<sip:alice@10.0.0.1:5060>;expires=600", "<sip:alice@10.0.0.1:5062>;expires=300"]))
        rows = of(self.records, rec.RegisterState)
        self.assertEqual(sorted((r.contact_domain, r.expires) for r in rows),
                         [("10.0.0.1", 300), ("10.0.0.1", 600)])
        self.assertEqual(self.tracker.active_count, 2)

    def test_retransmitted_request_and_response(self) -> None:
        request = register("rt", 1)
        ok = reply(request, 200, contacts=[ALICE + ";expires=3600"])
        self.wire.send(T0, PHONE, REGISTRAR, request)
        self.wire.send(T0 + 0.5, PHONE, REGISTRAR, request)
        self.wire.send(T0 + 0.6, REGISTRAR, PHONE, ok)
        self.wire.send(T0 + 0.61, PHONE, REGISTRAR, request)   # crossed the 200
        self.wire.send(T0 + 0.62, REGISTRAR, PHONE, ok)        # answered again
        self.wire.advance(T0 + 60)
        self.assertEqual(self.states(), [("alice", "10.0.0.1", rec.STATE_OK)])
        self.assertEqual(self.failed(), [])
        stats = self.tracker.stats
        self.assertEqual((stats.retransmissions, stats.duplicate_responses,
                          stats.unknown_ok, stats.timeouts), (2, 1, 0, 0))
        self.assertAlmostEqual(of(self.records, rec.RegisterState)[0].rrd, 600.0)

    def test_request_seen_on_two_hops_is_one_transaction(self) -> None:
        proxy = "10.0.0.50:5060"
        upstream = register("fork", 1, vias=["Via: SIP/2.0/UDP 10.0.0.50;branch=z9hG4bK-px"])
        self.wire.send(T0, PHONE, proxy, register("fork", 1))
        self.wire.send(T0 + 0.001, proxy, REGISTRAR, upstream)
        self.wire.send(T0 + 0.002, REGISTRAR, proxy, reply(upstream, 401, challenge="x"))
        self.wire.send(T0 + 0.003, proxy, PHONE, reply(upstream, 401, challenge="x",
                                                        drop_vias=1))
        retry = register("fork", 2, auth="alice")
        retry_up = register("fork", 2, auth="alice",
                            vias=["Via: SIP/2.0/UDP 10.0.0.50;branch=z9hG4bK-px2"])
        self.wire.send(T0 + 0.010, PHONE, proxy, retry)
        self.wire.send(T0 + 0.011, proxy, REGISTRAR, retry_up)
        self.wire.send(T0 + 0.012, REGISTRAR, proxy, reply(retry_up, 200, contacts=[ALICE]))
        self.wire.send(T0 + 0.013, proxy, PHONE, reply(retry_up, 200, contacts=[ALICE],
                                                        drop_vias=1))
        self.wire.advance(T0 + 60)
        self.assertEqual(self.states(), [("alice", "10.0.0.1", rec.STATE_OK)])
        self.assertEqual(self.failed(), [])   # the 401 seen twice is still one challenge
        [row] = of(self.records, rec.RegisterState)
        self.assertEqual(row.sipcallerip, "10.0.0.1")   # the first copy: the phone's hop

    def test_proxy_407_then_registrar_401_are_both_normal(self) -> None:
        first = register("px", 1)
        self.wire.send(T0, PHONE, REGISTRAR, first)
        self.wire.send(T0 + 0.01, REGISTRAR, PHONE, reply(first, 407, challenge="proxy"))
        second = register("px", 2, proxy_auth="alice")
        self.wire.send(T0 + 0.02, PHONE, REGISTRAR, second)
        self.wire.send(T0 + 0.03, "10.0.0.101:5060", PHONE,
                       reply(second, 401, challenge="example.com"))
        third = register("px", 3, proxy_auth="alice", auth="alice")
        self.wire.send(T0 + 0.04, PHONE, REGISTRAR, third)
        self.wire.send(T0 + 0.05, REGISTRAR, PHONE, reply(third, 200, contacts=[ALICE]))
        self.assertEqual(self.states(), [("alice", "10.0.0.1", rec.STATE_OK)])
        self.assertEqual(self.tracker.stats.challenges, 2)

    def test_stale_nonce_is_a_challenge_not_a_failure(self) -> None:
        cached = register("st", 1, auth="alice")          # a refresh with an old nonce
        self.wire.send(T0, PHONE, REGISTRAR, cached)
        self.wire.send(T0 + 0.01, REGISTRAR, PHONE,
                       reply(cached, 401, challenge="example.com", stale=True))
        fresh = register("st", 2, auth="alice")
        self.wire.send(T0 + 0.02, PHONE, REGISTRAR, fresh)
        self.wire.send(T0 + 0.03, REGISTRAR, PHONE, reply(fresh, 200, contacts=[ALICE]))
        self.assertEqual(self.states(), [("alice", "10.0.0.1", rec.STATE_OK)])
        self.assertEqual(self.failed(), [])

    def test_same_challenger_twice_without_credentials_fails(self) -> None:
        for cseq in (1, 2):                               # a phone with no password set
            request = register("np", cseq)
            self.wire.send(T0 + cseq, PHONE, REGISTRAR, request)
            self.wire.send(T0 + cseq + 0.01, REGISTRAR, PHONE,
                           reply(request, 401, challenge="example.com"))
        [row] = self.failed()
        self.assertEqual((row.response, row.created_at), (401, T0 + 2))

    def test_abandoned_challenge_fails_after_the_timeout(self) -> None:
        request = register("ab", 1)
        self.wire.send(T0, PHONE, REGISTRAR, request)
        self.wire.send(T0 + 0.01, REGISTRAR, PHONE, reply(request, 401, challenge="x"))
        self.wire.advance(T0 + 5.0)
        self.assertEqual(self.failed(), [])
        self.wire.advance(T0 + 5.02)
        [row] = self.failed()
        self.assertEqual((row.response, row.created_at), (401, T0))
        self.assertEqual(self.tracker.stats.abandoned_challenges, 1)

    def test_credentials_rejected_on_a_reused_cseq_each_count(self) -> None:
        """svcrack reuses Call-ID and CSeq and changes the branch for every password."""
        first = register("crack", 1, user="1001")
        self.wire.send(T0, PHONE, REGISTRAR, first)
        self.wire.send(T0 + 0.005, REGISTRAR, PHONE, reply(first, 401, challenge="x"))
        for k in range(12):
            guess = register("crack", 2, user="1001", auth="1001", branch=f"z9hG4bK-g{k}")
            self.wire.send(T0 + 0.01 * (k + 1), PHONE, REGISTRAR, guess)
            self.wire.send(T0 + 0.01 * (k + 1) + 0.002, REGISTRAR, PHONE,
                           reply(guess, 401, challenge="x"))
        self.tracker.finish()
        [row] = self.failed()
        self.assertEqual((row.to_num, row.counter, row.response), ("1001", 12, 401))

    def test_many_reg_messages(self) -> None:
        for cseq in range(1, 6):      # five REGISTERs in one Call-ID, none answered
            self.wire.send(T0 + 0.5 * cseq, PHONE, REGISTRAR, register("many", cseq))
        self.assertEqual(self.states(), [("alice", "10.0.0.1", rec.STATE_MANY_REG_MESSAGES)])
        self.wire.advance(T0 + 30)
        self.assertEqual(self.failed(), [])   # the pending ones were settled by the state
        self.assertEqual(self.tracker.stats.many_reg_messages, 1)

    def test_many_messages_of_one_request(self) -> None:
        request = register("storm", 1)
        for k in range(21):
            self.wire.send(T0 + 0.01 * k, PHONE, REGISTRAR, request)
        self.assertEqual([s for _, _, s in self.states()], [rec.STATE_MANY_REG_MESSAGES])

    def test_unknown_message_ok(self) -> None:
        unseen = register("u", 5)
        self.wire.send(T0, REGISTRAR, PHONE, reply(unseen, 200,
                                                   contacts=[ALICE + ";expires=300"]))
        [row] = of(self.records, rec.RegisterState)
        self.assertEqual((row.state, row.expires, row.sipcallerip, row.sipcalledip),
                         (rec.STATE_UNKNOWN_MESSAGE_OK, 300, "10.0.0.1", "10.0.0.100"))
        self.assertEqual(self.tracker.active_count, 1)
        self.login(T0 + 10, callid="u", cseq=6)
        self.assertEqual([s for _, _, s in self.states()],
                         [rec.STATE_UNKNOWN_MESSAGE_OK, rec.STATE_OK])

    def test_late_answer_after_a_timeout_is_unknown_message_ok(self) -> None:
        request = register("slow", 1)
        self.wire.send(T0, PHONE, REGISTRAR, request)
        self.wire.send(T0 + 6, REGISTRAR, PHONE, reply(request, 200, contacts=[ALICE]))
        self.assertEqual([f.response for f in self.failed()], [0])
        self.assertEqual([s for _, _, s in self.states()], [rec.STATE_UNKNOWN_MESSAGE_OK])

    def test_interval_too_brief_then_success(self) -> None:
        short = register("itb", 1, expires=10)
        self.wire.send(T0, PHONE, REGISTRAR, short)
        self.wire.send(T0 + 0.01, REGISTRAR, PHONE, reply(short, 423, headers=["Min-Expires: 60"]))
        longer = register("itb", 2, expires=60)
        self.wire.send(T0 + 0.02, PHONE, REGISTRAR, longer)
        self.wire.send(T0 + 0.03, REGISTRAR, PHONE, reply(longer, 200, contacts=[ALICE]))
        self.assertEqual([s for _, _, s in self.states()], [rec.STATE_OK])
        self.assertEqual(of(self.records, rec.RegisterState)[0].expires, 60)
        self.assertEqual(self.failed(), [])

    def test_failed_refresh_then_expiry(self) -> None:
        cseq = self.login(T0, expires=60)
        refresh = register("c1", cseq, expires=60)
        self.wire.send(T0 + 30, PHONE, REGISTRAR, refresh)
        self.wire.send(T0 + 30.01, REGISTRAR, PHONE, reply(refresh, 403))
        self.wire.advance(T0 + 200)
        self.assertEqual([s for _, _, s in self.states()], [rec.STATE_OK, rec.STATE_EXPIRED])
        self.assertEqual([f.response for f in self.failed()], [403])

    def test_failures_then_success_writes_the_folded_counter(self) -> None:
        for k in range(3):
            request = register(f"b{k}", 1)
            self.wire.send(T0 + k, PHONE, REGISTRAR, request)
            self.wire.send(T0 + k + 0.01, REGISTRAR, PHONE, reply(request, 403))
        self.assertEqual(self.failed()[0].counter, 1)
        self.login(T0 + 5, callid="ok")
        self.assertEqual(self.failed()[0].counter, 3)     # saved when the success came

    def test_same_packets_same_records(self) -> None:
        def run() -> list:
            records: list = []
            tracker = RegisterTracker(RegisterSettings(), 7, records.append)
            wire = Wire(tracker)
            for k in range(3):
                request = register(f"d{k}", 1, user=f"u{k}")
                wire.send(T0 + k, PHONE, REGISTRAR, request)
                wire.send(T0 + k + 0.01, REGISTRAR, PHONE,
                          reply(request, 200 if k else 404, contacts=[ALICE]))
            wire.advance(T0 + 10_000)
            tracker.finish()
            return records

        first, second = run(), run()
        self.assertEqual(first, second)
        self.assertEqual(len({r.uid for r in first}), len(first))
