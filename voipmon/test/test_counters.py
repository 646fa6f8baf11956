"""voipmon.counters: keys with labels of any text, prefixes, and the nested form people read."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voipmon import counters


class KeyTests(SynchronousTestCase):
    def test_plain_and_labelled_keys(self) -> None:
        self.assertEqual(counters.key("undecodable", reason="tcp_short"),
                         'undecodable{reason="tcp_short"}')
        self.assertEqual(counters.key("packets", interface='a"b\\c\nd', sensor=3),
                         'packets{interface="a\\"b\\\\c\\nd",sensor="3"}')
        self.assertEqual(counters.split("frames"), ("frames", {}))
        self.assertEqual(counters.split('decoder.ignored{reason="llc"}'),
                         ("decoder.ignored", {"reason": "llc"}))

    @given(st.text(), st.text())
    def test_any_label_value_comes_back(self, first: str, second: str) -> None:
        text = counters.key("x_total", a=first, b=second)
        self.assertEqual(counters.split(text), ("x_total", {"a": first, "b": second}))

    def test_family_and_prefix(self) -> None:
        found = counters.prefixed("decoder", {
            "frames": 4, **counters.family("undecodable", "reason", {"a": 1, "b.c": 2})})
        self.assertEqual(found, {"decoder.frames": 4,
                                 'decoder.undecodable{reason="a"}': 1,
                                 'decoder.undecodable{reason="b.c"}': 2})

    def test_nested_for_people(self) -> None:
        flat = {"cdrs": 2, "decoder.frames": 4, 'decoder.undecodable{reason="b.c"}': 2,
                'decoder.undecodable{reason="a"}': 1, "spool.files": 1,
                'per{interface="eth0.100",kind="rx"}': 7}
        self.assertEqual(counters.nested(flat), {
            "cdrs": 2, "decoder": {"frames": 4, "undecodable": {"b.c": 2, "a": 1}},
            "spool": {"files": 1}, "per": {"eth0.100": {"rx": 7}}})
