"""Merging a call's pcaps (SIP, RTP) into one capture ordered by time, streamed.

A call's packets are written by the spool writer into several classic pcap files. The
user wants one file. :func:`plan_merge` reads only the record headers to find each file's
complete records (a file still being written may end in a partial record) and so knows the
merged size before the first byte is sent; :meth:`MergePlan.chunks` then yields the merged
file in bounded chunks, never holding more than one chunk and one record per input.

A single input is passed through unchanged, so the merged file of a call with only a SIP
pcap is byte-for-byte that pcap.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterator
from dataclasses import dataclass

CHUNK = 64 * 1024
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


def read_input(path: str, limit: int | None = None) -> PcapInput:
    """Scan one pcap's record headers (not its data) up to ``limit`` bytes."""
    with open(path, "rb") as handle:
        header = handle.read(24)
        if len(header) < 24 or header[:4] not in _MAGICS:
            raise PcapMergeError(f"{path}: not a classic pcap file")
        endian, ns_per_unit = _MAGICS[header[:4]]
        snaplen, linktype = struct.unpack_from(endian + "II", header, 16)
        size = handle.seek(0, 2) if limit is None else limit
        rec = struct.Struct(endian + "IIII")
        offset, count = 24, 0
        while offset + 16 <= size:
            handle.seek(offset)
            head = handle.read(16)
            if len(head) < 16:
                break
            caplen = rec.unpack(head)[2]
            if caplen > 0x4000000:
                raise PcapMergeError(f"{path}: corrupt record at offset {offset}")
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
        out_rec = struct.Struct(first.endian + "IIII")
        header = bytearray(first.header)
        struct.pack_into(first.endian + "I", header, 16, max(i.snaplen for i in self.inputs))
        buffer = bytearray(header)
        streams = [_records(item, index, first, out_rec) for index, item in
                   enumerate(self.inputs)]
        for _key, record in heapq.merge(*streams):
            buffer += record
            if len(buffer) >= chunk_size:
                yield bytes(buffer)
                buffer.clear()
        if buffer:
            yield bytes(buffer)


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
