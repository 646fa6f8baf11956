"""Failed REGISTER attempts: ``register_failed`` rows that fold repeats, and the failed
counts per minute of ``register_time_info``.

``FailureBook.add`` takes one failed attempt (one REGISTER transaction that ended in
failure). Attempts of one user from one client with the same answer fold into one
``FailedRun``: its row is emitted at the first attempt (``counter`` 1, ``revision`` 0), again
with the new counter at most every ``FAILED_UPDATE`` seconds while attempts come, when a
success from that client follows (as VoIPmonitor saves it), and when the run ends
(``FAILED_QUIET`` without an attempt, ``sip-register-state-timeout`` after its start, the
``max_failed`` cap, or the end of input). Attempts above
``sip-register-failed-max-details-per-minute`` for one client and server go only into the
minute's ``counter_2``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from voipmon.analysis.calls import ip_text
from voipmon.analysis.regstate import Info, RegisterStats, Wheel
from voipmon.analysis.sipfields import Contact
from voipmon.records import register as rec
from voipmon.records.keys import stable_uid

FAILED_QUIET = 60.0         # a run ends after this long without a failed attempt
FAILED_UPDATE = 20.0        # a growing run is re-emitted at most this often
#: Distinct client/server pairs counted per minute; the rest share one overflow row.
MAX_MINUTE_PAIRS = 100_000


class FailedRun:
    """A ``register_failed`` row while failed attempts fold into it."""

    __slots__ = ("contact", "counter", "due", "ends", "first", "gone", "info", "key", "last",
                 "response", "revision", "saved", "saved_at", "uid")

    def __init__(self, key: tuple, info: Info, contact: Contact,
                 ends: tuple[bytes, int, bytes, int], response: int, ts: float) -> None:
        self.key = key
        self.info = info
        self.contact = contact
        self.ends = ends
        self.response = response
        self.first = ts
        self.last = ts
        self.counter = 1
        self.saved = 0
        self.saved_at = ts
        self.revision = -1
        self.uid = stable_uid("register_failed", info.to_num, info.to_domain,
                              ip_text(ends[0]), response, ts, info.callid)
        self.due: int | None = None
        self.gone = False


def failed_row(id_sensor: int, run: FailedRun) -> rec.RegisterFailed:
    info = run.info
    src, sport, dst, dport = run.ends
    return rec.RegisterFailed(
        uid=run.uid, id_sensor=id_sensor, created_at=run.first, counter=run.counter,
        sipcallerip=ip_text(src), sipcallerport=sport, sipcalledip=ip_text(dst),
        sipcalledport=dport, from_num=info.from_num, to_num=info.to_num,
        to_domain=info.to_domain, contact_num=run.contact[1], contact_domain=run.contact[2],
        digestusername=info.digestusername, digestrealm=info.digestrealm, ua=info.ua,
        revision=run.revision, last_at=run.last, response=run.response,
        from_domain=info.from_domain, callid=info.callid)


class TimeInfo:
    """``register_time_info``: failed attempts per minute and client/server pair, and the
    active count once a minute."""

    def __init__(self, id_sensor: int, max_details: int,
                 emit: Callable[[rec.RegisterTimeInfo], Any]) -> None:
        self.id_sensor = id_sensor
        self.max_details = max_details
        self._emit = emit
        self._minutes: dict[float, dict[tuple[bytes, bytes], list[int]]] = {}
        self._flushed = float("-inf")    # minutes before this are written
        self.overflow = 0                # attempts counted in the overflow pair

    def failed(self, ts: float, src: bytes, dst: bytes) -> bool:
        """Count a failed attempt; False when its minute has no detail left for the pair
        (``sip-register-failed-max-details-per-minute``)."""
        minute = max(ts // 60 * 60, self._flushed)  # late: into the first open minute
        pairs = self._minutes.get(minute)
        if pairs is None:
            pairs = self._minutes[minute] = {}
        counts = pairs.get((src, dst))
        if counts is None:
            if len(pairs) >= MAX_MINUTE_PAIRS:
                self.overflow += 1
                src = dst = b""
                counts = pairs.setdefault((src, dst), [0, 0])
            else:
                counts = pairs[(src, dst)] = [0, 0]
        counts[0] += 1
        if counts[0] > self.max_details:
            counts[1] += 1
            return False
        return True

    def flush(self, before: float) -> None:
        """Write every minute that ends by ``before``."""
        limit = before // 60 * 60 if before != float("inf") else before
        for minute in sorted(m for m in self._minutes if m < limit):
            for (src, dst), (counter, counter_2) in self._minutes.pop(minute).items():
                caller, called = ip_text(src), ip_text(dst)
                self._emit(rec.RegisterTimeInfo(
                    uid=stable_uid("register_time_info", rec.TIME_INFO_FAILED, minute, caller,
                                   called),
                    id_sensor=self.id_sensor, created_at=minute,
                    type_info=rec.TIME_INFO_FAILED, sipcallerip=caller, sipcalledip=called,
                    counter=counter, counter_2=counter_2))
        if limit != float("inf"):
            self._flushed = max(self._flushed, limit)

    def active(self, minute: float, count: int) -> None:
        self._emit(rec.RegisterTimeInfo(
            uid=stable_uid("register_time_info", rec.TIME_INFO_ACTIVE, minute),
            id_sensor=self.id_sensor, created_at=minute, type_info=rec.TIME_INFO_ACTIVE,
            sipcallerip="", sipcalledip="", counter=count))


class FailureBook:
    """The failure runs of one tracker and its per-minute failed counts."""

    def __init__(self, id_sensor: int, state_timeout: float, max_runs: int, max_details: int,
                 emit: Callable[[Any], Any], wheel: Wheel, stats: RegisterStats) -> None:
        self.id_sensor = id_sensor
        self.state_timeout = state_timeout
        self.max_runs = max_runs
        self._emit = emit
        self._wheel = wheel
        self._stats = stats
        self.time_info = TimeInfo(id_sensor, max_details, emit)
        self._runs: dict[tuple, FailedRun] = {}
        self._responses: set[int] = set()

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, aor: tuple, info: Info, contact: Contact,
            ends: tuple[bytes, int, bytes, int], response: int, ts: float) -> None:
        """One failed attempt: the REGISTER at ``ts`` got ``response`` (0: none)."""
        stats = self._stats
        if not self.time_info.failed(ts, ends[0], ends[2]):
            stats.failed_details_dropped += 1
            return
        key = (aor, ends[0], response)
        run = self._runs.get(key)
        if run is not None and ts - run.first >= self.state_timeout:
            self._close(run)
            run = None
        if run is None:
            if len(self._runs) >= self.max_runs:
                self._close(next(iter(self._runs.values())))
                stats.failed_runs_evicted += 1
            run = self._runs[key] = FailedRun(key, info, contact, ends, response, ts)
            self._responses.add(response)
            self._save(run, ts)
            self._wheel.put(run, ts + FAILED_QUIET)
        else:
            run.counter += 1
            run.last = max(run.last, ts)
            if ts - run.saved_at >= FAILED_UPDATE:
                self._save(run, ts)

    def succeeded(self, aor: tuple, src: bytes, ts: float) -> None:
        """The client ``src`` registered ``aor``: write what its runs folded meanwhile."""
        for response in self._responses:
            run = self._runs.get((aor, src, response))
            if run is not None and run.counter > run.saved:
                self._save(run, ts)

    def due(self, run: FailedRun, now: float) -> None:
        """The wheel's look at ``run``: end it after ``FAILED_QUIET`` without attempts."""
        if run.last + FAILED_QUIET > now:
            self._wheel.put(run, run.last + FAILED_QUIET)
        else:
            self._close(run)

    def finish(self) -> None:
        """End of input: every run's row as it stands, and every minute."""
        for run in self._runs.values():
            if run.counter > run.saved:
                self._save(run, run.last)
        self.time_info.flush(float("inf"))

    def _save(self, run: FailedRun, ts: float) -> None:
        run.saved = run.counter
        run.saved_at = ts
        run.revision += 1
        self._emit(failed_row(self.id_sensor, run))

    def _close(self, run: FailedRun) -> None:
        if run.counter > run.saved:
            self._save(run, run.last)
        run.gone = True
        del self._runs[run.key]


__all__ = ["FAILED_QUIET", "FAILED_UPDATE", "FailedRun", "FailureBook", "TimeInfo",
           "failed_row"]
