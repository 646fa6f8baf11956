"""Inserting a batch's new CDRs: their ``cdr``, ``cdr_next`` and ``cdr_rtp`` rows.

``SqlStore._write`` has looked up which keys of the batch are stored already
(``stored_ids``) and resolved the lookup ids; the writers here insert the other CDRs in
the caller's transaction, all or nothing. If another transaction stored one of those keys
since the look-up, the ``cdr`` INSERT fails whole on the duplicate key and ``Retry`` makes
the transaction run again from the look-up: each CDR is inserted by exactly one
transaction, and the count a batch returns is exact. Plain INSERTs only (see
``MySQLDialect.insert`` for why not INSERT IGNORE or ON DUPLICATE KEY UPDATE).

Where the child rows' ``cdr_ID`` comes from:

- SQLite: the writer holds the database's only write lock from BEGIN IMMEDIATE, so it
  gives the new rows the IDs AUTOINCREMENT would (one past the largest ever used) and
  builds every row with its ID: one ``executemany`` per table.
- MariaDB 10.5 and later: ``INSERT ... RETURNING`` answers each new row's ID with its key.
  The batch goes in chunks through a ``Pipeline``: while the server inserts one chunk's
  rows, Python converts and renders the next chunk's.
- Other MySQL servers: after the INSERT, the IDs are looked up by key (they need not be
  consecutive, e.g. on Galera); a one-CDR batch takes LAST_INSERT_ID.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from voipmon.analysis.cdr import Cdr
from voipmon.store.dialect import qlist
from voipmon.store.literals import renderer, statements
from voipmon.store.pipeline import Pipeline, usable
from voipmon.store.pool import Retry
from voipmon.store.rows import CDR_COLUMNS, NEXT_COLUMNS, RTP_COLUMNS, encode

# (key, Cdr, lastSIPresponse id, a_ua id, b_ua id) of a CDR to insert
NewCdr = tuple[tuple[int, str], Cdr, Any, Any, Any]

KEYS_PER_QUERY = 500
# CDRs per pipelined chunk: small at first, so that the server starts early, then larger
# (fewer statements); a chunk's RETURNING answer stays a few kilobytes.
CHUNKS = (32, 64, 128)
CHUNK = 250

_CDR_HEAD = f"INSERT INTO `cdr` ({qlist(CDR_COLUMNS)}) VALUES "
_NEXT_HEAD = f"INSERT INTO `cdr_next` ({qlist(NEXT_COLUMNS)}) VALUES "
_RTP_HEAD = f"INSERT INTO `cdr_rtp` ({qlist(RTP_COLUMNS)}) VALUES "
_RETURNING = " RETURNING `ID`, `id_sensor`, `sensor_cdr_uid`"
_IDS = "ids"      # the note of a statement answering IDs (others note their row count)


def stored_ids(cur: Any, placeholder: str, keys: Sequence[tuple[int, str]]
               ) -> dict[tuple[int, str], int]:
    """{(id_sensor, uid): ID} of those keys that are stored: one query per 500 keys, each
    a union of per-sensor ranges of the unique key."""
    found: dict[tuple[int, str], int] = {}
    for at in range(0, len(keys), KEYS_PER_QUERY):
        by_sensor: dict[int, list[str]] = defaultdict(list)
        for ident, key_uid in keys[at:at + KEYS_PER_QUERY]:
            by_sensor[ident].append(key_uid)
        terms, args = [], []
        for ident, uids in by_sensor.items():
            terms.append(f"(`id_sensor` = {placeholder} AND `sensor_cdr_uid` IN "
                         f"({', '.join([placeholder] * len(uids))}))")
            args += (ident, *uids)
        cur.execute("SELECT `ID`, `id_sensor`, `sensor_cdr_uid` FROM `cdr` WHERE "
                    + " OR ".join(terms), args)
        for cdr_id, ident, key_uid in cur.fetchall():
            found[(ident, key_uid)] = cdr_id
    return found


def _encoded(todo: Sequence[NewCdr], pcap_on: str) -> list[Any]:
    return [encode(cdr, response, a_ua, b_ua, pcap_on, key[1])
            for key, cdr, response, a_ua, b_ua in todo]


def _duplicate(dialect: Any, exc: Exception) -> None:
    if dialect.is_duplicate_key(exc):
        raise Retry() from exc


# -- SQLite -------------------------------------------------------------------------

_NEXT_ID = ("SELECT max(coalesce((SELECT `seq` FROM sqlite_sequence WHERE `name` = 'cdr'), 0),"
            " coalesce((SELECT max(`ID`) FROM `cdr`), 0)) + 1")


def write_sqlite(cur: Any, dialect: Any, todo: Sequence[NewCdr], pcap_on: str) -> int:
    cur.execute(_NEXT_ID)
    (first,) = cur.fetchone()
    cdr_rows, next_rows, rtp_rows = [], [], []
    for cdr_id, (row, nxt, rtp) in enumerate(_encoded(todo, pcap_on), first):
        cdr_rows.append((cdr_id, *row))
        next_rows.append((cdr_id, *nxt))
        rtp_rows += [(cdr_id, *r) for r in rtp]
    try:
        dialect.insert(cur, "cdr", ("ID", *CDR_COLUMNS), cdr_rows)
    except Exception as exc:
        _duplicate(dialect, exc)
        raise
    dialect.insert(cur, "cdr_next", NEXT_COLUMNS, next_rows)
    dialect.insert(cur, "cdr_rtp", RTP_COLUMNS, rtp_rows)
    return len(todo)


# -- MySQL / MariaDB ----------------------------------------------------------------


def has_returning(conn: Any) -> bool:
    """MariaDB 10.5 or later (``INSERT ... RETURNING``); MySQL has no RETURNING."""
    info = conn.get_server_info()     # e.g. "5.5.5-10.11.6-MariaDB-0+deb12u1", "8.0.36"
    if "MariaDB" not in info:
        return False
    try:
        major, minor = (int(part) for part in
                        info.removeprefix("5.5.5-").split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (10, 5)


def write_mysql(cur: Any, dialect: Any, todo: Sequence[NewCdr], pcap_on: str) -> int:
    """Insert ``todo``; pipelined with RETURNING when the dialect wants it and the server
    and driver allow it."""
    conn = cur.connection     # the driver's own connection, whatever wraps it
    if dialect.pipelining and usable(conn) and has_returning(conn):
        _write_pipelined(conn, dialect, todo, pcap_on)
    else:
        _write_plain(cur, dialect, todo, pcap_on)
    return len(todo)


def _child_texts(ids: Sequence[int], encoded: Sequence[Any]) -> tuple[list[str], list[str]]:
    """The cdr_next and cdr_rtp rows as SQL text, given the CDRs' IDs."""
    next_tail = renderer("cdr_next", NEXT_COLUMNS[1:], ",")
    rtp_tail = renderer("cdr_rtp", RTP_COLUMNS[1:], ",")
    nexts = [f"({cdr_id}{next_tail(e[1])}" for cdr_id, e in zip(ids, encoded, strict=True)]
    rtps = [f"({cdr_id}{rtp_tail(r)}" for cdr_id, e in zip(ids, encoded, strict=True)
            for r in e[2]]
    return nexts, rtps


