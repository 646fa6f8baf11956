"""sip_msg and message records: OPTIONS/SUBSCRIBE/NOTIFY/MESSAGE request-response pairs."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.sipmsg import SipMsgSettings, SipMsgTracker
from voipmon.records import sipmsg as rec
from voipmon.test.regsupport import Wire, of, register, reply

T0 = 1_700_000_000.0
PBX = "10.0.0.5:5060"
TRUNK = "192.0.2.10:5060"
SILENT = "192.0.2.11:5060"
ALL = {"sip_options": "yes", "sip_subscribe": "yes", "sip_notify": "yes",
       "sip_message": "yes"}


def ping(callid: str, cseq: int = 1, to: str = "trunk", **kw: object) -> bytes:
    return register(callid, cseq, method="OPTIONS", user=to, contacts=(), expires=None,
                    ua="PBX/1", **kw)  # type: ignore[arg-type]


class SipMsgTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.records: list = []
        self.tracker = SipMsgTracker(SipMsgSettings(**ALL), 9, self.records.append)
        self.wire = Wire(self.tracker)

    def test_answered_options(self) -> None:
        request = ping("o1")
        self.wire.send(T0, PBX, TRUNK, request)
        self.wire.send(T0 + 0.035, TRUNK, PBX, reply(request, 200, headers=["Server: Trunk/2"]))
        [row] = self.records
        self.assertIsInstance(row, rec.SipMsg)
        self.assertEqual((row.type, row.response_number, row.response_reason, row.qualify_ok,
                          row.response_duration_ms), (rec.TYPE_OPTIONS, 200, "OK", True, 35))
        self.assertEqual((row.ip_src, row.port_src, row.ip_dst, row.port_dst),
                         ("10.0.0.5", 5060, "192.0.2.10", 5060))
        self.assertEqual((row.number_src, row.number_dst, row.domain_dst, row.ua_src,
                          row.ua_dst, row.callid, row.cseq),
                         ("trunk", "trunk", "example.com", "PBX/1", "Trunk/2", "o1", 1))
        self.assertEqual((row.time, row.request_time, row.response_time),
                         (T0, T0, T0 + 0.035))

    def test_slow_and_refused_answers_are_not_qualified(self) -> None:
        slow, refused = ping("slow"), ping("ref")
        self.wire.send(T0, PBX, TRUNK, slow)
        self.wire.send(T0 + 2.5, TRUNK, PBX, reply(slow, 200))
        self.wire.send(T0 + 3, PBX, TRUNK, refused)
        self.wire.send(T0 + 3.01, TRUNK, PBX, reply(refused, 404))
        self.assertEqual([(r.response_number, r.response_duration_ms, r.qualify_ok)
                          for r in self.records], [(200, 2500, False), (404, 10, False)])

    def test_unanswered_request_is_a_record(self) -> None:
        request = ping("lost", to="silent")
        for delay in (0.0, 0.5, 1.5, 3.5):
            self.wire.send(T0 + delay, PBX, SILENT, request)
        self.wire.advance(T0 + 31.9)
        self.assertEqual(self.records, [])
        self.wire.advance(T0 + 32.0)
        [row] = self.records
        self.assertEqual((row.response_number, row.qualify_ok, row.request_repetition,
                          row.request_time, row.response_time, row.response_duration_ms),
                         (0, False, 3, T0 + 3.5, None, None))
        self.wire.send(T0 + 33, SILENT, PBX, reply(request, 200))   # far too late
        self.assertEqual(len(self.records), 1)
        self.assertEqual(self.tracker.stats.duplicate_responses, 1)

    def test_provisional_answers_do_not_close(self) -> None:
        sub = register("s1", 1, method="SUBSCRIBE", user="bob", contacts=(), expires=600,
                       headers=["Event: presence"])
        self.wire.send(T0, PBX, TRUNK, sub)
        self.wire.send(T0 + 0.01, TRUNK, PBX, reply(sub, 100))
        self.assertEqual(self.records, [])
        self.wire.send(T0 + 0.02, TRUNK, PBX, reply(sub, 200))
        self.wire.send(T0 + 0.03, TRUNK, PBX, reply(sub, 200))      # retransmitted answer
        [row] = self.records
        self.assertEqual((row.type, row.response_number), (rec.TYPE_SUBSCRIBE, 200))

    def test_notify_with_a_body(self) -> None:
        body = '<?xml version="1.0"?><presence entity="sip:bob@example.com"/>'
        notify = register("s1", 2, method="NOTIFY", user="bob", contacts=(), expires=None,
                          headers=["Event: presence", "Content-Type: application/pidf+xml"])
        notify = notify.replace(b"Content-Length: 0\r\n\r\n",
                                f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        self.wire.send(T0, TRUNK, PBX, notify)
        self.wire.send(T0 + 0.005, PBX, TRUNK, reply(notify, 200))
        [row] = self.records
        self.assertEqual((row.type, row.request_content_type, row.request_content_length,
                          row.request_content), (rec.TYPE_NOTIFY, "application/pidf+xml",
                                                 len(body), body))

    def test_message_goes_to_its_own_record(self) -> None:
        body = "hello bob"
        message = register("m1", 1, method="MESSAGE", user="bob", contacts=(), expires=None,
                           headers=["Content-Type: text/plain"])
        message = message.replace(b"Content-Length: 0\r\n\r\n",
                                  f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        self.wire.send(T0, PBX, TRUNK, message)
        self.wire.send(T0 + 0.2, TRUNK, PBX, reply(message, 202))
        [row] = self.records
        self.assertIsInstance(row, rec.InstantMessage)
        self.assertEqual((row.caller, row.called, row.message, row.content_type,
                          row.lastSIPresponseNum, row.lastSIPresponse, row.response_time),
                         ("bob", "bob", body, "text/plain", 202, "202 Accepted", 200))

    def test_switches(self) -> None:
        records: list = []
        tracker = SipMsgTracker(SipMsgSettings(sip_options="nodb", sip_message="no"), 9,
                                records.append)
        wire = Wire(tracker)
        request = ping("o1")
        wire.send(T0, PBX, TRUNK, request)
        wire.send(T0 + 0.01, TRUNK, PBX, reply(request, 200))
        message = register("m1", 1, method="MESSAGE", contacts=(), expires=None)
        wire.send(T0 + 1, PBX, TRUNK, message)
        wire.send(T0 + 1.01, TRUNK, PBX, reply(message, 200))
        notify = register("n1", 1, method="NOTIFY", contacts=(), expires=None)
        wire.send(T0 + 2, PBX, TRUNK, notify)
        self.assertEqual(records, [])                        # nodb: followed, not written
        self.assertEqual(tracker.methods, frozenset({"OPTIONS"}))
        [relation] = tracker.relations()
        self.assertEqual((relation["method"], relation["last_response"],
                          relation["qualify_ok"]), ("OPTIONS", 200, True))
        self.assertRaises(ValueError, SipMsgSettings, sip_options="maybe")

    def test_qualify_view_names_the_trunk_that_stopped_answering(self) -> None:
        for k in range(5):
            for peer, answer in ((TRUNK, True), (SILENT, k < 2)):
                request = ping(f"q{k}-{peer}", to="silent" if peer == SILENT else "trunk")
                self.wire.send(T0 + 60 * k, PBX, peer, request)
                if answer:
                    self.wire.send(T0 + 60 * k + 0.02, peer, PBX, reply(request, 200))
        self.wire.advance(T0 + 60 * 5)
        view = {r["ip_dst"]: r for r in self.tracker.relations("OPTIONS")}
        self.assertEqual((view["192.0.2.11"]["qualify_ok"], view["192.0.2.11"]["failed_of_last"],
                          view["192.0.2.11"]["last_response"]), (False, 3, 0))
        self.assertEqual(view["192.0.2.10"]["failed_of_last"], 0)
        unanswered = [r for r in of(self.records, rec.SipMsg) if r.response_number == 0]
        self.assertEqual({r.ip_dst for r in unanswered}, {"192.0.2.11"})

    def test_bounded(self) -> None:
        records: list = []
        tracker = SipMsgTracker(SipMsgSettings(sip_options="yes", max_pending=50,
                                               max_relations=20), 9, records.append)
        wire = Wire(tracker)
        for k in range(500):
            wire.send(T0 + k * 0.001, PBX, f"192.0.2.{k % 200}:5060", ping(f"f{k}"))
        self.assertEqual(tracker.counters()["pending"], 50)
        self.assertEqual(tracker.stats.refused, 450)
        wire.advance(T0 + 40)
        self.assertEqual(len(records), 50)
        self.assertEqual(tracker.counters()["relations"], 20)
        self.assertEqual(tracker.stats.relations_evicted, 30)

    def test_unanswered_at_the_end_is_left_undecided(self) -> None:
        self.wire.send(T0, PBX, TRUNK, ping("end"))
        self.tracker.finish()
        self.assertEqual((self.records, self.tracker.stats.unresolved), ([], 1))

    def test_register_and_calls_are_not_its_business(self) -> None:
        request = register("r1", 1)
        self.wire.send(T0, PBX, TRUNK, request)
        self.wire.send(T0 + 0.01, TRUNK, PBX, reply(request, 200))
        self.wire.advance(T0 + 60)
        self.assertEqual((self.records, self.tracker.stats.requests), ([], 0))
