"""The seam between the central and its database (design section 1, store/).

Protocols, the HTTP API and tests depend on ``IStore`` only; ``voipmon.store.sqlstore``
implements it over an adbapi pool (MySQL/MariaDB through PyMySQL, or embedded SQLite) and
``voipmon.test.fakes.FakeStore`` in memory, with the same results (one test suite runs
against all three).

Shapes handed back (plain JSON-ready values):

- a CDR: ``Cdr.to_json()`` (design 2.3, with ``rtp`` streams) plus ``"id"`` (the ``cdr.ID``
  the API addresses it by) and ``"pcap_on"``: ``"sensor"`` (the call's pcap is in that
  sensor's spool: fetch it through its management port), ``"central"`` (in the central's
  spool, a mirroring sensor) or ``None`` (no pcap). ``sip_pcap``/``rtp_pcap`` are the
  spool-relative paths. ``voipmon.records.cdr.Cdr.from_json`` reads it back.
- a sensor: ``SENSOR_JSON_FIELDS`` below; times are ISO 8601 UTC with milliseconds.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class StoreError(Exception):
    """A store operation failed and retrying the same call will not help (a bug, a schema
    this version cannot use, a database that belongs to something else)."""


class StoreUnavailable(StoreError):
    """The database could not be reached, lost the connection, or kept deadlocking.

    Nothing of the failed call was committed, or it was and a retry finds it there (writes
    are idempotent): the caller may retry the same batch later. The message names the
    database as ``user@host:port/db`` (or the SQLite file), never the password.
    """


class SchemaError(StoreError):
    """The database's schema is newer than this voipmon, or the tables are not ours."""


# Keys upsert_sensor accepts (besides "id_sensor", required, and "when", epoch seconds).
SENSOR_FIELDS = ("name", "host", "mode", "version", "manager_host", "manager_port",
                 "packets", "drops", "queue_depth")
SENSOR_STATS_FIELDS = ("packets", "drops", "queue_depth")

# Keys of each dict list_sensors returns.
SENSOR_JSON_FIELDS = ("id_sensor", "name", "host", "mode", "version", "connected", "central",
                      "first_seen", "last_seen", "manager_host", "manager_port", "packets",
                      "drops", "queue_depth", "stats_at")


class IStore(Interface):
    """Where the central keeps CDRs and the sensor list. Every method returns a Deferred."""

    where = Attribute("The database, for messages: 'MySQL user@host:port/db' or 'SQLite PATH'.")
    measures = Attribute("A voipmon.store.measures.StoreMeasures: each store_cdrs batch's "
                         "commit time and the new CDRs by id_sensor (the central's metrics).")

    def start():
        """Connect, create the database (MySQL, if missing and allowed), create the schema on
        an empty database or migrate an older one, and mark this central's sensors offline
        (left over from its previous run). Fires None; errbacks StoreUnavailable (retry
        later) or SchemaError."""

    def close():
        """Close the connection pools (waits for calls in progress). Fires None."""

    def store_cdrs(cdrs, pcap_on="sensor"):
        """Insert a batch of records in one transaction: ``voipmon.records.cdr.Cdr`` and any
        other kind of ``voipmon.records.kinds`` (registrations, SIP messages, alerts, into
        their tables, ``voipmon.store.recordwrite``). The name is the CDR path's, which
        carries every kind of record.

        Fires with the number of CDRs newly inserted, only after commit. A CDR already
        stored under the same (id_sensor, sensor_cdr_uid) is skipped, not an error, so a
        replayed batch fires 0. ``pcap_on`` says where the batch's pcaps live: "sensor"
        (the CDRs came from a sensor's own analysis) or "central" (from packet mirroring).
        Errbacks StoreUnavailable when the database is down (retry the same batch), or
        ValueError for a batch that is not a sequence of Cdr with valid id_sensor.
        """

    def upsert_sensor(sensor):
        """Insert or update a sensor (a dict: "id_sensor" and any of ``SENSOR_FIELDS``, plus
        optional "when") and mark it connected to this central; also how a stats update
        sets its counters. A name set by rename_sensor is kept. Fires None."""

    def mark_sensor_offline(id_sensor, when):
        """Mark a sensor offline at ``when`` (epoch seconds), unless another central holds it
        now. Fires True if this central held it."""

    def rename_sensor(id_sensor, name):
        """Set a sensor's display name (kept over the name the sensor reports); fires False
        if there is no such sensor. ValueError for an empty name."""

    def delete_cdrs_before(cutoff, limit=1000):
        """Delete up to ``limit`` of the oldest CDRs whose calldate is before ``cutoff``
        (epoch seconds), with their streams and pcap locations, in one short transaction.
        Fires with the number deleted: fewer than ``limit`` means none older is left.
        ValueError for a cutoff that is not a time or a limit outside 1..10000."""

    def delete_records_before(kind, cutoff, limit=1000):
        """As ``delete_cdrs_before``, for the table of records of ``kind`` (a KIND of
        ``voipmon.store.recordrows.SPECS``). ValueError for another kind."""

    def list_records(kind, query):
        """Rows of the table of ``kind`` as JSON objects (``voipmon.store.recordread``),
        newest first, for a ``RecordQuery`` or a mapping of HTTP arguments (ValueError
        naming a bad one)."""

    def list_cdrs(query):
        """CDR dicts, newest first (calldate, then id), for a ``voipmon.store.query.CdrQuery``
        or a mapping of HTTP arguments (ValueError naming a bad one)."""

    def cdr_stats(query):
        """The dashboard's figures (``voipmon.store.stats``: calls, ASR, NER, ACD, MOS
        share, loss and jitter distributions, per time bucket, per sensor and in total,
        each with the ``/api/cdrs`` filter that lists its calls) for a
        ``voipmon.store.stats.StatsQuery`` or a mapping of HTTP arguments (ValueError
        naming a bad one)."""

    def get_cdr(cdr_id):
        """One CDR dict with its RTP streams and pcap location, or None."""

    def list_sensors():
        """Every known sensor as a dict (``SENSOR_JSON_FIELDS``), by id_sensor."""
