"""Records of SIP that is not a call, end to end with real processes and MariaDB: sensors
(local processing and packet mirroring) replay the bundled real captures (SIPp phones and
sipvicious against kamailio; a PBX's OPTIONS, SUBSCRIBE, NOTIFY and MESSAGE) into a
central; every record is in the database exactly once, with its last revision, as the
engine makes it offline; and a central SIGKILLed mid-stream loses none (the sensor fails
over to a second central on the same database, as for CDRs; a mirroring sensor's central
killed while the database is down stores them all once it comes back)."""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

from voipmon.records.alert import BRUTE_FORCE, POSSIBLE_COMPROMISE, SCAN
from voipmon.store.schema import RECORD_TABLES
from voipmon.test.callsupport import udp_frame
from voipmon.test.channel_support import free_port, mysql_connect, wait_until, write_frames
from voipmon.test.common import data_path
from voipmon.test.recordsupport import (
    ANALYSIS,
    ATTACKER,
    OPTIONS,
    PBX,
    PHONES,
    SCANNED,
    engine_records,
    final,
)
from voipmon.test.regsupport import register, reply
from voipmon.test.test_channel_integration import ProcessBase


def stored(connection: Any, id_sensor: int) -> dict[str, list[tuple[str, int]]]:
    """{kind: [(uid, revision or 0)]} of the sensor's rows (a duplicate would show twice)."""
    out = {}
    with connection.cursor() as cursor:
        for kind, table in RECORD_TABLES.items():
            revision = "`revision`" if any(c.name == "revision" for c in table.columns) else "0"
            cursor.execute(f"SELECT `uid`, {revision} FROM `{table.name}` WHERE "
                           f"`id_sensor` = %s", (id_sensor,))
            out[kind] = sorted((str(uid), int(rev)) for uid, rev in cursor.fetchall())
    return out


def expected(records: list[Any]) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {kind: [] for kind in RECORD_TABLES}
    for (kind, key), record in final(records).items():
        if kind in out:
            out[kind].append((key[1], getattr(record, "revision", 0)))
    return {kind: sorted(rows) for kind, rows in out.items()}


def count_rows(connection: Any, table: str) -> int:
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM `{table}`")
            return int(cursor.fetchone()[0])
    except Exception:
        return 0


def write_registrations(path: str, users: int, start: float = 1_700_000_000.0) -> str:
    """``users`` phones registering once each (REGISTER and 200) from their own address,
    every third refused (403): a register_state or a register_failed row each."""
    frames = []
    for n in range(users):
        t = start + n * 0.002
        ip = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        req = register(f"reg-{n}@bulk", 1, user=f"u{n}",
                       contacts=(f"<sip:u{n}@{ip}:5060>",))
        answer = reply(req, 403) if n % 3 == 0 else reply(req, 200, contacts=(
            f"<sip:u{n}@{ip}:5060>;expires=3600",))
        frames.append((t, udp_frame(ip, 5060, "10.250.0.1", 5060, req)))
        frames.append((t + 0.001, udp_frame("10.250.0.1", 5060, ip, 5060, answer)))
    return write_frames(path, frames)


