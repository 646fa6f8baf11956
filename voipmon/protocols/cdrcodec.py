"""A CDR on the channel and in the sensor's queue: a JSON object of the record's own fields.

The design's JSON record (``Cdr.to_json``: ISO 8601 times, a_*/b_* summaries) is for
people and tools; between sensor and central we carry the dataclass fields themselves,
times as epoch seconds. That is several times cheaper to write and read (the central
parses thousands per second) and loses nothing: the same Cdr comes out. It stays
self-describing, so a sensor and a central of different versions understand each other:
unknown keys are ignored and missing ones take their defaults.

Every value is type-checked on the way in: a malformed CDR raises ValueError naming the
field, so it can never reach the store as a poison batch. A record in the older
``to_json`` form (ISO times) is still accepted.

The text is ASCII JSON, so any string goes through exactly. A header's bytes that are not
UTF-8 are kept in memory as lone surrogates U+DC80..U+DCFF (PEP 383, see
``voipmon.analysis.cdr.callid_bytes``) and travel as the escapes ``\\udc80``..``\\udcff``:
no valid text can produce a lone surrogate, so the escape never collides with a real
character, and ``json.loads`` gives back the same string, hence the same bytes. (With
``ensure_ascii=False`` such a Call-ID could not be encoded at all, and its call was lost.)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from voipmon.analysis.cdr import Cdr, RtpStream


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("a number")
    return float(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("an integer")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("true or false")
    return value


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def optional(value: Any) -> Any:
        return None if value is None else check(value)

    return optional


def _integers(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise TypeError("a list of integers")
    return tuple(_integer(v) for v in value)


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("an object")
    return value


def _streams(value: Any) -> tuple[RtpStream, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > 65536:
        raise TypeError("a list of RTP streams")
    try:
        return tuple(_STREAM.build(item, "rtp") for item in value)
    except ValueError as exc:
        raise _StreamError(str(exc))


class _StreamError(TypeError):
    """A bad RTP stream inside a CDR; its message already names the field."""


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "str": _text, "int": _integer, "float": _number, "bool": _flag,
    "float | None": _optional(_number), "int | None": _optional(_integer),
    "str | None": _optional(_text), "tuple[int, ...]": _integers,
    "dict[str, Any]": _mapping, "tuple[RtpStream, ...]": _streams,
}


_NONE = type(None)
# The exact JSON value types of each annotation that need no conversion.
_EXACT: dict[str, frozenset[type]] = {
    "str": frozenset({str}), "int": frozenset({int}), "float": frozenset({float}),
    "bool": frozenset({bool}), "float | None": frozenset({float, _NONE}),
    "int | None": frozenset({int, _NONE}), "str | None": frozenset({str, _NONE}),
    "tuple[int, ...]": frozenset({list}), "dict[str, Any]": frozenset({dict}),
    "tuple[RtpStream, ...]": frozenset({list}),
}
_INT = frozenset({int})
_MAX_SIGNATURES = 1024


def _int_list(value: list[Any]) -> tuple[int, ...]:
    items = tuple(value)
    if items and not set(map(type, items)) <= _INT:
        raise TypeError("a list of integers")
    return items


class _Record:
    """Checks and builds one record dataclass from a decoded JSON object.

    Almost every record has the same types in the same fields, so the tuple of value
    types (built in C with ``map``) is looked up among signatures already checked; only
    a new signature goes through the field-by-field check. Lists are always checked.
    """

    def __init__(self, cls: type) -> None:
        self.cls = cls
        fields = dataclasses.fields(cls)
        self.names = tuple(f.name for f in fields)
        self.plan = [(f.name, _CHECKS.get(str(f.type), lambda value: value),
                      f.default is dataclasses.MISSING
                      and f.default_factory is dataclasses.MISSING) for f in fields]
        self.exact = [_EXACT.get(str(f.type)) for f in fields]
        self.lists = [(index, _streams if str(f.type) == "tuple[RtpStream, ...]" else _int_list)
                      for index, f in enumerate(fields)
                      if str(f.type) in ("tuple[int, ...]", "tuple[RtpStream, ...]")]
        self.good: set[tuple[type, ...]] = set()

    def build(self, data: Any, where: str) -> Any:
        if type(data) is not dict:
            raise ValueError(f"{where}: not an object")
        values = list(map(data.get, self.names))
        signature = tuple(map(type, values))
        if signature not in self.good:
            return self._checked(data, signature, where)
        for index, convert in self.lists:
            try:
                values[index] = convert(values[index])
            except TypeError as exc:
                raise ValueError(f"{where}.{self.names[index]}: expected {exc}")
        return self.cls(*values)

    def _checked(self, data: dict[str, Any], signature: tuple[type, ...], where: str) -> Any:
        values = {}
        for name, check, required in self.plan:
            if name in data:
                try:
                    values[name] = check(data[name])
                except TypeError as exc:
                    raise ValueError(f"{where}.{name}: expected {exc}, got {data[name]!r:.80}")
            elif required:
                raise ValueError(f"{where}: missing {name!r}")
        exact = all(allowed is not None and kind in allowed
                    for kind, allowed in zip(signature, self.exact, strict=True))
        if exact and len(self.good) < _MAX_SIGNATURES:
            self.good.add(signature)
        return self.cls(**values)


def unknown_annotations() -> list[str]:
    """Fields whose type this codec does not check (tests keep this list empty)."""
    return [f"{cls.__name__}.{f.name}: {f.type}" for cls in (Cdr, RtpStream)
            for f in dataclasses.fields(cls) if str(f.type) not in _CHECKS]


_CDR = _Record(Cdr)
_STREAM = _Record(RtpStream)


def _as_dict(cdr: Cdr) -> dict[str, Any]:
    data = dict(cdr.__dict__)
    data["rtp"] = [stream.__dict__ for stream in cdr.rtp]
    return data


def cdr_to_wire(cdr: Cdr) -> bytes:
    """The compact JSON text of a CDR (what the queue keeps and CDRS batches carry): ASCII,
    every string exact, whatever bytes it came from."""
    return json.dumps(_as_dict(cdr), separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def cdr_from_wire(data: Any) -> Cdr:
    """A Cdr from its decoded wire object; ValueError naming the bad field otherwise."""
    if isinstance(data, dict) and isinstance(data.get("calldate"), str):
        try:
            data = _as_dict(Cdr.from_json(data))
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise ValueError(f"cdr: not a CDR record ({exc})")
    return _CDR.build(data, "cdr")
