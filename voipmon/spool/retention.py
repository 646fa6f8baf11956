"""Spool retention: ``maxpoolsize`` (MB) and ``maxpooldays`` delete the oldest minutes first.

Pcaps live in ``spooldir/YYYY-MM-DD/HH/MM/{SIP,RTP}/``; a minute directory is the unit of
deletion (VoIPmonitor deletes whole hours; minutes keep more of what fits). Anything else in
the spool (the CDR queue, state, certificates) is never looked at. Nothing is followed
through a symlink: the scan uses lstat, and removal uses ``shutil.rmtree``, which unlinks a
link instead of descending into it (and refuses a minute that is itself a link).

:func:`scan` and :func:`plan` are pure and fast to test; :class:`Retention` runs them
periodically on an injected clock, in a thread (spools are big), logs what it removed and
survives any error to try again next period.
"""

from __future__ import annotations

import calendar
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

log = Logger()

DEFAULT_INTERVAL = 300.0  # as VoIPmonitor's cleaner: every 5 minutes
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_TWO = re.compile(r"\d{2}\Z")


@dataclass(frozen=True)
class Minute:
    start: float      # epoch seconds (UTC) of the minute
    relpath: str      # "YYYY-MM-DD/HH/MM"
    size: int         # bytes of the regular files under it


def _subdirs(path: str, pattern: re.Pattern[str]) -> list[str]:
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    return sorted(e.name for e in entries
                  if pattern.match(e.name) and e.is_dir(follow_symlinks=False))


def _tree_size(path: str) -> int:
    total = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def scan(spooldir: str) -> list[Minute]:
    """Every minute directory of the spool, oldest first, with its size."""
    minutes = []
    for day in _subdirs(spooldir, _DAY):
        for hour in _subdirs(os.path.join(spooldir, day), _TWO):
            for minute in _subdirs(os.path.join(spooldir, day, hour), _TWO):
                try:
                    year, month, mday = (int(x) for x in day.split("-"))
                    start = calendar.timegm((year, month, mday, int(hour), int(minute), 0))
                except (ValueError, OverflowError):
                    continue
                relpath = f"{day}/{hour}/{minute}"
                minutes.append(Minute(float(start), relpath,
                                      _tree_size(os.path.join(spooldir, relpath))))
    minutes.sort(key=lambda m: m.start)
    return minutes


def plan(minutes: list[Minute], now: float, maxpoolsize_mb: int, maxpooldays: int,
         ) -> list[tuple[Minute, str]]:
    """(minute, reason) to delete, oldest first. The current minute is never deleted."""
    current = now - now % 60
    doomed: list[tuple[Minute, str]] = []
    kept = []
    for minute in minutes:
        if maxpooldays and minute.start + 60 <= now - maxpooldays * 86400 \
                and minute.start < current:
            doomed.append((minute, f"older than maxpooldays = {maxpooldays}"))
        else:
            kept.append(minute)
    if maxpoolsize_mb:
        limit = maxpoolsize_mb * 1024 * 1024
        total = sum(m.size for m in kept)
        for minute in kept:
            if total <= limit or minute.start >= current:
                break
            doomed.append((minute, f"spool over maxpoolsize = {maxpoolsize_mb} MB"))
            total -= minute.size
    return doomed


def remove(spooldir: str, relpath: str) -> None:
    """Delete one minute directory, then its hour and day if they are left empty."""
    path = os.path.join(spooldir, relpath)
    if os.path.islink(path):
        os.unlink(path)  # never follow a link out of the spool
    else:
        shutil.rmtree(path)
    hour = os.path.dirname(path)
    for parent in (hour, os.path.dirname(hour)):
        try:
            os.rmdir(parent)
        except OSError:
            break  # not empty (or already gone): keep it


class Retention(service.Service):
    """Runs :func:`check` every ``interval`` seconds on ``clock``.

    ``blocking`` runs the scan-and-delete off the reactor thread: in the taps
    ``lambda f: threads.deferToThread(f)``; in tests, a synchronous call.
    """

    name = "retention"

    def __init__(self, spooldir: str, maxpoolsize_mb: int, maxpooldays: int, clock: Any,
                 blocking: Callable[[Callable[[], Any]], defer.Deferred] | None = None,
                 interval: float = DEFAULT_INTERVAL) -> None:
        self.spooldir = spooldir
        self.maxpoolsize_mb = maxpoolsize_mb
        self.maxpooldays = maxpooldays
        self.clock = clock
        self.blocking = blocking or (lambda f: defer.maybeDeferred(f))
        self.interval = interval
        self.removed_minutes = 0
        self.removed_bytes = 0
        self.errors = 0
        self._loop: task.LoopingCall | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.maxpoolsize_mb or self.maxpooldays)

    def startService(self) -> None:
        super().startService()
        if not self.enabled:
            return
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Any:
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        return None

    def check(self) -> defer.Deferred:
        """One pass; never fails (errors are logged), fires with what was removed."""
        now = self.clock.seconds()
        d = self.blocking(lambda: self._pass(now))
        d.addCallback(self._report)
        d.addErrback(self._failed)
        return d

    def minutes(self) -> list[Minute]:
        """The minute directories this retention governs (a subclass may add more)."""
        return list(scan(self.spooldir))

    def _pass(self, now: float) -> tuple[list[tuple[Minute, str]], list[tuple[str, str]]]:
        minutes = sorted(self.minutes(), key=lambda m: m.start)
        doomed = plan(minutes, now, self.maxpoolsize_mb, self.maxpooldays)
        done, failed = [], []
        for minute, reason in doomed:
            try:
                remove(self.spooldir, minute.relpath)
            except OSError as exc:
                failed.append((minute.relpath, f"{exc.strerror or exc}"))
            else:
                done.append((minute, reason))
        return done, failed

    def _report(self, result: tuple[list[tuple[Minute, str]], list[tuple[str, str]]]) -> list:
        done, failed = result
        for minute, reason in done:
            log.info("retention removed {minute} ({size} bytes): {reason}",
                     minute=minute.relpath, size=minute.size, reason=reason)
            self.removed_minutes += 1
            self.removed_bytes += minute.size
        for relpath, problem in failed:
            self.errors += 1
            log.warn("retention could not remove {minute}: {problem}", minute=relpath,
                     problem=problem)
        return [minute for minute, _ in done]

    def _failed(self, failure: Any) -> list:
        self.errors += 1
        log.failure("retention pass over {spool} failed; trying again next period",
                    failure, spool=self.spooldir)
        return []