def _write_plain(cur: Any, dialect: Any, todo: Sequence[NewCdr], pcap_on: str) -> None:
    encoded = _encoded(todo, pcap_on)
    render = renderer("cdr", CDR_COLUMNS)
    try:
        for sql, _count in statements(_CDR_HEAD, [render(e[0]) for e in encoded]):
            cur.execute(sql)
    except Exception as exc:
        _duplicate(dialect, exc)
        raise
    if len(todo) == 1:
        ids = [int(cur.lastrowid)]   # a one-row INSERT's LAST_INSERT_ID is that row's
    else:
        keys = [new[0] for new in todo]
        found = stored_ids(cur, "%s", keys)
        ids = [found[key] for key in keys]
    nexts, rtps = _child_texts(ids, encoded)
    for head, texts in ((_NEXT_HEAD, nexts), (_RTP_HEAD, rtps)):
        for sql, count in statements(head, texts):
            _check(cur.execute(sql), count)


class _Chunk:
    """Some of the batch's CDRs: converted, their cdr INSERTs rendered."""

    def __init__(self, todo: Sequence[NewCdr], pcap_on: str) -> None:
        self.keys = [new[0] for new in todo]
        self.encoded = _encoded(todo, pcap_on)
        render = renderer("cdr", CDR_COLUMNS)
        self.inserts = statements(_CDR_HEAD, [render(e[0]) for e in self.encoded],
                                  _RETURNING)


def _chunks(todo: Sequence[NewCdr]) -> list[Sequence[NewCdr]]:
    out, at = [], 0
    for size in (*CHUNKS, *[CHUNK] * (len(todo) // CHUNK + 1)):
        if at >= len(todo):
            break
        out.append(todo[at:at + size])
        at += size
    return out


def _write_pipelined(conn: Any, dialect: Any, todo: Sequence[NewCdr], pcap_on: str) -> None:
    """Chunk by chunk: send the chunk's cdr INSERTs; render the next chunk while the server
    works; read the IDs; send the chunk's cdr_next and cdr_rtp INSERTs and the next
    chunk's cdr INSERTs together; and so on. At most three statements are in flight."""
    pipe = Pipeline(conn)
    try:
        parts = _chunks(todo)
        ahead: _Chunk | None = _Chunk(parts[0], pcap_on)
        for sql, _count in ahead.inserts:
            pipe.send(sql, _IDS)
        for n in range(len(parts)):
            chunk, ahead = ahead, _Chunk(parts[n + 1], pcap_on) if n + 1 < len(parts) else None
            assert chunk is not None
            found = _answers(pipe, dialect, len(chunk.inserts))
            ids = [found[key] for key in chunk.keys]
            for head, texts in zip((_NEXT_HEAD, _RTP_HEAD), _child_texts(ids, chunk.encoded),
                                   strict=True):
                for sql, count in statements(head, texts):
                    pipe.send(sql, count)
            for sql, _count in ahead.inserts if ahead is not None else ():
                pipe.send(sql, _IDS)
        _answers(pipe, dialect)
    finally:
        pipe.drain()


def _answers(pipe: Pipeline, dialect: Any, inserts: int | None = None
             ) -> dict[tuple[int, str], int]:
    """Read answers in order until ``inserts`` cdr INSERTs have answered (None: all that
    are due): their {key: ID}; every other INSERT must have inserted all its rows."""
    found: dict[tuple[int, str], int] = {}
    while pipe if inserts is None else inserts:
        note = pipe.pending[0]
        try:
            _note, affected, rows = pipe.receive()
        except Exception as exc:
            if note == _IDS:
                _duplicate(dialect, exc)
            raise
        if note == _IDS:
            inserts = None if inserts is None else inserts - 1
            found.update(((ident, key_uid), cdr_id) for cdr_id, ident, key_uid in rows)
        else:
            _check(affected, note)
    return found


def _check(affected: int, count: int) -> None:
    if affected != count:
        raise RuntimeError(f"an INSERT of {count} rows inserted {affected}")
