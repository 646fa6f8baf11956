"""Merging a call's pcaps (SIP, RTP) into one capture ordered by time, streamed.

A call's packets are written by the spool writer into several classic pcap files. The
user wants one file. :func:`plan_merge` reads only the record headers to find each file's
complete records (a file still being written may end in a partial record) and so knows the
merged size before the first byte is sent; :meth:`MergePlan.chunks` then yields the merged
file in bounded chunks, never holding more than one chunk and one record per input.

A single input is passed through unchanged, so the merged file of a call with only a SIP
pcap is byte-for-byte that pcap.

Speed (bench/pcap_fetch.py): the scan and the merge read blocks, not a record at a time,
and go over a run of records of one length (RTP of one codec) at once with numpy; the
merge copies each input's records that come before the other inputs' next one as one
run, and passes the last input left through as it is. Inputs whose headers must be
rewritten (another byte order or time unit) are merged record by record.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

CHUNK = 64 * 1024
BLOCK = 1 << 20            # what one read takes of an input while scanning or merging
MAX_CAPLEN = 0x4000000
RUN_AFTER = 4              # records of one length in a row before looking for a run
_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),        # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),           # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}


class PcapMergeError(Exception):
    """An input is not a classic pcap, or the inputs cannot share one file."""


@dataclass(frozen=True)
class PcapInput:
    path: str
    header: bytes       # the 24-byte global header as found
    endian: str         # "<" or ">"
    ns_per_unit: int    # 1000 for microsecond files, 1 for nanosecond files
    linktype: int
    snaplen: int
    end: int            # offset just past the last complete record
    records: int


def same_length_run(block: bytes, pos: int, caplen: int, endian: str,
                    end: int | None = None) -> int:
    """How many records from ``pos`` in ``block`` have ``caplen`` bytes and lie whole in
    it: read at once (numpy), each one's length field where the one before ends. RTP of
    one codec comes in runs of records of one length; this is how the scan and the merge
    go over them without a Python step per record."""
    step = 16 + caplen
    fit = ((len(block) if end is None else end) - pos) // step
    if fit < 2:
        return 0
    lengths = np.ndarray((fit,), dtype=endian + "u4", buffer=block, offset=pos + 8,
                         strides=(step,))
    other = np.flatnonzero(lengths != caplen)
    return int(other[0]) if len(other) else fit


def read_input(path: str, limit: int | None = None) -> PcapInput:
    """Scan one pcap's record headers (not its data) up to ``limit`` bytes.

    The file is read in blocks and each header is read where it lies in its block (one
    ``unpack_from`` per record, a seek and a read per block); after ``RUN_AFTER`` records
    of one length, the run of records of that length is found at once."""
    with open(path, "rb") as handle:
        header = handle.read(24)
        if len(header) < 24 or header[:4] not in _MAGICS:
            raise PcapMergeError(f"{path}: not a classic pcap file")
        endian, ns_per_unit = _MAGICS[header[:4]]
        snaplen, linktype = struct.unpack_from(endian + "II", header, 16)
        size = handle.seek(0, 2) if limit is None else limit
        caplen_at = struct.Struct(endian + "I").unpack_from
        offset, count = 24, 0
        block, block_start = b"", 24
        previous, same = -1, 0
        while offset + 16 <= size:
            at = offset - block_start
            if at + 16 > len(block):
                handle.seek(offset)
                block, block_start, at = handle.read(min(BLOCK, size - offset)), offset, 0
                if len(block) < 16:
                    break
            caplen = caplen_at(block, at + 8)[0]
            if caplen > MAX_CAPLEN:
                raise PcapMergeError(f"{path}: corrupt record at offset {offset}")
            if caplen == previous:
                same += 1
                if same >= RUN_AFTER:
                    run = same_length_run(block, at, caplen, endian)
                    if run:
                        offset += run * (16 + caplen)
                        count += run
                        same = 0
                        continue
            previous, same = caplen, 0 if caplen != previous else same
            if offset + 16 + caplen > size:
                break  # a record still being written: stop before it
            offset += 16 + caplen
            count += 1
    return PcapInput(path, header, endian, ns_per_unit, linktype & 0x0FFFFFFF, snaplen,
                     offset, count)


@dataclass(frozen=True)
class MergePlan:
    """What will be sent: its exact size, and the inputs to interleave."""

    inputs: tuple[PcapInput, ...]
    size: int

    def chunks(self, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The merged pcap in chunks of about ``chunk_size`` bytes."""
        if len(self.inputs) == 1:
            yield from _file_range(self.inputs[0].path, 0, self.inputs[0].end, chunk_size)
            return
        first = self.inputs[0]
        header = bytearray(first.header)
        struct.pack_into(first.endian + "I", header, 16, max(i.snaplen for i in self.inputs))
        if all(_same_format(item, first) for item in self.inputs):
            yield from _merge_runs(self.inputs, bytes(header), chunk_size)
        else:
            yield from _merge_records(self.inputs, bytes(header), chunk_size)


