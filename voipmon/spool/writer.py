"""Per-call pcap files: buffered frames, a bounded set of open files, append mode.

Thousands of calls can be live at once, each with a SIP and an RTP pcap, far more than a
process may keep open. Each file is a ``PcapSink`` that buffers frames in memory (two list
appends per packet on the hot path) and writes them out in batches; writing goes through a
small LRU of open file handles, opened in append mode, so a file whose handle was evicted
is simply reopened and continued. A file keeps the link type of its first frame (the
original capture's, so tools decode it as captured); a frame of another link type is
counted and left out rather than written into a file that would then be unreadable.

A write error (disk full, directory removed) is counted and logged once per file and
drops that batch: one bad file must not stop the analysis of every other call.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from typing import BinaryIO

from twisted.logger import Logger

from voipmon.counters import Counters, Counts
from voipmon.packet.writers import pcap_global_header
from voipmon.spool.layout import resolve

log = Logger()

#: A sink writes its buffer out once it holds this many frames.
FLUSH_FRAMES = 256
_RECORD = struct.Struct("<IIII")


class SpoolStats(Counts):
    """Counters of a ``SpoolWriter`` (``SpoolWriter.counters``)."""

    def __init__(self) -> None:
        self.files = 0             # files created
        self.frames = 0            # frames written
        self.bytes = 0             # bytes written, headers included
        self.write_errors = 0
        self.linktype_mismatch = 0


class PcapSink:
    """The buffered frames of one pcap file.

    ``ts`` and ``frames`` are appended to directly by the engine's hot path (and
    ``caplens`` too when only headers are kept); everything else goes through ``add``.
    """

    __slots__ = ("caplens", "closed", "frames", "linktype", "relpath", "ts", "writer",
                 "written")

    def __init__(self, writer: SpoolWriter, relpath: str, header_only: bool = False):
        self.writer = writer
        self.relpath = relpath
        self.linktype: int | None = None
        self.ts: list[float] = []
        self.frames: list[bytes] = []
        self.caplens: list[int] | None = [] if header_only else None
        self.written = 0
        self.closed = False

    def accepts(self, linktype: int) -> bool:
        """Claim ``linktype`` for this file if it has none yet; False if it differs."""
        if self.linktype is None:
            self.linktype = linktype
        if self.linktype != linktype:
            self.writer.stats.linktype_mismatch += 1
            return False
        return True

    def add(self, ts: float, frame: bytes, linktype: int, caplen: int | None = None) -> None:
        """Buffer one frame (``caplen``: bytes to keep when only headers are saved)."""
        if self.closed or not self.accepts(linktype):
            return
        self.ts.append(ts)
        self.frames.append(frame)
        if self.caplens is not None:
            self.caplens.append(len(frame) if caplen is None else caplen)
        if len(self.frames) >= FLUSH_FRAMES:
            self.flush()

    @property
    def has_frames(self) -> bool:
        return self.written > 0 or bool(self.frames)

    def flush(self) -> None:
        if not self.frames:
            return
        ts, frames, caplens = self.ts, self.frames, self.caplens
        self.ts, self.frames = [], []
        if caplens is not None:
            self.caplens = []
        pack = _RECORD.pack
        parts: list[bytes] = []
        append = parts.append
        if caplens is None:
            for t, frame in zip(ts, frames, strict=True):
                usec = round(t * 1e6)
                n = len(frame)
                append(pack(usec // 1000000, usec % 1000000, n, n))
                append(frame)
        else:
            for t, frame, cap in zip(ts, frames, caplens, strict=True):
                usec = round(t * 1e6)
                n = len(frame)
                cap = min(n, max(cap, 0))
                append(pack(usec // 1000000, usec % 1000000, cap, n))
                append(frame[:cap])
        self.written += len(frames)
        self.writer._write(self, b"".join(parts), len(frames))

    def close(self) -> None:
        """Write what is buffered and give up the file handle."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        self.writer._release(self)


class SpoolWriter:
    """Writes per-call pcaps under ``spooldir`` with at most ``max_open`` files open."""

    def __init__(self, spooldir: str, max_open: int = 64):
        self.spooldir = spooldir
        self.max_open = max(1, max_open)
        self.stats = SpoolStats()
        self._open: OrderedDict[str, BinaryIO] = OrderedDict()
        self._failed: set[str] = set()
        self._dirs: set[str] = set()

    def counters(self) -> Counters:
        return self.stats.counters()

    def open(self, relpath: str, header_only: bool = False) -> PcapSink:
        """A sink for the pcap at spool-relative ``relpath`` (created on first write)."""
        resolve(self.spooldir, relpath)  # refuses a path outside the spool up front
        return PcapSink(self, relpath, header_only)

    def close(self) -> None:
        """Close every open handle (sinks keep working: they reopen on demand)."""
        while self._open:
            _, handle = self._open.popitem(last=False)
            self._close_handle(handle)

    def _close_handle(self, handle: BinaryIO) -> None:
        try:
            handle.close()
        except OSError as e:
            self.stats.write_errors += 1
            log.warn("spool: closing {name} failed: {error}", name=handle.name, error=e)

    def _release(self, sink: PcapSink) -> None:
        handle = self._open.pop(sink.relpath, None)
        if handle is not None:
            self._close_handle(handle)

    def _handle(self, sink: PcapSink) -> BinaryIO:
        handle = self._open.get(sink.relpath)
        if handle is not None:
            self._open.move_to_end(sink.relpath)
            return handle
        path = resolve(self.spooldir, sink.relpath)
        folder = os.path.dirname(path)
        if folder not in self._dirs:
            os.makedirs(folder, exist_ok=True)
            if len(self._dirs) > 4096:
                self._dirs.clear()
            self._dirs.add(folder)
        handle = open(path, "ab")  # noqa: SIM115 - kept open in the LRU
        linktype = 1 if sink.linktype is None else sink.linktype  # 0 is DLT_NULL
        try:
            if handle.tell() == 0:
                handle.write(pcap_global_header(linktype))
                self.stats.files += 1
                self.stats.bytes += 24
            elif sink.written == 0 and not _same_linktype(path, linktype):
                handle.close()
                raise OSError(f"{path} exists with another link type or format")
        except OSError:
            handle.close()
            raise
        self._open[sink.relpath] = handle
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            self._close_handle(old)
        return handle

    def _write(self, sink: PcapSink, data: bytes, count: int) -> None:
        try:
            self._handle(sink).write(data)
        except (OSError, ValueError) as e:
            self.stats.write_errors += 1
            if sink.relpath not in self._failed:
                if len(self._failed) > 4096:
                    self._failed.clear()
                self._failed.add(sink.relpath)
                log.warn("spool: cannot write {relpath}: {error}", relpath=sink.relpath,
                         error=e)
            return
        self.stats.frames += count
        self.stats.bytes += len(data)


def _same_linktype(path: str, linktype: int) -> bool:
    """Does the existing pcap at ``path`` have our format and ``linktype``?"""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return False
    return len(head) == 24 and head[:4] == b"\xd4\xc3\xb2\xa1" and \
        struct.unpack_from("<I", head, 20)[0] & 0xFFFF == linktype
