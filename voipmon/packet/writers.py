"""Packers for classic pcap files (microsecond, native little-endian), shared by whoever writes
captures (the per-call spool, tests). Only headers: the caller owns the file."""

from __future__ import annotations

import struct

_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


def pcap_global_header(linktype: int, snaplen: int = 262144) -> bytes:
    """The 24-byte header of a little-endian microsecond pcap file of ``linktype``."""
    return _GLOBAL.pack(0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)


def pcap_record_header(ts: float, caplen: int, origlen: int | None = None) -> bytes:
    """The 16-byte header of one record at capture time ``ts`` (epoch seconds)."""
    usec = round(ts * 1e6)
    return _RECORD.pack(usec // 1000000, usec % 1000000, caplen,
                        caplen if origlen is None else origlen)


def pcap_record(ts: float, frame: bytes) -> bytes:
    """Header and data of one record."""
    n = len(frame)
    usec = round(ts * 1e6)
    return _RECORD.pack(usec // 1000000, usec % 1000000, n, n) + frame
