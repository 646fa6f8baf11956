"""Tests for voipmon.analysis.live: listcalls' duration so far and per-stream figures."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from voipmon.test.callsupport import Harness, rtp, sdp, sip_message

AM, BM = ("10.0.0.1", 40000), ("10.0.0.2", 50000)
T0 = 1_700_000_000.0
LOST = (40, 41, 42, 90, 91, 150)        # packets of the caller's stream never sent


def invite(callid: str) -> bytes:
    return sip_message("INVITE sip:bob@example.com SIP/2.0", callid, "1 INVITE", "ft",
                       body=sdp(*AM))


def ok(callid: str) -> bytes:
    return sip_message("SIP/2.0 200 OK", callid, "1 INVITE", "ft", "tt", body=sdp(*BM))


def bye(callid: str) -> bytes:
    return sip_message("BYE sip:bob@example.com SIP/2.0", callid, "2 BYE", "ft", "tt")


class Call:
    """One answered call: 300 packets each way, the caller's with gaps and jitter."""

    def __init__(self, harness: Harness, listcalls_every: int = 0) -> None:
        self.h = harness
        self.snapshots: list[dict] = []
        rng = random.Random(15)
        self.h.to_callee(T0, invite("live"))
        self.h.to_caller(T0 + 0.5, ok("live"))
        for i in range(300):
            t = T0 + 1.0 + i * 0.02
            if i not in LOST:
                self.h.udp(t + rng.uniform(0.0, 0.03), AM, BM, rtp(1000 + i, i * 160, 0xA1))
            self.h.udp(t + 0.001, BM, AM, rtp(5000 + i, i * 160, 0xB2))
            if listcalls_every and i % listcalls_every == listcalls_every - 1:
                self.snapshots.append(self.h.engine.active_calls()[0])
        self.last = T0 + 1.0 + 299 * 0.02 + 0.031

    def end(self) -> None:
        self.h.to_callee(self.last + 1.0, bye("live"))
        self.h.to_caller(self.last + 1.01, sip_message("SIP/2.0 200 OK", "live", "2 BYE",
                                                       "ft", "tt"))
        self.h.engine.finish()


class LiveCallTests(SynchronousTestCase):
    def test_duration_and_streams_so_far(self) -> None:
        """Mid-call, listcalls has the duration on the capture clock, the time since the
        answer, and each stream's packets so far, its losses, jitter and MOS."""
        h = Harness()
        h.to_callee(T0, invite("live"))
        (info,) = h.engine.active_calls()
        self.assertEqual((info["duration"], info["connect_duration"], info["rtp"]),
                         (0.0, None, []))
        h.to_caller(T0 + 0.5, ok("live"))
        end = h.stream(T0 + 1.0, AM, BM, 0xA1, 100, skip=tuple(range(10, 16)))
        (info,) = h.engine.active_calls()
        self.assertAlmostEqual(info["duration"], end - 0.02 - T0, places=3)
        self.assertAlmostEqual(info["connect_duration"], end - 0.02 - T0 - 0.5, places=3)
        (stream,) = info["rtp"]
        self.assertEqual((stream["ssrc"], stream["direction"], stream["src"], stream["dst"],
                          stream["codec"]),
                         ("0x000000a1", "a", "10.0.0.1:40000", "10.0.0.2:50000", "PCMU/8000"))
        self.assertEqual((stream["received"], stream["lost"], stream["loss"]),
                         (94, 6, 6.0))
        self.assertEqual(stream["jitter"], 0.0)          # packets exactly 20 ms apart
        self.assertLess(stream["mos_f1"], 4.5)           # six frames lost in a row (under 5: 4.5)
        self.assertGreater(stream["mos_f1"], 1.0)
        # more packets: the figures move on
        h.stream(end, AM, BM, 0xA1, 50, seq0=1100, ts0=16000)
        (later,) = h.engine.active_calls()
        self.assertEqual(later["rtp"][0]["received"], 144)
        self.assertGreater(later["duration"], info["duration"])

    def test_figures_so_far_are_the_cdrs_once_all_came(self) -> None:
        """After the last packet the live figures are what the CDR then says (received,
        lost, jitter, MOS of each simulated buffer), and asking listcalls during the call
        changes nothing in the CDR."""
        asked = Call(Harness(), listcalls_every=7)
        final = asked.h.engine.active_calls()[0]["rtp"]
        asked.end()
        quiet = Call(Harness())
        quiet.end()
        self.assertGreater(len(asked.snapshots), 40)
        (cdr,), (reference,) = asked.h.cdrs, quiet.h.cdrs
        self.assertEqual(cdr, reference)
        by_ssrc = {int(s["ssrc"], 16): s for s in final}
        for stream in cdr.rtp:
            live = by_ssrc[stream.ssrc]
            self.assertEqual((live["received"], live["lost"]), (stream.received, stream.lost))
            self.assertAlmostEqual(live["maxjitter"], stream.maxjitter, places=2)
            self.assertAlmostEqual(live["avgjitter"], stream.avgjitter, places=2)
            for name in ("mos_f1", "mos_f2", "mos_adapt"):
                self.assertEqual(live[name], getattr(stream, name), (stream.ssrc, name))
        caller = by_ssrc[0xA1]
        self.assertEqual(caller["lost"], len(LOST))
        self.assertGreater(caller["maxjitter"], 0.0)
        # the snapshots count up as the call goes on
        received = [s["rtp"][0]["received"] for s in asked.snapshots if s["rtp"]]
        self.assertEqual(received, sorted(received))
