"""Tests for voipmon.protocols.compression."""

from __future__ import annotations

import os
import struct
import zlib

import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from voipmon.protocols.compression import (
    CODECS,
    DecompressionError,
    ICodec,
    get_codec,
)

SAMPLE = b"INVITE sip:bob@example.com SIP/2.0\r\n" * 200 + os.urandom(300)


class CodecTests(SynchronousTestCase):
    def test_every_config_name_has_a_codec(self) -> None:
        """The four server_type_compress values map to codecs that provide ICodec."""
        self.assertEqual(sorted(CODECS), ["gzip", "lzo", "none", "zstd"])
        for name in CODECS:
            codec = get_codec(name)
            self.assertTrue(ICodec.providedBy(codec))
            self.assertEqual(codec.name, name)

    def test_round_trip(self) -> None:
        """Each codec gives back exactly what it compressed, and compresses text."""
        for name in CODECS:
            codec = get_codec(name)
            packed = codec.compress(SAMPLE)
            self.assertEqual(codec.decompress(packed, len(SAMPLE)), SAMPLE, name)
            if name != "none":
                self.assertLess(len(packed), len(SAMPLE) // 2, name)

    def test_empty_payload(self) -> None:
        """An empty payload survives every codec."""
        for name in CODECS:
            codec = get_codec(name)
            self.assertEqual(codec.decompress(codec.compress(b""), 0), b"", name)

    def test_limit_refuses_bombs(self) -> None:
        """Output over the limit is refused for every codec, before it is produced."""
        bomb = b"\0" * 1_000_000
        for name in CODECS:
            codec = get_codec(name)
            packed = codec.compress(bomb)
            with self.assertRaises(DecompressionError, msg=name):
                codec.decompress(packed, 999_999)
            self.assertEqual(len(codec.decompress(packed, 1_000_000)), 1_000_000)

    def test_lzo_declared_size_checked_first(self) -> None:
        """An lzo payload declaring 4 GiB is refused without decompressing anything."""
        codec = get_codec("lzo")
        liar = struct.pack(">I", 0xFFFFFFFF) + b"\x11\x00\x00"
        with self.assertRaises(DecompressionError) as caught:
            codec.decompress(liar, 1 << 20)
        self.assertIn("4294967295", str(caught.exception))

    def test_zstd_declared_size_checked_first(self) -> None:
        """A zstd frame whose header declares more than the limit is refused."""
        packed = zstandard.ZstdCompressor(write_content_size=True).compress(b"x" * 5000)
        with self.assertRaises(DecompressionError) as caught:
            get_codec("zstd").decompress(packed, 4999)
        self.assertIn("5000", str(caught.exception))

    def test_zstd_without_declared_size_is_bounded(self) -> None:
        """A zstd frame without a content size is still bounded by the limit."""
        packed = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 5000)
        codec = get_codec("zstd")
        with self.assertRaises(DecompressionError):
            codec.decompress(packed, 4000)
        self.assertEqual(codec.decompress(packed, 5000), b"x" * 5000)

    def test_gzip_truncated(self) -> None:
        """A truncated gzip stream is an error, not a short payload."""
        packed = get_codec("gzip").compress(SAMPLE)
        with self.assertRaises(DecompressionError):
            get_codec("gzip").decompress(packed[: len(packed) // 2], len(SAMPLE))

    def test_gzip_is_real_gzip(self) -> None:
        """The gzip codec writes the gzip format (readable by zlib with wbits=31)."""
        packed = get_codec("gzip").compress(SAMPLE)
        self.assertEqual(packed[:2], b"\x1f\x8b")
        self.assertEqual(zlib.decompress(packed, 31), SAMPLE)

    def test_none_limit(self) -> None:
        """The identity codec also enforces the limit."""
        with self.assertRaises(DecompressionError):
            get_codec("none").decompress(b"abc", 2)

    def test_garbage_is_an_error(self) -> None:
        """Random bytes give DecompressionError from every real codec, never a crash."""
        for name in ("zstd", "gzip", "lzo"):
            codec = get_codec(name)
            for seed in range(200):
                garbage = bytes((seed * 31 + i * 17) % 256 for i in range(64 + seed))
                try:
                    out = codec.decompress(garbage, 1 << 16)
                except DecompressionError:
                    continue
                self.assertLessEqual(len(out), 1 << 16)

    def test_unknown_name(self) -> None:
        """An unknown codec name is a KeyError (config validation prevents it)."""
        self.assertRaises(KeyError, get_codec, "snappy")

    @settings(max_examples=60, deadline=None)
    @given(st.binary(max_size=5000), st.sampled_from(sorted(CODECS)))
    def test_round_trip_any_bytes(self, data: bytes, name: str) -> None:
        """Any byte string round-trips through any codec."""
        codec = get_codec(name)
        self.assertEqual(codec.decompress(codec.compress(data), len(data)), data)
