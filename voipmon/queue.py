"""A durable FIFO of byte records on disk: nothing is handed out before it is fsync'd,
nothing is deleted before it is acknowledged, and a SIGKILL at any moment loses nothing
that was flushed and corrupts nothing.

Used wherever a CDR must outlive the process holding it: the sensor's queue of CDRs for
the central (``spooldir/queue``) and the central's queue of CDRs made from mirrored
packets, waiting for the database (``spooldir/central-queue``).

Layout of a queue directory::

    seg-00000000000000000001.log   records with seq >= 1, append-only
    seg-00000000000000004097.log   the next segment, named by its first seq
    acked                          the highest acknowledged seq, replaced atomically
    lock                           flock'd while a process has the queue open

A record is ``u32 length | u64 seq | u32 crc32(seq, payload) | payload``. Appends are
buffered and made durable together by ``flush`` (one write and one fsync for many
records: group commit); only durable records are handed out by ``read``. On open, each
segment is scanned; a torn record at the end of the last one (a crash mid-write) fails its
length or CRC check and is cut off. A segment is deleted once every record in it is
acknowledged. The ``acked`` file outlives the segments, so sequence numbers never restart.
Only one process at a time may open a queue (a second gets QueueError): two writers would
interleave their records.

A full disk (or any write error) loses nothing: a failed ``flush`` raises QueueError and
keeps its records buffered for the next try; if even the partial write cannot be cut off,
that segment takes no more records and the next flush starts a new one, so the stray bytes
can only ever be a tail that recovery cuts. An acknowledgement that cannot be written
still counts in memory; after a restart those records are delivered again, which the
receivers ignore (writes are idempotent).
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import zlib
from dataclasses import dataclass

from twisted.logger import Logger

from voipmon.counters import Counters

log = Logger()

RECORD = struct.Struct("<IQI")
MAX_RECORD = 64 * 1024 * 1024
SEGMENT_BYTES = 16 * 1024 * 1024
_SEGMENT_RE = re.compile(r"^seg-(\d{20})\.log$")
ACKED = "acked"
LOCK = "lock"


class QueueError(Exception):
    """The queue directory cannot be used (permissions, a full disk, another process...)."""


def _crc(seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(seq.to_bytes(8, "little")))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Segment:
    path: str
    first: int
    last: int      # highest seq stored; first - 1 when empty
    size: int


class DurableQueue:
    """An fsync'd FIFO of byte records with cumulative acknowledgements."""

    def __init__(self, directory: str, segment_bytes: int = SEGMENT_BYTES,
                 sync: bool = True) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.sync = sync
        self.acked = 0            # highest acknowledged seq
        self.durable = 0          # highest seq on disk (fsync'd)
        self._next = 1            # seq of the next append
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the last segment, open for appending
        self._sealed = False         # a failed write left bytes at its end: append no more
        self._buffer = bytearray()
        self._buffered = 0
        self._reader: tuple[int, int, int] | None = None  # (segment index, offset, next seq)
        self._read_file: tuple[str, object] | None = None
        self._lock_fd: int | None = None
        self.recovered_tail_bytes = 0
        self.open()

    # -- opening and recovery ----------------------------------------------------

    def open(self) -> None:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise QueueError(f"queue directory {self.directory}: {exc.strerror or exc}")
        self._lock()
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    def _recover(self) -> None:
        for name in os.listdir(self.directory):
            if name.startswith(ACKED + ".tmp"):
                os.unlink(os.path.join(self.directory, name))  # an ack write cut short
        self.acked = self._read_acked()
        names = sorted(n for n in os.listdir(self.directory) if _SEGMENT_RE.match(n))
        for position, name in enumerate(names):
            first = int(_SEGMENT_RE.match(name).group(1))
            segment = self._scan(os.path.join(self.directory, name), first,
                                 is_last=position == len(names) - 1)
            if self._segments and segment.first != self._segments[-1].last + 1:
                log.error("queue: segment {path} starts at {first}, expected {expected}; "
                          "records in between are missing", path=segment.path,
                          first=segment.first, expected=self._segments[-1].last + 1)
            self._segments.append(segment)
        last = self._segments[-1].last if self._segments else 0
        if self._segments and self.acked < self._segments[0].first - 1:
            self.acked = self._segments[0].first - 1
        self.durable = max(last, self.acked)
        self._next = self.durable + 1
        self._delete_acked_segments()
        if self._segments:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
        if self.depth:
            log.info("queue {directory}: {count} unacknowledged records on disk (seq "
                     "{first}..{last}) go first", directory=self.directory, count=self.depth,
                     first=self.acked + 1, last=self.durable)

    def _lock(self) -> None:
        path = os.path.join(self.directory, LOCK)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise QueueError(f"queue lock {path}: {exc.strerror or exc}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise QueueError(f"queue directory {self.directory} is in use by another process "
                             f"(or another queue object): one queue, one owner")
        self._lock_fd = fd

    def _read_acked(self) -> int:
        path = os.path.join(self.directory, ACKED)
        try:
            with open(path, "rb") as handle:
                text = handle.read()
        except FileNotFoundError:
            return 0
        match = re.fullmatch(rb"(\d+) ([0-9a-f]{8})\n", text)
        if not match or int(match.group(2), 16) != zlib.crc32(match.group(1)):
            log.error("queue: {path} is damaged; delivering everything still on disk again "
                      "(deliveries are idempotent)", path=path)
            return 0
        return int(match.group(1))

    def _scan(self, path: str, first: int, is_last: bool) -> _Segment:
        """Walk the records of one segment; cut a torn or corrupt tail."""
        expected = first
        good = 0
        with open(path, "rb") as handle:
            data = handle.read()
        size = len(data)
        while good + RECORD.size <= size:
            length, seq, crc = RECORD.unpack_from(data, good)
            end = good + RECORD.size + length
            if length > MAX_RECORD or end > size or seq != expected:
                break
            if _crc(seq, data[good + RECORD.size:end]) != crc:
                break
            expected += 1
            good = end
        if good != size:
            lost = size - good
            if is_last:
                log.warn("queue: cut {lost} bytes of an unfinished write at the end of {path}",
                         lost=lost, path=path)
            else:
                log.error("queue: {path} is corrupt after record {seq}; {lost} bytes dropped",
                          path=path, seq=expected - 1, lost=lost)
            self.recovered_tail_bytes += lost
            with open(path, "r+b") as handle:
                handle.truncate(good)
                handle.flush()
                os.fsync(handle.fileno())
        return _Segment(path, first, expected - 1, good)

    # -- writing -----------------------------------------------------------------

    def append(self, payload: bytes) -> int:
        """Buffer one record; it becomes readable (and safe) at the next ``flush``."""
        if len(payload) > MAX_RECORD:
            raise ValueError(f"record of {len(payload)} bytes exceeds {MAX_RECORD}")
        seq = self._next
        self._next += 1
        self._buffer += RECORD.pack(len(payload), seq, _crc(seq, payload))
        self._buffer += payload
        self._buffered += 1
        return seq

    @property
    def buffered(self) -> int:
        """Records appended but not yet flushed."""
        return self._buffered

    def flush(self) -> int:
        """Write and fsync every buffered record; returns the highest durable seq."""
        if not self._buffer:
            return self.durable
        if self._sealed or not self._segments or self._segments[-1].size >= self.segment_bytes:
            self._new_segment(self.durable + 1)
        segment = self._segments[-1]
        data = bytes(self._buffer)
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            if self.sync:
                os.fdatasync(self._fd)
        except OSError as exc:
            # Keep the records buffered; drop the partial write so the file stays clean.
            try:
                os.ftruncate(self._fd, segment.size)
            except OSError:
                self._sealed = True
            raise QueueError(f"queue: cannot write {segment.path}: {exc.strerror or exc}")
        segment.size += len(data)
        segment.last = self._next - 1
        self.durable = segment.last
        self._buffer = bytearray()
        self._buffered = 0
        return self.durable

    def _new_segment(self, first: int) -> None:
        path = os.path.join(self.directory, f"seg-{first:020d}.log")
        # A sealed segment holding no record has this very name: replace it.
        stale = bool(self._segments) and self._segments[-1].first == first
        try:
            if stale:
                self._close_reader()
                os.unlink(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise QueueError(f"queue: cannot start {path}: {exc.strerror or exc}")
        if stale:
            self._segments.pop()
            self._reader = None
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._sealed = False
        self._segments.append(_Segment(path, first, first - 1, 0))
        if self.sync:
            try:
                _fsync_dir(self.directory)
            except OSError as exc:
                raise QueueError(f"queue: cannot sync {self.directory}: {exc.strerror or exc}")

    # -- reading -----------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Durable records not yet acknowledged."""
        return self.durable - self.acked

    def read(self, after: int, max_records: int = 1000,
             max_bytes: int = 4 * 1024 * 1024) -> list[tuple[int, bytes]]:
        """Durable records with seq > ``after`` (and > acked), in order, within the limits.

        At least one record is returned when any is available, whatever its size.
        """
        start = max(after, self.acked) + 1
        if start > self.durable:
            return []
        if self._reader is None or self._reader[2] != start:
            self._reader = self._locate(start)
        index, offset, seq = self._reader
        out: list[tuple[int, bytes]] = []
        total = 0
        while seq <= self.durable and len(out) < max_records:
            segment = self._segments[index]
            if seq > segment.last:
                index, offset = index + 1, 0
                continue
            handle = self._handle(segment.path)
            handle.seek(offset)
            header = handle.read(RECORD.size)
            length, got, _crc_value = RECORD.unpack(header)
            if got != seq:
                raise QueueError(f"queue: {segment.path} changed under us at seq {seq}")
            if out and total + length > max_bytes:
                break
            out.append((seq, handle.read(length)))
            total += length
            offset += RECORD.size + length
            seq += 1
        self._reader = (index, offset, seq)
        return out

    def _locate(self, seq: int) -> tuple[int, int, int]:
        for index, segment in enumerate(self._segments):
            if segment.first <= seq <= segment.last:
                handle = self._handle(segment.path)
                offset, current = 0, segment.first
                while current < seq:
                    handle.seek(offset)
                    length = RECORD.unpack(handle.read(RECORD.size))[0]
                    offset += RECORD.size + length
                    current += 1
                return index, offset, seq
        raise QueueError(f"queue: seq {seq} is not on disk")

    def _handle(self, path: str):
        if self._read_file is None or self._read_file[0] != path:
            self._close_reader()
            self._read_file = (path, open(path, "rb"))  # noqa: SIM115 - kept open on purpose
        return self._read_file[1]

    def _close_reader(self) -> None:
        if self._read_file is not None:
            self._read_file[1].close()
            self._read_file = None

    # -- acknowledging -----------------------------------------------------------

    def ack(self, upto: int) -> int:
        """Everything up to ``upto`` was delivered; returns how many were new."""
        upto = min(upto, self.durable)
        if upto <= self.acked:
            return 0
        newly = upto - self.acked
        try:
            self._write_acked(upto)
        except OSError as exc:
            log.warn("queue: cannot record the acknowledgement of seq {seq} in {directory} "
                     "({error}); after a restart those records are delivered again, which "
                     "the receiver ignores", seq=upto, directory=self.directory,
                     error=exc.strerror or exc)
        self.acked = upto
        try:
            self._delete_acked_segments()
        except OSError as exc:
            # What stays on disk is acknowledged: the next open deletes it.
            log.warn("queue: cannot delete acknowledged records in {directory} ({error})",
                     directory=self.directory, error=exc.strerror or exc)
        return newly

    def _write_acked(self, upto: int) -> None:
        text = str(upto).encode()
        path = os.path.join(self.directory, ACKED)
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text + b" %08x\n" % zlib.crc32(text))
            if self.sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if self.sync:
            _fsync_dir(self.directory)

    def _delete_acked_segments(self) -> None:
        # Keep the last segment: it is the one being appended to.
        while len(self._segments) > 1 and self._segments[0].last <= self.acked:
            segment = self._segments.pop(0)
            if self._read_file is not None and self._read_file[0] == segment.path:
                self._close_reader()
            os.unlink(segment.path)
            self._reader = None
        if (len(self._segments) == 1 and self._segments[0].last <= self.acked
                and self._segments[0].size >= self.segment_bytes):
            # A full, fully acknowledged last segment: start afresh so it can go.
            segment = self._segments.pop()
            os.close(self._fd)
            self._fd = None
            self._close_reader()
            os.unlink(segment.path)
            self._reader = None

    @property
    def disk_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)

    def counters(self) -> Counters:
        """Records waiting (durable, not acknowledged), buffered, on disk; the highest
        durable and acknowledged sequence numbers."""
        return {"depth": self.depth, "buffered": self._buffered, "disk_bytes": self.disk_bytes,
                "durable": self.durable, "acked": self.acked}

    def close(self) -> None:
        """Flush what is buffered, close the files and give the queue up."""
        try:
            self.flush()
        finally:
            self._close_reader()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None
