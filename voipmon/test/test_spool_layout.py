"""Tests for voipmon.spool.layout: safe base names and spool paths."""

from __future__ import annotations

import hashlib
import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from voipmon.spool.layout import MAX_NAME, fbasename, minute_dir, pcap_relpath, resolve


class FbasenameTests(SynchronousTestCase):
    def test_plain_callid_is_kept(self) -> None:
        self.assertEqual(fbasename("a84b4c76e66710@pc33.example.org"),
                         "a84b4c76e66710@pc33.example.org")
        self.assertEqual(fbasename("1-4461@127.0.1.1"), "1-4461@127.0.1.1")

    def test_hostile_callids_stay_one_component(self) -> None:
        hostile = ["../../etc/passwd", "..", ".", "", "/", "a/b", "x\x00y", "\r\n\t",
                   "ümlaut", "a" * 10000, "\udcff\udcfe", ".hidden", "CON", "a:b*c?d"]
        seen = set()
        for callid in hostile:
            name = fbasename(callid)
            self.assertTrue(name)
            self.assertLessEqual(len(name), MAX_NAME)
            self.assertNotIn("/", name)
            self.assertNotIn("\x00", name)
            self.assertFalse(name.startswith("."), name)
            self.assertTrue(all(c.isascii() and c.isprintable() for c in name), name)
            seen.add(name)
        self.assertEqual(len(seen), len(hostile), "different Call-IDs, different names")

    def test_changed_names_carry_a_hash(self) -> None:
        self.assertNotEqual(fbasename("a/b"), fbasename("a_b"))
        self.assertEqual(fbasename("a_b"), "a_b")
        self.assertEqual(fbasename("a/b"), fbasename("a/b"))


    def test_the_hash_is_of_the_exact_bytes(self) -> None:
        """A Call-ID holding bytes that are not UTF-8 is named by the hash of those very
        bytes (as captured), so Call-IDs one byte apart never share a pcap."""
        raw = b"id-\xff\xfe"
        name = fbasename(raw.decode("utf-8", "surrogateescape"))
        self.assertEqual(name, "id-__-" + hashlib.sha256(raw).hexdigest()[:12])
        self.assertNotEqual(name, fbasename(b"id-\xff\xfd".decode("utf-8", "surrogateescape")))
        self.assertNotEqual(name, fbasename("id-\ufffd\ufffd"))


class PathTests(SynchronousTestCase):
    def test_minute_dir_is_utc(self) -> None:
        self.assertEqual(minute_dir(1700000000.9), "2023-11-14/22/13")
        self.assertEqual(pcap_relpath(1700000000, "SIP", "x@y"), "2023-11-14/22/13/SIP/x@y.pcap")
        self.assertRaises(ValueError, pcap_relpath, 0, "RTP", "../x")
        self.assertRaises(ValueError, pcap_relpath, 0, "GRAPH", "x")

    def test_resolve_refuses_escape(self) -> None:
        root = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, root)
        self.assertEqual(resolve(root, "a/b.pcap"), os.path.join(os.path.realpath(root),
                                                                 "a/b.pcap"))
        for bad in ("../x", "/etc/passwd", "a/../../x", "."):
            self.assertRaises(ValueError, resolve, root, bad)
