"""Writing a batch's CDRs: which are stored already, then the others' ``cdr``,
``cdr_next`` and ``cdr_rtp`` rows.

``SqlStore._write`` hands over the batch (validated, sorted by key, lookup ids resolved)
inside its transaction. The writer looks up which keys are stored (``stored_ids``) and
inserts the other CDRs, all or nothing. If another transaction stores one of those keys
after the look-up, the ``cdr`` INSERT fails whole on the duplicate key and ``Retry`` makes
the transaction run again from the look-up: each CDR is inserted by exactly one
transaction, and the count a batch returns is exact. Plain INSERTs only (see
``MySQLDialect.insert`` for why not INSERT IGNORE or ON DUPLICATE KEY UPDATE).

Where the child rows' ``cdr_ID`` comes from:

- SQLite: the writer holds the database's only write lock from BEGIN IMMEDIATE, so it
  gives the new rows the IDs AUTOINCREMENT would (one past the largest ever used) and
  builds every row with its ID: one ``executemany`` per table.
- MySQL/MariaDB with InnoDB's innodb_autoinc_lock_mode 0 or 1 (MariaDB's default): an
  INSERT ... VALUES takes its auto-increment values all at once, evenly spaced from
  LAST_INSERT_ID (``id_step``), which its answer carries.
- Lock mode 2 (Galera): ``INSERT ... RETURNING`` (MariaDB 10.5+) answers each new row's
  ID with its key; on servers without RETURNING the IDs are looked up by key after the
  INSERT (a one-CDR batch takes LAST_INSERT_ID).

On MySQL the statements go through a ``Pipeline`` when PyMySQL allows it: the first CDRs
are converted while the server looks their keys up, and each chunk of CDRs is converted
and rendered while the server inserts the previous one.

Given a list as ``inserted``, the writers append the ``cdr`` row of each CDR they
inserted (the store counts them into the dashboard's per-minute table, voipmon.store.rollup).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any
from weakref import WeakKeyDictionary

from voipmon.records.cdr import Cdr
from voipmon.store.dialect import FATAL, qlist
from voipmon.store.literals import quote, renderer, statements
from voipmon.store.pipeline import Answer, Pipeline, usable
from voipmon.store.pool import Retry
from voipmon.store.rows import CDR_COLUMNS, NEXT_COLUMNS, RTP_COLUMNS, encode

# (key, Cdr, lastSIPresponse id, a_ua id, b_ua id) of a CDR to insert
NewCdr = tuple[tuple[int, str], Cdr, Any, Any, Any]

KEYS_PER_QUERY = 400      # a look-up binds at most 800 values: SQLite before 3.32 took 999
# CDRs per pipelined chunk: small at first, so that the server starts early, then of a
# size where the server's and Python's turns stay short enough to even out (measured:
# 125 beat 250 by about 5 %); a chunk's RETURNING answer stays a few kilobytes.
CHUNKS = (32, 64)
CHUNK = 125

_CDR_HEAD = f"INSERT INTO `cdr` ({qlist(CDR_COLUMNS)}) VALUES "
_NEXT_HEAD = f"INSERT INTO `cdr_next` ({qlist(NEXT_COLUMNS)}) VALUES "
_RTP_HEAD = f"INSERT INTO `cdr_rtp` ({qlist(RTP_COLUMNS)}) VALUES "
_RETURNING = " RETURNING `ID`, `id_sensor`, `sensor_cdr_uid`"
_SELECT_KEYS = "SELECT `ID`, `id_sensor`, `sensor_cdr_uid` FROM `cdr` WHERE "
_KEYS = "keys"    # the note of a key look-up in flight; a cdr INSERT's is its rows' keys
                  # (a list), a child INSERT's its row count


def _by_sensor(keys: Sequence[tuple[int, str]]) -> dict[int, list[str]]:
    by_sensor: dict[int, list[str]] = defaultdict(list)
    for ident, key_uid in keys:
        by_sensor[ident].append(key_uid)
    return by_sensor


def stored_ids(cur: Any, placeholder: str, keys: Sequence[tuple[int, str]]
               ) -> dict[tuple[int, str], int]:
    """{(id_sensor, uid): ID} of those keys that are stored: one query per
    ``KEYS_PER_QUERY`` keys, each a union of per-sensor ranges of the unique key."""
    found: dict[tuple[int, str], int] = {}
    for at in range(0, len(keys), KEYS_PER_QUERY):
        terms, args = [], []
        for ident, uids in _by_sensor(keys[at:at + KEYS_PER_QUERY]).items():
            terms.append(f"(`id_sensor` = {placeholder} AND `sensor_cdr_uid` IN "
                         f"({', '.join([placeholder] * len(uids))}))")
            args += (ident, *uids)
        cur.execute(_SELECT_KEYS + " OR ".join(terms), args)
        for cdr_id, ident, key_uid in cur.fetchall():
            found[(ident, key_uid)] = cdr_id
    return found


def _key_queries(keys: Sequence[tuple[int, str]]) -> list[str]:
    """``stored_ids``'s queries with MySQL literals (to send ahead in a pipeline)."""
    return [_SELECT_KEYS + " OR ".join(
        f"(`id_sensor` = {int(ident)} AND `sensor_cdr_uid` IN ({','.join(map(quote, uids))}))"
        for ident, uids in _by_sensor(keys[at:at + KEYS_PER_QUERY]).items())
        for at in range(0, len(keys), KEYS_PER_QUERY)]


