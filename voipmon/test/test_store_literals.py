"""SQL literals for MySQL (voipmon.store.literals): formats by column type, refusals of
wrong types, statement splitting, and on the real MariaDB: any text reads back as written,
in the default sql_mode and under NO_BACKSLASH_ESCAPES, the same as PyMySQL's escaping;
the compiled row renderers are held to the same properties, with any row that fits the
table's columns."""

from __future__ import annotations

import random
import re
import struct
from datetime import UTC

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from voipmon.store import testing
from voipmon.store.dialect import q
from voipmon.store.fields import MAX_EPOCH, ms_text
from voipmon.store.literals import quote, renderer, row_renderer, row_source, statements
from voipmon.store.migrate import migrate
from voipmon.store.rows import CDR_COLUMNS, NEXT_COLUMNS, RTP_COLUMNS, encode
from voipmon.store.schema import TABLES
from voipmon.test.common import mysql_test_session

HOSTILE = ["O'Brien", 'say "hi"', "back\\slash", "nul\x00byte", "ctrl-z\x1a", "new\nline",
           "'); DROP TABLE cdr; --", "\\'", "'\\", "100%_done", "Zoë 😀", "tab\there", "",
           "cr\rlf", "\\x27", "''", "\\\\"]
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
# Any text a column can hold: no lone surrogates (the row codec replaces them), weighted
# towards the characters that need care.
texts = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",))),
    st.text(st.sampled_from(list("'\\\x00\x1a\n\r\"%_`;") + ["a", "é", "😀"])),
)


_INTS = {"id": 64, "u64": 64, "u32": 32, "u16": 16, "u8": 8}
_SIGNED = {"i32": 32, "i64": 64}


def fitted(kind: str, arg: str) -> st.SearchStrategy:
    """Values the row codec can give a column of this kind (the invariants of
    voipmon.store.literals: text without lone surrogates and within its length, integers
    in range, finite floats), or NULL."""
    if kind in _INTS:
        values = st.integers(0, 2 ** _INTS[kind] - 1)
    elif kind in _SIGNED:
        values = st.integers(-2 ** (_SIGNED[kind] - 1), 2 ** (_SIGNED[kind] - 1) - 1)
    elif kind == "bool":
        values = st.booleans()
    elif kind in ("double", "dec3"):
        values = st.floats(allow_nan=False, allow_infinity=False)
    elif kind == "ip":
        values = st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16)
    elif kind == "blob":
        values = st.binary(max_size=300)
    elif kind == "ascii":
        values = st.text(st.characters(max_codepoint=127), max_size=int(arg))
    elif kind == "enum":
        values = st.sampled_from(arg.split(","))
    elif kind == "datetime":
        values = st.integers(0, MAX_EPOCH * 1000).map(ms_text)
    else:   # text, bintext, longtext
        values = texts.map(lambda text: text[:int(arg)] if arg else text)
    return st.none() | values


def table_rows(table: str, columns: tuple[str, ...]) -> st.SearchStrategy:
    types = {col.name: col.type.partition(":") for col in TABLES[table].columns}
    return st.tuples(*(fitted(types[c][0], types[c][2]) for c in columns))


def literal(kind: str, value: object) -> str:
    """What one value of a ``kind`` column must be rendered as (the specification the
    compiled renderers are held to)."""
    if value is None:
        return "NULL"
    if kind in _INTS or kind in _SIGNED or kind == "bool":
        return str(int(value))
    if kind in ("double", "dec3"):
        return repr(float(value))
    if kind in ("ip", "blob"):
        return "X'" + value.hex() + "'"
    return quote(value)


@st.composite
def any_table_row(draw: st.DrawFn) -> tuple[str, tuple[str, ...], tuple]:
    table = draw(st.sampled_from(sorted(TABLES)))
    names = [col.name for col in TABLES[table].columns]
    columns = tuple(draw(st.permutations(names))[:draw(st.integers(1, len(names)))])
    return table, columns, draw(table_rows(table, columns))


