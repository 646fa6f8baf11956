"""SQL literals for MySQL/MariaDB multi-row INSERTs, rendered without the driver.

PyMySQL escapes value by value through a type dispatch, which costs more than the
server's insert for our wide rows. ``row_renderer`` makes, once per column list, one
function that formats a whole row by its schema types in a single f-string: integers
through ``int()``, floats through ``float()`` and ``repr`` (the shortest text that reads
back as the same double), bytes as a hex literal, text through ``quote``. A plain loop
over the columns renders a CDR's rows about a fifth slower, a call per value about 40%
slower (``bench/store.py`` prints it beside the compiled renderers), and rendering is a
large share of the store's own work, so the function is compiled from source text that
``row_source`` returns for anyone to read. That text holds only column positions and the
names in ``_SCOPE``: no value and no column name ever becomes code,
and a value of the wrong type raises instead of being pasted in. The tests hold the
compiled functions to the same properties as ``quote``, on the real MariaDB, with and
without NO_BACKSLASH_ESCAPES.

Text is quoted the one way every sql_mode reads alike (``quote``, the only quoting rule
here), so the literal does not depend on the session: a quote is doubled (``''`` means a
quote with or without NO_BACKSLASH_ESCAPES); a string holding a backslash (the one
character the modes read differently), a NUL or a Ctrl-Z (which tools replaying
statements, like the mysql client reading mysqlbinlog output, may mangle) is sent as a hex
literal with a character set introducer, ``_utf8mb4 X'...'``, the same bytes in every
mode. Newlines and other characters are literal inside quotes. (ANSI_QUOTES changes only
double quotes, which are never used.)

Invariants the literals rely on; the callers guarantee them and nothing here checks them
again:

- the session's character set is utf8mb4 (``MySQLDialect.connect``): the statement goes
  out as UTF-8 and quoted text is read as utf8mb4;
- values are already fitted to their columns by the row codec (``store/rows.py``,
  ``store/fields.py``): text holds no lone surrogate (it could not be encoded) and fits
  its column, integers are in the column's range, floats are finite (NaN and infinities
  are NULL: ``repr`` would write ``nan``), ip and blob columns hold bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from voipmon.store.schema import TABLES

MAX_STATEMENT = 1 << 20     # characters of literals per INSERT (max_allowed_packet >= 4M)

_INT_KINDS = {"id", "u8", "u16", "u32", "u64", "i32", "i64", "bool"}
_FLOAT_KINDS = {"double", "dec3"}
_BYTES_KINDS = {"ip", "blob"}


def hex_text(value: str) -> str:
    """A string as a hex literal of its UTF-8 bytes, read as utf8mb4 in every sql_mode."""
    return "_utf8mb4 X'" + value.encode("utf-8").hex() + "'"


def quote(value: str) -> str:
    """A string literal that reads back as ``value`` whatever the sql_mode."""
    if "\\" in value or "\x00" in value or "\x1a" in value:
        return hex_text(value)
    return "'" + value.replace("'", "''") + "'"


# Everything the compiled renderers can reach: no builtins, no module globals.
_SCOPE = {"int": int, "float": float, "repr": repr, "T": quote, "N": "NULL", "X": "X'",
          "Q": "'", "__builtins__": {}}


def _value(kind: str, v: str) -> str:
    """The expression that renders the value held in local ``v`` of a ``kind`` column."""
    if kind in _INT_KINDS:
        text = f"int({v})"
    elif kind in _FLOAT_KINDS:
        text = f"repr(float({v}))"
    elif kind in _BYTES_KINDS:
        text = f"X + {v}.hex() + Q"
    else:
        text = f"T({v})"
    return f"{{N if {v} is None else {text}}}"


def row_source(table: str, columns: Sequence[str], tail: bool = False) -> str:
    """The source of the function ``row_renderer`` compiles for ``table``'s ``columns``."""
    kinds = {col.name: col.type.partition(":")[0] for col in TABLES[table].columns}
    names = [f"v{i}" for i in range(len(columns))]
    parts = [_value(kinds[column], v) for v, column in zip(names, columns, strict=True)]
    text = "".join("," + part for part in parts[1:]) if tail else "(" + ",".join(parts)
    return (f"def render(row):\n    {', '.join(names)}, = row\n"
            f"    return f\"{text})\"\n")


def row_renderer(table: str, columns: Sequence[str], tail: bool = False
                 ) -> Callable[[Sequence[Any]], str]:
    """A function rendering one row of ``table`` as ``(v1,v2,...)``; with ``tail``, as
    ``,v2,...)``: all but the first value, which is written in front later (a child
    row's cdr_ID, known once the cdr row is in). A row of the wrong length raises
    ValueError, a value of the wrong type TypeError, ValueError or AttributeError."""
    scope = dict(_SCOPE)
    exec(compile(row_source(table, columns, tail), f"<row_renderer {table}>", "exec"), scope)
    return scope["render"]


_CACHE: dict[tuple[str, tuple[str, ...], bool], Callable[[Sequence[Any]], str]] = {}


def renderer(table: str, columns: Sequence[str], tail: bool = False
             ) -> Callable[[Sequence[Any]], str]:
    """``row_renderer``, built once per table, column list and form."""
    key = (table, tuple(columns), tail)
    render = _CACHE.get(key)
    if render is None:
        render = _CACHE[key] = row_renderer(table, columns, tail)
    return render


def statements(head: str, rows: Iterable[str], tail: str = "",
               limit: int = MAX_STATEMENT) -> list[tuple[str, int]]:
    """(``head`` + rendered rows joined by commas + ``tail``, how many rows) for as few
    statements as keep each one's rows under ``limit`` characters (a bigger row goes
    alone)."""
    out: list[tuple[str, int]] = []
    parts: list[str] = []
    size = 0
    for text in rows:
        if parts and size + len(text) > limit:
            out.append((head + ",".join(parts) + tail, len(parts)))
            parts, size = [], 0
        parts.append(text)
        size += len(text) + 1
    if parts:
        out.append((head + ",".join(parts) + tail, len(parts)))
    return out