def _encoded(todo: Sequence[NewCdr], pcap_on: str) -> list[Any]:
    return [encode(cdr, response, a_ua, b_ua, pcap_on, key[1])
            for key, cdr, response, a_ua, b_ua in todo]


def _duplicate(dialect: Any, exc: Exception) -> None:
    if dialect.is_duplicate_key(exc):
        raise Retry() from exc


# -- SQLite -------------------------------------------------------------------------

_NEXT_ID = ("SELECT max(coalesce((SELECT `seq` FROM sqlite_sequence WHERE `name` = 'cdr'), 0),"
            " coalesce((SELECT max(`ID`) FROM `cdr`), 0)) + 1")


def write_sqlite(cur: Any, dialect: Any, candidates: Sequence[NewCdr], pcap_on: str,
                 inserted: list[Sequence[Any]] | None = None) -> int:
    stored = stored_ids(cur, "?", [new[0] for new in candidates])
    todo = [new for new in candidates if new[0] not in stored]
    if not todo:
        return 0
    cur.execute(_NEXT_ID)
    (first,) = cur.fetchone()
    cdr_rows, next_rows, rtp_rows = [], [], []
    for cdr_id, (key, cdr, response, a_ua, b_ua) in enumerate(todo, first):
        row, next_row, rtp = encode(cdr, response, a_ua, b_ua, pcap_on, key[1], cdr_id)
        cdr_rows.append(row)
        next_rows.append(next_row)
        rtp_rows += rtp
    try:
        dialect.insert(cur, "cdr", CDR_COLUMNS, cdr_rows)
    except Exception as exc:
        _duplicate(dialect, exc)
        raise
    dialect.insert(cur, "cdr_next", NEXT_COLUMNS, next_rows)
    dialect.insert(cur, "cdr_rtp", RTP_COLUMNS, rtp_rows)
    if inserted is not None:
        inserted.extend(cdr_rows)
    return len(todo)


# -- MySQL / MariaDB ----------------------------------------------------------------

_STEPS: WeakKeyDictionary[Any, int | None] = WeakKeyDictionary()


def id_step(cur: Any, dialect: Any) -> int | None:
    """The step between the IDs one multi-row INSERT gives its rows, when they are sure to
    be evenly spaced: InnoDB's innodb_autoinc_lock_mode 0 or 1 (MariaDB's default), where
    an INSERT ... VALUES takes all its values at once, the first being LAST_INSERT_ID.
    None in mode 2 (interleaved; Galera requires it) or if the server does not say.
    Asked once per connection (both settings are fixed for a session we never change)."""
    if not dialect.consecutive_ids:
        return None
    conn = cur.connection
    if conn not in _STEPS:
        try:
            cur.execute("SELECT @@innodb_autoinc_lock_mode, @@auto_increment_increment")
            mode, step = cur.fetchone()
            _STEPS[conn] = int(step) if int(mode) in (0, 1) and int(step) > 0 else None
        except Exception as exc:
            if dialect.classify(exc) != FATAL:
                raise                        # the connection is in trouble: retry as usual
            _STEPS[conn] = None
    return _STEPS[conn]


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


