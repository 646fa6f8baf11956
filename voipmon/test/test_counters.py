"""voipmon.counters: families and prefixes as flat dotted keys, the nested form people read,
and the holders hot paths count in."""

from __future__ import annotations

from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from voipmon import counters


class Holder(counters.Counts):
    def __init__(self) -> None:
        self.frames = 0
        self.errors = 0


class CountersTests(SynchronousTestCase):
    def test_family_and_prefix(self) -> None:
        found = counters.prefixed("decoder", {
            "frames": 4, **counters.family("undecodable", Counter({"a": 1, "b": 2}))})
        self.assertEqual(found, {"decoder.frames": 4, "decoder.undecodable.a": 1,
                                 "decoder.undecodable.b": 2})

    def test_nested_for_people(self) -> None:
        flat = {"cdrs": 2, "decoder.frames": 4, "decoder.undecodable.b": 2,
                "decoder.undecodable.a": 1, "spool.files": 1}
        self.assertEqual(counters.nested(flat), {
            "cdrs": 2, "decoder": {"frames": 4, "undecodable": {"b": 2, "a": 1}},
            "spool": {"files": 1}})

    def test_a_holder_snapshot_is_a_copy(self) -> None:
        holder = Holder()
        holder.frames += 3
        snapshot = holder.counters()
        holder.frames += 1
        self.assertEqual(snapshot, {"frames": 3, "errors": 0})
        self.assertEqual(holder.counters(), {"frames": 4, "errors": 0})
