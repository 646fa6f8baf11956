"""Live capture of real SIPp calls on ``lo``, checked against tcpdump of the same traffic.

``SippLiveTests`` feeds a LiveCapture straight into the engine and the packet decoder.
``SensorToCentralTests`` runs the whole path: a SensorService capturing on ``lo`` (its own
LiveCapture, built from its config), the TLS channel, a CentralService and its SQLite
store, whose rows are checked. Needs root, SIPp (Debian sip-tester) and tcpdump: without
them the tests skip, and with VOIPMON_REQUIRE_LIVE=1 (CI) they fail instead. Every wait
is on a process, capture or store event, bounded by SIPp's own timeouts and the test's.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from voipmon.analysis.engine import Engine
from voipmon.config import load_central_config, load_sensor_config
from voipmon.packet.datagram import IPPROTO_UDP, Datagram
from voipmon.packet.decode import Decoder
from voipmon.records.cdr import BYE_CONFIRMED, BYE_NOT_ANSWERED, Cdr
from voipmon.sources.live import LiveCapture
from voipmon.store.dialect import dialect_for
from voipmon.store.sqlstore import SqlStore
from voipmon.test.fakes import CommitCounter
from voipmon.test.live_support import FunctionSink, require_root, require_tool
from voipmon.test.services import build_central, build_sensor
from voipmon.test.sipp_calls import SippCalls, media_source, rtp_key

log = Logger()

_CALLID = re.compile(rb"^(?:Call-ID|i)\s*:\s*(\S+)", re.M | re.I)
_STATUS = re.compile(rb"^SIP/2\.0 (\d{3}) ")
_CSEQ = re.compile(rb"^CSeq\s*:\s*\d+\s+(\w+)", re.M | re.I)


class SippLiveTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        require_root()
        self.sipp = require_tool("sipp", "sip-tester")
        self.tcpdump = require_tool("tcpdump", "tcpdump")
        media_source()

    @defer.inlineCallbacks
    def test_live_capture_matches_tcpdump(self) -> None:
        calls = SippCalls(reactor, os.path.abspath(self.mktemp()), self.sipp, self.tcpdump,
                          calls=3)
        self.addCleanup(calls.kill_leftovers)
        ports = calls.ports
        sip_ports = ports.sip
        cdrs: list[Cdr] = []
        engine = Engine(id_sensor=1, on_cdr=cdrs.append, sip_ports=sip_ports)
        datagrams: list[Datagram] = []
        decoder = Decoder(datagrams.append, sip_ports=sip_ports)

        def sink(ts: float, linktype: int, frame: bytes) -> None:
            engine.feed(ts, linktype, frame)
            decoder.feed(ts, linktype, frame)

        capture = LiveCapture(["lo"], sip_ports, FunctionSink(sink), reactor=reactor,
                              status_interval=0, user_filter=ports.capture_filter())
        capture.startService()
        self.addCleanup(lambda: capture.stopService() if capture.running else None)
        calls.tcpdump_filter = capture.interfaces[0].expression  # the very same filter

        reference = yield calls.run()
        capture.stopService()  # drains the ring first
        decoder.flush()
        engine.finish()
        stats = capture.stats()

        # no drops, neither ours nor tcpdump's
        self.assertEqual((stats["kernel_dropped"], stats["interface_dropped"],
                          stats["sink_errors"]), (0, 0, 0))
        self.assertEqual(reference.kernel_dropped, 0)

        # one CDR per call, with the right final codes and the RTP tcpdump saw
        self.assertEqual(sorted(cdr.callid for cdr in cdrs), sorted(reference.sip_callids))
        self.assertEqual(sorted((cdr.lastSIPresponseNum, cdr.bye) for cdr in cdrs),
                         [(200, BYE_CONFIRMED)] * 3 + [(486, BYE_NOT_ANSWERED)])
        streams: Counter = Counter()
        for cdr in cdrs:
            for stream in cdr.rtp:
                streams[(stream.saddr, stream.sport, stream.daddr, stream.dport,
                         stream.ssrc)] += stream.received
        self.assertEqual(streams, reference.rtp)
        for cdr in cdrs:
            if cdr.lastSIPresponseNum == 200:
                self.assertEqual((cdr.side("a").received, cdr.side("b").received), (236, 236))
                self.assertEqual((cdr.side("a").lost, cdr.side("b").lost), (0, 0))
            else:
                self.assertEqual(cdr.rtp, ())

        # the decoder's datagrams: the same RTP per stream, and every SIP response
        ours: Counter = Counter()
        responses: dict[str, list[tuple[str, int]]] = {}
        for d in datagrams:
            if d.proto != IPPROTO_UDP:
                continue
            if d.sport in ports.media and d.dport in ports.media:
                key = rtp_key(d.src, d.sport, d.dst, d.dport, d.payload)
                if key is not None:
                    ours[key] += 1
            else:
                callid = _CALLID.search(d.payload)
                status = _STATUS.match(d.payload)
                method = _CSEQ.search(d.payload)
                if callid and status and method:
                    responses.setdefault(callid.group(1).decode(), []).append(
                        (method.group(1).decode(), int(status.group(1))))
        self.assertEqual(len(reference.rtp), 4 * 3)   # audio + DTMF, both ways, 3 calls
        self.assertGreater(sum(reference.rtp.values()), 3 * 2 * 200)
        self.assertEqual(ours, reference.rtp)

        # SIP: every call seen, with its final INVITE response
        self.assertEqual(set(responses), reference.sip_callids)
        finals = sorted(max(code for method, code in answers if method == "INVITE")
                        for answers in responses.values())
        self.assertEqual(finals, [200, 200, 200, 486])


class SensorToCentralTests(TestCase):
    """SIPp calls captured live by a sensor, stored by a central: one row per call."""

    timeout = 180
    password = "live-sipp-secret"

    def setUp(self) -> None:
        require_root()
        self.sipp = require_tool("sipp", "sip-tester")
        self.tcpdump = require_tool("tcpdump", "tcpdump")
        media_source()
        self.base = os.path.abspath(self.mktemp())

    def test_calls_stored_by_the_central(self) -> Any:
        """Local processing: the sensor's engine closes the calls and sends the CDRs."""
        return self.calls_stored("no")

    def test_mirrored_calls_closed_while_the_line_is_quiet(self) -> Any:
        """Packet mirroring: the central's engine closes the calls after they end, while the
        sensor stays connected and sends no packet any more (the sensor's capture clock
        reaches the central in CLOCK messages)."""
        return self.calls_stored("yes")

    @defer.inlineCallbacks
    def calls_stored(self, mirroring: str) -> Any:
        central_settings = load_central_config("central.conf", text=(
            f"server_bind = 127.0.0.1\nserver_password = {self.password}\n"
            f"spooldir = {self.base}/central\nsqlite_path = {self.base}/central.sqlite\n"
            "http_port = 0\n"))
        store = CommitCounter(SqlStore(dialect_for(central_settings.store), reactor), expect=4)
        central = build_central(central_settings, reactor, store=store, port=0)
        central.startService()
        self.addCleanup(central.stopService)
        port = (yield central.channel.listening).getHost().port

        calls = SippCalls(reactor, os.path.join(self.base, "sipp"), self.sipp, self.tcpdump,
                          calls=3)
        self.addCleanup(calls.kill_leftovers)
        sensor_settings = load_sensor_config("sensor.conf", text=(
            f"id_sensor = 21\nserver_destination = 127.0.0.1:{port}\n"
            f"server_password = {self.password}\nspooldir = {self.base}/sensor\n"
            f"managerport = 0\ninterface = lo\npacketbuffer_sender = {mirroring}\n"
            f"sipport = {', '.join(str(p) for p in calls.ports.sip)}\n"
            f"filter = {calls.ports.capture_filter()}\n"))
        sensor = build_sensor(sensor_settings, reactor)
        sensor.startService()
        self.addCleanup(lambda: sensor.stopService() if sensor.running else None)
        self.assertIsInstance(sensor.source, LiveCapture)
        calls.tcpdump_filter = sensor.source.interfaces[0].expression

        # While the calls run, the central asks for the sensor's calls in progress: over
        # the sensor's channel (local processing), or of its own engine for it (mirroring).
        registry = central.channel.central_factory.registry
        seen: list[int] = []

        def live() -> None:
            if mirroring == "yes":
                listed = central.channel.mirrors.active_calls(21)
                if listed is not None:
                    seen.append(len(listed))
                return
            if registry.connected(21):
                registry.query(21, "listcalls").addCallbacks(
                    lambda raw: seen.append(len(json.loads(raw))),
                    lambda f: log.failure("listcalls", f))

        poll = task.LoopingCall(live)
        poll.start(0.2)
        reference = yield calls.run()
        poll.stop()
        self.assertGreater(max(seen, default=0), 0,
                           f"no call in progress was listed during the calls: {seen}")
        # The sensor's engine (or, mirroring, the central's on the sensor's capture clock)
        # closes each call a few seconds after its end, though no packet comes any more;
        # wait until the central has committed all four.
        timeout = reactor.callLater(90, store.done.cancel)
        yield store.done
        timeout.cancel()
        self.assertEqual(store.stored, 4)

        stats = sensor.source.stats()
        self.assertEqual((stats["kernel_dropped"], stats["interface_dropped"],
                          stats["sink_errors"]), (0, 0, 0))
        self.assertEqual(sensor.sniffer_stat()["dropped"], 0)
        self.assertEqual(reference.kernel_dropped, 0)

        rows = yield store.list_cdrs({"id_sensor": "21"})
        self.assertEqual(sorted(row["callid"] for row in rows), sorted(reference.sip_callids))
        self.assertEqual(sorted((row["lastSIPresponseNum"], row["bye"]) for row in rows),
                         [(200, BYE_CONFIRMED)] * 3 + [(486, BYE_NOT_ANSWERED)])
        streams: Counter = Counter()
        for row in rows:
            for stream in row["rtp"]:
                streams[(stream["saddr"], stream["sport"], stream["daddr"], stream["dport"],
                         stream["ssrc"])] += stream["received"]
        self.assertEqual(streams, reference.rtp)
        for row in rows:
            if row["lastSIPresponseNum"] == 200:
                self.assertEqual((row["a_received"], row["b_received"]), (236, 236))
        if mirroring == "yes":
            self.assertEqual(len(central.channel.sessions.registry), 1)  # still connected
            self.assertIsNone(sensor.uplink.end_state)
        yield sensor.stopService()