def write_mysql(cur: Any, dialect: Any, candidates: Sequence[NewCdr], pcap_on: str,
                inserted: list[Sequence[Any]] | None = None) -> int:
    """Insert those of ``candidates`` not stored yet. The IDs come from LAST_INSERT_ID
    when they are consecutive (``id_step``), else from RETURNING (MariaDB 10.5+), else
    from a look-up by key. Pipelined when the dialect wants it and the driver allows it
    (and the IDs need no look-up)."""
    conn = cur.connection     # the driver's own connection, whatever wraps it
    step = id_step(cur, dialect)
    returning = step is None and has_returning(conn)
    if dialect.pipelining and usable(conn) and (step is not None or returning):
        return _write_pipelined(conn, dialect, candidates, pcap_on, step, inserted)
    return _write_plain(cur, dialect, candidates, pcap_on, step, inserted)


class _Chunk:
    """Some of the batch's new CDRs, converted; their cdr INSERTs rendered (each with its
    rows' keys), and the tails of their child rows (all but the cdr_ID, known once the
    cdr rows are in)."""

    def __init__(self, todo: Sequence[NewCdr], encoded: Sequence[Any], returning: bool
                 ) -> None:
        self.keys = [new[0] for new in todo]
        self.encoded = encoded
        render = renderer("cdr", CDR_COLUMNS)
        self.inserts: list[tuple[str, list[tuple[int, str]]]] = []
        at = 0
        for sql, count in statements(_CDR_HEAD, [render(e[0]) for e in encoded],
                                     _RETURNING if returning else ""):
            self.inserts.append((sql, self.keys[at:at + count]))
            at += count
        self.next_tails: list[str] = []
        self.rtp_tails: list[list[str]] = []

    def render_tails(self) -> None:
        """The child rows as text, all but their cdr_ID."""
        next_tail = renderer("cdr_next", NEXT_COLUMNS, tail=True)
        rtp_tail = renderer("cdr_rtp", RTP_COLUMNS, tail=True)
        self.next_tails = [next_tail(e[1]) for e in self.encoded]
        self.rtp_tails = [[rtp_tail(r) for r in e[2]] for e in self.encoded]

    def children(self, ids: Sequence[int]) -> list[tuple[str, int]]:
        """The cdr_next and cdr_rtp INSERTs (with their row counts), given the IDs."""
        pairs = list(zip(ids, self.rtp_tails, strict=True))
        return (statements(_NEXT_HEAD, [f"({cdr_id}{tail}" for cdr_id, tail
                                        in zip(ids, self.next_tails, strict=True)])
                + statements(_RTP_HEAD, [f"({cdr_id}{tail}" for cdr_id, tails in pairs
                                         for tail in tails]))


def _new_ids(keys: Sequence[tuple[int, str]], answer: Answer, step: int | None
             ) -> Iterator[tuple[tuple[int, str], int]]:
    """(key, ID) of the rows a cdr INSERT inserted: from its RETURNING rows (no step), or
    from LAST_INSERT_ID (the first row's) and the step."""
    if step is None:
        return (((ident, key_uid), cdr_id) for cdr_id, ident, key_uid in answer.rows)
    _check(answer.affected, len(keys))
    first = answer.insert_id
    return zip(keys, range(first, first + step * len(keys), step), strict=True)


