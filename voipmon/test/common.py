"""Shared test helpers: where test data lives, and which external parts are mandatory.

CI sets VOIPMON_REQUIRE_SHARED=1 and VOIPMON_REQUIRE_MYSQL=1: there a missing
../shared/pcaps or an unreachable MariaDB fails the test instead of skipping it, so CI
can never pass by skipping what it is there to prove.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.trial.unittest import FailTest, SkipTest, SynchronousTestCase

from voipmon.store import testing
from voipmon.store.dialect import MySQLDialect, q

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))
PUBLIC_PCAPS = os.path.join(SHARED, "pcaps", "public")
GENERATED_PCAPS = os.path.join(SHARED, "pcaps", "generated")


def data_path(name: str) -> str:
    """A file bundled in voipmon/test/data."""
    return os.path.join(DATA, name)


def _missing(env: str, reason: str) -> Exception:
    if os.environ.get(env) == "1":
        return FailTest(f"{reason} (required because {env}=1)")
    return SkipTest(reason)


def shared_path(*parts: str) -> str:
    """A path under ../shared; skips (or fails in CI) when it is absent."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        raise _missing("VOIPMON_REQUIRE_SHARED", f"{path} is absent (shared test captures)")
    return path


def public_pcaps() -> list[str]:
    """Every public capture that has a tshark reference, sorted."""
    folder = shared_path("pcaps", "public")
    return sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if os.path.exists(os.path.join(folder, name + ".tshark.txt"))
    )


def mysql_unavailable(reason: str) -> Exception:
    """The exception to raise when MariaDB cannot be reached: skip, or fail in CI."""
    return _missing("VOIPMON_REQUIRE_MYSQL", reason)


def mysql_test_database(case: SynchronousTestCase, prefix: str = "voipmon_test") -> str:
    """The name of a throwaway MariaDB database, dropped after ``case``; not created here
    (the code under test may create it). Skips, or fails in CI, when MariaDB is unreachable."""
    reason = testing.mysql_unreachable_reason()
    if reason:
        raise mysql_unavailable(reason)
    name = testing.unique_database_name(prefix)
    case.addCleanup(testing.drop_mysql_database, name)
    return name


def mysql_test_session(case: SynchronousTestCase) -> tuple[MySQLDialect, Any]:
    """A throwaway database (``mysql_test_database``), created: its dialect and a connection
    to it, closed after ``case``."""
    database = mysql_test_database(case)
    testing.mysql_admin_execute((f"CREATE DATABASE {q(database)}", None))
    dialect = testing.mysql_dialect(database)
    conn = dialect.connect()
    case.addCleanup(conn.close)
    return dialect, conn


def missing_tool(reason: str) -> Exception:
    """SkipTest for a tool the tests need, or FailTest in CI (any VOIPMON_REQUIRE_* set)."""
    for env in ("VOIPMON_REQUIRE_SHARED", "VOIPMON_REQUIRE_LIVE", "VOIPMON_REQUIRE_MYSQL"):
        if os.environ.get(env) == "1":
            return _missing(env, reason)
    return SkipTest(reason)


def require_tshark() -> str:
    """tshark's path; skips without it, or fails when VOIPMON_REQUIRE_SHARED=1 or
    VOIPMON_REQUIRE_LIVE=1 (CI installs it)."""
    path = shutil.which("tshark")
    if path is None:
        reason = "tshark is not installed (Debian package tshark)"
        required = [env for env in ("VOIPMON_REQUIRE_SHARED", "VOIPMON_REQUIRE_LIVE")
                    if os.environ.get(env) == "1"]
        raise _missing(required[0], reason) if required else SkipTest(reason)
    return path
