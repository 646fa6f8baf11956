"""The dashboard's statistics: ``GET /api/stats?from=&to=&id_sensor=&step=&mos_below=``.

Over the calls whose ``calldate`` is in [from, to) (of one sensor, or of all), per time
bucket of ``step`` seconds (bucket i is [from + i*step, from + (i+1)*step), the last one
cut at ``to``), per sensor and in total (the classes are defined in
``voipmon.store.figures``):

- ``calls``: seizures; ``calls_per_minute``: calls / minutes of the bucket (or range);
- ``asr`` (answer-seizure ratio) = answered / calls;
- ``ner`` (network effectiveness ratio, ITU-T E.411) = NER-effective / calls;
- ``acd`` (average call duration, s) = the mean ``connect_duration`` (answer to hang-up)
  of the answered calls, to the millisecond; zero-length answered calls count as 0 s;
- ``mos_below_share`` = calls whose MOS is below ``mos_below`` (default 3.1; MOS is
  stored to 0.1, so 3.1 means 3.0 and lower) / calls that have a MOS;
- ``loss`` and ``jitter``: how many calls fall in each fixed bucket of loss (%) and
  jitter (ms), over the range, with the number of calls that have no such figure.

A ratio whose denominator is 0 is null. Every figure comes with the ``/api/cdrs`` filter
that lists exactly the calls it counts: a scope (the range, a bucket, a sensor) has its
``cdrs`` query (from, to, id_sensor); ``filters`` says what to add for each figure
(answered: ``answered=yes``, NER: ``ner=effective``...); each distribution bucket has its
whole query.

How it stays fast (one day of a million calls in milliseconds, any back end): every call
is counted once, when it is stored, into its minute of ``cdr_minute`` (schema version 5,
``voipmon.store.rollup``), so from and to are whole minutes and the step a whole number
of minutes, and the figures are one range read of that table's primary key, summed per
bucket and sensor in SQL: 1440 rows a day per sensor, however many calls. ``select`` is
the same in Python, for the FakeStore.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from voipmon.records.times import iso_ms
from voipmon.store.figures import JITTER_EDGES, JITTER_SCALE, LOSS_EDGES, LOSS_SCALE
from voipmon.store.query import http_args, parse_time
from voipmon.store.schema import CDR_MINUTE_COUNTERS as COUNTERS

DEFAULT_MOS_BELOW = 3.1
DEFAULT_RANGE = 86400
MAX_RANGE = 366 * 86400
MAX_BUCKETS = 1440
AUTO_STEPS = (60, 300, 900, 1800, 3600, 7200, 21600, 43200, 86400, 604800)
AUTO_BUCKETS = 300       # the automatic step is the smallest giving at most this many

_ARGS = ("from", "to", "id_sensor", "step", "mos_below")
_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}

# What the query counts per group, in order (after the group's minute and sensor): the
# series' counts, then calls with a loss, with loss under each edge, the same for jitter
# (cumulative counts: a bucket is the difference of two).
SERIES = ("calls", "answered", "user_failures", "connected_ms", "mos_known", "mos_below")
DISTRIBUTION = ("loss_known", *(f"loss_lt_{e}" for e in LOSS_EDGES),
                "jitter_known", *(f"jitter_lt_{e}" for e in JITTER_EDGES))


@dataclass(frozen=True)
class StatsQuery:
    start: int                        # epoch seconds, a whole minute
    end: int                          # exclusive
    step: int                         # seconds, a whole number of minutes
    id_sensor: int | None = None
    mos_below: float = DEFAULT_MOS_BELOW

    def __post_init__(self) -> None:
        for name, value in (("from", self.start), ("to", self.end)):
            if not isinstance(value, int) or value % 60 or value < 0:
                raise ValueError(f"{name} = {_shown(value)}: allowed: a whole minute (UTC, "
                                 "seconds :00), like 2024-05-01T12:00:00Z")
        if self.end <= self.start:
            raise ValueError(f"to = {_shown(self.end)} is not after from = "
                             f"{_shown(self.start)}")
        if self.end - self.start > MAX_RANGE:
            raise ValueError(f"from .. to spans {(self.end - self.start) / 86400:g} days; "
                             f"allowed: at most {MAX_RANGE // 86400}")
        if not isinstance(self.step, int) or self.step < 60 or self.step % 60:
            raise ValueError(f"step = {self.step!r}: allowed: a whole number of minutes, "
                             "like 60, 300, 5m, 1h or 1d")
        if self.buckets > MAX_BUCKETS:
            raise ValueError(f"step = {self.step} makes {self.buckets} buckets from "
                             f"{_shown(self.start)} to {_shown(self.end)}; allowed: at most "
                             f"{MAX_BUCKETS} (a larger step or a shorter range)")
        if self.id_sensor is not None and not (
                isinstance(self.id_sensor, int) and 0 <= self.id_sensor <= 65535):
            raise ValueError(f"id_sensor = {self.id_sensor!r}: allowed: an integer 0..65535")
        if not isinstance(self.mos_below, float | int) or not 0 < self.mos_below <= 5:
            raise ValueError(f"mos_below = {self.mos_below!r}: allowed: a number 0..5")

    @classmethod
    def from_args(cls, args: Mapping[Any, Any], now: float) -> StatsQuery:
        """From HTTP arguments (str or bytes, last value wins). Without ``to``: the current
        minute's end; without ``from``: a day before ``to``; without ``step``: the
        smallest of ``AUTO_STEPS`` that makes at most ``AUTO_BUCKETS`` buckets."""
        values = http_args(args, _ARGS)
        end = _whole("to", values["to"]) if values.get("to") else math.ceil(now / 60) * 60
        start = _whole("from", values["from"]) if values.get("from") else end - DEFAULT_RANGE
        fields: dict[str, Any] = {"start": start, "end": end}
        step = values.get("step", "")
        fields["step"] = parse_step(step) if step and step != "auto" else auto_step(end - start)
        if values.get("id_sensor"):
            if not re.fullmatch(r"[0-9]{1,5}", values["id_sensor"]):
                raise ValueError(f"id_sensor = {values['id_sensor']!r}: allowed: a whole number")
            fields["id_sensor"] = int(values["id_sensor"])
        if values.get("mos_below"):
            try:
                fields["mos_below"] = float(values["mos_below"])
            except ValueError:
                raise ValueError(f"mos_below = {values['mos_below']!r}: allowed: a number 0..5")
            if not math.isfinite(fields["mos_below"]):
                raise ValueError(f"mos_below = {values['mos_below']!r}: allowed: a number 0..5")
        return cls(**fields)

    @property
    def buckets(self) -> int:
        return -(-(self.end - self.start) // self.step)

    @property
    def first_minute(self) -> int:
        return self.start // 60

    @property
    def end_minute(self) -> int:
        return self.end // 60

    @property
    def mos_limit_mult10(self) -> int:
        """``mos_min_mult10 < this``: as ``CdrQuery.mos_limit_mult10`` (the same link)."""
        return math.ceil(round(self.mos_below * 10, 6))


def _shown(value: Any) -> str:
    if isinstance(value, int):
        return iso_ms(value) or repr(value)
    return repr(value)


def _whole(name: str, text: str) -> int:
    value = parse_time(name, text)
    if value % 60:
        raise ValueError(f"{name} = {text!r}: allowed: a whole minute (UTC, seconds :00), "
                         "like 2024-05-01T12:00:00Z")
    return int(value)


def parse_step(text: str) -> int:
    """``300``, ``300s``, ``5m``, ``1h``, ``1d`` to seconds (checked by StatsQuery)."""
    match = re.fullmatch(r"([0-9]{1,9})\s*(s|m|min|h|d|)", text.lower())
    seconds = int(match.group(1)) * _UNITS[match.group(2)] if match else 0
    if seconds < 60 or seconds % 60:
        raise ValueError(f"step = {text!r}: allowed: a whole number of minutes, like 60, "
                         "300, 5m, 1h or 1d")
    return seconds


def auto_step(span: int) -> int:
    for step in AUTO_STEPS:
        if -(-span // step) <= AUTO_BUCKETS:
            return step
    return AUTO_STEPS[-1]


# -- SQL ----------------------------------------------------------------------------------


def stats_sql(query: StatsQuery) -> str:
    """Per (bucket's first minute, sensor): ``SERIES`` then ``DISTRIBUTION`` counts, from
    the per-minute table (its primary key is (minute, id_sensor): one range)."""
    counts = ["calls", "answered", "user_failures", "connected_ms", "mos_known",
              f"mos_lt_{int(query.mos_limit_mult10)}", *DISTRIBUTION]
    # Integers from a validated StatsQuery only, written in as literals (the statement
    # EXPLAIN shows is the one that runs). % is MOD on both back ends.
    first, end, minutes = int(query.first_minute), int(query.end_minute), query.step // 60
    where = f" WHERE `minute` >= {first} AND `minute` < {end}"
    if query.id_sensor is not None:
        where += f" AND `id_sensor` = {int(query.id_sensor)}"
    return (f"SELECT `minute` - (`minute` - {first}) % {int(minutes)} AS `m`, `id_sensor`, "
            + ", ".join(f"SUM(`{name}`)" for name in counts)
            + f" FROM `cdr_minute`{where} GROUP BY `m`, `id_sensor`")


def ints(row: Sequence[Any]) -> list[int]:
    """A result row as ints (SUM gives Decimal on MySQL)."""
    return [0 if v is None else int(v) for v in row]


def select(query: StatsQuery, minutes: Mapping[tuple[int, int], Sequence[int]]
           ) -> list[list[int]]:
    """``stats_sql`` in Python, over per-minute counts ({(minute, sensor): COUNTERS})."""
    wanted = [COUNTERS.index(name) for name in (
        "calls", "answered", "user_failures", "connected_ms", "mos_known",
        f"mos_lt_{query.mos_limit_mult10}", *DISTRIBUTION)]
    step = query.step // 60
    groups: dict[tuple[int, int], list[int]] = {}
    for (minute, sensor), counters in minutes.items():
        if not query.first_minute <= minute < query.end_minute:
            continue
        if query.id_sensor is not None and sensor != query.id_sensor:
            continue
        key = (minute - (minute - query.first_minute) % step, sensor)
        total = groups.setdefault(key, [0] * len(wanted))
        for i, at in enumerate(wanted):
            total[i] += counters[at]
    return [[*key, *counts] for key, counts in sorted(groups.items())]


# -- the answer ---------------------------------------------------------------------------


def filters(query: StatsQuery) -> dict[str, dict[str, str]]:
    """What to add to a scope's ``cdrs`` query to list the calls of each figure."""
    return {
        "calls": {}, "answered": {"answered": "yes"}, "failed": {"answered": "no"},
        "effective": {"ner": "effective"}, "ineffective": {"ner": "ineffective"},
        "mos_known": {"has_mos": "yes"}, "mos_below": {"mos_below": f"{query.mos_below:g}"},
    }


def _scope(start: int, end: int, id_sensor: int | None) -> str:
    args = {"from": iso_ms(start), "to": iso_ms(end)}
    if id_sensor is not None:
        args["id_sensor"] = str(id_sensor)
    return urlencode(args, safe=":")


def figures_of(counts: Sequence[int], minutes: float) -> dict[str, Any]:
    """The figures of one scope from its ``SERIES`` counts."""
    calls, answered, user_failures, connected_ms, mos_known, mos_below = counts
    effective = answered + user_failures
    return {
        "calls": calls, "answered": answered, "failed": calls - answered,
        "effective": effective, "ineffective": calls - effective,
        "connected": connected_ms / 1000, "mos_known": mos_known, "mos_below": mos_below,
        "calls_per_minute": calls / minutes,
        "asr": answered / calls if calls else None,
        "ner": effective / calls if calls else None,
        "acd": round(connected_ms / answered) / 1000 if answered else None,
        "mos_below_share": mos_below / mos_known if mos_known else None,
    }


def _distribution(query: StatsQuery, name: str, counts: Sequence[int], edges: Sequence[int],
                  scale: int, unit: str) -> dict[str, Any]:
    known, *below = counts
    cumulative = [0, *below, known]
    bounds = [0, *edges, None]
    buckets = []
    scope = _scope(query.start, query.end, query.id_sensor)
    for i in range(len(bounds) - 1):
        lo, hi = bounds[i], bounds[i + 1]
        bucket_filter = {f"{name}_from": f"{lo / scale:g}"}
        if hi is not None:
            bucket_filter[f"{name}_to"] = f"{hi / scale:g}"
        buckets.append({"from": lo / scale, "to": None if hi is None else hi / scale,
                        "calls": cumulative[i + 1] - cumulative[i],
                        "cdrs": f"{scope}&{urlencode(bucket_filter)}"})
    return {"unit": unit, "buckets": buckets, "known": known}


def assemble(query: StatsQuery, rows: Iterable[Sequence[int]]) -> dict[str, Any]:
    """The JSON answer from ``stats_sql``'s rows (``ints``)."""
    width = len(SERIES)
    buckets = [[0] * width for _ in range(query.buckets)]
    sensors: dict[int, list[int]] = {}
    total = [0] * width
    distribution = [0] * len(DISTRIBUTION)
    step_minutes = query.step // 60
    for minute, sensor, *counts in rows:
        bucket = buckets[(minute - query.first_minute) // step_minutes]
        per_sensor = sensors.setdefault(sensor, [0] * width)
        for i in range(width):
            value = counts[i]
            bucket[i] += value
            per_sensor[i] += value
            total[i] += value
        for i, value in enumerate(counts[width:]):
            distribution[i] += value
    range_minutes = (query.end - query.start) / 60
    series_out = []
    for i, counts in enumerate(buckets):
        start = query.start + i * query.step
        end = min(start + query.step, query.end)
        series_out.append({"from": iso_ms(start), "to": iso_ms(end),
                           "cdrs": _scope(start, end, query.id_sensor),
                           **figures_of(counts, (end - start) / 60)})
    n_loss = 1 + len(LOSS_EDGES)
    return {
        "from": iso_ms(query.start), "to": iso_ms(query.end), "step": query.step,
        "id_sensor": query.id_sensor, "mos_below": query.mos_below,
        "filters": filters(query),
        "totals": {"cdrs": _scope(query.start, query.end, query.id_sensor),
                   **figures_of(total, range_minutes)},
        "series": series_out,
        "sensors": [{"id_sensor": sensor,
                     "cdrs": _scope(query.start, query.end, sensor),
                     **figures_of(counts, range_minutes)}
                    for sensor, counts in sorted(sensors.items())],
        "loss": _distribution(query, "loss", distribution[:n_loss], LOSS_EDGES, LOSS_SCALE,
                              "%"),
        "jitter": _distribution(query, "jitter", distribution[n_loss:], JITTER_EDGES,
                                JITTER_SCALE, "ms"),
    }


def as_stats_query(query: StatsQuery | Mapping[Any, Any], now: float) -> StatsQuery:
    return query if isinstance(query, StatsQuery) else StatsQuery.from_args(query, now)