def _write_plain(cur: Any, dialect: Any, candidates: Sequence[NewCdr], pcap_on: str,
                 step: int | None, inserted: list[Sequence[Any]] | None = None) -> int:
    stored = stored_ids(cur, "%s", [new[0] for new in candidates])
    todo = [new for new in candidates if new[0] not in stored]
    if not todo:
        return 0
    chunk = _Chunk(todo, _encoded(todo, pcap_on), returning=False)
    chunk.render_tails()
    if step is None and len(todo) == 1:
        step = 1                     # a one-row INSERT's LAST_INSERT_ID is that row's
    found: dict[tuple[int, str], int] = {}
    try:
        for sql, keys in chunk.inserts:
            affected = cur.execute(sql)
            if step is not None:
                found.update(_new_ids(keys, Answer(None, affected, (), int(cur.lastrowid)),
                                      step))
    except Exception as exc:
        _duplicate(dialect, exc)
        raise
    if step is None:
        found = stored_ids(cur, "%s", chunk.keys)
    for sql, count in chunk.children([found[key] for key in chunk.keys]):
        _check(cur.execute(sql), count)
    if inserted is not None:
        inserted.extend(e[0] for e in chunk.encoded)
    return len(todo)


def _sizes() -> Iterator[int]:
    yield from CHUNKS
    while True:
        yield CHUNK


def _write_pipelined(conn: Any, dialect: Any, candidates: Sequence[NewCdr], pcap_on: str,
                     step: int | None, inserted: list[Sequence[Any]] | None = None) -> int:
    """The key look-up is sent, and the first CDRs converted while the server answers it.
    Then chunk by chunk: the chunk's cdr INSERTs are sent; its child rows' tails and the
    next chunk are rendered while the server works; its IDs are read; its cdr_next and
    cdr_rtp INSERTs and the next chunk's cdr INSERTs are sent; and so on. At most three
    statements are in flight, their answers small (OK packets, a chunk's IDs)."""
    pipe = Pipeline(conn)
    try:
        for sql in _key_queries([new[0] for new in candidates]):
            pipe.send(sql, _KEYS)
        sizes = _sizes()
        head = candidates[:next(sizes)]
        head_encoded = _encoded(head, pcap_on)    # as if all were new (they mostly are)
        stored = set()
        while pipe:
            stored.update((ident, key_uid) for _id, ident, key_uid in pipe.receive().rows)
        kept = [i for i, new in enumerate(head) if new[0] not in stored]
        rest = [new for new in candidates[len(head):] if new[0] not in stored]
        if not kept and not rest:
            return 0                                  # every CDR was stored before

        def chunks() -> Iterator[_Chunk]:
            returning = step is None
            if kept:
                yield _Chunk([head[i] for i in kept], [head_encoded[i] for i in kept],
                             returning)
            at = 0
            while at < len(rest):
                part = rest[at:at + next(sizes)]
                at += len(part)
                yield _Chunk(part, _encoded(part, pcap_on), returning)

        prepared = chunks()
        ahead = next(prepared, None)
        for sql, keys in ahead.inserts if ahead is not None else ():
            pipe.send(sql, keys)
        while ahead is not None:
            chunk = ahead
            if inserted is not None:
                inserted.extend(e[0] for e in chunk.encoded)
            chunk.render_tails()
            ahead = next(prepared, None)
            found = _answers(pipe, dialect, step, len(chunk.inserts))
            for sql, count in chunk.children([found[key] for key in chunk.keys]):
                pipe.send(sql, count)
            for sql, keys in ahead.inserts if ahead is not None else ():
                pipe.send(sql, keys)
        _answers(pipe, dialect, step)
    finally:
        pipe.drain()
    return len(kept) + len(rest)


def _answers(pipe: Pipeline, dialect: Any, step: int | None, inserts: int | None = None
             ) -> dict[tuple[int, str], int]:
    """Read answers in order until ``inserts`` cdr INSERTs (noted with their rows' keys)
    have answered (None: all that are due): their {key: ID}. Every child INSERT (noted
    with its row count) must have inserted all its rows."""
    found: dict[tuple[int, str], int] = {}
    while pipe if inserts is None else inserts:
        note = pipe.pending[0]
        try:
            answer = pipe.receive()
        except Exception as exc:
            if isinstance(note, list):
                _duplicate(dialect, exc)
            raise
        if isinstance(note, list):
            inserts = None if inserts is None else inserts - 1
            found.update(_new_ids(note, answer, step))
        else:
            _check(answer.affected, note)
    return found


def _check(affected: int, count: int) -> None:
    if affected != count:
        raise RuntimeError(f"an INSERT of {count} rows inserted {affected}")
