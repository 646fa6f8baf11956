"""Tests for voipmon.spool.deadletter: a record no consumer could take is kept (in full, on
disk), counted and logged once per cause, and keeping it never fails its caller."""

from __future__ import annotations

import base64
import json
import os

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from voipmon.analysis.engine import Engine
from voipmon.counters import nested
from voipmon.records.cdr import Cdr
from voipmon.records.keys import callid_bytes
from voipmon.spool.deadletter import DeadLetters, IDeadLetters, read
from voipmon.store.testing import make_cdr

T0 = 1_700_000_000.25   # 2023-11-14T22:13:20.250Z


def failure(message: str = "the queue is gone") -> Exception:
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        return exc


class DeadLettersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.directory = os.path.join(os.path.abspath(self.mktemp()), "deadletter")
        self.dead = DeadLetters(self.directory, self.clock)
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def logged(self) -> list[str]:
        return [formatEvent(event) for event in self.observer]

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IDeadLetters, self.dead))

    def test_a_cdr_is_kept_in_full_and_reads_back_exactly(self) -> None:
        """The CDR is kept as its fields (the wire form), every string exact (bytes that were
        not UTF-8 included), with when, why and the traceback, fsync'd to the day's file."""
        callid = b"id-\xff\xfe\x00\xf0\x9f\x98\x80\"'\\".decode("utf-8", "surrogateescape")
        cdr = make_cdr(3, id_sensor=9, callid=callid, caller="\udc80",
                       extra={"odd": float("nan")})
        self.dead.keep("cdr", cdr, failure(), id_sensor=9, callid=callid)
        self.assertEqual(os.listdir(self.directory), ["2023-11-14.jsonl"])
        with open(os.path.join(self.directory, "2023-11-14.jsonl"), "rb") as handle:
            handle.read().decode("ascii")
        [entry] = read(self.directory)
        self.assertEqual(entry["kept_at"], "2023-11-14T22:13:20.250Z")
        self.assertEqual((entry["kind"], entry["id_sensor"], entry["reason"]),
                         ("cdr", 9, "RuntimeError: the queue is gone"))
        self.assertIn("in failure", entry["traceback"])
        self.assertEqual(callid_bytes(entry["callid"]), b"id-\xff\xfe\x00\xf0\x9f\x98\x80\"'\\")
        kept = Cdr.from_wire(entry["record"])
        self.assertEqual(kept.callid, cdr.callid)
        self.assertEqual(kept.caller, "\udc80")
        self.assertEqual(kept.rtp, cdr.rtp)
        self.assertEqual((self.dead.count, self.dead.written, self.dead.unwritten), (1, 1, 0))
        self.assertEqual(self.dead.for_sensor(9), 1)

    def test_bytes_and_odd_records(self) -> None:
        """Bytes are kept as base64; what JSON cannot hold is kept as its repr."""
        self.dead.keep("queue_record", b"\x00\xffraw", "not a CDR")
        loop: list = []
        loop.append(loop)
        self.dead.keep("thing", loop, "a loop")
        self.dead.keep("thing", {1, 2}, "a set")
        first, second, third = read(self.directory)
        self.assertEqual(base64.b64decode(first["record_base64"]), b"\x00\xffraw")
        self.assertEqual(second["record"], "[[...]]")
        self.assertIn("record_repr_because", second)
        self.assertEqual(third["record"], "{1, 2}")

    def test_logged_once_per_cause(self) -> None:
        """The first record of each cause is logged with its reason and file; the rest
        of that cause are kept and counted without a line each."""
        for n in range(5):
            self.dead.keep("cdr", make_cdr(n), failure(f"full {n}"), id_sensor=1,
                           callid=f"c{n}\udcff")
        self.dead.keep("cdr", make_cdr(9), OSError("disk"), id_sensor=1, callid="c9")
        self.dead.keep("rtp_stream", make_cdr(9).rtp[0], failure(), id_sensor=1)
        lines = [line for line in self.logged() if "could not be delivered" in line]
        self.assertEqual(len(lines), 3, lines)
        self.assertIn("(RuntimeError: full 0): call c0\\udcff, sensor 1; dead letter #1, "
                      f"kept in {self.directory}", lines[0])
        self.assertIn("OSError: disk", lines[1])
        self.assertEqual(self.dead.count, 7)
        self.assertEqual(len(list(read(self.directory))), 7)
        self.assertEqual(nested(self.dead.counters())["by_kind"], {"cdr": 6, "rtp_stream": 1})

    def test_bounded(self) -> None:
        """Past max_bytes records are counted (and the full directory logged once), not kept."""
        dead = DeadLetters(self.directory, self.clock, max_bytes=3000)
        for n in range(5):
            dead.keep("cdr", make_cdr(n), failure())
        kept = list(read(self.directory))
        self.assertLess(len(kept), 5)
        self.assertEqual((dead.count, dead.written + dead.unwritten), (5, 5))
        self.assertEqual(dead.written, len(kept))
        self.assertEqual(len([x for x in self.logged() if "its limit" in x]), 1)
        self.assertLessEqual(sum(os.path.getsize(os.path.join(self.directory, name))
                                 for name in os.listdir(self.directory)), 3000)

    def test_unwritable_directory_never_raises(self) -> None:
        """A directory that cannot be made: the record is counted and the reason logged."""
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as handle:
            handle.write("a file")
        dead = DeadLetters(os.path.join(blocker, "deadletter"), self.clock)
        dead.keep("cdr", make_cdr(1), failure(), callid="x")
        self.assertEqual((dead.count, dead.written, dead.unwritten), (1, 0, 1))
        [line] = [x for x in self.logged() if "could not be delivered" in x]
        self.assertIn("NOT kept: cannot write", line)

    def test_without_a_directory(self) -> None:
        dead = DeadLetters(None)
        dead.keep("cdr", make_cdr(1), failure(), callid="x")
        self.assertEqual((dead.count, dead.unwritten), (1, 1))
        self.assertTrue(any("NOT kept: no dead-letter directory" in x for x in self.logged()))

    def test_a_cut_line_is_skipped(self) -> None:
        """A line cut short by a crash does not hide the others."""
        self.dead.keep("cdr", make_cdr(1), failure())
        with open(os.path.join(self.directory, "2023-11-14.jsonl"), "ab") as handle:
            handle.write(b'{"kind": "cdr", "rec')
        self.clock.advance(86400)
        self.dead.keep("cdr", make_cdr(2), failure())
        self.assertEqual([e["record"]["callid"] for e in read(self.directory)],
                         [make_cdr(1).callid, make_cdr(2).callid])
        self.assertEqual(list(read(os.path.join(self.directory, "absent"))), [])


class EngineTests(SynchronousTestCase):
    def test_every_consumer_goes_through_one_place(self) -> None:
        """A CDR or orphan stream its consumer cannot take goes to the engine's dead letters:
        counted in ``undelivered``, not an engine error, the engine goes on."""
        dead = DeadLetters(None)
        engine = Engine(id_sensor=4, on_cdr=self.fail_on, dead_letters=dead)
        engine._deliver(self.fail_on, "cdr", make_cdr(1), "call-1")
        engine._deliver(lambda record: None, "cdr", make_cdr(2), "call-2")
        self.assertEqual((engine.stats.undelivered, engine.stats.errors), (1, 0))
        self.assertEqual((dead.count, dead.for_sensor(4), dict(dead.by_kind)), (1, 1, {"cdr": 1}))

    def fail_on(self, record: object) -> None:
        raise ValueError(json.dumps({"refused": True}))
