"""The record-type seam: what every kind of record provides, so that one mechanism carries
them all from the engine to the database (queue, channel, store, dead letters).

A record type is a frozen dataclass whose fields are JSON values (or, for the CDR, its RTP
streams); the *class* provides ``IRecordType``. Instances are immutable values: the same
packets make equal records with the same key on the sensor and on the central.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IRecordType(Interface):
    """A kind of record (provided by the record's class, e.g. ``Cdr``, ``RegisterState``).

    The methods that take ``record`` are instance methods of the class: ``record.key()``
    is ``type(record).key(record)``.
    """

    KIND = Attribute("The record's kind on the wire, in the queue and in dead letters: "
                     "'cdr', 'register_state', ... (unique among record types).")
    TABLE = Attribute("The table the store keeps it in (VoIPmonitor's name).")
    VERSION = Attribute("The version of its wire fields (int). A reader takes any older "
                        "version: fields it lacks take their defaults, unknown ones are "
                        "ignored.")

    def key(record):
        """``(id_sensor, uid)``: the record's identity, on which the store inserts it
        idempotently (a record re-emitted with a higher ``revision`` has the same key)."""

    def to_wire(record):
        """The record as compact ASCII JSON bytes (an object of its fields, times as epoch
        seconds): what the queue keeps and the channel carries. Every string is exact,
        even one holding bytes that were not UTF-8 (lone surrogates, as escapes)."""

    def from_wire(data):
        """The record from its decoded wire object (``json.loads`` of ``to_wire``), every
        value type-checked: ValueError naming the field (``register_state.expires:
        expected an integer``) for a value of the wrong type or a missing one."""


__all__ = ["IRecordType"]