class QuoteTests(unittest.SynchronousTestCase):
    def test_plain_text_is_quoted_with_quotes_doubled(self) -> None:
        self.assertEqual(quote("it's"), "'it''s'")
        self.assertEqual(quote(""), "''")
        self.assertEqual(quote("Zoë\nline"), "'Zoë\nline'")

    def test_text_the_modes_read_differently_is_hex(self) -> None:
        self.assertEqual(quote("a\\b"), "_utf8mb4 X'615c62'")
        self.assertEqual(quote("\x00"), "_utf8mb4 X'00'")
        self.assertEqual(quote("\x1a"), "_utf8mb4 X'1a'")
        self.assertEqual(quote("é\\"), "_utf8mb4 X'c3a95c'")

    @SETTINGS
    @given(texts)
    def test_no_quote_ends_a_literal_early(self, value: str) -> None:
        literal = quote(value)
        if literal.startswith("'"):
            inner = literal[1:-1]
            self.assertEqual(inner.replace("''", ""), value.replace("'", ""))
            self.assertNotIn("\\", inner)
        else:
            self.assertRegex(literal, r"^_utf8mb4 X'([0-9a-f]{2})*'$")
            self.assertEqual(bytes.fromhex(literal[11:-1]).decode("utf-8"), value)


class RendererTests(unittest.SynchronousTestCase):
    def test_values_are_formatted_by_column_type(self) -> None:
        render = row_renderer("cdr_rtp", ("cdr_ID", "saddr", "avgjitter", "codec"))
        self.assertEqual(render((7, b"\x0a\x00\x00\x01", 0.1, "PCMU")),
                         "(7,X'0a000001',0.1,'PCMU')")
        self.assertEqual(render((None, None, None, None)), "(NULL,NULL,NULL,NULL)")
        self.assertEqual(render((True, b"", 1e-05, "it's")), "(1,X'',1e-05,'it''s')")
        self.assertEqual(render((1, b"", 1e300, "a\\")), "(1,X'',1e+300,_utf8mb4 X'615c')")

    def test_a_tail_follows_a_value_given_later(self) -> None:
        tail = row_renderer("cdr_rtp", ("cdr_ID", "index", "codec"), tail=True)
        self.assertEqual(f"(42{tail((None, 3, 'G722'))}", "(42,3,'G722')")
        self.assertRaises(ValueError, tail, (None, 3))

    def test_a_value_of_the_wrong_type_is_refused_not_pasted(self) -> None:
        render = row_renderer("cdr_rtp", ("cdr_ID", "saddr", "avgjitter", "codec"))
        for row in (("1) ; DROP TABLE cdr; --", b"", 1.0, "x"), (1, "0a", 1.0, "x"),
                    (1, b"", "1); --", "x"), (1, b"", 1.0, b"bytes"), (1, b"", 1.0, 5),
                    (1, b"", 1.0), (1, b"", 1.0, "x", "extra")):
            self.assertRaises((ValueError, TypeError, AttributeError), render, row)

    @SETTINGS
    @given(any_table_row(), st.booleans())
    def test_any_row_of_any_table_renders_value_by_value(
            self, drawn: tuple[str, tuple[str, ...], tuple], tail: bool) -> None:
        """The compiled renderer of any column list of any table writes each value as its
        column's kind says (text by ``quote``), in column order."""
        table, columns, row = drawn
        kinds = {col.name: col.type.partition(":")[0] for col in TABLES[table].columns}
        expected = [literal(kinds[c], v) for c, v in zip(columns, row, strict=True)]
        if tail:
            self.assertEqual(renderer(table, columns, tail=True)(row),
                             "".join("," + text for text in expected[1:]) + ")")
        else:
            self.assertEqual(renderer(table, columns)(row), "(" + ",".join(expected) + ")")

    def test_the_source_holds_positions_only(self) -> None:
        """No column name and no value is in the compiled text: only v0..vN, the names of
        the scope's functions and constants, and punctuation."""
        source = row_source("cdr", CDR_COLUMNS)
        self.assertNotIn("caller", source)
        words = set(re.findall(r"[A-Za-z_]\w*", source))
        self.assertEqual({w for w in words if not re.fullmatch(r"v\d+", w)},
                         {"def", "render", "row", "return", "f", "N", "if", "is", "None",
                          "else", "int", "repr", "float", "X", "hex", "Q", "T"})

    def test_statements_stay_under_the_limit(self) -> None:
        rows = [f"({i},'{'x' * (i % 7)}')" for i in range(100)]
        split = statements("INSERT x VALUES ", rows, " RETURNING y", limit=60)
        self.assertGreater(len(split), 10)
        self.assertEqual(sum(count for _sql, count in split), 100)
        joined = []
        for sql, count in split:
            self.assertTrue(sql.startswith("INSERT x VALUES (") and sql.endswith(" RETURNING y"))
            body = sql[len("INSERT x VALUES "):-len(" RETURNING y")]
            self.assertLessEqual(len(body), 60)
            parts = body.split(",(")
            self.assertEqual(len(parts), count)
            joined.append(body)
        self.assertEqual(",".join(joined), ",".join(rows))
        self.assertEqual(statements("H ", ["(" + "y" * 100 + ")"], limit=10),
                         [("H (" + "y" * 100 + ")", 1)])
        self.assertEqual(statements("H ", []), [])


