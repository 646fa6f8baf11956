"""The dashboard's per-minute counts: table ``cdr_minute`` (schema version 5).

One row per minute of ``calldate`` (UTC) and sensor holds the counts every figure of
``voipmon.store.stats`` is made of (``schema.CDR_MINUTE_COUNTERS``), so a day of a million
calls is read as 1440 rows per sensor instead of a million. It is derived data, kept exact
by the only two paths that change ``cdr``, inside their own transactions:

- the writer (``SqlStore._write``) adds the CDRs it inserted, and only those: a replayed
  CDR is not inserted, so it is not counted twice; a transaction that rolls back (a
  deadlock, a duplicate key from another writer) takes its additions with it;
- retention (``SqlStore._delete_before``) reads the rows it deletes with a locking read
  and subtracts exactly those (a central deleting the same rows meanwhile waits, then
  finds them gone), and drops minutes left empty.

The migration that creates the table fills it from the calls already stored
(``backfill_sql``: the same counts in SQL). All centrals sharing a database must run a
version that keeps the table (5 or later); a row written by other means is not counted.
``Tally`` is the counting, in Python, of the writer, retention and the FakeStore.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from calendar import timegm
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from voipmon.store import figures
from voipmon.store.dialect import q, qlist
from voipmon.store.figures import JITTER_EDGES, LOSS_EDGES
from voipmon.store.rows import CDR_COLUMNS
from voipmon.store.schema import CDR_MINUTE, CDR_MINUTE_COUNTERS, MOS_LIMITS

TABLE = CDR_MINUTE.name
KEY = CDR_MINUTE.primary_key                 # (minute, id_sensor)
COUNTERS = CDR_MINUTE_COUNTERS
# The cdr columns a call is counted from, in the order Tally.add takes them.
SOURCE = ("calldate", "id_sensor", "lastSIPresponseNum", "connect_duration", "mos_min_mult10",
          "packet_loss_perc_mult1000", "jitter_mult10")
_SOURCE_AT = tuple(CDR_COLUMNS.index(name) for name in SOURCE)
_TOP = MOS_LIMITS[-1]        # MOS (x10) at or above this is below no threshold
_ANSWERED_LO, _ANSWERED_HI = figures.ANSWERED
_USER_CODES = frozenset(figures.NER_USER_CODES)
ROWS_PER_STATEMENT = 500


class Tally:
    """The counts of one (minute, sensor); ``counters()`` in ``COUNTERS`` order."""

    __slots__ = ("answered", "calls", "connected_ms", "jitter", "loss", "mos", "user_failures")

    def __init__(self) -> None:
        self.calls = self.answered = self.user_failures = self.connected_ms = 0
        self.mos = [0] * (_TOP + 1)                  # by mos_min_mult10 (the top: >= 50)
        self.loss = [0] * (len(LOSS_EDGES) + 1)      # by bucket
        self.jitter = [0] * (len(JITTER_EDGES) + 1)

    def add(self, code: int | None, connect: Any, mos: int | None, loss: int | None,
            jitter: int | None) -> None:
        self.calls += 1
        if code is not None and _ANSWERED_LO <= code <= _ANSWERED_HI:   # figures.is_answered
            self.answered += 1
            self.connected_ms += round((connect or 0) * 1000)
        elif code in _USER_CODES:                                     # is_user_failure
            self.user_failures += 1
        if mos is not None:
            self.mos[min(mos, _TOP)] += 1
        if loss is not None:
            self.loss[bisect_right(LOSS_EDGES, loss)] += 1
        if jitter is not None:
            self.jitter[bisect_right(JITTER_EDGES, jitter)] += 1

    def counters(self) -> list[int]:
        out = [self.calls, self.answered, self.user_failures, self.connected_ms,
               sum(self.mos)]
        below = 0
        for count in self.mos[:_TOP]:            # mos_lt_1 .. mos_lt_50
            below += count
            out.append(below)
        for buckets in (self.loss, self.jitter):
            out.append(sum(buckets))             # known
            below = 0
            for count in buckets[:-1]:           # lt each edge
                below += count
                out.append(below)
        return out


_MINUTES: dict[str, int] = {}     # 'YYYY-MM-DD HH:MM' -> minute (a batch shares a few)


def minute_of(calldate: Any) -> int:
    """Whole minutes since the epoch of a stored calldate (text on SQLite and as written,
    datetime from MySQL), as the database's ``epoch_minute_sql`` computes it."""
    if isinstance(calldate, datetime):
        return timegm(calldate.timetuple()) // 60
    prefix = calldate[:16]
    minute = _MINUTES.get(prefix)
    if minute is None:
        if len(_MINUTES) > 65536:
            _MINUTES.clear()
        minute = _MINUTES[prefix] = timegm(time.strptime(prefix, "%Y-%m-%d %H:%M")) // 60
    return minute