def _same_format(item: PcapInput, out: PcapInput) -> bool:
    return item.endian == out.endian and item.ns_per_unit == out.ns_per_unit


def _merge_records(inputs: tuple[PcapInput, ...], header: bytes,
                   chunk_size: int) -> Iterator[bytes]:
    """The merge record by record, each header rewritten to the first input's format."""
    first = inputs[0]
    out_rec = struct.Struct(first.endian + "IIII")
    buffer = bytearray(header)
    streams = [_records(item, index, first, out_rec) for index, item in enumerate(inputs)]
    for _key, record in heapq.merge(*streams):
        buffer += record
        if len(buffer) >= chunk_size:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


class _Cursor:
    """Where one input of a merge is: a block of it in memory, the next record's key."""

    __slots__ = ("base", "block", "end", "endian", "handle", "index", "key", "path", "pos",
                 "scale", "unpack")

    def __init__(self, item: PcapInput, index: int) -> None:
        self.path = item.path
        self.index = index
        self.end = item.end
        self.scale = item.ns_per_unit
        self.endian = item.endian
        self.unpack = struct.Struct(item.endian + "III").unpack_from   # sec, frac, caplen
        self.handle = open(item.path, "rb")   # noqa: SIM115 (closed by the merge)
        self.block, self.base, self.pos = b"", 24, 0
        self.key: tuple[int, int, int] | None = None
        self.load(24)

    def load(self, offset: int, need: int = 16) -> None:
        """Read the block that starts at file offset ``offset`` (at least ``need`` bytes)."""
        self.handle.seek(offset)
        self.block = self.handle.read(min(max(BLOCK, need), self.end - offset))
        self.base, self.pos = offset, 0
        if offset < self.end and len(self.block) < min(need, self.end - offset):
            raise PcapMergeError(f"{self.path}: shrank while being read")
        self.head()

    def head(self) -> None:
        """The key of the record at ``pos`` (None at the end); reloads at a block's edge."""
        if self.base + self.pos >= self.end:
            self.key = None
            return
        if self.pos + 16 > len(self.block):
            self.load(self.base + self.pos)
            return
        sec, frac, caplen = self.unpack(self.block, self.pos)
        if self.pos + 16 + caplen > len(self.block):
            self.load(self.base + self.pos, 16 + caplen)
            return
        self.key = (sec, frac * self.scale, self.index)

    def run(self, bound: tuple[int, int, int] | None, limit: int) -> memoryview:
        """The records from ``pos`` that sort before ``bound`` (the other inputs' next
        one), within this block and about ``limit`` bytes; moves past them. Runs of
        records of one length are taken at once (``_before``)."""
        block, unpack, scale, index = self.block, self.unpack, self.scale, self.index
        start = pos = self.pos
        stop = min(len(block), self.end - self.base, start + limit)
        key = self.key
        previous, same = -1, 0
        while key is not None and (bound is None or key < bound):
            caplen = unpack(block, pos)[2]
            if caplen != previous:
                previous, same = caplen, 0
                pos += 16 + caplen
            else:
                same += 1
                taken = self._before(pos, caplen, stop, bound) if same >= RUN_AFTER else 0
                pos += max(taken, 1) * (16 + caplen)
                if taken:
                    same = 0
            if pos + 16 > stop:
                key = None
                break
            sec, frac, caplen = unpack(block, pos)
            if pos + 16 + caplen > stop:
                key = None
                break
            key = (sec, frac * scale, index)
        self.pos = pos
        piece = memoryview(block)[start:pos]
        if key is None:
            self.head()      # at the block's (or the run's) edge: find the next key
        else:
            self.key = key
        return piece

    def _before(self, pos: int, caplen: int, stop: int,
                bound: tuple[int, int, int] | None) -> int:
        """Of the run of records of ``caplen`` bytes from ``pos`` (the first sorts before
        ``bound``), how many in a row sort before ``bound``: their times read at once."""
        block = self.block
        count = same_length_run(block, pos, caplen, self.endian, stop)
        if count < 2 or bound is None:
            return count
        step = 16 + caplen
        secs = np.ndarray((count,), dtype=self.endian + "u4", buffer=block, offset=pos,
                          strides=(step,)).astype(np.int64)
        nanos = np.ndarray((count,), dtype=self.endian + "u4", buffer=block, offset=pos + 4,
                           strides=(step,)).astype(np.int64) * self.scale
        bound_sec, bound_ns, bound_index = bound
        before = (secs < bound_sec) | ((secs == bound_sec) & (
            (nanos < bound_ns) | ((nanos == bound_ns) & (self.index < bound_index))))
        return count if before.all() else int(np.argmin(before))

    def close(self) -> None:
        self.handle.close()


