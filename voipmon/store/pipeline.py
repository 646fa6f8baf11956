"""Statements sent on a PyMySQL connection ahead of reading their answers.

The MySQL protocol answers commands in the order it received them, and a server reads its
next command only when it has answered the previous one; so a client may send several
and read the answers later. PyMySQL always reads at once, which leaves the server idle
while Python renders the next statement and Python idle while the server inserts. A
``Pipeline`` sends a statement and returns: the batch writer renders the next chunk of
rows while the server works.

This uses three internals of PyMySQL's ``Connection`` (as of PyMySQL 2.2):
``_execute_command`` (send one command), ``_read_query_result`` (read one answer into
``_result``) and ``_next_seq_id`` (the packet number the next answer starts with: each
command restarts the numbering, so it is reset before each answer is read). ``usable``
says whether a connection has them, and the writer falls back to plain ``execute`` if
not; the store's tests run the pipeline against the real server, so a PyMySQL release
that changes their meaning fails them.

Rules that keep the connection in step: the caller reads every answer (``drain`` in a
``finally``), and only statements with small answers are sent ahead (OK packets, a
RETURNING of at most a chunk's IDs), so the server never waits on a full socket while the
client waits on the server.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

_COM_QUERY = 3


def usable(conn: Any) -> bool:
    """Whether ``conn`` is a PyMySQL connection with what pipelining needs."""
    return all(hasattr(conn, name) for name in (
        "_execute_command", "_read_query_result", "_next_seq_id", "encoding"))


class Answer(NamedTuple):
    note: Any
    affected: int                          # rows the statement changed
    rows: tuple[tuple[Any, ...], ...]      # rows it answered (SELECT, RETURNING)
    insert_id: int                         # LAST_INSERT_ID: the first row's, if any


class Pipeline:
    """Statements in flight on one connection, each with a note for its answer."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.pending: deque[Any] = deque()

    def __len__(self) -> int:
        return len(self.pending)

    def send(self, sql: str, note: Any = None) -> None:
        """Send one statement; its answer is read later, in order, with ``note``."""
        self.conn._execute_command(_COM_QUERY, sql.encode(self.conn.encoding))
        self.pending.append(note)

    def receive(self) -> Answer:
        """The answer to the oldest statement in flight; raises the driver's error if the
        server refused it (the connection stays in step)."""
        note = self.pending.popleft()
        conn = self.conn
        conn._next_seq_id = 1
        conn._read_query_result()
        result = conn._result
        return Answer(note, result.affected_rows, result.rows or (), result.insert_id or 0)

    def drain(self) -> None:
        """Read every answer still due, ignoring refusals (the caller is already failing,
        or has read them all). A connection that cannot be read is closed by PyMySQL."""
        while self.pending:
            try:
                self.receive()
            except Exception:
                if not getattr(self.conn, "_sock", None):
                    self.pending.clear()   # closed: nothing more will come
