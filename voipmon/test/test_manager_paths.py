"""Spool confinement: every traversal form is refused, ordinary names pass."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from voipmon.manager.paths import PathRefused, check_relpath, open_in_spool, resolve_in_spool


class ConfinementTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.spool = os.path.join(base, "spool")
        self.outside = os.path.join(base, "secret.txt")
        os.makedirs(os.path.join(self.spool, "2024-01-02", "03", "04", "SIP"))
        with open(self.outside, "w") as handle:
            handle.write("secret")
        self.good = "2024-01-02/03/04/SIP/call%401.pcap"  # '%40' is a literal name here
        with open(os.path.join(self.spool, self.good), "wb") as handle:
            handle.write(b"pcap")

    def assertRefused(self, relpath: str, why: str) -> None:
        exc = self.assertRaises(PathRefused, resolve_in_spool, self.spool, relpath)
        self.assertIn(why, str(exc))

    def test_ordinary_name(self) -> None:
        real = resolve_in_spool(self.spool, self.good)
        self.assertEqual(real, os.path.realpath(os.path.join(self.spool, self.good)))
        with open_in_spool(self.spool, self.good) as handle:
            self.assertEqual(handle.read(), b"pcap")

    def test_dotdot(self) -> None:
        self.assertRefused("../secret.txt", "'..'")
        self.assertRefused("2024-01-02/../../secret.txt", "'..'")
        self.assertRefused("..", "'..'")

    def test_absolute(self) -> None:
        self.assertRefused(self.outside, "absolute")
        self.assertRefused("/etc/passwd", "absolute")
        self.assertRefused("~root/.ssh/id_rsa", "absolute")

    def test_percent_encoded(self) -> None:
        for form in ("%2e%2e/secret.txt", "%2E%2E%2Fsecret.txt", "..%2fsecret.txt",
                     "%2fetc/passwd", "%252e%252e/secret.txt", "a%00b", "%5c..%5csecret"):
            self.assertRefused(form, "percent-encoded")

    def test_nul_and_backslash(self) -> None:
        self.assertRefused("2024-01-02\x00/../secret.txt", "NUL")
        self.assertRefused("..\\secret.txt", "backslash")

    def test_symlink_out(self) -> None:
        link = os.path.join(self.spool, "2024-01-02", "escape.pcap")
        os.symlink(self.outside, link)
        self.assertRefused("2024-01-02/escape.pcap", "out of the spool")
        os.symlink(os.path.dirname(self.outside), os.path.join(self.spool, "dirlink"))
        self.assertRefused("dirlink/secret.txt", "out of the spool")

    def test_symlink_inside_is_fine(self) -> None:
        os.symlink(os.path.join(self.spool, self.good), os.path.join(self.spool, "inner.pcap"))
        self.assertEqual(resolve_in_spool(self.spool, "inner.pcap"),
                         os.path.realpath(os.path.join(self.spool, self.good)))

    def test_directory_and_spool_root(self) -> None:
        self.assertRefused("2024-01-02", "not a regular file")
        self.assertRefused(".", "out of the spool")
        self.assertRaises(PathRefused, check_relpath, "")

    def test_missing(self) -> None:
        self.assertRaises(FileNotFoundError, resolve_in_spool, self.spool, "nope.pcap")
