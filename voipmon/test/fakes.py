"""The test doubles of the store and the engine, one of each, shared by every test module:

- ``FakeStore``: the one in-memory ``IStore`` (test_store.py runs the store's contract suite
  against it, SQLite and MariaDB), and ``CommitCounter``, which tells when a real store has
  committed so many CDRs;
- ``RecordingEngine``: the one stand-in for the analysis engine (a central's analyser of
  mirrored packets, the legacy mirror receiver's engines), made by an ``Engines`` factory.

Test doubles of the channel (endpoints, in-memory pairs) are in fakes_channel.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from voipmon.counters import Counters
from voipmon.records.cdr import Cdr
from voipmon.store.fields import datetime_text, epoch_ms, ip_bytes
from voipmon.store.interfaces import (
    SENSOR_JSON_FIELDS,
    IStore,
    StoreError,
    StoreUnavailable,
)
from voipmon.store.measures import StoreMeasures
from voipmon.store.query import CdrQuery, as_query, delete_args, matches
from voipmon.store.recordread import KINDS, as_record_query, present
from voipmon.store.recordrows import REVISED, SPECS, columns
from voipmon.store.recordrows import encode as encode_record
from voipmon.store.rollup import SOURCE, tallies
from voipmon.store.rows import (
    CDR_COLUMNS,
    NEXT_COLUMNS,
    batch_items,
    cdr_json,
    encode,
    stored_form,
)
from voipmon.store.sensors import check_id_sensor, check_name, sensor_json, sensor_upsert
from voipmon.store.stats import StatsQuery, as_stats_query, assemble, select
from voipmon.store.testing import make_cdr


class _SecondsClock:
    def seconds(self) -> float:
        return time.time()


@implementer(IStore)
class FakeStore:
    """IStore in memory: idempotent batches, the same dict shapes, filters and ordering as
    ``voipmon.store.sqlstore.SqlStore`` (values pass through the same row codec).

    Test controls:
    - ``down = True``: every call errbacks StoreUnavailable (the database is away);
    - ``hold = True``: store_cdrs calls wait in ``held`` (not committed, not visible) until
      ``release()`` commits them in order (``release_one(i)`` only the i-th, as
      transactions finishing out of order), or ``fail_held()`` fails them unavailable;
    - ``calls``: every call's method name, in order; ``batches``: every store_cdrs batch;
      ``upserts``: every upsert_sensor dict and ``offline``: every (id_sensor, when) of
      mark_sensor_offline that reached the store (it was not down);
    - ``cdrs``: the stored CDRs (in their stored form) by (id_sensor, sensor_cdr_uid), in
      the order they were committed; ``sensors``: the sensors' rows by id.

    Unlike SqlStore it needs no ``start()`` (it accepts one). ``clock`` (anything with
    ``seconds()``, e.g. task.Clock) times upserts that give no ``when``.
    """

    where = "FakeStore"

    def __init__(self, clock: Any = None, central_id: str = "fake-central") -> None:
        self.clock = clock or _SecondsClock()
        self.central_id = central_id
        self.measures = StoreMeasures()
        self.down = False
        self.hold = False
        self.held: list[tuple[defer.Deferred, list[tuple[tuple[int, str], Cdr]], str,
                              list[Any]]] = []
        self.calls: list[str] = []
        self.batches: list[tuple[list[Cdr], str]] = []
        self.upserts: list[Mapping[str, Any]] = []
        self.offline: list[tuple[int, float]] = []
        self.sensors: dict[int, dict[str, Any]] = {}
        # records that are not CDRs: kind -> key -> the record (its highest revision)
        self.records: dict[str, dict[tuple[int, str], Any]] = {}
        self.started = False
        self.closed = False
        self._next_id = 1
        self._ids: dict[tuple[int, str], int] = {}
        self._cdrs: dict[int, tuple[Cdr, str | None, dict[str, Any], int]] = {}

    # helpers for tests

    @property
    def cdr_count(self) -> int:
        return len(self._cdrs)

    @property
    def cdrs(self) -> dict[tuple[int, str], Cdr]:
        """The stored CDRs by key, in the order they were committed."""
        return {key: self._cdrs[i][0] for key, i in self._ids.items()}

    def stored_cdrs(self) -> list[Cdr]:
        """Every stored Cdr (in its stored form), by id."""
        return [self._cdrs[i][0] for i in sorted(self._cdrs)]

    def release(self) -> None:
        """Commit every held store_cdrs call, in order, and fire its Deferred."""
        held, self.held = self.held, []
        for d, items, pcap_on, records in held:
            d.callback(self._commit(items, pcap_on, records))

    def release_one(self, index: int) -> None:
        """Commit the held store_cdrs call at ``index`` only."""
        d, items, pcap_on, records = self.held.pop(index)
        d.callback(self._commit(items, pcap_on, records))

    def fail_held(self, reason: str = "the database went away") -> None:
        held, self.held = self.held, []
        for d, _items, _pcap_on, _records in held:
            d.errback(StoreUnavailable(f"{self.where}: {reason}"))

    def _call(self, name: str) -> defer.Deferred | None:
        self.calls.append(name)
        if self.down:
            return defer.fail(StoreUnavailable(f"{self.where}: database is down (test)"))
        return None

    # IStore

    def start(self) -> defer.Deferred:
        self.started = True
        for row in self.sensors.values():
            if row["central"] == self.central_id:
                row["connected"] = 0
        return self._call("start") or defer.succeed(None)

    def close(self) -> defer.Deferred:
        self.closed = True
        self.calls.append("close")
        return defer.succeed(None)

    def store_cdrs(self, cdrs: Sequence[Any], pcap_on: str = "sensor") -> defer.Deferred:
        records = [r for r in cdrs if not isinstance(r, Cdr)]
        try:
            items = batch_items([r for r in cdrs if isinstance(r, Cdr)], pcap_on)
            for record in records:
                if record.KIND not in SPECS:
                    raise ValueError(f"no table for records of kind {record.KIND!r}")
        except (ValueError, AttributeError) as exc:
            return defer.fail(ValueError(str(exc)))
        down = self._call("store_cdrs")
        if down:
            return down
        self.batches.append((list(cdrs), pcap_on))
        if self.hold:
            d: defer.Deferred = defer.Deferred()
            self.held.append((d, items, pcap_on, records))
            return d
        return defer.succeed(self._commit(items, pcap_on, records))

    def _commit(self, items: list[tuple[tuple[int, str], Cdr]], pcap_on: str,
                records: Sequence[Any] = ()) -> int:
        new = 0
        sensors: list[int] = []
        for record in records:      # the highest revision of each key is kept
            table = self.records.setdefault(record.KIND, {})
            old = table.get(record.key())
            if old is None or (record.KIND in REVISED and old.revision < record.revision):
                table[record.key()] = record
                new += 1
        for key, cdr in items:
            if key in self._ids:
                continue
            stored, stored_pcap_on = stored_form(cdr, pcap_on)
            cdr_row, next_row, _rtp = encode(cdr, None, None, None, pcap_on)
            row = {**dict(zip(NEXT_COLUMNS, next_row, strict=True)),
                   **dict(zip(CDR_COLUMNS, cdr_row, strict=True))}
            calldate_ms = round(stored.calldate * 1000)
            self._ids[key] = self._next_id
            self._cdrs[self._next_id] = (stored, stored_pcap_on, row, calldate_ms)
            self._next_id += 1
            new += 1
            sensors.append(key[0])
        self.measures.committed(0.0, sensors)
        return new

    def delete_records_before(self, kind: str, cutoff: float, limit: int = 1000
                              ) -> defer.Deferred:
        try:
            delete_args(cutoff, limit)
            if kind not in SPECS:
                raise ValueError(f"no table for records of kind {kind!r}")
        except ValueError as exc:
            return defer.fail(exc)
        down = self._call("delete_records_before")
        if down:
            return down
        when = KINDS[kind][0]
        table = self.records.get(kind, {})
        cutoff_ms = epoch_ms(cutoff)
        oldest = sorted((epoch_ms(getattr(r, when)), key) for key, r in table.items()
                        if epoch_ms(getattr(r, when)) < cutoff_ms)[:limit]
        for _ms, key in oldest:
            del table[key]
        return defer.succeed(len(oldest))

    def list_records(self, kind: str, query: Any = None) -> defer.Deferred:
        """As SqlStore's: the records' rows (through the same row codec), filtered."""
        try:
            parsed = as_record_query(kind, query)
        except ValueError as exc:
            return defer.fail(exc)
        down = self._call("list_records")
        if down:
            return down
        texts: dict[str, dict[int, str]] = {}

        def ids(lookup: str, value: str | None) -> int | None:
            if value is None:
                return None
            known = texts.setdefault(lookup, {})
            for ident, text in known.items():
                if text == value:
                    return ident
            known[len(known) + 1] = value
            return len(known)

        when, ips, _ = KINDS[kind]
        names = ("ID", *columns(kind))
        rows = []
        for number, record in enumerate(self.records.get(kind, {}).values(), 1):
            row = (number, *encode_record(kind, record, ids))
            values = dict(zip(names, row, strict=True))
            at = getattr(record, when)
            if (parsed.start is not None and at < parsed.start) or (
                    parsed.end is not None and at >= parsed.end) or (
                    parsed.id_sensor is not None and record.id_sensor != parsed.id_sensor) or (
                    parsed.ip is not None and ip_bytes(parsed.ip) not in
                    [values[c] for c in ips]) or any(
                    values[c] != v for c, v in parsed.equals):
                continue
            rows.append((at, number, row, record))
        if parsed.current:
            latest: dict[tuple[Any, ...], tuple[Any, ...]] = {}
            for item in sorted(rows, key=lambda r: r[:2]):
                r = item[3]
                latest[(r.id_sensor, r.to_num, r.to_domain, r.contact_num,
                        r.contact_domain, r.sipcallerip, r.sipcallerport)] = item
            rows = list(latest.values())
        rows.sort(key=lambda r: r[:2], reverse=True)
        page = rows[parsed.offset:parsed.offset + parsed.limit]
        return defer.succeed([present(kind, row, texts) for _at, _n, row, _r in page])

    def list_cdrs(self, query: CdrQuery | Mapping[Any, Any] | None = None) -> defer.Deferred:
        try:
            parsed = as_query(query)
        except ValueError as exc:
            return defer.fail(exc)
        down = self._call("list_cdrs")
        if down:
            return down
        found = [(ms, cdr_id) for cdr_id, (_c, _p, row, ms) in self._cdrs.items()
                 if matches(parsed, row, ms)]
        found.sort(reverse=True)
        page = found[parsed.offset:parsed.offset + parsed.limit]
        return defer.succeed([self._json(cdr_id) for _ms, cdr_id in page])

    def delete_cdrs_before(self, cutoff: float, limit: int = 1000) -> defer.Deferred:
        try:
            delete_args(cutoff, limit)
        except ValueError as exc:
            return defer.fail(exc)
        down = self._call("delete_cdrs_before")
        if down:
            return down
        cutoff_ms = epoch_ms(cutoff)
        oldest = sorted((ms, cdr_id) for cdr_id, (_c, _p, _row, ms) in self._cdrs.items()
                        if ms < cutoff_ms)[:limit]
        doomed = {cdr_id for _ms, cdr_id in oldest}
        for cdr_id in doomed:
            del self._cdrs[cdr_id]
        self._ids = {key: i for key, i in self._ids.items() if i not in doomed}
        return defer.succeed(len(doomed))

    def cdr_stats(self, query: StatsQuery | Mapping[Any, Any]) -> defer.Deferred:
        try:
            parsed = as_stats_query(query, self.clock.seconds())
        except ValueError as exc:
            return defer.fail(exc)
        down = self._call("cdr_stats")
        if down:
            return down
        counts = tallies([row[name] for name in SOURCE] for _c, _p, row, _ms in
                         self._cdrs.values())
        minutes = {key: tally.counters() for key, tally in counts.items()}
        return defer.succeed(assemble(parsed, select(parsed, minutes)))

    def get_cdr(self, cdr_id: int) -> defer.Deferred:
        if not isinstance(cdr_id, int) or isinstance(cdr_id, bool) or cdr_id < 0:
            return defer.fail(ValueError(f"cdr id = {cdr_id!r}: allowed: a whole number"))
        down = self._call("get_cdr")
        if down:
            return down
        return defer.succeed(self._json(cdr_id) if cdr_id in self._cdrs else None)

    def _json(self, cdr_id: int) -> dict[str, Any]:
        stored, pcap_on, _row, _ms = self._cdrs[cdr_id]
        return cdr_json(cdr_id, stored, pcap_on)

    def upsert_sensor(self, sensor: Mapping[str, Any]) -> defer.Deferred:
        try:
            upsert = sensor_upsert(sensor, self.central_id, self.clock.seconds())
        except ValueError as exc:
            return defer.fail(exc)
        down = self._call("upsert_sensor")
        if down:
            return down
        self.upserts.append(dict(sensor))
        ident = upsert.values["id_sensor"]
        row = self.sensors.get(ident)
        if row is None:
            row = {name: None for name in SENSOR_JSON_FIELDS}
            row.update(packets=0, drops=0, queue_depth=0, name_locked=0)
            row.update(upsert.values)
            self.sensors[ident] = row
        else:
            for column in upsert.updates:
                row[column] = upsert.values[column]
            if upsert.rename and not row["name_locked"]:
                row["name"] = upsert.values["name"]
        return defer.succeed(None)

    def mark_sensor_offline(self, id_sensor: int, when: float) -> defer.Deferred:
        try:
            ident = check_id_sensor(id_sensor)
            stamp = datetime_text(float(when))
        except (TypeError, ValueError) as exc:
            return defer.fail(ValueError(str(exc)))
        down = self._call("mark_sensor_offline")
        if down:
            return down
        self.offline.append((ident, float(when)))
        row = self.sensors.get(ident)
        if row is None or not row["connected"] or row["central"] != self.central_id:
            return defer.succeed(False)
        row["connected"] = 0
        row["last_seen"] = stamp
        return defer.succeed(True)

    def rename_sensor(self, id_sensor: int, name: str) -> defer.Deferred:
        try:
            ident = check_id_sensor(id_sensor)
            fitted = check_name(name)
        except ValueError as exc:
            return defer.fail(exc)
        down = self._call("rename_sensor")
        if down:
            return down
        row = self.sensors.get(ident)
        if row is None:
            return defer.succeed(False)
        row["name"] = fitted
        row["name_locked"] = 1
        return defer.succeed(True)

    def list_sensors(self) -> defer.Deferred:
        down = self._call("list_sensors")
        if down:
            return down
        rows = [self.sensors[i] for i in sorted(self.sensors)]
        return defer.succeed([sensor_json([row[f] for f in SENSOR_JSON_FIELDS]) for row in rows])


@implementer(IStore)
class CommitCounter:
    """A real store, passed every call, that fires ``done`` once ``expect`` CDRs are
    committed (``stored`` counts them): what a test with real processes waits for."""

    def __init__(self, inner: Any, expect: int) -> None:
        self.inner = inner
        self.expect = expect
        self.stored = 0
        self.done: defer.Deferred[None] = defer.Deferred()
        self.where = inner.where
        self.measures = inner.measures
        # the rest of IStore, passed on as it is
        self.start, self.close, self.list_cdrs = inner.start, inner.close, inner.list_cdrs
        self.delete_cdrs_before, self.get_cdr = inner.delete_cdrs_before, inner.get_cdr
        self.cdr_stats = inner.cdr_stats
        self.upsert_sensor, self.list_sensors = inner.upsert_sensor, inner.list_sensors
        self.mark_sensor_offline = inner.mark_sensor_offline
        self.rename_sensor = inner.rename_sensor
        self.list_records = inner.list_records
        self.delete_records_before = inner.delete_records_before

    def store_cdrs(self, cdrs: Sequence[Cdr], pcap_on: str = "sensor") -> defer.Deferred:
        def count(inserted: int) -> int:
            self.stored += inserted
            if self.stored >= self.expect and not self.done.called:
                self.done.callback(None)
            return inserted

        return self.inner.store_cdrs(cdrs, pcap_on).addCallback(count)


class RecordingEngine:
    """Stands in for the analysis engine: records the frames it is fed (``frames``: (ts,
    linktype, frame)), the capture clock (``advanced``) and ``finished``.

    Every distinct first byte of a frame is a 'call', closed at finish() as a CDR handed to
    ``on_cdr`` (when there is one); a frame starting ``b"end:"`` closes the calls seen so
    far at once (a call that ends mid-capture); the frame ``fail_on`` raises (an engine
    bug)."""

    def __init__(self, id_sensor: int, name: str = "",
                 on_cdr: Callable[[Cdr], object] | None = None) -> None:
        self.id_sensor = id_sensor
        self.name = name
        self.on_cdr = on_cdr
        self.frames: list[tuple[float, int, bytes]] = []
        self.closed: set[bytes] = set()
        self.advanced: list[float] = []
        self.finished = False
        self.fail_on: bytes | None = b"crash"
        self.undelivered = 0

    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        if frame == self.fail_on:
            raise RuntimeError("engine bug")
        if frame.startswith(b"end:"):
            self._close()
            return
        self.frames.append((ts, linktype, frame))

    def feed_all(self, records: Iterable[tuple[float, int, bytes]]) -> int:
        count = 0
        for ts, linktype, frame in records:
            self.feed(ts, linktype, frame)
            count += 1
        return count

    def _close(self) -> None:
        calls = sorted({frame[:1] for _, _, frame in self.frames} - self.closed)
        for call in calls:
            self.closed.add(call)
            if self.on_cdr is not None:
                self.on_cdr(make_cdr(call[0], id_sensor=self.id_sensor))

    def advance(self, now: float) -> None:
        self.advanced.append(now)

    def finish(self) -> None:
        self.finished = True
        self._close()

    def counters(self) -> Counters:
        return {"frames": len(self.frames), "undelivered": self.undelivered}


class Engines:
    """Makes RecordingEngines and keeps them: ``all`` in the order made, ``made`` the last
    one of each sensor. Called as the legacy mirror's engine factory (id_sensor, name);
    ``analyzer`` is a central's AnalyzerFactory (hello, on_cdr)."""

    def __init__(self) -> None:
        self.all: list[RecordingEngine] = []
        self.made: dict[int, RecordingEngine] = {}

    def __call__(self, id_sensor: int, name: str,
                 on_cdr: Callable[[Cdr], object] | None = None) -> RecordingEngine:
        engine = RecordingEngine(id_sensor, name, on_cdr)
        self.all.append(engine)
        self.made[id_sensor] = engine
        return engine

    def analyzer(self, hello: Any, on_cdr: Callable[[Cdr], object]) -> RecordingEngine:
        return self(hello.id_sensor, hello.name, on_cdr)


__all__ = ["CommitCounter", "Engines", "FakeStore", "RecordingEngine", "StoreError",
           "StoreUnavailable"]