def _merge_runs(inputs: tuple[PcapInput, ...], header: bytes,
                chunk_size: int) -> Iterator[bytes]:
    """The merge of inputs of one format: each input's records that come before every
    other input's next one are copied as one run (the SIP of a call between two RTP
    packets, the RTP between two SIP messages), not one by one; once one input is left,
    the rest of it is passed through as it is."""
    cursors = [_Cursor(item, index) for index, item in enumerate(inputs) if item.end > 24]
    try:
        buffer = bytearray(header)
        live = [c for c in cursors if c.key is not None]
        while live:
            if len(live) == 1:
                last = live[0]
                if buffer:
                    yield bytes(buffer)
                    buffer.clear()
                rest = last.base + last.pos
                yield from _file_range(last.path, rest, last.end, chunk_size)
                break
            live.sort(key=lambda c: c.key)   # a handful of inputs
            current, bound = live[0], live[1].key
            piece = current.run(bound, chunk_size)
            if not buffer and len(piece) >= chunk_size // 2:
                yield bytes(piece)
            else:
                buffer += piece
                if len(buffer) >= chunk_size:
                    yield bytes(buffer)
                    buffer.clear()
            if current.key is None:
                live.remove(current)
        if buffer:
            yield bytes(buffer)
    finally:
        for cursor in cursors:
            cursor.close()


def plan_merge(paths: list[str]) -> MergePlan:
    """Scan ``paths`` and plan their merge; PcapMergeError if they cannot be merged."""
    if not paths:
        raise PcapMergeError("nothing to merge")
    inputs = tuple(read_input(path) for path in paths)
    linktypes = {item.linktype for item in inputs}
    if len(linktypes) > 1:
        raise PcapMergeError(f"inputs have different link types {sorted(linktypes)}")
    if len(inputs) == 1:
        return MergePlan(inputs, inputs[0].end)
    return MergePlan(inputs, 24 + sum(item.end - 24 for item in inputs))


def _file_range(path: str, start: int, end: int, chunk_size: int) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        handle.seek(start)
        left = end - start
        while left > 0:
            data = handle.read(min(chunk_size, left))
            if not data:
                raise PcapMergeError(f"{path}: shrank while being read")
            left -= len(data)
            yield data


def _records(item: PcapInput, index: int, out: PcapInput,
             out_rec: struct.Struct) -> Iterator[tuple[tuple[int, int, int], bytes]]:
    """(sort key, record bytes) of one input, headers rewritten to the output's format."""
    rec = struct.Struct(item.endian + "IIII")
    same = item.endian == out.endian and item.ns_per_unit == out.ns_per_unit
    scale = item.ns_per_unit
    pending = b""
    for data in _file_range(item.path, 24, item.end, CHUNK):
        data = pending + data if pending else data
        pos = 0
        while pos + 16 <= len(data):
            sec, frac, caplen, origlen = rec.unpack_from(data, pos)
            stop = pos + 16 + caplen
            if stop > len(data):
                break
            if same:
                record = data[pos:stop]
            else:
                sub = frac * scale // out.ns_per_unit
                record = out_rec.pack(sec, sub, caplen, origlen) + data[pos + 16:stop]
            yield (sec, frac * scale, index), record
            pos = stop
        pending = data[pos:]
