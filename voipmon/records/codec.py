"""Records on the queue and the channel: a JSON object of the record's own fields.

Every record type (``IRecordType``: the CDR, registrations, SIP messages, alerts) has one
wire form, made and checked here by one ``RecordCodec`` per type. The design's JSON record
of a CDR (``Cdr.to_json``: ISO 8601 times, a_*/b_* summaries) is for people and tools;
between sensor and central we carry the dataclass fields themselves, times as epoch
seconds. That is several times cheaper to write and read (the central parses thousands per
second) and loses nothing: the same record comes out. It stays self-describing, so a sensor
and a central of different versions understand each other: unknown keys are ignored and
missing ones take their defaults.

Every value is type-checked on the way in: a malformed record raises ValueError naming the
field (``cdr.duration: expected a number``), so it can never reach the store as a poison
batch.

The text is ASCII JSON, so any string goes through exactly. A header's bytes that are not
UTF-8 are kept in memory as lone surrogates U+DC80..U+DCFF (PEP 383, see
``voipmon.records.keys.callid_bytes``) and travel as the escapes ``\\udc80``..``\\udcff``:
no valid text can produce a lone surrogate, so the escape never collides with a real
character, and ``json.loads`` gives back the same string, hence the same bytes. (With
``ensure_ascii=False`` such a Call-ID could not be encoded at all, and its call was lost.)
The keys are the fields in their declared order, so a record's bytes depend on nothing
but its values (the CDR's are the bytes sensors have always written). A field added later
with the default None may be declared ``omit_none``: it is left out while None, so a
record that does not use it keeps its bytes (a missing key takes its default on reading).
"""

from __future__ import annotations

import dataclasses
import json
import operator
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from zope.interface import provider

from voipmon.records.interfaces import IRecordType


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("a number")
    return float(value)


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("an integer")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("true or false")
    return value


def _optional(check: Callable[[object], object]) -> Callable[[object], object]:
    def optional(value: object) -> object:
        return None if value is None else check(value)

    return optional


def _integers(value: object) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise TypeError("a list of integers")
    return tuple(_integer(v) for v in value)


