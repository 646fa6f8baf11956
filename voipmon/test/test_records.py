"""The records of voipmon/records: plain JSON fields (one typed codec can carry them all),
frozen, and keys that are stable and distinct."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import types
import typing

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import voipmon
from voipmon.analysis.noncall import INonCallAnalyser
from voipmon.analysis.registers import RegisterSettings, RegisterTracker
from voipmon.analysis.sipmsg import SipMsgSettings, SipMsgTracker
from voipmon.records import alert, register, sipmsg
from voipmon.records.keys import stable_uid
from voipmon.test.common import data_path
from voipmon.test.test_analysis_register_captures import PBX, PHONES, SCANNED, analyse

RECORDS = (register.RegisterState, register.RegisterFailed, register.RegisterTimeInfo,
           sipmsg.SipMsg, sipmsg.InstantMessage, alert.Alert)
PLAIN = {str, int, float, bool, type(None)}


class RecordTypeTests(SynchronousTestCase):

    def test_fields_are_plain_json_values(self) -> None:
        for cls in RECORDS:
            hints = typing.get_type_hints(cls)
            for field in dataclasses.fields(cls):
                hint = hints[field.name]
                kinds = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) \
                    else {hint}
                self.assertTrue(kinds <= PLAIN, f"{cls.__name__}.{field.name}: {hint}")
            self.assertEqual(dataclasses.fields(cls)[0].name, "uid")
            self.assertTrue(cls.TABLE)

    def test_frozen_and_slotted(self) -> None:
        row = register.RegisterTimeInfo(uid="u", id_sensor=1, created_at=60.0,
                                        type_info="active", sipcallerip="", sipcalledip="",
                                        counter=3)
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, row, "counter", 4)
        self.assertFalse(hasattr(row, "__dict__"))

    def test_stable_uid(self) -> None:
        self.assertEqual(stable_uid("k", "a", 1, 1.5), stable_uid("k", "a", 1, 1.5))
        self.assertEqual(len(stable_uid("k")), 32)
        self.assertNotEqual(stable_uid("k", "a", "b"), stable_uid("k", "a\x001:b"))
        self.assertNotEqual(stable_uid("k", "ab"), stable_uid("k", "a", "b"))
        self.assertNotEqual(stable_uid("k", 1.0), stable_uid("k", 1.000001))
        self.assertNotEqual(stable_uid("k", "x"), stable_uid("j", "x"))


class SeamTests(SynchronousTestCase):

    def test_trackers_provide_the_engine_seam(self) -> None:
        registers = RegisterTracker(RegisterSettings(), 1, print)
        messages = SipMsgTracker(SipMsgSettings(sip_options="yes", sip_message="no"), 1, print)
        self.assertTrue(verifyObject(INonCallAnalyser, registers))
        self.assertTrue(verifyObject(INonCallAnalyser, messages))
        self.assertEqual((registers.methods, messages.methods),
                         (frozenset({"REGISTER"}), frozenset({"OPTIONS"})))


class RecordsFromCapturesTests(SynchronousTestCase):

    def test_round_trip_through_json_and_distinct_keys(self) -> None:
        for name in (PHONES, SCANNED, PBX):
            records, _, _ = analyse(data_path(name))
            self.assertTrue(records)
            for record in records:
                data = json.loads(json.dumps(dataclasses.asdict(record)))
                self.assertEqual(type(record)(**data), record)
                self.assertEqual(type(record).from_wire(json.loads(record.to_wire())), record)
            # a key names one row: every emission of it is a revision of the same row
            by_uid: dict[str, list] = {}
            for record in records:
                by_uid.setdefault(record.uid, []).append(record)
            for uid, versions in by_uid.items():
                self.assertEqual({type(v) for v in versions}.__len__(), 1)
                if len(versions) > 1:
                    revisions = [v.revision for v in versions]
                    self.assertEqual(revisions, list(range(len(versions))), uid)


class LayeringTests(SynchronousTestCase):
    """The records are the bottom layer: the engine, the queue, the channel and the store
    depend on them, not on each other for a record type."""

    def imports(self, package: str) -> dict[str, set[str]]:
        folder = os.path.join(os.path.dirname(voipmon.__file__), package)
        found: dict[str, set[str]] = {}
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                found[name] = {node.module for node in ast.walk(tree)
                               if isinstance(node, ast.ImportFrom) and node.module
                               and node.module.startswith("voipmon")}
        return found

    def test_records_import_only_records(self) -> None:
        found = self.imports("records")
        self.assertIn("cdr.py", found)
        for name, modules in found.items():
            self.assertEqual({m for m in modules if not m.startswith("voipmon.records")},
                             set(), name)

    def test_the_store_does_not_import_the_engine_or_the_protocols(self) -> None:
        for name, modules in self.imports("store").items():
            self.assertEqual({m for m in modules if m.startswith(("voipmon.analysis",
                                                                  "voipmon.protocols"))},
                             set(), name)
