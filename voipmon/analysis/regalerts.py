"""Brute force, scans and possible compromises of a registrar, from REGISTER outcomes.

Pure and driven by capture time, like the rest of the analysis. ``RegisterTracker`` calls
``failure`` for every REGISTER attempt that ended in an authentication failure (a
rejected or repeated challenge, an abandoned challenge, 403, 404) and ``success`` for every
successful one; ``advance(now)`` ages windows and incidents; records go to ``emit``.

Rules, per (source IP, server IP), over a sliding window (defaults: wave-2 research B.4,
after Elastic's "Potential SIP REGISTER Brute Force"):

- **brute-force**: one user (To user) has ``brute_force_failures`` (10) failed attempts
  from the source within ``window`` (300 s);
- **scan**: ``scan_failures`` (25) failed attempts across at least ``scan_extensions`` (5)
  users within the window (enumeration such as sipvicious' svwar, or password spraying);
- **possible-compromise**: a successful registration from a source that is flagged (an
  incident of either kind open or within ``suppress``), or that has ``compromise_failures``
  (10) failures in the window. It names the user that got in.

A single challenge is normal and never reaches this module (the tracker counts a
challenge only when it is answered with rejected credentials, repeated, or abandoned).

An incident is one ``Alert`` record, emitted when its rule fires, again at most every
``update_interval`` while it grows, and when it ends (no failure for ``window``); a rule
that fires again within ``suppress`` (3600 s) of the end reopens the same incident. Memory
is bounded: at most ``max_sources`` sources are followed (the least recently active one is
dropped first, counted), a source keeps at most ``MAX_EVENTS`` events in its window, and an
incident lists at most ``MAX_USERS`` users.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from voipmon.counters import Counts
from voipmon.records.alert import BRUTE_FORCE, POSSIBLE_COMPROMISE, SCAN, Alert
from voipmon.records.keys import stable_uid
from voipmon.records.times import iso_ms

log = Logger()

MAX_EVENTS = 4096      # failures kept per source within the window
MAX_USERS = 10_000     # users counted per incident
LISTED_USERS = 100     # users named in an alert record


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """Thresholds of the rules (see the module docstring)."""

    window: float = 300.0
    brute_force_failures: int = 10
    scan_failures: int = 25
    scan_extensions: int = 5
    compromise_failures: int = 10
    suppress: float = 3600.0
    update_interval: float = 60.0
    max_sources: int = 100_000

    def __post_init__(self) -> None:
        for name in ("window", "suppress", "update_interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")
        for name in ("brute_force_failures", "scan_failures", "scan_extensions",
                     "compromise_failures", "max_sources"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")


class _Source:
    """The failures of one source towards one server within the window."""

    __slots__ = ("events", "last", "per_user", "ua")

    def __init__(self, ua: str) -> None:
        self.events: deque[tuple[float, str]] = deque()
        self.per_user: Counter[str] = Counter()
        self.ua = ua
        self.last = 0.0

    def add(self, ts: float, user: str) -> None:
        if len(self.events) >= MAX_EVENTS:
            self._drop()
        self.events.append((ts, user))
        self.per_user[user] += 1
        self.last = max(self.last, ts)

    def prune(self, before: float) -> None:
        events = self.events
        while events and events[0][0] < before:
            self._drop()

    def _drop(self) -> None:
        _, user = self.events.popleft()
        left = self.per_user[user] - 1
        if left:
            self.per_user[user] = left
        else:
            del self.per_user[user]


class _Incident:
    """One alert while it lives."""

    __slots__ = ("closed", "created_at", "dirty", "dst", "emitted_at", "end", "failures", "kind",
                 "message", "revision", "src", "start", "successes", "ua", "uid", "users")

    def __init__(self, kind: str, uid: str, created_at: float, src: str, dst: str,
                 ua: str) -> None:
        self.kind = kind
        self.uid = uid
        self.created_at = created_at
        self.src = src
        self.dst = dst
        self.start = created_at
        self.end = created_at
        self.failures = 0
        self.users: Counter[str] = Counter()
        self.successes = 0
        self.ua = ua
        self.revision = -1
        self.emitted_at = created_at
        self.dirty = True
        self.closed = False
        self.message = ""

    def add(self, ts: float, user: str, count: int = 1) -> None:
        self.failures += count
        if user in self.users or len(self.users) < MAX_USERS:
            self.users[user] += count
        self.end = max(self.end, ts)
        self.dirty = True

    def record(self, id_sensor: int) -> Alert:
        ranked = sorted(self.users.items(), key=lambda item: (-item[1], item[0]))
        names = ",".join(user.replace(",", "%2C") for user, _ in ranked[:LISTED_USERS])
        return Alert(uid=self.uid, id_sensor=id_sensor, kind=self.kind,
                     created_at=self.created_at, sipcallerip=self.src, sipcalledip=self.dst,
                     window_start=self.start, window_end=self.end, failures=self.failures,
                     extension_count=len(self.users), extensions=names,
                     successes=self.successes, ua=self.ua, message=self.message,
                     revision=self.revision, closed=self.closed)


class AlertStats(Counts):
    def __init__(self) -> None:
        self.failures = 0
        self.successes = 0
        self.alerts = 0               # incidents opened (or reopened)
        self.records = 0              # Alert records emitted, updates included
        self.sources_dropped = 0      # sources forgotten early because of max_sources


class RegisterAlerts:
    """The rules of the module docstring over one sensor's REGISTER outcomes."""

    def __init__(self, settings: AlertSettings, id_sensor: int,
                 emit: Callable[[Alert], Any]) -> None:
        self.settings = settings
        self.id_sensor = id_sensor
        self._emit = emit
        self.stats = AlertStats()
        self._sources: OrderedDict[tuple[str, str], _Source] = OrderedDict()
        self._incidents: dict[tuple[str, ...], _Incident] = {}

    # -- events ------------------------------------------------------------------------

    def failure(self, ts: float, src: str, dst: str, user: str, ua: str = "") -> None:
        """A REGISTER attempt from ``src`` to ``dst`` for ``user`` failed authentication."""
        self.stats.failures += 1
        s = self._source(src, dst, ua)
        s.add(ts, user)
        s.prune(ts - self.settings.window)
        for kind in (BRUTE_FORCE, SCAN):
            incident = self._incidents.get((kind, src, dst))
            if incident is not None and not incident.closed:
                incident.add(ts, user)
        if s.per_user[user] >= self.settings.brute_force_failures:
            self._open(BRUTE_FORCE, ts, src, dst, s)
        if len(s.events) >= self.settings.scan_failures \
                and len(s.per_user) >= self.settings.scan_extensions:
            self._open(SCAN, ts, src, dst, s)

    def success(self, ts: float, src: str, dst: str, user: str) -> None:
        """A REGISTER from ``src`` to ``dst`` for ``user`` succeeded."""
        self.stats.successes += 1
        s = self._sources.get((src, dst))
        if s is None:
            return
        s.prune(ts - self.settings.window)
        flagged = [inc for kind in (BRUTE_FORCE, SCAN)
                   if (inc := self._incidents.get((kind, src, dst))) is not None]
        failures = len(s.events)
        if not flagged and failures < self.settings.compromise_failures:
            return
        for incident in flagged:
            incident.successes += 1
            incident.dirty = True
        key = (POSSIBLE_COMPROMISE, src, dst, user)
        if key in self._incidents:
            return  # already said within the suppression time
        incident = _Incident(POSSIBLE_COMPROMISE, stable_uid("alert", POSSIBLE_COMPROMISE, src,
                                                             dst, user, ts), ts, src, dst, s.ua)
        incident.start = s.events[0][0] if s.events else ts
        incident.users[user] = s.per_user.get(user, 0)   # names the user that got in
        incident.failures = failures
        incident.successes = 1
        incident.closed = True
        why = ", ".join(f"{inc.kind} since {iso_ms(inc.start)}" for inc in flagged) or \
            f"within {self.settings.window:g} s"
        incident.message = (
            f"possible compromise: {user} registered from {src} to {dst} after {failures} "
            f"failed attempts from that source on {len(s.per_user)} users, "
            f"{incident.users[user]} of them on {user} ({why})")
        self._incidents[key] = incident
        self.stats.alerts += 1
        log.warn("register alert: {message}", message=incident.message, kind=incident.kind,
                 src=src, dst=dst, user=user, failures=incident.failures)
        self._send(incident, ts)

    # -- time --------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Age windows and incidents to capture time ``now``."""
        settings = self.settings
        for key, incident in list(self._incidents.items()):
            if incident.closed:
                if now - incident.end >= settings.suppress:
                    del self._incidents[key]
            elif now - incident.end >= settings.window:
                incident.closed = True
                self._send(incident, now)
            elif incident.dirty and now - incident.emitted_at >= settings.update_interval:
                self._send(incident, now)
        horizon = now - settings.window
        sources = self._sources
        while sources:
            key, s = next(iter(sources.items()))
            if s.last >= horizon:
                break
            del sources[key]

    def finish(self) -> None:
        """End of input: every open incident is emitted as it stands, closed."""
        for incident in self._incidents.values():
            if not incident.closed:
                incident.closed = True
                self._send(incident, incident.end)

    # -- views -------------------------------------------------------------------------

    def alerts(self) -> list[Alert]:
        """The incidents open or within their suppression time, newest first."""
        out = [incident.record(self.id_sensor) for incident in self._incidents.values()]
        return sorted(out, key=lambda a: -a.created_at)

    # -- inside ------------------------------------------------------------------------

    def _source(self, src: str, dst: str, ua: str) -> _Source:
        key = (src, dst)
        s = self._sources.get(key)
        if s is None:
            if len(self._sources) >= self.settings.max_sources:
                self._sources.popitem(last=False)
                self.stats.sources_dropped += 1
            s = self._sources[key] = _Source(ua)
        else:
            self._sources.move_to_end(key)
        return s

    def _open(self, kind: str, ts: float, src: str, dst: str, s: _Source) -> None:
        key = (kind, src, dst)
        incident = self._incidents.get(key)
        if incident is not None and not incident.closed:
            return
        if incident is None:
            incident = _Incident(kind, stable_uid("alert", kind, src, dst, ts), ts, src, dst,
                                 s.ua)
            incident.start = s.events[0][0]
            for event_ts, user in s.events:
                incident.add(event_ts, user)
            self._incidents[key] = incident
        else:  # within the suppression time of the last one: the same incident goes on
            for event_ts, user in s.events:
                if event_ts > incident.end:
                    incident.add(event_ts, user)
            incident.closed = False
        self.stats.alerts += 1
        self._send(incident, ts)
        log.warn("register alert: {message}", message=incident.message, kind=kind, src=src,
                 dst=dst, failures=incident.failures, users=len(incident.users))

    def _send(self, incident: _Incident, now: float) -> None:
        if incident.kind != POSSIBLE_COMPROMISE:
            users = len(incident.users)
            incident.message = (
                f"{incident.kind}: {incident.failures} failed REGISTER attempts from "
                f"{incident.src} to {incident.dst} for {users} user{'s' if users != 1 else ''}"
                f" from {iso_ms(incident.start)} to {iso_ms(incident.end)}")
        incident.revision += 1
        incident.emitted_at = now
        incident.dirty = False
        self.stats.records += 1
        try:
            self._emit(incident.record(self.id_sensor))
        except Exception:
            log.failure("register alerts: the record consumer failed")


__all__ = ["AlertSettings", "AlertStats", "RegisterAlerts"]