class MySQLLiteralTests(unittest.TestCase):
    """What is written is what is read back, on the real server, in both modes."""

    def setUp(self) -> None:
        self.dialect, self.conn = mysql_test_session(self)

    def no_backslash_escapes(self) -> None:
        cur = self.conn.cursor()
        cur.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")

    def select_back(self, value: str) -> None:
        """Our literal and PyMySQL's (escape_string, per the session's mode) both read
        back as the value, compared byte for byte on the server too."""
        cur = self.conn.cursor()
        literal, pymysql_literal = quote(value), self.conn.escape(value)
        cur.execute(f"SELECT {literal}, {pymysql_literal}, "
                    f"BINARY {literal} = BINARY {pymysql_literal}")
        ours, theirs, same = cur.fetchone()
        self.assertEqual(ours, value)
        self.assertEqual(theirs, value)
        self.assertEqual(same, 1)

    def test_hostile_text_reads_back(self) -> None:
        for value in HOSTILE:
            self.select_back(value)

    def test_hostile_text_reads_back_without_backslash_escapes(self) -> None:
        self.no_backslash_escapes()
        for value in HOSTILE:
            self.select_back(value)

    @SETTINGS
    @given(texts)
    def test_any_text_reads_back(self, value: str) -> None:
        self.select_back(value)

    @SETTINGS
    @given(texts)
    def test_any_text_reads_back_without_backslash_escapes(self, value: str) -> None:
        self.no_backslash_escapes()
        self.select_back(value)

    def round_trip(self, texts: list[str], floats: list[float]) -> None:
        """Rows rendered into real tables: every text and double comes back exactly."""
        migrate(self.dialect, self.conn, testing.BASE_TIME)
        cur = self.conn.cursor()
        row, _nxt, rtp = encode(testing.make_cdr(1), None, None, None, "sensor")
        cur.execute(f"INSERT INTO cdr ({', '.join(q(c) for c in CDR_COLUMNS)}) VALUES "
                    + row_renderer("cdr", CDR_COLUMNS)(row))
        template = dict(zip(RTP_COLUMNS, rtp[0], strict=True))
        template["cdr_ID"] = cur.lastrowid
        rows = [tuple({**template, "index": i, "codec": texts[i % len(texts)][:64],
                       "avgjitter": floats[i]}.values()) for i in range(len(floats))]
        render = row_renderer("cdr_rtp", RTP_COLUMNS)
        for sql, count in statements(f"INSERT INTO cdr_rtp ({', '.join(q(c) for c in RTP_COLUMNS)})"
                                     " VALUES ", map(render, rows), limit=5000):
            self.assertEqual(cur.execute(sql), count)
        self.conn.commit()
        cur.execute("SELECT `index`, codec, avgjitter FROM cdr_rtp ORDER BY `index`")
        found = cur.fetchall()
        self.assertEqual(len(found), len(rows))
        for index, codec, avgjitter in found:
            self.assertEqual(codec, texts[index % len(texts)][:64])
            self.assertEqual(avgjitter, floats[index])   # MariaDB keeps -0.0 as 0.0

    def exact_doubles(self) -> list[float]:
        rng = random.Random(5)
        floats = [rng.uniform(0, 1000) for _ in range(300)]
        floats += [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(62)))[0]
                   for _ in range(300)]
        return floats + [5e-324, 1.7976931348623157e308, 0.1, 1e-05, 123456789.123456789,
                         -0.0, -2.5e-300, 1e22, 2 ** 53 + 1.0]

    def test_hostile_text_and_exact_doubles(self) -> None:
        self.round_trip(HOSTILE, self.exact_doubles())

    def test_under_no_backslash_escapes(self) -> None:
        self.no_backslash_escapes()
        self.round_trip(HOSTILE, self.exact_doubles())


