"""REGISTER tracking, alerts and sip_msg over real captures: SIPp phones and a PBX and
sipvicious against Debian's kamailio as the registrar, on loopback
(voipmon/test/data/make_register_captures.sh). The captures go through CaptureReader,
Decoder and parse_sip as the engine's will.

``CaptureTests`` read the bundled captures. ``RegenerationTests`` run the script with the
real programs into a temporary folder and check the fresh captures the same way; they
need root and kamailio, sip-tester, sipvicious and tcpdump, and fail without them in CI.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from voipmon.analysis.registers import RegisterSettings, RegisterTracker
from voipmon.analysis.sipmsg import SipMsgSettings, SipMsgTracker
from voipmon.records import register as rec
from voipmon.records import sipmsg as msgrec
from voipmon.records.alert import BRUTE_FORCE, POSSIBLE_COMPROMISE, SCAN, Alert
from voipmon.test.common import data_path, missing_tool
from voipmon.test.live_support import ToolProcess
from voipmon.test.regsupport import latest, of, run_capture

PHONES = "register_kamailio_sipp_lo.pcap"
SCANNED = "register_sipvicious_lo.pcap"
PBX = "sipmsg_kamailio_sipp_lo.pcap"
REGISTRAR, PHONE, ATTACKER = "127.0.0.2", "127.0.0.3", "127.0.0.1"
#: The captures are short: dave's 2 s expiry is checked 5 s later, not 30 s, and an
#: unanswered OPTIONS after 4 s, not 32 s (the script leaves that much capture time).
REGISTER_SETTINGS = RegisterSettings(expire_grace=5.0)
SIPMSG_SETTINGS = SipMsgSettings(sip_options="yes", sip_subscribe="yes", sip_notify="yes",
                                 sip_message="yes", timeout=4.0)


def analyse(path: str) -> tuple[list, RegisterTracker, SipMsgTracker]:
    """Both trackers over one capture, sharing one record list (as the engine will)."""
    records: list = []
    registers = RegisterTracker(REGISTER_SETTINGS, 1, records.append)
    sipmsg = SipMsgTracker(SIPMSG_SETTINGS, 1, records.append)
    run_capture(path, registers, sipmsg)
    return records, registers, sipmsg


class Checks(SynchronousTestCase):
    """What each capture must give; shared by the bundled and the regenerated captures."""

    def check_phones(self, path: str) -> None:
        records, registers, _ = analyse(path)
        rows = of(records, rec.RegisterState)
        states = Counter((r.to_num, r.state) for r in rows)
        self.assertEqual(states, Counter({
            ("dave", rec.STATE_OK): 1, ("dave", rec.STATE_EXPIRED): 1,
            ("alice", rec.STATE_OK): 1, ("alice", rec.STATE_UNREGISTER): 1,   # no refresh row
            ("erin", rec.STATE_OK): 2,                                        # two contacts
            ("carol", rec.STATE_OK): 1}))
        by = {(r.to_num, r.state): r for r in rows}
        dave_ok, dave_gone = by["dave", rec.STATE_OK], by["dave", rec.STATE_EXPIRED]
        self.assertEqual((dave_ok.expires, dave_gone.expires), (2, 0))
        self.assertEqual(round(dave_gone.created_at - dave_ok.created_at, 6), 2.0)
        self.assertEqual(len({r.contact_domain + str(r.sipcallerport) for r in rows
                              if r.to_num == "erin"}), 2)
        for r in rows:
            self.assertEqual((r.sipcallerip, r.sipcalledip, r.to_domain, r.ua),
                             (PHONE, REGISTRAR, REGISTRAR, "SIPp register scenario"))
            if r.state == rec.STATE_OK:
                self.assertTrue(0 < r.rrd < 1000)
        failed = {(f.to_num, f.response): f.counter for f in latest(records, rec.RegisterFailed)}
        self.assertEqual(failed, {("bob", 401): 3, ("blocked", 403): 1,
                                  ("mute", 0): 1})
        info = [r for r in of(records, rec.RegisterTimeInfo) if r.type_info == "failed"]
        self.assertEqual((sum(r.counter for r in info), {(r.sipcallerip, r.sipcalledip)
                                                         for r in info}),
                         (5, {(PHONE, REGISTRAR)}))
        self.assertEqual(of(records, Alert), [])
        stats = registers.stats
        self.assertEqual((stats.challenges, stats.rejected_credentials, stats.timeouts,
                          stats.errors, stats.unresolved), (10, 3, 1, 0, 0))
        self.assertEqual(sorted(r["to_num"] for r in registers.registrations()),
                         ["carol", "erin", "erin"])
        self.assertEqual([r for r in records if isinstance(r, (msgrec.SipMsg,
                                                               msgrec.InstantMessage))], [])

    def check_scan(self, path: str) -> None:
        records, registers, _ = analyse(path)
        alerts = {a.kind: a for a in latest(records, Alert)}
        self.assertEqual(set(alerts), {SCAN, BRUTE_FORCE, POSSIBLE_COMPROMISE})
        for alert in alerts.values():
            self.assertEqual((alert.sipcallerip, alert.sipcalledip, alert.ua),
                             (ATTACKER, REGISTRAR, "friendly-scanner"))
        scan, brute, got_in = alerts[SCAN], alerts[BRUTE_FORCE], alerts[POSSIBLE_COMPROMISE]
        # svwar: a probe of a random user and 1000-1059 (1001-1003 challenged, never
        # answered; the rest 404); svcrack: 30 wrong passwords for 1001, then the right one
        self.assertEqual((scan.extension_count, scan.failures, scan.successes,
                          scan.closed), (61, 91, 1, True))
        self.assertEqual((brute.extensions.split(",")[0], brute.successes), ("1001", 1))
        self.assertEqual((got_in.extensions, got_in.failures), ("1001", 91))
        self.assertTrue(got_in.message.startswith(
            "possible compromise: 1001 registered from 127.0.0.1"))
        failed = latest(records, rec.RegisterFailed)
        responses = Counter(f.response for f in failed)
        self.assertEqual(responses, Counter({404: 58, 401: 3}))
        self.assertEqual({f.to_num: f.counter for f in failed if f.response == 401},
                         {"1001": 31, "1002": 1, "1003": 1})
        self.assertEqual({f.sipcallerip for f in failed}, {ATTACKER})
        ok = Counter((r.to_num, r.sipcallerip, r.state) for r in of(records, rec.RegisterState))
        self.assertEqual(ok, Counter({    # alice twice, from two SIPp ports: two contacts
            ("alice", PHONE, rec.STATE_OK): 2, ("1001", ATTACKER, rec.STATE_OK): 1}))
        self.assertEqual((registers.stats.abandoned_challenges, registers.stats.errors),
                         (3, 0))

    def check_sipmsg(self, path: str) -> None:
        records, registers, sipmsg = analyse(path)
        rows = of(records, msgrec.SipMsg)
        summary = [(r.type, r.number_dst, r.response_number, r.qualify_ok) for r in rows]
        self.assertEqual(sorted(summary), sorted([
            (msgrec.TYPE_OPTIONS, "trunk", 200, True), (msgrec.TYPE_SUBSCRIBE, "bob", 200, True),
            (msgrec.TYPE_NOTIFY, "bob", 200, True), (msgrec.TYPE_OPTIONS, "slow", 200, False),
            (msgrec.TYPE_OPTIONS, "silent", 0, False), (msgrec.TYPE_OPTIONS, "trunk", 200, True)]))
        by = {r.number_dst: r for r in rows if r.type == msgrec.TYPE_OPTIONS}
        slow, silent = by["slow"], by["silent"]
        self.assertTrue(3000 <= slow.response_duration_ms < 3500)
        self.assertTrue(slow.request_repetition >= 1)
        self.assertEqual((silent.response_time, silent.response_duration_ms),
                         (None, None))
        self.assertTrue(silent.request_repetition >= 2)
        notify = next(r for r in rows if r.type == msgrec.TYPE_NOTIFY)
        self.assertEqual(notify.request_content_type, "application/pidf+xml")
        self.assertTrue("<basic>open</basic>" in notify.request_content)
        for r in rows:
            self.assertEqual((r.ip_src, r.ip_dst, r.ua_src), (PHONE, REGISTRAR,
                                                              "SIPp pbx scenario"))
        [message] = of(records, msgrec.InstantMessage)
        self.assertEqual((message.caller, message.called, message.message.strip(),
                          message.lastSIPresponseNum),
                         ("pbx", "bob", "Hello Bob, the coffee machine is fixed.", 200))
        self.assertTrue(sipmsg.stats.duplicate_responses >= 1)   # kamailio answered copies
        qualify = {r["number_dst"]: r["qualify_ok"] for r in sipmsg.relations("OPTIONS")}
        self.assertEqual(qualify, {"trunk": True, "slow": False, "silent": False})
        self.assertEqual([r for r in records
                          if isinstance(r, (rec.RegisterState, rec.RegisterFailed))], [])
        # a minute that starts during the capture has its "active" row, of no registration
        self.assertEqual([(r.type_info, r.counter) for r in of(records, rec.RegisterTimeInfo)
                          if r.type_info != "active" or r.counter], [])
        self.assertEqual(registers.stats.requests, 0)


class CaptureTests(Checks):

    def test_phones(self) -> None:
        self.check_phones(data_path(PHONES))

    def test_scanner_is_flagged_and_the_user_it_broke_into_named(self) -> None:
        self.check_scan(data_path(SCANNED))

    def test_options_qualify_and_other_non_call_sip(self) -> None:
        self.check_sipmsg(data_path(PBX))

    def test_same_capture_same_records(self) -> None:
        first, _, _ = analyse(data_path(SCANNED))
        second, _, _ = analyse(data_path(SCANNED))
        self.assertEqual(first, second)


class RegenerationTests(Checks, TestCase):
    """Make the captures again with the real programs, then check them."""

    timeout = 300

    def setUp(self) -> None:
        for tool, package in (("kamailio", "kamailio"), ("sipp", "sip-tester"),
                              ("svwar", "sipvicious"), ("svcrack", "sipvicious"),
                              ("tcpdump", "tcpdump")):
            if shutil.which(tool) is None:
                raise missing_tool(f"{tool} is not installed (Debian package {package})")
        if os.geteuid() != 0:
            raise missing_tool("capturing on lo needs root")

    @defer.inlineCallbacks
    def test_make_register_captures(self) -> defer.Generator:
        out = os.path.abspath(self.mktemp())
        os.makedirs(out)
        script = data_path("make_register_captures.sh")
        proto = ToolProcess("make_register_captures.sh")
        reactor.spawnProcess(proto, "/bin/sh", ["/bin/sh", script, out],  # type: ignore
                             env=dict(os.environ), path=out)
        code = yield proto.ended
        self.assertEqual(code, 0, proto.tail())
        self.check_phones(os.path.join(out, PHONES))
        self.check_scan(os.path.join(out, SCANNED))
        self.check_sipmsg(os.path.join(out, PBX))
