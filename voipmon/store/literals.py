"""SQL literals for MySQL/MariaDB multi-row INSERTs, rendered without the driver.

PyMySQL escapes value by value through a type dispatch, which costs more than the
server's insert for our wide rows. ``row_renderer`` builds, once per column list, one
function that formats a whole row by its schema types, without a Python call per value:
integers through ``int()``, floats through ``float()`` and ``repr`` (the shortest text
that reads back as the same double; NaN and infinities never get here, the row codec
makes them NULL), bytes as a hex literal, text quoted. The generated source holds only
column positions; no value ever becomes code, and a value of the wrong type raises
instead of being pasted in.

Text is quoted the one way every sql_mode reads alike, so the literal does not depend on
the session: a quote is doubled (``''`` means a quote with or without
NO_BACKSLASH_ESCAPES); a string holding a backslash (the one character the modes read
differently), a NUL or a Ctrl-Z (which tools replaying statements, like the mysql client
reading mysqlbinlog output, may mangle) is sent as a hex literal with a character set
introducer, ``_utf8mb4 X'...'``, the same bytes in every mode. Newlines and other
characters are literal inside quotes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from voipmon.store.schema import TABLES

MAX_STATEMENT = 1 << 20     # characters of literals per INSERT (max_allowed_packet >= 4M)

_INT_KINDS = {"id", "u8", "u16", "u32", "u64", "i32", "i64", "bool"}
_FLOAT_KINDS = {"double", "dec3"}


def hex_text(value: str) -> str:
    """A string as a hex literal of its UTF-8 bytes, read as utf8mb4 in every sql_mode."""
    return "_utf8mb4 X'" + value.encode("utf-8").hex() + "'"


def quote(value: str) -> str:
    """A string literal that reads back as ``value`` whatever the sql_mode."""
    if "\\" in value or "\x00" in value or "\x1a" in value:
        return hex_text(value)
    return "'" + value.replace("'", "''") + "'"


def row_renderer(table: str, columns: Sequence[str], tail: bool = False
                 ) -> Callable[[Sequence[Any]], str]:
    """A function rendering one row of ``table`` as ``(v1,v2,...)``; with ``tail``, as
    ``,v2,...)``: all but the first value, which is written in front later (a child
    row's cdr_ID, known once the cdr row is in)."""
    kinds = {col.name: col.type.partition(":")[0] for col in TABLES[table].columns}
    names = [f"v{i}" for i in range(len(columns))]
    parts = []
    for v, name in zip(names, columns, strict=True):
        kind = kinds[name]
        if kind in _INT_KINDS:
            value = f"int({v})"
        elif kind in _FLOAT_KINDS:
            value = f"repr(float({v}))"
        elif kind in ("ip", "blob"):
            value = f"X + {v}.hex() + Q"
        else:
            value = f"(H({v}) if B in {v} or Z in {v} or S in {v} else Q + {v}.replace(Q, D) + Q)"
        parts.append(f"{{N if {v} is None else {value}}}")
    text = "," + ",".join(parts[1:]) if tail else "(" + ",".join(parts)
    source = (f"def render(row):\n    {', '.join(names)}, = row\n"
              f"    return f\"{text})\"\n")
    scope = {"int": int, "float": float, "repr": repr, "H": hex_text, "N": "NULL", "Q": "'",
             "D": "''", "X": "X'", "B": "\\", "Z": "\x00", "S": "\x1a", "__builtins__": {}}
    exec(source, scope)
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