def tallies(rows: Iterable[Sequence[Any]]) -> dict[tuple[int, int], Tally]:
    """Counts per (minute, sensor) of calls given as ``SOURCE`` values."""
    found: dict[tuple[int, int], Tally] = {}
    for calldate, sensor, code, connect, mos, loss, jitter in rows:
        key = (minute_of(calldate), sensor)
        tally = found.get(key)
        if tally is None:
            tally = found[key] = Tally()
        tally.add(code, connect, mos, loss, jitter)
    return found


def source(cdr_row: Sequence[Any]) -> tuple[Any, ...]:
    """The ``SOURCE`` values of a ``cdr`` row as ``rows.encode`` builds it."""
    return tuple(cdr_row[i] for i in _SOURCE_AT)


def apply(cur: Any, dialect: Any, counts: dict[tuple[int, int], Tally], sign: int = 1) -> None:
    """Add (``sign`` -1: subtract) counts to ``cdr_minute``, in key order; with -1, drop
    the minutes left without calls."""
    rows = [(*key, *(sign * v for v in counts[key].counters())) for key in sorted(counts)]
    for at in range(0, len(rows), ROWS_PER_STATEMENT):
        cur.execute(dialect.add_sql(TABLE, KEY, COUNTERS, rows[at:at + ROWS_PER_STATEMENT]))
    if sign < 0 and rows:
        ph = dialect.placeholder
        cur.execute(f"DELETE FROM {q(TABLE)} WHERE `minute` >= {ph} AND `minute` <= {ph} "
                    "AND `calls` <= 0", (rows[0][0], rows[-1][0]))


def backfill_sql(dialect: Any) -> str:
    """``INSERT INTO cdr_minute ... SELECT`` the counts of every stored call."""
    answered = figures.answered_sql()
    counts = [
        "COUNT(*)", f"COUNT(CASE WHEN {answered} THEN 1 END)",
        f"COUNT(CASE WHEN {figures.user_failure_sql()} THEN 1 END)",
        f"COALESCE(SUM(CASE WHEN {answered} THEN ROUND(`connect_duration` * 1000) END), 0)",
        "COUNT(`mos_min_mult10`)",
        *(f"COUNT(CASE WHEN `mos_min_mult10` < {int(limit)} THEN 1 END)"
          for limit in MOS_LIMITS),
    ]
    for column, edges in (("packet_loss_perc_mult1000", LOSS_EDGES),
                          ("jitter_mult10", JITTER_EDGES)):
        counts.append(f"COUNT(`{column}`)")
        counts.extend(f"COUNT(CASE WHEN `{column}` < {int(e)} THEN 1 END)" for e in edges)
    minute = dialect.epoch_minute_sql("`calldate`")
    return (f"INSERT INTO {q(TABLE)} ({qlist((*KEY, *COUNTERS))}) "
            f"SELECT {minute} AS `m`, `id_sensor`, {', '.join(counts)} "
            f"FROM `cdr` GROUP BY `m`, `id_sensor`")


def backfill(dialect: Any, cur: Any) -> bool:
    """Fill an empty ``cdr_minute`` from ``cdr``; True if that added rows."""
    cur.execute(f"SELECT 1 FROM {q(TABLE)} LIMIT 1")
    if cur.fetchone() is not None:
        return False
    cur.execute(backfill_sql(dialect))
    return cur.rowcount > 0