class MySQLRowPropertyTests(unittest.TestCase):
    """The compiled renderers, with any rows that fit, on the real server in both modes."""

    def setUp(self) -> None:
        self.dialect, self.conn = mysql_test_session(self)
        migrate(self.dialect, self.conn, testing.BASE_TIME)

    def no_backslash_escapes(self) -> None:
        cur = self.conn.cursor()
        cur.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")

    def rows_read_back(self, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        """``rows`` (cdr_next or cdr_rtp columns without cdr_ID) inserted as production
        does (a fresh cdr row's ID in front of each compiled tail) read back as written."""
        cur = self.conn.cursor()
        cdr_row = encode(testing.make_cdr(1), None, None, None, "sensor")[0]
        cur.execute(f"INSERT INTO cdr ({', '.join(q(c) for c in CDR_COLUMNS)}) VALUES "
                    + renderer("cdr", CDR_COLUMNS)(cdr_row))
        cdr_id = cur.lastrowid
        tail = renderer(table, ("cdr_ID", *columns), tail=True)
        head = f"INSERT INTO {table} ({', '.join(q(c) for c in ('cdr_ID', *columns))}) VALUES "
        for sql, count in statements(head, [f"({cdr_id}{tail((None, *row))}" for row in rows],
                                     limit=20000):
            self.assertEqual(cur.execute(sql), count)
        order = " ORDER BY `index`" if table == "cdr_rtp" else ""
        cur.execute(f"SELECT {', '.join(q(c) for c in columns)} FROM {table} "
                    f"WHERE cdr_ID = {cdr_id}{order}")
        found = cur.fetchall()
        self.conn.rollback()
        kinds = {col.name: col.type.partition(":")[0] for col in TABLES[table].columns}
        self.assertEqual(len(found), len(rows))
        for got, row in zip(found, rows, strict=True):
            for column, back, value in zip(columns, got, row, strict=True):
                kind = kinds[column]
                if kind == "datetime" and back is not None:   # the server gives datetimes
                    back = ms_text(round(back.replace(tzinfo=UTC).timestamp() * 1000))
                elif kind == "bool" and value is not None:
                    value = int(value)
                self.assertEqual(back, value, f"{table}.{column}")

    def rtp_rows(self) -> st.SearchStrategy:
        columns = RTP_COLUMNS[1:]
        index = columns.index("index")
        return st.lists(table_rows("cdr_rtp", columns), min_size=1, max_size=5).map(
            lambda rows: [(*r[:index], n, *r[index + 1:]) for n, r in enumerate(rows)])

    @SETTINGS
    @given(st.data())
    def test_any_rows_read_back(self, data: st.DataObject) -> None:
        """The compiled renderers, with any values that fit: cdr_next (text, long text,
        enum, datetime, blob) and cdr_rtp (integers, doubles, addresses, ascii, bool)."""
        self.rows_read_back("cdr_next", NEXT_COLUMNS[1:],
                            [data.draw(table_rows("cdr_next", NEXT_COLUMNS[1:]))])
        self.rows_read_back("cdr_rtp", RTP_COLUMNS[1:], data.draw(self.rtp_rows()))

    @SETTINGS
    @given(st.data())
    def test_any_rows_read_back_without_backslash_escapes(self, data: st.DataObject) -> None:
        self.no_backslash_escapes()
        self.rows_read_back("cdr_next", NEXT_COLUMNS[1:],
                            [data.draw(table_rows("cdr_next", NEXT_COLUMNS[1:]))])
        self.rows_read_back("cdr_rtp", RTP_COLUMNS[1:], data.draw(self.rtp_rows()))