def _mapping(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("an object")
    return value


class _NestedError(TypeError):
    """A bad record inside a record (an RTP stream in a CDR); its message names the field."""


# The check of each field annotation (the modules say ``from __future__ import
# annotations``, so a field's type is its annotation's text).
_CHECKS: dict[str, Callable[[object], object]] = {
    "str": _text, "int": _integer, "float": _number, "bool": _flag,
    "float | None": _optional(_number), "int | None": _optional(_integer),
    "str | None": _optional(_text), "tuple[int, ...]": _integers, "dict[str, Any]": _mapping,
}

_NONE = type(None)
# The exact JSON value types of each annotation that need no conversion.
_EXACT: dict[str, frozenset[type]] = {
    "str": frozenset({str}), "int": frozenset({int}), "float": frozenset({float}),
    "bool": frozenset({bool}), "float | None": frozenset({float, _NONE}),
    "int | None": frozenset({int, _NONE}), "str | None": frozenset({str, _NONE}),
    "tuple[int, ...]": frozenset({list}), "dict[str, Any]": frozenset({dict}),
}
_INT = frozenset({int})
_LIST = frozenset({list})
_MAX_SIGNATURES = 1024
_MAX_ITEMS = 65536
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _int_list(value: list[Any]) -> tuple[int, ...]:
    items = tuple(value)
    if items and not set(map(type, items)) <= _INT:
        raise TypeError("a list of integers")
    return items


T = TypeVar("T", covariant=True)


class RecordCodec(Generic[T]):
    """Writes one record dataclass as its wire object and builds it back, checked.

    ``name`` is the record's name in error messages (its KIND); ``uid`` the field of its
    per-sensor key; ``nested`` the codecs of fields that hold a tuple of records (a CDR's
    ``rtp``).

    Almost every record has the same types in the same fields, so the tuple of value
    types (built in C with ``map``) is looked up among signatures already checked; only
    a new signature goes through the field-by-field check. Lists are always checked.
    """

    def __init__(self, cls: type[T], name: str, uid: str = "uid",
                 nested: dict[str, RecordCodec[object]] | None = None,
                 omit_none: tuple[str, ...] = ()) -> None:
        self.cls = cls
        self.name = name
        self.nested = dict(nested or {})
        self.omit_none = omit_none
        fields = dataclasses.fields(cls)
        self.names = tuple(f.name for f in fields)
        self.values = operator.attrgetter(*self.names)
        self.key = operator.attrgetter("id_sensor", uid)
        # a dataclass with slots has no __dict__ to copy: its values are read by name
        self.by_dict = "__slots__" not in vars(cls)
        self.plan = [(f.name, self._check(f), f.default is dataclasses.MISSING
                      and f.default_factory is dataclasses.MISSING) for f in fields]
        self.exact = [_LIST if f.name in self.nested else _EXACT.get(str(f.type))
                      for f in fields]
        self.lists = [(index, self._items(self.nested[f.name]) if f.name in self.nested
                       else _int_list)
                      for index, f in enumerate(fields)
                      if f.name in self.nested or str(f.type) == "tuple[int, ...]"]
        self.good: set[tuple[type, ...]] = set()

    def _check(self, f: dataclasses.Field) -> Callable[[object], object]:
        if f.name in self.nested:
            return self._items(self.nested[f.name])
        return _CHECKS.get(str(f.type), lambda value: value)

    @staticmethod
    def _items(codec: RecordCodec[object]) -> Callable[[object], tuple[object, ...]]:
        def items(value: object) -> tuple[object, ...]:
            if not isinstance(value, (list, tuple)) or len(value) > _MAX_ITEMS:
                raise TypeError(f"a list of {codec.name} records")
            try:
                return tuple(codec.build(item) for item in value)
            except ValueError as exc:
                raise _NestedError(str(exc))

        return items

    def unknown_annotations(self) -> list[str]:
        """Fields whose type this codec does not check (tests keep this list empty)."""
        return [f"{self.cls.__name__}.{f.name}: {f.type}" for f in dataclasses.fields(self.cls)
                if f.name not in self.nested and str(f.type) not in _CHECKS] + [
            text for codec in self.nested.values() for text in codec.unknown_annotations()]

    # -- out ---------------------------------------------------------------------------

    def fields_of(self, record: object) -> dict[str, Any]:
        """The wire object of ``record``: its fields by name, in their declared order."""
        if self.by_dict:
            data = dict(record.__dict__)
        else:
            data = dict(zip(self.names, self.values(record), strict=True))
        for name, codec in self.nested.items():
            data[name] = [codec.fields_of(item) for item in data[name]]
        for name in self.omit_none:
            if data[name] is None:
                del data[name]
        return data

    def encode(self, record: object) -> bytes:
        """The compact ASCII JSON text of ``record``."""
        return _ENCODER.encode(self.fields_of(record)).encode("ascii")

    # -- in ----------------------------------------------------------------------------

    def build(self, data: object) -> T:
        """The record from its decoded wire object; ValueError naming the bad field."""
        if type(data) is not dict:
            raise ValueError(f"{self.name}: not an object")
        values = list(map(data.get, self.names))
        signature = tuple(map(type, values))
        if signature not in self.good:
            return self._checked(data, signature)
        for index, convert in self.lists:
            try:
                values[index] = convert(values[index])
            except TypeError as exc:
                raise ValueError(f"{self.name}.{self.names[index]}: expected {exc}")
        return self.cls(*values)

    def _checked(self, data: dict[str, Any], signature: tuple[type, ...]) -> T:
        values = {}
        for name, check, required in self.plan:
            if name in data:
                try:
                    values[name] = check(data[name])
                except TypeError as exc:
                    raise ValueError(f"{self.name}.{name}: expected {exc}, "
                                     f"got {data[name]!r:.80}")
            elif required:
                raise ValueError(f"{self.name}: missing {name!r}")
        exact = all(allowed is not None and kind in allowed
                    for kind, allowed in zip(signature, self.exact, strict=True))
        if exact and len(self.good) < _MAX_SIGNATURES:
            self.good.add(signature)
        return self.cls(**values)


R = TypeVar("R", bound="Record")


class Record:
    """The base of every record type: ``IRecordType``'s methods, through the type's codec
    (which ``record_type`` makes once the dataclass exists)."""

    __slots__ = ()
    KIND: ClassVar[str]
    TABLE: ClassVar[str]
    VERSION: ClassVar[int] = 1
    CODEC: ClassVar[RecordCodec[object]]

    def key(self) -> tuple[int, str]:
        """``(id_sensor, uid)``: the store inserts on it idempotently."""
        return self.CODEC.key(self)

    def to_wire(self) -> bytes:
        """Compact ASCII JSON of the record's fields (queue, channel)."""
        return self.CODEC.encode(self)

    @classmethod
    def from_wire(cls: type[R], data: object) -> R:
        """The record from its decoded wire object; ValueError naming a bad field."""
        return cls.CODEC.build(data)


def record_type(kind: str, uid: str = "uid",
                nested: dict[str, RecordCodec[object]] | None = None,
                omit_none: tuple[str, ...] = ()) -> Callable[[type[R]], type[R]]:
    """Class decorator (above ``@dataclass``): ``kind`` is the record's KIND, ``uid`` the
    field of its key, ``nested`` the codecs of fields holding records, ``omit_none`` the
    fields left out of the wire while None; the class then provides ``IRecordType``."""

    def declare(cls: type[R]) -> type[R]:
        cls.KIND = kind
        cls.CODEC = RecordCodec(cls, kind, uid, nested, omit_none)
        return provider(IRecordType)(cls)

    return declare


__all__ = ["Record", "RecordCodec", "record_type"]
