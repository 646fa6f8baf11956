"""Capture-file readers: classic pcap and pcapng, yielding ``(ts, linktype, frame)``.

Both read the file in big chunks and walk the records with ``struct.unpack_from``: one
slice per frame and no per-packet objects, because the reader is on the hot path of
``voipmon-analyze`` and of ``--read-pcap``. Gzip-compressed captures are read too, as
tshark reads them. A file that is neither format, or a record whose length cannot be
right, or a timestamp no date can show, raises ``CaptureFormatError`` naming the file and
the byte offset (of the decompressed data, for a gzip'd capture). A record cut short by
the end of the file (a capture that was still being written) ends the iteration cleanly;
``truncated`` counts it and ``notes`` says where. Either way the records before are
yielded first.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Generator, Iterable, Iterator
from itertools import repeat
from typing import BinaryIO

CHUNK = 1 << 20
#: libpcap refuses records longer than this (MAXIMUM_SNAPLEN) unless the snaplen is larger.
MAX_SNAPLEN = 262144
#: pcapng blocks longer than this are treated as corruption rather than read into memory.
MAX_BLOCK = 16 << 20
#: The latest capture time a record may have: the end of year 9999, the last a date shows.
#: (A classic pcap's 32-bit seconds cannot go beyond 2106; pcapng's 64-bit times can.)
MAX_TIMESTAMP = 253402300799.0

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_MAGIC_KUZNETZOV = 0xA1B2CD34  # "modified" pcap: 8 more bytes per record header
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D

Record = tuple[float, int, bytes]


class CaptureFormatError(ValueError):
    """The file is not a capture we can read, or it is corrupt at ``offset``."""

    def __init__(self, name: str, offset: int, reason: str):
        super().__init__(f"{name}: at byte offset {offset}: {reason}")
        self.name = name
        self.offset = offset
        self.reason = reason


class CaptureReader:
    """Iterate over the frames of a pcap or pcapng file (detected from the first bytes).

    ``linktypes`` lists the link types seen so far (pcap: one; pcapng: one per interface),
    ``format`` is ``"pcap"`` or ``"pcapng"``, ``frames`` counts the records yielded.
    """

    def __init__(self, source: str | BinaryIO, name: str | None = None):
        if isinstance(source, str | bytes):
            self.name = name or str(source)
            self._file: BinaryIO = open(source, "rb")  # noqa: SIM115 - closed by close()
            self._owned = True
        else:
            self.name = name or getattr(source, "name", "<stream>")
            self._file = source
            self._owned = False
        self.truncated = 0
        self.notes: list[str] = []
        self.linktypes: list[int] = []
        self.frames = 0
        self.bytes_read = 0
        self._delivered = 0  # bytes (decompressed) that _read has returned
        self._error: CaptureFormatError | None = None
        self.compressed = False
        self._eof = False
        self._started = False
        head = self._read(CHUNK)
        if head[:2] == b"\x1f\x8b":  # gzip: a .pcap.gz or .pcapng.gz, as tshark reads them
            head = self._gunzip(source)
        self._head = head
        if len(head) < 4:
            self.close()
            raise CaptureFormatError(self.name, 0, "file too short to be a pcap or pcapng file")
        (magic_le,) = struct.unpack_from("<I", head)
        (magic_be,) = struct.unpack_from(">I", head)
        if magic_le == PCAPNG_SHB:
            self.format = "pcapng"
        elif PCAP_MAGIC_US in (magic_le, magic_be) or PCAP_MAGIC_NS in (magic_le, magic_be) \
                or PCAP_MAGIC_KUZNETZOV in (magic_le, magic_be):
            self.format = "pcap"
            self._pcap_header(head, magic_le, magic_be)
        else:
            self.close()
            raise CaptureFormatError(
                self.name, 0, f"not a pcap or pcapng file (magic 0x{magic_be:08x})")

    def _gunzip(self, source: str | BinaryIO) -> bytes:
        if self._owned:
            self._file.close()
            self._file = gzip.open(source, "rb")  # type: ignore[assignment]  # noqa: SIM115
        elif self._file.seekable():
            self._file.seek(0)
            self._file = gzip.GzipFile(fileobj=self._file, mode="rb")  # type: ignore[assignment]
        else:
            raise CaptureFormatError(self.name, 0, "gzip-compressed capture on a stream that "
                                     "cannot seek; decompress it first")
        self.compressed = True
        return self._read(CHUNK)

    def _read(self, n: int) -> bytes:
        if self._error is not None:
            raise self._error
        if not self.compressed:
            data = self._file.read(n)
            self._delivered += len(data)
            return data
        # read1 in a loop, so a stream cut short loses only its last chunk
        out: list[bytes] = []
        got = 0
        while got < n and not self._eof:
            try:
                chunk = self._file.read1(n - got)  # type: ignore[attr-defined]
            except EOFError:
                self._eof = True
                self.truncated += 1
                self.notes.append(f"{self.name}: compressed data ends early, at byte offset "
                                  f"{self._delivered + got} of the decompressed data; "
                                  "stopped there")
                break
            except (OSError, zlib.error) as e:
                error = CaptureFormatError(self.name, self._delivered + got,
                                           f"cannot read compressed data: {e}")
                if not got:
                    raise error from e
                self._error = error  # raised by the next read, once these bytes are used
                break
            if not chunk:
                self._eof = True
                break
            out.append(chunk)
            got += len(chunk)
        self._delivered += got
        return b"".join(out)

    def _pcap_header(self, head: bytes, magic_le: int, magic_be: int) -> None:
        if len(head) < 24:
            self.close()
            raise CaptureFormatError(self.name, len(head), "pcap global header is truncated")
        magic = magic_le if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_KUZNETZOV) \
            else magic_be
        self._order = "<" if magic == magic_le else ">"
        self._scale = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
        self._extra = 8 if magic == PCAP_MAGIC_KUZNETZOV else 0
        _, _, _, _, snaplen, network = struct.unpack_from(self._order + "HHiIII", head, 4)
        self.snaplen = snaplen
        self.linktypes.append(network & 0xFFFF)

    def __iter__(self) -> Iterator[Record]:
        if self.format == "pcap":
            return self._iter_pcap()
        return self._iter_pcapng()

    def close(self) -> None:
        if self._owned:
            self._file.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _truncated(self, offset: int, have: int, need: int, what: str) -> None:
        self.truncated += 1
        self.notes.append(
            f"{self.name}: {what} at byte offset {offset} is truncated "
            f"({have} of {need} bytes); stopped there")

    def batches(self) -> Iterator[Iterable[Record]]:
        """The records in batches, for a consumer with a loop of its own (the engine's fast
        path, the decoder's ``feed_all``). A classic pcap gives one batch per buffer read:
        the buffer's records walked here, their times and frames in two lists zipped with
        the link type, so no tuple is made per frame (the consumer's loop reuses zip's);
        the frames of a batch are counted in ``frames`` when the next one is asked for.
        A pcapng file is one batch, its records as iteration gives them. Once iteration
        has begun, a classic pcap gives no more batches."""
        if self.format == "pcap":
            return self._pcap_batches()
        return iter((self._iter_pcapng(),))

    def _pcap_chunks(self) -> Generator[bytes, tuple[int, int], None]:
        """The file in buffers that each start with a record. Send back ``(offset, frames)``:
        where in the buffer the first record that is not complete there starts, and how
        many records were taken; the next buffer starts with that record."""
        read = self._read
        hlen = 16 + self._extra
        limit = max(self.snaplen, MAX_SNAPLEN)
        unpack = struct.Struct(self._order + "III4x").unpack_from
        buf = self._head[24:]
        self._head = b""
        base = 24  # file offset of buf[0]
        pos = 0
        try:
            while True:
                pos, frames = yield buf
                self.frames += frames
                n = len(buf)
                if pos + hlen <= n:
                    incl = unpack(buf, pos)[2]
                    if incl > limit:
                        raise CaptureFormatError(
                            self.name, base + pos,
                            f"record length {incl} exceeds the maximum {limit}")
                more = read(CHUNK)
                if not more:
                    if pos < n:
                        need = hlen + (unpack(buf, pos)[2] if pos + hlen <= n else 0)
                        self._truncated(base + pos, n - pos, need, "last pcap record")
                    return
                buf = buf[pos:] + more
                base += pos
                pos = 0
        finally:
            self.bytes_read = base + pos

    def _pcap_batches(self) -> Iterator[Iterable[Record]]:
        """The one walk of a classic pcap's records (see ``batches``)."""
        if self._started:
            return
        self._started = True
        hlen = 16 + self._extra
        scale = self._scale
        linktype = self.linktypes[0]
        # the captured length is unsigned: a corrupt one can only look too long (caught
        # where the buffer ends), never negative (which walked a buffer backwards)
        unpack = struct.Struct(self._order + "III4x").unpack_from
        chunks = self._pcap_chunks()
        try:
            buf = next(chunks)
            while True:
                times: list[float] = []
                frames: list[bytes] = []
                add_time = times.append
                add_frame = frames.append
                pos = 0
                size = len(buf)
                last = size - hlen  # where the last record header can start
                while pos <= last:
                    sec, frac, incl = unpack(buf, pos)
                    p = pos + hlen
                    end = p + incl
                    if end > size:
                        break
                    add_time(sec + frac * scale)
                    add_frame(buf[p:end])
                    pos = end
                if frames:
                    yield zip(times, repeat(linktype), frames)
                buf = chunks.send((pos, len(frames)))
        except StopIteration:
            return
        finally:
            chunks.close()

    def _iter_pcap(self) -> Iterator[Record]:
        for batch in self._pcap_batches():
            yield from batch

    def _iter_pcapng(self) -> Iterator[Record]:
        read = self._read
        buf = self._head
        self._head = b""
        pos = 0
        base = 0
        order = "<"
        u32 = struct.Struct("<I").unpack_from
        epb = struct.Struct("<IIIII").unpack_from
        block_head = struct.Struct("<II").unpack_from
        # per-interface (linktype, divisor, offset, snaplen) of the current section
        ifaces: list[tuple[int, int, int, int]] = []
        frames = 0
        last_ts = 0.0
        try:
            while True:
                n = len(buf)
                while pos + 12 <= n:
                    btype, blen = block_head(buf, pos)
                    if btype == PCAPNG_SHB:
                        if pos + 12 > n:
                            break
                        (bom,) = u32(buf, pos + 8)
                        if bom == PCAPNG_BOM:
                            order = "<"
                        elif bom == 0x4D3C2B1A:
                            order = ">"
                        else:
                            raise CaptureFormatError(
                                self.name, base + pos, "pcapng section header has a bad "
                                f"byte-order magic 0x{bom:08x}")
                        u32 = struct.Struct(order + "I").unpack_from
                        epb = struct.Struct(order + "IIIII").unpack_from
                        block_head = struct.Struct(order + "II").unpack_from
                        btype, blen = block_head(buf, pos)
                        ifaces = []
                    if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                        raise CaptureFormatError(
                            self.name, base + pos,
                            f"pcapng block type 0x{btype:x} has an impossible length {blen}")
                    end = pos + blen
                    if end > n:
                        break
                    if btype == 6 or btype == 2:  # Enhanced Packet Block, obsolete Packet Block
                        iface, hi, lo, caplen, _orig = epb(buf, pos + 8)
                        if btype == 2:  # a 16-bit interface ID, then a 16-bit drops count
                            iface = struct.unpack_from(order + "H", buf, pos + 8)[0]
                        if iface >= len(ifaces) or 28 + caplen + 4 > blen:
                            raise CaptureFormatError(
                                self.name, base + pos,
                                f"{'enhanced packet' if btype == 6 else 'packet'} block: "
                                f"interface {iface} of {len(ifaces)} "
                                f"or capture length {caplen} does not fit its block")
                        linktype, div, offset, _ = ifaces[iface]
                        last_ts = (hi << 32 | lo) / div + offset
                        if not 0.0 <= last_ts <= MAX_TIMESTAMP:
                            raise CaptureFormatError(
                                self.name, base + pos, f"packet block timestamp {last_ts:.6g} "
                                "is before 1970 or after 9999")
                        yield (last_ts, linktype, buf[pos + 28:pos + 28 + caplen])
                        frames += 1
                    elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
                        if not ifaces:
                            raise CaptureFormatError(
                                self.name, base + pos, "simple packet block before any "
                                "interface description block")
                        (orig,) = u32(buf, pos + 8)
                        linktype, _, _, snap = ifaces[0]
                        caplen = min(orig, blen - 16, snap or orig)
                        # no timestamp of its own: it came after the previous packet
                        yield (last_ts, linktype, buf[pos + 12:pos + 12 + caplen])
                        frames += 1
                    elif btype == 1:  # Interface Description Block
                        ifaces.append(self._idb(buf, pos, blen, order, base))
                        self.linktypes.append(ifaces[-1][0])
                    pos = end
                more = read(CHUNK)
                if not more:
                    if pos < n:
                        need = block_head(buf, pos)[1] if pos + 8 <= n else 12
                        self._truncated(base + pos, n - pos, need, "last pcapng block")
                    return
                buf = buf[pos:] + more
                base += pos
                pos = 0
        finally:
            self.frames += frames
            self.bytes_read = base + pos

    def _idb(self, buf: bytes, pos: int, blen: int, order: str,
             base: int) -> tuple[int, int, int, int]:
        if blen < 20:
            raise CaptureFormatError(self.name, base + pos, "interface description block "
                                     f"of length {blen} is too short")
        linktype, _, snaplen = struct.unpack_from(order + "HHI", buf, pos + 8)
        div, offset = 1000000, 0
        opt = pos + 16
        end = pos + blen - 4
        while opt + 4 <= end:
            code, olen = struct.unpack_from(order + "HH", buf, opt)
            if code == 0:
                break
            val = opt + 4
            if val + olen > end:
                break
            if code == 9 and olen >= 1:  # if_tsresol
                r = buf[val]
                div = 1 << (r & 0x7F) if r & 0x80 else 10 ** r
            elif code == 14 and olen >= 8:  # if_tsoffset, seconds
                (offset,) = struct.unpack_from(order + "q", buf, val)
            opt = val + ((olen + 3) & ~3)
        return (linktype, div, offset, snaplen)


def batches(records: Iterable[Record]) -> Iterator[Iterable[Record]]:
    """``records`` in batches: a ``CaptureReader``'s own (``CaptureReader.batches``),
    anything else as one batch."""
    if isinstance(records, CaptureReader):
        return records.batches()
    return iter((records,))


def read_capture(path: str) -> Iterator[Record]:
    """Yield every ``(ts, linktype, frame)`` of the capture at ``path`` and close it."""
    with CaptureReader(path) as reader:
        yield from reader
