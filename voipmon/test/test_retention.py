"""Spool retention with a fake clock and tiny limits."""

from __future__ import annotations

import calendar
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from voipmon.spool.retention import Minute, Retention, plan, remove, scan

T0 = calendar.timegm((2024, 5, 1, 12, 0, 0))


def make_minute(spool: str, start: float, size: int) -> str:
    import time
    relpath = time.strftime("%Y-%m-%d/%H/%M", time.gmtime(start))
    folder = os.path.join(spool, relpath, "SIP")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "c.pcap"), "wb") as handle:
        handle.write(b"x" * size)
    return relpath


class PlanTests(SynchronousTestCase):
    def minutes(self) -> list[Minute]:
        return [Minute(T0 + 60 * i, f"m{i}", 400_000) for i in range(10)]

    def test_size_removes_oldest_first(self) -> None:
        doomed = plan(self.minutes(), T0 + 600, maxpoolsize_mb=2, maxpooldays=0)
        # 10 x 400 kB = 4 MB; 2 MiB = 2097152 holds 5 minutes
        self.assertEqual([m.relpath for m, _ in doomed], ["m0", "m1", "m2", "m3", "m4"])
        self.assertIn("maxpoolsize = 2 MB", doomed[0][1])

    def test_days(self) -> None:
        doomed = plan(self.minutes(), T0 + 86400 + 185, maxpoolsize_mb=0, maxpooldays=1)
        # the cut is T0 + 185: m2 (T0+120..T0+180) is wholly older, m3 is not
        self.assertEqual([m.relpath for m, _ in doomed], ["m0", "m1", "m2"])
        self.assertIn("maxpooldays = 1", doomed[0][1])

    def test_no_limit_and_current_minute_kept(self) -> None:
        self.assertEqual(plan(self.minutes(), T0 + 10**9, 0, 0), [])
        huge = [Minute(T0, "now", 10**10)]
        self.assertEqual(plan(huge, T0 + 30, 1, 0), [])


class RetentionTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.spool = os.path.join(base, "spool")
        self.outside = os.path.join(base, "outside")
        os.makedirs(self.outside)
        with open(os.path.join(self.outside, "keep.pcap"), "wb") as handle:
            handle.write(b"k" * 1000)
        os.makedirs(os.path.join(self.spool, "state"))
        with open(os.path.join(self.spool, "state", "queue.db"), "wb") as handle:
            handle.write(b"q" * 3_000_000)  # not pcaps: never counted nor removed
        self.clock = Clock()
        self.clock.advance(T0)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_periodic_size_and_days(self) -> None:
        rels = [make_minute(self.spool, T0 - 3600 + 60 * i, 300_000) for i in range(6)]
        self.assertEqual([m.relpath for m in scan(self.spool)], rels)
        retention = Retention(self.spool, maxpoolsize_mb=1, maxpooldays=0, clock=self.clock,
                              interval=60)
        retention.startService()
        self.addCleanup(retention.stopService)
        # 6 x 300 kB = 1.8 MB > 1 MiB: the oldest 3 go at once
        self.assertEqual([m.relpath for m in scan(self.spool)], rels[3:])
        self.assertEqual((retention.removed_minutes, retention.removed_bytes), (3, 900_000))
        logged = [e for e in self.events if "retention removed" in e.get("log_format", "")]
        self.assertEqual([e["minute"] for e in logged], rels[:3])
        # more pcaps arrive; the next period removes again
        rels.append(make_minute(self.spool, T0 + 30, 300_000))
        self.clock.advance(60)
        self.assertEqual([m.relpath for m in scan(self.spool)], rels[4:])
        self.assertTrue(os.path.exists(os.path.join(self.spool, "state", "queue.db")))

    def test_days_and_empty_parents_pruned(self) -> None:
        old = make_minute(self.spool, T0 - 3 * 86400, 10)
        new = make_minute(self.spool, T0 - 3600, 10)
        retention = Retention(self.spool, maxpoolsize_mb=0, maxpooldays=2, clock=self.clock)
        removed = self.successResultOf(retention.check())
        self.assertEqual([m.relpath for m in removed], [old])
        self.assertFalse(os.path.exists(os.path.join(self.spool, old.split("/")[0])))
        self.assertTrue(os.path.exists(os.path.join(self.spool, new)))

    def test_never_follows_symlinks_out(self) -> None:
        rel = make_minute(self.spool, T0 - 7200, 10)
        os.symlink(self.outside, os.path.join(self.spool, rel, "RTP"))
        # a whole day that is a link out of the spool is not even scanned
        os.symlink(self.outside, os.path.join(self.spool, "2024-04-01"))
        self.assertEqual([m.relpath for m in scan(self.spool)], [rel])
        self.assertEqual(scan(self.spool)[0].size, 10)  # the link's target is not counted
        retention = Retention(self.spool, maxpoolsize_mb=0, maxpooldays=1, clock=self.clock)
        self.clock.advance(86400)
        self.assertEqual(len(self.successResultOf(retention.check())), 1)
        self.assertTrue(os.path.exists(os.path.join(self.outside, "keep.pcap")))
        self.assertFalse(os.path.exists(os.path.join(self.spool, rel)))
        # a minute that is itself a link: the link goes, the target stays
        os.makedirs(os.path.join(self.spool, "2024-04-30", "00"))
        os.symlink(self.outside, os.path.join(self.spool, "2024-04-30", "00", "01"))
        remove(self.spool, "2024-04-30/00/01")
        self.assertTrue(os.path.exists(os.path.join(self.outside, "keep.pcap")))

    def test_survives_errors(self) -> None:
        make_minute(self.spool, T0 - 7200, 2_000_000)
        calls = []

        def flaky(work):
            calls.append(1)
            if len(calls) == 1:
                return defer.fail(OSError("disk on fire"))
            return defer.maybeDeferred(work)

        retention = Retention(self.spool, maxpoolsize_mb=1, maxpooldays=0, clock=self.clock,
                              blocking=flaky, interval=60)
        retention.startService()
        self.addCleanup(retention.stopService)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(retention.errors, 1)
        self.assertEqual(retention.removed_minutes, 0)
        self.clock.advance(60)
        self.assertEqual(retention.removed_minutes, 1)
        retention.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_disabled_does_not_loop(self) -> None:
        retention = Retention(self.spool, 0, 0, clock=self.clock)
        retention.startService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        retention.stopService()