class RecordProcessTests(ProcessBase):
    def test_both_modes_exactly_once(self) -> None:
        """Each capture from a local-processing and a mirroring sensor: the rows of each
        are exactly the records the engine makes offline (last revisions), once."""
        database = self.need_mysql()
        port = free_port()
        self.central("central", port, database)
        runs = []
        for number, name in enumerate((PHONES, SCANNED, PBX)):
            for mode, base in (("no", 80), ("yes", 90)):
                id_sensor = base + number
                process = self.sensor(f"s{id_sensor}", id_sensor, [port], data_path(name),
                                      packetbuffer_sender=mode, **OPTIONS)
                runs.append((id_sensor, name, process))
        connection = mysql_connect("127.0.0.1", 3306, database)
        self.addCleanup(connection.close)
        for id_sensor, name, process in runs:
            self.assertEqual(process.wait(120), 0, process.text()[-3000:])
            want = expected(engine_records(name, id_sensor, ANALYSIS))
            self.assertTrue(sum(map(len, want.values())) > 0, name)
            # a mirroring sensor is done once the records are durable on the central,
            # which stores them a moment later
            got = wait_until(lambda i=id_sensor, w=want: (
                lambda rows: rows if rows == w else None)(stored(connection, i)), 30,
                f"the records of sensor {id_sensor} ({name})")
            self.assertEqual(got, want)
        with connection.cursor() as cursor:
            cursor.execute("SELECT kind, INET6_NTOA(sipcallerip), extensions FROM alert "
                           "WHERE id_sensor IN (81, 91)")
            alerts = cursor.fetchall()
            cursor.execute("SELECT SUM(counter) FROM register_failed WHERE id_sensor = 91 "
                           "AND INET6_NTOA(sipcallerip) = %s", (ATTACKER,))
            (failed,) = cursor.fetchone()
        self.assertEqual(Counter(kind for kind, _, _ in alerts),
                         Counter({SCAN: 2, BRUTE_FORCE: 2, POSSIBLE_COMPROMISE: 2}))
        self.assertEqual({ip for _, ip, _ in alerts}, {ATTACKER})
        self.assertEqual(int(failed), 91)

    def test_primary_killed_failover_exactly_once(self) -> None:
        """SIGKILL the primary while a sensor's registrations stream in: the sensor fails
        over to the second central (same database); every record is there exactly once."""
        database = self.need_mysql()
        users = 6000
        pcap = write_registrations(f"{self.base}/registrations.pcap", users)
        p1, p2 = free_port(), free_port()
        primary = self.central("primary", p1, database)
        self.central("backup", p2, database)
        sensor = self.sensor("edge", 88, [p1, p2], pcap, **OPTIONS)
        connection = mysql_connect("127.0.0.1", 3306, database)
        self.addCleanup(connection.close)
        sensor.wait_for(rf"connected to central 127\.0\.0\.1:{p1} \(primary\)", 60)
        at_kill = wait_until(
            lambda: count_rows(connection, "register_state") >= 200 and count_rows(
                connection, "register_state"), 120, "the first registrations in the database")
        primary.kill(signal.SIGKILL)
        primary.wait(30)
        self.assertLess(at_kill, users * 2 // 3, "the stream had ended before the kill")
        self.assertEqual(sensor.wait(180), 0, sensor.text()[-3000:])
        sensor.wait_for(rf"switched from central 127\.0\.0\.1:{p1} to 127\.0\.0\.1:{p2}")
        want = expected(engine_records(pcap, 88, ANALYSIS))
        self.assertEqual(len(want["register_state"]), users - (users + 2) // 3)
        self.assertEqual(stored(connection, 88), want)

    def test_mirroring_central_killed_during_database_outage(self) -> None:
        """Mirroring the scan while MariaDB is down: the sensor's replay ends (its records
        are on the central's disk), the central is SIGKILLed, MariaDB comes back, the
        central starts again on the same spool: every record is stored, exactly once."""
        server = self.private_mariadb()
        port = free_port()
        central = self.central("central", port, "recordkill", mysqlport=server.port)
        server.stop()
        sensor = self.sensor("edge", 89, [port], data_path(SCANNED), packetbuffer_sender="yes",
                             **OPTIONS)
        self.assertEqual(sensor.wait(120), 0, sensor.text()[-3000:])
        central.wait_for(r"cannot store CDRs from mirrored packets: ", 30)
        central.kill(signal.SIGKILL)
        central.wait(30)
        server.start()
        self.central("central", port, "recordkill", mysqlport=server.port)
        connection = server.connect("recordkill")
        self.addCleanup(connection.close)
        want = expected(engine_records(SCANNED, 89, ANALYSIS))
        got = wait_until(lambda: (lambda rows: rows if rows == want else None)(
            stored(connection, 89)), 60, "the records queued on the central")
        self.assertEqual(got, want)
