"""The IStore contract for Call-IDs of any bytes (issue 13), on SQLite, MariaDB and the
FakeStore (the back ends of ``test_store``): kept byte for byte, found by their bytes."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from voipmon.records.keys import callid_bytes
from voipmon.store import testing
from voipmon.test.test_fakes import FakeBackend
from voipmon.test.test_store import (
    MySQLBackend,
    SQLiteBackend,
    SqlStores,
    StoreContract,
)


class CallIdContract:
    setUp = StoreContract.setUp
    expected = StoreContract.expected
    all_cdrs = StoreContract.all_cdrs

    @defer.inlineCallbacks
    def test_callid_is_kept_byte_for_byte(self) -> Any:
        """Issue 13: a Call-ID of any bytes (not UTF-8, NUL, 4-byte characters, quotes and
        backslashes, longer than the column) comes back exactly, and ``?callid=`` (the
        bytes, as a URL carries them) finds exactly its call."""
        raws = [b"id-\xff\xfe@h", b"id-\xff\xfd@h", "id-\ufffd\ufffd@h".encode(),
                b"a\x00b\xf0\x9f\x98\x80'\"\\", b"x" * 3000, b"x" * 3000 + b"\xff",
                b"\xed\xa0\x80\xc3", b"\\udcff"]
        cdrs = [testing.make_cdr(n, callid=raw.decode("utf-8", "surrogateescape"))
                for n, raw in enumerate(raws)]
        self.assertEqual((yield self.store.store_cdrs(cdrs)), len(cdrs))
        listed = yield self.all_cdrs()
        self.assertEqual(sorted(callid_bytes(c) for c in listed), sorted(raws))
        for raw, cdr in zip(raws, cdrs, strict=True):
            row = listed[cdr.callid]
            self.assertEqual(row, self.expected(row["id"], cdr))
            self.assertEqual((yield self.store.get_cdr(row["id"]))["callid"], cdr.callid)
            found = yield self.store.list_cdrs({b"callid": [raw]})
            self.assertEqual([callid_bytes(r["callid"]) for r in found], [raw])
        # the readable text finds only the call whose Call-ID it is; a wildcard finds all
        found = yield self.store.list_cdrs({"callid": "id-\ufffd\ufffd@h"})
        self.assertEqual([r["callid"] for r in found], ["id-\ufffd\ufffd@h"])
        found = yield self.store.list_cdrs({"callid": "id-*@h"})
        self.assertEqual(len(found), 3)
        self.assertEqual((yield self.store.list_cdrs({"callid": "x" * 1024})), [])


class SQLiteCallIdTests(SQLiteBackend, SqlStores, CallIdContract, unittest.TestCase):
    pass


class MySQLCallIdTests(MySQLBackend, SqlStores, CallIdContract, unittest.TestCase):
    pass


class FakeCallIdTests(FakeBackend, CallIdContract, unittest.TestCase):
    pass
