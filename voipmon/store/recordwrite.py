"""Writing the records that are not CDRs (registrations, SIP messages, alerts), inside the
transaction of a batch (``SqlStore.store_records``).

Exactly once, as for CDRs. Per kind: the batch's keys (id_sensor, uid) are looked up in
one query; the records whose key is absent are inserted (plain multi-row INSERTs, so a key
another transaction stored meanwhile fails the statement and ``Retry`` runs the
transaction again from the look-up). Records that are written once (``register_state``,
``sip_msg``, ...) are skipped when stored. Records that grow (``register_failed``,
``alert``: same key, higher ``revision``) update their row when the stored revision is
lower, so any number of deliveries, in any order, leave the row of the highest revision.
Within a batch only the highest revision of a key counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from voipmon.store import recordrows
from voipmon.store.dialect import q, qlist
from voipmon.store.pool import Retry
from voipmon.store.schema import RECORD_TABLES

KEYS_PER_QUERY = 400

# ids(lookup kind, text) -> id
Ids = Callable[[str, str | None], Any]


def latest(records: Sequence[Any]) -> dict[str, dict[tuple[int, str], Any]]:
    """The batch's records by kind and key: for a growing kind, the highest revision."""
    by_kind: dict[str, dict[tuple[int, str], Any]] = defaultdict(dict)
    for record in records:
        kind = record.KIND
        key = record.key()
        seen = by_kind[kind].get(key)
        if seen is None or (kind in recordrows.REVISED and record.revision > seen.revision):
            by_kind[kind][key] = record
    return by_kind


def lookup_texts(by_kind: dict[str, dict[tuple[int, str], Any]]) -> dict[str, set[str | None]]:
    """{lookup kind: the texts the records refer to} (those that refer to any)."""
    texts: dict[str, set[str | None]] = defaultdict(set)
    for kind, records in by_kind.items():
        for record in records.values():
            for lookup, value in recordrows.lookups(kind, record):
                texts[lookup].add(value)
    return dict(texts)


def stored(cur: Any, placeholder: str, table: str, keys: Sequence[tuple[int, str]],
           revised: bool) -> dict[tuple[int, str], tuple[int, int]]:
    """{key: (ID, revision)} of the keys that are stored (revision 0 for kinds without)."""
    found: dict[tuple[int, str], tuple[int, int]] = {}
    extra = ", `revision`" if revised else ""
    for at in range(0, len(keys), KEYS_PER_QUERY):
        by_sensor: dict[int, list[str]] = defaultdict(list)
        for ident, uid in keys[at:at + KEYS_PER_QUERY]:
            by_sensor[ident].append(uid)
        terms, args = [], []
        for ident, uids in by_sensor.items():
            terms.append(f"(`id_sensor` = {placeholder} AND `uid` IN "
                         f"({', '.join([placeholder] * len(uids))}))")
            args += (ident, *uids)
        cur.execute(f"SELECT `ID`, `id_sensor`, `uid`{extra} FROM {q(table)} WHERE "
                    + " OR ".join(terms), args)
        for row in cur.fetchall():
            found[(row[1], row[2])] = (row[0], row[3] if revised else 0)
    return found


def write(cur: Any, dialect: Any, by_kind: dict[str, dict[tuple[int, str], Any]],
          ids: Ids) -> int:
    """Insert (or bring up to date) the records; the number of rows inserted or updated."""
    count = 0
    ph = dialect.placeholder
    for kind in sorted(by_kind):
        records = by_kind[kind]
        revised = kind in recordrows.REVISED
        table = RECORD_TABLES[kind].name
        keys = sorted(records)
        have = stored(cur, ph, table, keys, revised)
        new = [recordrows.encode(kind, records[key], ids) for key in keys if key not in have]
        if new:
            try:
                dialect.insert(cur, table, recordrows.columns(kind), new)
            except Exception as exc:
                if dialect.is_duplicate_key(exc):
                    raise Retry() from exc
                raise
            count += len(new)
        if revised:
            names = recordrows.columns(kind)[2:]
            sql = (f"UPDATE {q(table)} SET "
                   + ", ".join(f"{q(name)} = {ph}" for name in names)
                   + f" WHERE `ID` = {ph} AND `revision` < {ph}")
            for key in keys:
                row_id, revision = have.get(key, (None, 0))
                record = records[key]
                if row_id is None or record.revision <= revision:
                    continue
                row = recordrows.encode(kind, record, ids)[2:]
                cur.execute(sql, (*row, row_id, record.revision))
                count += 1
    return count


def delete_before(cur: Any, dialect: Any, kind: str, stamp: str, limit: int) -> int:
    """Delete up to ``limit`` of the oldest rows of ``kind`` before ``stamp``."""
    table = RECORD_TABLES[kind]
    when = table.indexes[1].columns[0]          # the time column the table is indexed on
    ph = dialect.placeholder
    cur.execute(f"SELECT `ID` FROM {q(table.name)} WHERE {q(when)} < {ph} "
                f"ORDER BY {qlist((when, 'ID'))} LIMIT {ph}", (stamp, limit))
    found = [row[0] for row in cur.fetchall()]
    deleted = 0
    for at in range(0, len(found), 500):
        chunk = found[at:at + 500]
        cur.execute(f"DELETE FROM {q(table.name)} WHERE `ID` IN ({dialect.params(len(chunk))})",
                    tuple(chunk))
        deleted += max(cur.rowcount, 0)
    return deleted


__all__ = ["delete_before", "latest", "lookup_texts", "stored", "write"]
