"""A mirrored call leaves the central's live list within seconds after it ends (in memory).

A live mirroring sensor (a real MirrorUplink, its capture clock on a ``task.Clock``) sends
a call's packets over the real channel to the central's own engine for it (the real
mirroring engine factory, CentralSessions, MirrorAnalyses). After the BYE is answered the
call is in ``active_calls`` (what ``GET /api/sensors/<id>/calls`` answers from), then leaves
it within seconds of capture time: moved by the sensor's CLOCK while no packet comes, or by
the packets of other traffic that keep coming. Without either, nothing moves it.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from voipmon.central.mirror import MirrorAnalyses
from voipmon.central.service import mirror_engine_factory
from voipmon.central.sessions import CentralSessions
from voipmon.sensor.mirror import MirrorUplink
from voipmon.sensor.uplink import UplinkFactory
from voipmon.test.callsupport import rtp, sdp, sip_message, udp_frame
from voipmon.test.fakes import FakeStore
from voipmon.test.fakes_channel import ChannelPair
from voipmon.test.rpc_support import TableCommands
from voipmon.test.test_central_mirror import cdr_queue

CALLER, CALLEE = ("10.0.0.1", 5060), ("10.0.0.2", 5060)
AM, BM = ("10.0.0.1", 40000), ("10.0.0.2", 50000)
LINGER = 5.0          # the engine keeps an ended call this long for late packets


class MirroredCallLeavesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pair = ChannelPair(handler=None)
        self.clock = self.pair.clock
        store = FakeStore(self.clock)
        queue = cdr_queue(self, store, self.clock)
        spool = os.path.abspath(self.mktemp())
        self.mirrors = MirrorAnalyses(mirror_engine_factory(spool), queue, self.clock)
        self.sessions = CentralSessions(store, self.clock, self.pair.factory.registry,
                                        self.mirrors)
        self.pair.factory.handler = self.sessions
        self.uplink = MirrorUplink(self.clock, max_buffer_bytes=1 << 20, batch_packets=8,
                                   window=4)
        # commands: the sensor offers every capability, capture_clock among them
        d = self.pair.endpoint(mode="mirror", commands=TableCommands()).connect(
            UplinkFactory(self.uplink))
        self.pair.flush()
        self.successResultOf(d)
        self.assertTrue(self.uplink.capture_clock)
        self.addCleanup(self.finish)

    def finish(self) -> None:
        self.pair.close_all()
        self.mirrors.stop()
        self.sessions.stop()
        self.clock.advance(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def send(self, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
        """One packet captured now (the sensor's clock), sent and taken by the central."""
        self.uplink.feed(self.clock.seconds(), 1, udp_frame(src[0], src[1], dst[0], dst[1],
                                                             payload))
        self.uplink.seal()
        self.uplink.pump()
        self.pair.flush()

    def live(self) -> list[dict[str, Any]]:
        return [c["callid"] for c in self.mirrors.active_calls(7) or []]

    def call(self) -> float:
        """A call of 2 s of RTP, ended by a BYE its callee answers; returns the time of
        that answer."""
        self.send(CALLER, CALLEE, sip_message("INVITE sip:bob@example.com SIP/2.0", "m1",
                                              "1 INVITE", "ft", body=sdp(*AM)))
        self.clock.advance(0.5)
        self.send(CALLEE, CALLER, sip_message("SIP/2.0 200 OK", "m1", "1 INVITE", "ft", "tt",
                                              body=sdp(*BM)))
        for i in range(100):
            self.clock.advance(0.02)
            self.send(AM, BM, rtp(1000 + i, i * 160, 0xA1))
        self.assertEqual(self.live(), ["m1"])
        (info,) = self.mirrors.active_calls(7)
        self.assertEqual(info["rtp"][0]["received"], 100)   # the live figures, mirrored
        self.send(CALLER, CALLEE, sip_message("BYE sip:bob@example.com SIP/2.0", "m1",
                                              "2 BYE", "ft", "tt"))
        self.clock.advance(0.01)
        self.send(CALLEE, CALLER, sip_message("SIP/2.0 200 OK", "m1", "2 BYE", "ft", "tt"))
        self.assertEqual(self.live(), ["m1"], "ended, kept a moment for late packets")
        return self.clock.seconds()

    def gone_after(self, ended: float, step: float, tick: Any) -> float:
        """Seconds of capture time after ``ended`` until the call left the list."""
        for _ in range(int(60 / step)):
            self.clock.advance(step)
            tick()
            if not self.live():
                return self.clock.seconds() - ended
        self.fail("the ended call never left the live list")

    def test_no_more_packets_the_sensors_clock_moves_it(self) -> None:
        ended = self.call()

        def second() -> None:   # the sensor service's once-a-second housekeeping
            self.uplink.advance_clock()
            self.pair.flush()

        took = self.gone_after(ended, 1.0, second)
        self.assertLessEqual(took, LINGER + 2.0)

    def test_other_traffic_moves_it(self) -> None:
        ended = self.call()
        other = iter(range(10_000))

        def packet() -> None:   # another call's RTP keeps coming; no CLOCK is sent
            self.send(("10.9.0.1", 41000), ("10.9.0.2", 51000), rtp(next(other), 0, 0xEE))

        took = self.gone_after(ended, 0.2, packet)
        self.assertLessEqual(took, LINGER + 2.0)

    def test_nothing_moves_it_without_a_clock_or_packets(self) -> None:
        """The control: with neither CLOCK nor packets the central cannot know time
        passed, and the call stays (so the two tests above measure what moved it)."""
        self.call()
        for _ in range(30):
            self.clock.advance(1.0)
            self.pair.flush()
        self.assertEqual(self.live(), ["m1"])
