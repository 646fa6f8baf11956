"""Channel compression codecs: zstd, gzip, lzo and none (``server_type_compress``).

Each codec compresses a whole frame payload and decompresses with a hard output limit
checked *before* the output is allocated, so a small frame that claims to expand to
gigabytes (a decompression bomb) is refused instead of eating the central's memory.
"""

from __future__ import annotations

import struct
import zlib

import lzo
import zstandard
from zope.interface import Attribute, Interface, implementer


class DecompressionError(ValueError):
    """A payload is corrupt or would expand beyond the allowed size."""


class ICodec(Interface):
    name = Attribute("The config name: zstd, gzip, lzo or none.")

    def compress(data):
        """Compress ``data`` (bytes-like) into bytes."""

    def decompress(data, limit):
        """Decompress ``data``; raise DecompressionError beyond ``limit`` bytes or if corrupt."""


@implementer(ICodec)
class NoCompression:
    name = "none"

    def compress(self, data: bytes) -> bytes:
        return bytes(data)

    def decompress(self, data: bytes, limit: int) -> bytes:
        if len(data) > limit:
            raise DecompressionError(f"payload of {len(data)} bytes exceeds {limit}")
        return bytes(data)


@implementer(ICodec)
class ZstdCodec:
    name = "zstd"

    def __init__(self, level: int = 3) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
        self._decompressor = zstandard.ZstdDecompressor()

    def compress(self, data: bytes) -> bytes:
        return self._compressor.compress(data)

    def decompress(self, data: bytes, limit: int) -> bytes:
        try:
            size = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise DecompressionError(f"corrupt zstd frame: {exc}")
        # The declared size is what zstandard would allocate: check it first. An
        # undeclared size (-1) is bounded by max_output_size instead.
        if size > limit:
            raise DecompressionError(f"zstd frame declares {size} bytes, over the {limit} limit")
        try:
            return self._decompressor.decompress(data, max_output_size=limit)
        except zstandard.ZstdError as exc:
            raise DecompressionError(f"corrupt zstd frame: {exc}")


@implementer(ICodec)
class GzipCodec:
    name = "gzip"

    def __init__(self, level: int = 6) -> None:
        self.level = level

    def compress(self, data: bytes) -> bytes:
        compressor = zlib.compressobj(self.level, zlib.DEFLATED, 31)
        return compressor.compress(data) + compressor.flush()

    def decompress(self, data: bytes, limit: int) -> bytes:
        decompressor = zlib.decompressobj(31)
        try:
            out = decompressor.decompress(data, limit + 1)
        except zlib.error as exc:
            raise DecompressionError(f"corrupt gzip data: {exc}")
        if len(out) > limit or decompressor.unconsumed_tail:
            raise DecompressionError(f"gzip data expands beyond the {limit} limit")
        if not decompressor.eof:
            raise DecompressionError("truncated gzip data")
        return out


_LZO_SIZE = struct.Struct(">I")


@implementer(ICodec)
class LzoCodec:
    """LZO1X with our own 4-byte output length in front, checked before decompressing."""

    name = "lzo"

    def compress(self, data: bytes) -> bytes:
        return _LZO_SIZE.pack(len(data)) + lzo.compress(bytes(data), 1, False)

    def decompress(self, data: bytes, limit: int) -> bytes:
        if len(data) < _LZO_SIZE.size:
            raise DecompressionError("truncated lzo data")
        (size,) = _LZO_SIZE.unpack_from(data)
        if size > limit:
            raise DecompressionError(f"lzo data declares {size} bytes, over the {limit} limit")
        try:
            out = lzo.decompress(bytes(data[_LZO_SIZE.size:]), False, size)
        except lzo.error as exc:
            raise DecompressionError(f"corrupt lzo data: {exc}")
        if len(out) != size:
            raise DecompressionError(f"lzo data gave {len(out)} bytes, declared {size}")
        return out


CODECS = {
    "zstd": ZstdCodec,
    "gzip": GzipCodec,
    "lzo": LzoCodec,
    "none": NoCompression,
}


def get_codec(name: str) -> ICodec:
    """A fresh codec by config name; KeyError for an unknown name."""
    return CODECS[name]()
