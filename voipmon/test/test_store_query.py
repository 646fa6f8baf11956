"""The CDR list query (voipmon.store.query): HTTP arguments, their SQL and Python forms.
(That SQL and Python agree on real data is checked by test_store's contract suite.)"""

from __future__ import annotations

from twisted.trial import unittest

from voipmon.store.fields import datetime_text
from voipmon.store.query import (
    MAX_LIMIT,
    CdrQuery,
    as_query,
    like_pattern,
    matches,
    parse_time,
    where_sql,
)

T = 1_700_000_000.0


class ArgumentTests(unittest.SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(CdrQuery.from_args({}), CdrQuery(limit=100, offset=0))
        self.assertEqual(as_query(None), CdrQuery())

    def test_http_shapes(self) -> None:
        query = CdrQuery.from_args({b"limit": [b"5", b"7"], b"caller": [b"+4930*"],
                                    "id_sensor": "3", "from": "2023-11-14T22:13:20Z",
                                    "to": str(T + 60), "mos_below": "3.6", "called": "",
                                    "callid": " a84b4c76e66710@pc33 "})
        self.assertEqual(query, CdrQuery(limit=7, caller="+4930*", id_sensor=3, start=T,
                                         end=T + 60, mos_below=3.6, callid="a84b4c76e66710@pc33"))

    def test_times(self) -> None:
        self.assertEqual(parse_time("from", "2023-11-14T22:13:20.5Z"), T + 0.5)
        self.assertEqual(parse_time("from", "2023-11-14 22:13:20"), T)
        self.assertEqual(parse_time("from", "2023-11-14T23:13:20+01:00"), T)
        self.assertEqual(parse_time("from", "1700000000"), T)
        self.assertEqual(parse_time("from", "2023-11-14"), T - 22 * 3600 - 13 * 60 - 20)

    def test_errors_name_argument_and_what_is_allowed(self) -> None:
        for args, message in (
            ({"limit": "0"}, "limit = 0: allowed: an integer 1..1000"),
            ({"limit": str(MAX_LIMIT + 1)}, "limit = 1001: allowed: an integer 1..1000"),
            ({"limit": "ten"}, "limit = 'ten': allowed: a whole number"),
            ({"offset": "-3"}, "offset = '-3': allowed: a whole number"),
            ({"id_sensor": "65536"}, "id_sensor = 65536: allowed: an integer 0..65535"),
            ({"from": "last week"}, "from = 'last week': allowed: ISO 8601"),
            ({"mos_below": "7"}, "mos_below = 7.0: allowed: a number 0..5"),
            ({"mos_below": "good"}, "mos_below = 'good': allowed: a number 0..5"),
            ({"callee": "1"}, "unknown argument 'callee'; allowed: limit, offset, caller"),
        ):
            error = self.assertRaises(ValueError, CdrQuery.from_args, args)
            self.assertIn(message, str(error))

    def test_mos_threshold_at_stored_precision(self) -> None:
        self.assertEqual(CdrQuery(mos_below=3.5).mos_limit_mult10, 35)
        self.assertEqual(CdrQuery(mos_below=3.46).mos_limit_mult10, 35)
        self.assertEqual(CdrQuery(mos_below=3.51).mos_limit_mult10, 36)
        self.assertIsNone(CdrQuery().mos_limit_mult10)


class SqlTests(unittest.SynchronousTestCase):
    def test_like_patterns(self) -> None:
        self.assertIsNone(like_pattern("100"))
        self.assertEqual(like_pattern("+49*"), "+49%")
        self.assertEqual(like_pattern("a_b*"), "a!_b%")
        self.assertEqual(like_pattern("50%!"), "50%!!")

    def test_where(self) -> None:
        self.assertEqual(where_sql(CdrQuery(), "?", datetime_text), ("", []))
        sql, params = where_sql(CdrQuery(caller="a_*", called="200", callid="x@h*", id_sensor=2,
                                         start=T, end=T + 1, mos_below=3.5), "%s", datetime_text)
        self.assertEqual(sql, " WHERE c.`caller` LIKE %s ESCAPE '!' AND c.`called` = %s AND "
                              "n.`callid` LIKE %s ESCAPE '!' AND "
                              "c.`id_sensor` = %s AND c.`calldate` >= %s AND c.`calldate` < %s "
                              "AND c.`mos_min_mult10` < %s")
        self.assertEqual(params, ["a!_%", "200", "x@h%", 2, "2023-11-14 22:13:20.000",
                                  "2023-11-14 22:13:21.000", 35])
        sql, params = where_sql(CdrQuery(callid="x@h"), "?", datetime_text)
        self.assertEqual((sql, params), (" WHERE n.`callid` = ? AND n.`callid_raw` IS NULL",
                                         ["x@h"]))

    def test_matches_in_python(self) -> None:
        row = {"caller": "Alice_1", "called": "200", "id_sensor": 2, "mos_min_mult10": 34,
               "callid": "a84b4c76e66710@pc33"}
        ms = round(T * 1000)
        for query, expected in (
            (CdrQuery(), True), (CdrQuery(caller="alice_1"), True),
            (CdrQuery(caller="Alice"), False), (CdrQuery(caller="ali*"), True),
            (CdrQuery(caller="*e_1"), True), (CdrQuery(caller="*ex1"), False),
            (CdrQuery(called="2*0"), True), (CdrQuery(id_sensor=3), False),
            (CdrQuery(start=T), True), (CdrQuery(start=T + 0.001), False),
            (CdrQuery(end=T), False), (CdrQuery(end=T + 0.001), True),
            (CdrQuery(mos_below=3.4), False), (CdrQuery(mos_below=3.41), True),
            (CdrQuery(callid="A84B4C76E66710@PC33"), True), (CdrQuery(callid="a84b*"), True),
            (CdrQuery(callid="a84b4c76e66710"), False), (CdrQuery(callid="*@pc3"), False),
        ):
            self.assertEqual(matches(query, row, ms), expected, query)
        self.assertFalse(matches(CdrQuery(mos_below=4.0), {**row, "mos_min_mult10": None}, ms))
