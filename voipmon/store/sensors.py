"""The ``sensors`` table's rules, pure: what an upsert writes, how a row is shown.

Shared by ``SqlStore`` (which turns ``SensorUpsert`` into one INSERT ... ON DUPLICATE KEY /
ON CONFLICT statement) and the FakeStore (which applies it to a dict), so both agree.

Rules: the first upsert inserts the row (``first_seen``; name "sensor N" if none given);
later ones update what they carry, plus ``connected``, ``central`` and ``last_seen``. A
name set by an operator (``rename_sensor``) is kept over the name a sensor reports.
Counters (packets, drops, queue_depth) also stamp ``stats_at``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from voipmon.records.times import iso_ms
from voipmon.store.fields import I64_MAX, ascii_text, datetime_text, epoch, text
from voipmon.store.interfaces import SENSOR_FIELDS, SENSOR_JSON_FIELDS, SENSOR_STATS_FIELDS

NAME_LEN = 256
_LIMITS = {"host": 255, "version": 64, "manager_host": 255}


def check_id_sensor(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ValueError(f"id_sensor = {value!r}: allowed: an integer 0..65535")
    return value


def check_name(name: Any) -> str:
    """A display name for rename_sensor: fitted, stripped, not empty."""
    fitted = text(name, NAME_LEN) if isinstance(name, str) else None
    if not fitted or not fitted.strip():
        raise ValueError(f"name = {name!r}: allowed: a non-empty text")
    return fitted.strip()


def _value(key: str, value: Any) -> Any:
    if key == "mode":
        return ascii_text(value, 16) if value is not None else None
    if key == "name":
        return text(value, NAME_LEN).strip() if isinstance(value, str) and value else None
    if key in _LIMITS:
        return text(value, _LIMITS[key]) if value is not None else None
    if key == "manager_port":
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
            raise ValueError(f"manager_port = {value!r}: allowed: 0..65535")
        return value
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} = {value!r}: allowed: a whole number >= 0")
    return min(value, I64_MAX)


@dataclass(frozen=True)
class SensorUpsert:
    """``values``: the row to insert if absent. ``updates``: the columns of ``values`` that
    overwrite an existing row. ``rename``: overwrite ``name`` too, unless it is locked."""

    values: dict[str, Any]
    updates: tuple[str, ...]
    rename: bool


def sensor_upsert(sensor: Mapping[str, Any], central_id: str, now: float) -> SensorUpsert:
    """Validate an upsert_sensor dict; ValueError names a bad field."""
    if not isinstance(sensor, Mapping):
        raise ValueError("upsert_sensor takes a dict")
    ident = check_id_sensor(sensor.get("id_sensor"))
    unknown = set(sensor) - {"id_sensor", "when", *SENSOR_FIELDS}
    if unknown:
        raise ValueError(f"unknown sensor fields {sorted(unknown)}; allowed: id_sensor, "
                         f"when, {', '.join(SENSOR_FIELDS)}")
    when = sensor.get("when")
    try:
        stamp = datetime_text(now if when is None else float(when))
    except (TypeError, ValueError):
        stamp = None
    if stamp is None:
        raise ValueError(f"when = {when!r}: allowed: epoch seconds")
    given = {k: _value(k, sensor[k]) for k in SENSOR_FIELDS if k in sensor}
    name = given.pop("name", None)
    values: dict[str, Any] = {
        "id_sensor": ident, "name": name or f"sensor {ident}", **given, "connected": 1,
        "central": text(central_id, 255), "first_seen": stamp, "last_seen": stamp,
    }
    updates = [*given, "connected", "central", "last_seen"]
    if any(k in given for k in SENSOR_STATS_FIELDS):
        values["stats_at"] = stamp
        updates.append("stats_at")
    return SensorUpsert(values, tuple(updates), bool(name))


def sensor_json(row: Sequence[Any]) -> dict[str, Any]:
    """A ``sensors`` row (``SENSOR_JSON_FIELDS`` order) as the API shows it."""
    data = dict(zip(SENSOR_JSON_FIELDS, row, strict=True))
    data["connected"] = bool(data["connected"])
    for key in ("first_seen", "last_seen", "stats_at"):
        data[key] = iso_ms(epoch(data[key]))
    for key in ("packets", "drops", "queue_depth"):
        data[key] = int(data[key] or 0)
    return data
