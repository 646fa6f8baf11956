"""The suite's own assertions: none that trial would pass without checking what it says.

trial's ``assertAlmostEqual`` and ``assertNotAlmostEqual`` accept ``delta=`` for PyUnit
compatibility and ignore it (they compare to 7 places whatever it says), so a tolerance
written that way is not the tolerance checked; ``assertApproximates(first, second,
tolerance)`` is trial's assertion for that.
"""

from __future__ import annotations

import ast
import glob
import os

from twisted.trial.unittest import SynchronousTestCase

HERE = os.path.dirname(os.path.abspath(__file__))
ALMOST = {"assertAlmostEqual", "assertAlmostEquals", "failUnlessAlmostEqual",
          "assertNotAlmostEqual", "assertNotAlmostEquals", "failIfAlmostEqual"}


def ignored_arguments(source: str) -> list[int]:
    """Lines of calls to trial's almost-equal assertions with an argument it ignores."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ALMOST
                and any(k.arg == "delta" for k in node.keywords)):
            lines.append(node.lineno)
    return lines


class AssertionTests(SynchronousTestCase):
    def test_the_check_finds_an_ignored_delta(self) -> None:
        self.assertEqual(ignored_arguments("self.assertAlmostEqual(a, 1.0, delta=0.5)\n"
                                           "self.assertApproximates(a, 1.0, 0.5)\n"
                                           "self.failIfAlmostEqual(a, b, delta=2)\n"), [1, 3])

    def test_no_almost_equal_with_delta(self) -> None:
        paths = sorted(glob.glob(os.path.join(HERE, "*.py")))
        self.assertGreater(len(paths), 50)
        found = []
        for path in paths:
            with open(path, encoding="utf-8") as f:
                found += [f"{os.path.basename(path)}:{line}"
                          for line in ignored_arguments(f.read())]
        self.assertEqual(found, [], "trial ignores delta=: use assertApproximates")
