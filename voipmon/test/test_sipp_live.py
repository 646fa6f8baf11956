"""Live capture of real SIPp calls on ``lo``, checked against tcpdump of the same traffic.

Needs root, SIPp (Debian sip-tester) and tcpdump: without them it skips, and with
VOIPMON_REQUIRE_LIVE=1 (CI) it fails instead. Every wait is on a process event or a
capture event, bounded by SIPp's own timeouts and the test's.
"""

from __future__ import annotations

import os
import re
from collections import Counter

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from voipmon.analysis.cdr import BYE_CONFIRMED, BYE_NOT_ANSWERED, Cdr
from voipmon.analysis.engine import Engine
from voipmon.packet.datagram import IPPROTO_UDP, Datagram
from voipmon.packet.decode import Decoder
from voipmon.packet.live import LiveCapture
from voipmon.test.live_support import require_root, require_tool
from voipmon.test.sipp_calls import SippCalls, media_source, rtp_key

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

        capture = LiveCapture(["lo"], sip_ports, sink, reactor=reactor, status_interval=0)
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
