"""Helpers for tests and benchmarks of stores: realistic CDRs and throwaway MySQL databases.

The MySQL/MariaDB server is taken from VOIPMON_TEST_MYSQL_HOST / _PORT / _USER / _PASSWORD
(default root@127.0.0.1:3306, no password). Each throwaway database has a unique name
(``voipmon_test_<pid>_<random>``) so parallel runs never meet.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from voipmon.records.cdr import Cdr, RtpStream
from voipmon.records.keys import make_cdr_uid
from voipmon.store.dialect import MySQLDialect, SQLiteDialect, q

BASE_TIME = 1_700_000_000.0     # 2023-11-14T22:13:20Z


def mysql_settings() -> dict[str, Any]:
    return {
        "host": os.environ.get("VOIPMON_TEST_MYSQL_HOST", "127.0.0.1"),
        "port": int(os.environ.get("VOIPMON_TEST_MYSQL_PORT", "3306")),
        "user": os.environ.get("VOIPMON_TEST_MYSQL_USER", "root"),
        "password": os.environ.get("VOIPMON_TEST_MYSQL_PASSWORD", ""),
    }


def mysql_admin() -> Any:
    """A PyMySQL connection to the test server without a database (raises if unreachable)."""
    import pymysql

    return pymysql.connect(charset="utf8mb4", autocommit=True, connect_timeout=5,
                           **mysql_settings())


def mysql_unreachable_reason() -> str | None:
    """None if the test server answers, else why not (no password in it)."""
    try:
        mysql_admin().close()
    except Exception as exc:
        settings = mysql_settings()
        return (f"MariaDB at {settings['user']}@{settings['host']}:{settings['port']} is "
                f"unreachable: {exc}")
    return None


def unique_database_name(prefix: str = "voipmon_test") -> str:
    return f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"


def mysql_dialect(database: str, **overrides: Any) -> MySQLDialect:
    settings = {**mysql_settings(), **overrides}
    return MySQLDialect(settings["host"], settings["port"], settings["user"],
                        settings["password"], database)


def mysql_admin_execute(*statements: tuple[str, Any]) -> None:
    """Run each ``(sql, args)`` (args None for none) on a new admin connection, closed after."""
    conn = mysql_admin()
    try:
        with conn.cursor() as cur:
            for sql, args in statements:
                cur.execute(sql, args)
    finally:
        conn.close()


def drop_mysql_database(name: str) -> None:
    mysql_admin_execute((f"DROP DATABASE IF EXISTS {q(name)}", None))


@contextmanager
def mysql_database() -> Iterator[str]:
    """A database name that exists for the block and is dropped after it."""
    name = unique_database_name()
    mysql_admin_execute((f"CREATE DATABASE {q(name)} CHARACTER SET utf8mb4", None))
    try:
        yield name
    finally:
        drop_mysql_database(name)


@contextmanager
def mysql_user(*grants: str) -> Iterator[tuple[str, str]]:
    """A throwaway user (name, random password) with ``GRANT <grant> TO`` it for each grant
    given (e.g. "ALL ON `db`.*"), dropped after the block."""
    name, password = f"vt_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    mysql_admin_execute(("CREATE USER %s@'%%' IDENTIFIED BY %s", (name, password)),
                        *((f"GRANT {grant} TO %s@'%%'", (name,)) for grant in grants))
    try:
        yield name, password
    finally:
        mysql_admin_execute(("DROP USER IF EXISTS %s@'%%'", (name,)))


def sqlite_dialect(path: str) -> SQLiteDialect:
    return SQLiteDialect(path)


def make_stream(n: int, index: int, start: float) -> RtpStream:
    """One plausible RTP stream; values vary with ``n`` and ``index``."""
    return RtpStream(
        saddr=f"10.{index}.{(n >> 8) & 255}.{n & 255}", sport=10000 + 2 * (n % 20000),
        daddr="192.0.2.10" if index % 2 == 0 else "2001:db8::10", dport=20000 + index * 2,
        ssrc=(0x9E3779B9 * (n + 1) + index) & 0xFFFFFFFF, payload=(0, 8, 18, 101)[n % 4],
        received=1500 + n % 97, lost=n % 7 - (1 if n % 31 == 0 else 0),
        avgjitter=1.25 + (n % 13) / 8, maxjitter=12.5 + n % 5, mos_f1=4.31 - (n % 9) / 10,
        mos_f2=4.2 - (n % 7) / 10, mos_adapt=None if n % 5 == 0 else 4.05,
        codec=("PCMU/8000", "PCMA/8000", "G729/8000", "telephone-event/8000")[n % 4],
        duplicates=n % 3, reordered=n % 2, sl=(n % 7, n % 3, 0, 0, 0, 0, 0, 0, 0, 1),
        delay=(5, 3, 2, 1, 0, 0, n % 2), firsttime=start + 0.25 + index * 0.125,
        lasttime=start + 30.5, rtcp_fraclost=0.39 if index == 0 else None,
        rtcp_jitter=2.75 if index == 0 else None, rtcp_rtt=None if n % 2 else 41.5,
        tied_to_sip=index < 2,
    )


def make_cdr(n: int, id_sensor: int = 1, streams: int = 2, **overrides: Any) -> Cdr:
    """A plausible CDR number ``n`` of a sensor (times to the millisecond, as stored)."""
    start = BASE_TIME + n * 1.5 + 0.123
    callid = f"{n:08x}-{id_sensor}@pbx.example.com"
    fields: dict[str, Any] = dict(
        sensor_cdr_uid=make_cdr_uid(callid, start), callid=callid, id_sensor=id_sensor,
        calldate=start, callend=start + 31.25, duration=31.25, connect_duration=27.5,
        caller=f"+4930{n % 100000:05d}", called=f"0049891234{n % 1000:03d}",
        sipcallerip="198.51.100.7", sipcalledip="2001:db8::5060", sipcallerport=5060,
        sipcalledport=5062, lastSIPresponseNum=200 if n % 5 else 486, bye=3 if n % 5 else 0,
        lastSIPresponse="200 OK" if n % 5 else "486 Busy Here",
        caller_domain="example.com", called_domain="example.net",
        callername=f"Caller {n}", whohanged=("caller", "callee", "")[n % 3],
        connect_time=start + 3.75 if n % 5 else None,
        a_ua=f"Linphone/5.{n % 3}", b_ua="Asterisk PBX 20.5.0",
        a_index=0 if streams else None, b_index=1 if streams > 1 else None,
        rtp=tuple(make_stream(n, i, start) for i in range(streams)),
        fbasename=callid.replace("@", "_"), sip_pcap=f"2023-11-14/22/13/SIP/{callid}.pcap",
        rtp_pcap=f"2023-11-14/22/13/RTP/{callid}.pcap",
        extra={"rtcp": {"packets": n % 11}} if n % 2 else {},
    )
    fields.update(overrides)
    return Cdr(**fields)
