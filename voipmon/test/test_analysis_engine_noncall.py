"""The engine and the analysers of SIP that is not a call: the options switch them on
(``analysis.settings.engine_for``), the engine hands them REGISTER, OPTIONS, ... and its
capture clock, their records reach ``on_record`` (or the dead letters), calls are
unaffected; and the one item form records take in queues and batches."""

from __future__ import annotations

import json
import tempfile
from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.settings import engine_for
from voipmon.config.settings import AnalysisSettings
from voipmon.packet.readers import read_capture
from voipmon.records import register as rec
from voipmon.records.alert import Alert
from voipmon.records.cdr import Cdr
from voipmon.records.kinds import from_item, from_item_bytes, item_bytes, kind_of_item
from voipmon.store.testing import make_cdr
from voipmon.test.callsupport import udp_frame
from voipmon.test.common import data_path
from voipmon.test.recordsupport import ANALYSIS, PBX, PHONES, SCANNED, engine_records
from voipmon.test.regsupport import register, reply

REGISTRAR = ("10.0.0.100", 5060)
PHONE = ("10.0.0.1", 5060)


def build(analysis: AnalysisSettings, on_record=None) -> tuple:
    cdrs: list = []
    records: list = []
    engine = engine_for(analysis, id_sensor=7, spooldir=tempfile.mkdtemp(),
                        on_cdr=cdrs.append, on_record=on_record or records.append)
    return engine, cdrs, records


def send(engine, ts: float, src, dst, payload: bytes) -> None:
    engine.feed(ts, 1, udp_frame(src[0], src[1], dst[0], dst[1], payload))


class EngineNonCallTests(SynchronousTestCase):
    def test_off_by_default(self) -> None:
        engine, cdrs, records = build(AnalysisSettings())
        self.assertIsNone(engine.registers)
        self.assertIsNone(engine.sip_messages)
        engine.feed_all(read_capture(data_path(SCANNED)))
        engine.finish()
        self.assertEqual((cdrs, records, engine.registrations()), ([], [], []))

    def test_register_through_the_engine(self) -> None:
        """A REGISTER and its 200 over UDP: one register_state row, of sensor 7, the
        registration listed; the engine's counters carry the tracker's."""
        engine, _, records = build(AnalysisSettings(sip_register="yes"))
        req = register("c1", 1, contacts=("<sip:alice@10.0.0.1:5060>",))
        send(engine, 10.0, PHONE, REGISTRAR, req)
        send(engine, 10.05, REGISTRAR, PHONE,
             reply(req, 200, contacts=("<sip:alice@10.0.0.1:5060>;expires=3600",)))
        send(engine, 11.5, PHONE, REGISTRAR, b"not sip at all")
        [row] = records
        self.assertIsInstance(row, rec.RegisterState)
        self.assertEqual((row.id_sensor, row.to_num, row.state, row.expires),
                         (7, "alice", rec.STATE_OK, 3600))
        self.assertEqual([r["to_num"] for r in engine.registrations()], ["alice"])
        counters = engine.counters()
        self.assertEqual((counters["register.ok"], counters["records"]), (1, 1))

    def test_capture_time_moves_the_trackers(self) -> None:
        """No answer within sip-register-timeout: Failed, noticed when capture time passes
        it (the engine's clock, fed by any packet), not at the end of input."""
        engine, _, records = build(AnalysisSettings(sip_register="yes",
                                                    sip_register_timeout=2.0))
        send(engine, 10.0, PHONE, REGISTRAR, register("c2", 1))
        for second in range(11, 20):
            send(engine, float(second), ("10.9.9.9", 40000), ("10.9.9.8", 40002), b"\x80" * 40)
        self.assertEqual([type(r) for r in records][:1], [rec.RegisterFailed])
        self.assertEqual(records[0].response, 0)

    def test_nodb_follows_without_records(self) -> None:
        engine, _, records = build(AnalysisSettings(sip_register="nodb"))
        engine.feed_all(read_capture(data_path(PHONES)))
        self.assertTrue(engine.registrations())
        engine.finish()
        self.assertEqual(records, [])

    def test_calls_and_registrations_side_by_side(self) -> None:
        """The same capture with and without the trackers: the same CDRs."""
        calls = data_path("sipp_uac_pcap_rtp_echo_lo_3calls.pcap")
        with_them = engine_records(calls)
        without = engine_records(calls, analysis=AnalysisSettings())
        self.assertEqual([r for r in with_them if isinstance(r, Cdr)], without)
        self.assertEqual(len(without), 3)

    def test_each_capture_each_kind(self) -> None:
        kinds = Counter(r.KIND for name in (PHONES, SCANNED, PBX) for r in engine_records(name))
        self.assertEqual(set(kinds), {"register_state", "register_failed",
                                      "register_time_info", "alert", "sip_msg", "message"})

    def test_a_consumer_that_cannot_take_a_record(self) -> None:
        """It goes to the dead letters, counted; the engine goes on."""
        def refuse(record) -> None:
            raise RuntimeError("queue is full")

        engine, _, _ = build(ANALYSIS, on_record=refuse)
        engine.feed_all(read_capture(data_path(SCANNED)))
        engine.finish()
        self.assertTrue(engine.stats.undelivered > 60)
        self.assertEqual(engine.dead_letters.count, engine.stats.undelivered)
        self.assertEqual(engine.stats.errors, 0)


class ItemTests(SynchronousTestCase):
    def test_cdr_items_are_the_bytes_sensors_always_sent(self) -> None:
        cdr = make_cdr(1)
        self.assertEqual(item_bytes(cdr), cdr.to_wire())
        self.assertEqual(from_item_bytes(item_bytes(cdr)), cdr)
        self.assertEqual(kind_of_item(json.loads(item_bytes(cdr))), "cdr")

    def test_every_kind_round_trips(self) -> None:
        records = [r for name in (PHONES, SCANNED, PBX) for r in engine_records(name)]
        for record in records:
            data = item_bytes(record)
            self.assertTrue(data.startswith(b'["' + record.KIND.encode() + b'",'))
            self.assertEqual(from_item_bytes(data), record)
        self.assertTrue(any(isinstance(r, Alert) for r in records))

    def test_bad_items_name_the_problem(self) -> None:
        for item, words in ((["bogus", {}], "unknown record kind"),
                            (["cdr", {}], "[kind, {fields}]"), ([1, 2, 3], "[kind, {fields}]"),
                            (["alert", {"uid": 5}], "alert"), ("text", "cdr")):
            with self.assertRaises(ValueError) as caught:
                from_item(item)
            self.assertIn(words, str(caught.exception))
        with self.assertRaises(ValueError):
            from_item_bytes(b"\xff not json")
