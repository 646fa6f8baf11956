"""The seam between the central and its database (design section 1, store/).

Protocols, the HTTP API and tests depend on ``IStore`` only; the adbapi implementation
(MySQL/MariaDB through PyMySQL, or embedded SQLite) lives beside it.
"""

from __future__ import annotations

from zope.interface import Interface


class StoreUnavailable(Exception):
    """The database could not be reached or lost the connection mid-write.

    Nothing of the failed call was committed; the caller may retry the same batch later
    (writes are idempotent).
    """


class IStore(Interface):
    """Where the central keeps CDRs and the sensor list. Every method returns a Deferred."""

    def start():
        """Connect, create the schema on an empty database, migrate an older one."""

    def close():
        """Close the connection pool."""

    def store_cdrs(cdrs):
        """Insert a batch of ``voipmon.analysis.cdr.Cdr`` in one transaction.

        Fires (with the number of CDRs newly inserted) only after commit. A CDR already
        stored under the same (id_sensor, sensor_cdr_uid) is skipped, not an error.
        Errbacks with ``StoreUnavailable`` when the database is down.
        """

    def upsert_sensor(sensor):
        """Insert or update a sensor row (a dict of the ``sensors`` columns) and mark it online."""

    def mark_sensor_offline(id_sensor, when):
        """Mark a sensor offline at ``when`` (epoch seconds)."""

    def rename_sensor(id_sensor, name):
        """Set a sensor's display name; fires False if there is no such sensor."""

    def list_cdrs(query):
        """A filtered, paged list of CDR dicts (newest first) for the HTTP API."""

    def get_cdr(cdr_id):
        """One CDR dict with its RTP streams and pcap location, or None."""

    def list_sensors():
        """Every known sensor as a dict."""
