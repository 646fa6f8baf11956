"""Dead letters: records a consumer could not take, kept in the spool instead of lost.

Every record the engine makes (a CDR, an orphan RTP stream) goes to a consumer: the
sensor's durable CDR queue, the central's CDR queue, a printer. When the consumer raises,
the engine hands the record to an ``IDeadLetters`` (``Engine._deliver``, the one place
this happens); the central does the same with a record from a sensor or from its own
queue that it cannot decode. ``DeadLetters``

- keeps it: one JSON line appended and fsync'd to ``<spooldir>/deadletter/YYYY-MM-DD.jsonl``
  (the UTC day), saying when, what, why (the reason and its traceback) and holding the
  record in full: a dataclass (a CDR) as the object of its fields, which for a CDR is its
  wire form (``voipmon.records.cdr.Cdr.from_wire`` reads it back), bytes as base64,
  anything else as JSON. The JSON is ASCII, so every string is exact, even one holding
  bytes that were not UTF-8 (lone surrogates, written ``\\udc80``..``\\udcff``).
  ``read`` gives the entries back, for an operator or a tool to inspect or replay;
- counts it: ``count`` (and ``for_sensor``), which sniffer_stat, the sensor's STATS, the
  central's CDR queue stats and a mirroring sensor's END_ACK show; and a replay with
  ``--exit-when-done`` exits non-zero when it is not 0;
- logs it once per cause: the first record of each kind and error type (one kind with a
  reason given as text) is logged with the reason and where it was kept, or why it could
  not be; later ones of the same cause are kept and counted only.

The directory is bounded (``max_bytes``): past it, or when it cannot be written, a record
is still counted and logged (``unwritten``). ``DeadLetters(None)`` keeps nothing on disk:
it counts and logs (what an engine gets when nobody gave it a directory).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from typing import Any

from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from voipmon.counters import Counters, family

log = Logger()

DIRECTORY = "deadletter"          # under a spooldir
MAX_BYTES = 256 * 1024 * 1024
_TRACEBACK_CHARS = 8000
_REASON_CHARS = 500


class RecordRefused(Exception):
    """Raised by a consumer that can never take a record (too big, queue closed): the
    engine keeps it as a dead letter."""


class IDeadLetters(Interface):
    """Where records that a consumer could not take go instead of being lost."""

    count = Attribute("Records not delivered since start (kept on disk or not).")

    def keep(kind, record, reason, id_sensor=None, callid=None):
        """Keep, count and (once per cause) log ``record``; never raises."""

    def for_sensor(id_sensor):
        """Records of sensor ``id_sensor`` not delivered since start."""

    def counters():
        """Its counters (``voipmon.counters``): kept, written, not written, by kind."""


def raw_form(record: Any) -> tuple[str, Any]:
    """(the entry's key, a JSON value) holding ``record`` in full."""
    if isinstance(record, bytes | bytearray | memoryview):
        return "record_base64", base64.b64encode(bytes(record)).decode("ascii")
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        try:
            return "record", dataclasses.asdict(record)
        except Exception:   # a field that cannot be copied: its text, at least
            return "record", repr(record)
    return "record", record


def printable(text: str) -> str:
    """``text`` safe for any log file: a lone surrogate (a byte that was not UTF-8) is
    shown as its escape ``\\udcff`` instead of making the log observer fail."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def describe(reason: BaseException | str) -> str:
    """A one-line reason, short enough for a log line (an encoder error holds the text)."""
    if isinstance(reason, BaseException):
        text = f"{type(reason).__name__}: {reason}"
    else:
        text = str(reason)
    text = printable(" ".join(text.split()))
    return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS - 3] + "..."


@implementer(IDeadLetters)
class DeadLetters:
    """Dead letters kept in ``directory`` (None: counted and logged only)."""

    def __init__(self, directory: str | None, clock: Any = None,
                 max_bytes: int = MAX_BYTES) -> None:
        self.directory = directory
        self.clock = clock
        self.max_bytes = max_bytes
        self.count = 0
        self.written = 0
        self.unwritten = 0
        self.by_kind: Counter[str] = Counter()
        self.by_sensor: Counter[int] = Counter()
        self._causes: set[tuple[str, str]] = set()
        self._bytes: int | None = None
        self._full_logged = False

    def _now(self) -> float:
        return self.clock.seconds() if self.clock is not None else time.time()

    def keep(self, kind: str, record: Any, reason: BaseException | str,
             id_sensor: int | None = None, callid: str | None = None) -> None:
        try:
            self._keep(kind, record, reason, id_sensor, callid)
        except Exception:
            # Keeping must not fail its caller; the count above already says it happened.
            log.failure("dead letter: could not keep a {kind}", kind=kind)

    def _keep(self, kind: str, record: Any, reason: BaseException | str,
              id_sensor: int | None, callid: str | None) -> None:
        self.count += 1
        self.by_kind[kind] += 1
        if id_sensor is not None:
            self.by_sensor[id_sensor] += 1
        why = describe(reason)
        path, problem = self._write(kind, record, reason, why, id_sensor, callid)
        cause = (kind, type(reason).__name__ if isinstance(reason, BaseException) else "",
                 problem is None)
        if cause in self._causes:
            return
        self._causes.add(cause)
        where = f"kept in {path}" if problem is None else f"NOT kept: {problem}"
        log.error("a {kind} could not be delivered ({reason}): call {callid}, sensor "
                  "{id_sensor}; dead letter #{count}, {where}; more for this reason are "
                  "counted (dead_letters), not logged", kind=kind, reason=why,
                  callid=None if callid is None else printable(callid), id_sensor=id_sensor,
                  count=self.count, where=where, dead_letter_path=path)

    def _write(self, kind: str, record: Any, reason: BaseException | str, why: str,
               id_sensor: int | None, callid: str | None) -> tuple[str | None, str | None]:
        """Append the entry; (its file, None) or (None, why it was not written)."""
        if self.directory is None:
            self.unwritten += 1
            return None, "no dead-letter directory"
        now = self._now()
        entry: dict[str, Any] = {
            "kept_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now * 1000) % 1000:03d}Z",
            "kind": kind, "reason": why, "id_sensor": id_sensor, "callid": callid,
        }
        if isinstance(reason, BaseException) and reason.__traceback__ is not None:
            entry["traceback"] = "".join(traceback.format_exception(reason))[-_TRACEBACK_CHARS:]
        key, value = raw_form(record)
        entry[key] = value
        try:
            line = json.dumps(entry, ensure_ascii=True, default=repr).encode("ascii")
        except (TypeError, ValueError) as exc:
            entry[key] = repr(record)
            entry["record_repr_because"] = describe(exc)
            line = json.dumps(entry, ensure_ascii=True, default=repr).encode("ascii")
        line += b"\n"
        path = os.path.join(self.directory, time.strftime("%Y-%m-%d", time.gmtime(now))
                            + ".jsonl")
        try:
            if self._bytes is None:
                os.makedirs(self.directory, mode=0o750, exist_ok=True)
                self._bytes = _size(self.directory)
            if self._bytes + len(line) > self.max_bytes:
                self.unwritten += 1
                if not self._full_logged:
                    self._full_logged = True
                    log.error("the dead-letter directory {directory} holds {size} bytes, "
                              "its limit: further dead letters are counted, not kept",
                              directory=self.directory, size=self._bytes)
                return None, f"{self.directory} is full"
            _append(path, line)
        except OSError as exc:
            self.unwritten += 1
            return None, f"cannot write {path}: {exc.strerror or exc}"
        self._bytes += len(line)
        self.written += 1
        return path, None

    def for_sensor(self, id_sensor: int) -> int:
        return self.by_sensor[id_sensor]

    def counters(self) -> Counters:
        return {"dead_letters": self.count, "written": self.written,
                "unwritten": self.unwritten, **family("by_kind", self.by_kind)}


def _size(directory: str) -> int:
    total = 0
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_size
    return total


def _append(path: str, line: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def read(directory: str) -> Iterator[dict[str, Any]]:
    """Every dead letter kept in ``directory``, oldest file first (a line cut short by a
    crash is skipped)."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".jsonl"))
    except FileNotFoundError:
        return
    for name in names:
        with open(os.path.join(directory, name), "rb") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    yield entry


__all__ = ["DIRECTORY", "DeadLetters", "IDeadLetters", "RecordRefused", "read"]
