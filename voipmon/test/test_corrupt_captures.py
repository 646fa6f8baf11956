"""Corrupt and truncated captures, in voipmon-analyze and in the sensor's --read-pcap.

Every public capture is damaged in many places, the same way on every run: cut short,
given absurd record lengths, bits flipped; as pcap or pcapng, plain and gzip'd. Whatever
the damage: no traceback, and when the file is corrupt or cut, exit status 1 with one
line naming the file and the byte offset, written after the calls read before the damage
(exactly those a clean copy of the capture up to there gives). A closed stdout
(``voipmon-analyze F | head``) ends the command quietly, as SIGPIPE ends any Unix tool.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import zlib

from twisted.trial.unittest import SynchronousTestCase

from voipmon import cli
from voipmon.test.channel_support import write_calls_pcap
from voipmon.test.common import public_pcaps
from voipmon.test.test_sensor_service import CAPTURE, Base, comparable, expected_cdrs

# The lengths the report saw (0xB3492E60 is the offset -1287056544 struct complained of),
# and others no buffer holds.
ABSURD = (0xB3492E60, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 0x01000000)


def command() -> list[str]:
    """The installed ``voipmon-analyze`` (or the module, where it is not installed)."""
    script = os.path.join(os.path.dirname(sys.executable), "voipmon-analyze")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "voipmon.cli"]


def records(data: bytes) -> tuple[str, list[tuple[int, int, int]]]:
    """The byte order and (start, end, offset of the length field) of each record (pcap)
    or block (pcapng) of a capture: the reference walk the damage is aimed with."""
    out = []
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        pos = 0
        while pos + 12 <= len(data):
            length = struct.unpack_from(order + "I", data, pos + 4)[0]
            out.append((pos, pos + length, pos + 4))
            pos += length
        return order, out
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\x34\xcd\xb2\xa1") \
        else ">"
    header = 24 if data[:4] in (b"\x34\xcd\xb2\xa1", b"\xa1\xb2\xcd\x34") else 16
    pos = 24
    while pos + header <= len(data):
        length = struct.unpack_from(order + "I", data, pos + 8)[0]
        out.append((pos, pos + header + length, pos + 8))
        pos += header + length
    return order, out


class Streams:
    """stdout and stderr that also keep the order in which their lines were written."""

    def __init__(self) -> None:
        self.order: list[tuple[str, str]] = []
        self.out = self._Stream(self, "out")
        self.err = self._Stream(self, "err")

    class _Stream(io.StringIO):
        def __init__(self, owner: Streams, tag: str) -> None:
            super().__init__()
            self.owner, self.tag = owner, tag

        def write(self, text: str) -> int:
            self.owner.order.append((self.tag, text))
            return super().write(text)


class AnalyzeCorruptTests(SynchronousTestCase):
    """voipmon-analyze, in this process, over every public capture damaged many ways."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.runs = 0
        self.cleans: dict[bytes, str] = {}

    def analyze(self, data: bytes, name: str = "damaged.pcap") -> tuple[int, str, str, list]:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as handle:
            handle.write(data)
        streams = Streams()
        status = cli.main(["--json", path], streams.out, streams.err)
        self.runs += 1
        out, err = streams.out.getvalue(), streams.err.getvalue()
        self.assertNotIn("Traceback", err)
        self.assertNotIn("Traceback", out)
        return status, out, err, streams.order

    def clean(self, data: bytes) -> str:
        """What a clean capture (a prefix of the original, cut at a record) prints."""
        if not data:
            return ""
        if data not in self.cleans:
            status, out, err, _ = self.analyze(data, "clean.pcap")
            self.assertEqual((status, err), (0, ""))
            self.cleans[data] = out
        return self.cleans[data]

    def prefix(self, data: bytes, upto: int) -> bytes:
        """The capture's records that end at or before byte ``upto``."""
        _order, recs = records(data)
        end = max([0, *(e for _s, e, _ in recs if e <= upto)])
        if not end and data[:4] != b"\x0a\x0d\x0d\x0a":
            end = 24  # a classic pcap's global header, no record
        return data[:end]

    def assertStopped(self, data: bytes, damaged: bytes, offset: int, name: str,
                      gz: bool = False) -> None:
        """Exit 1, one line naming the file and ``offset``, after exactly the calls the
        capture's records before ``offset`` give."""
        status, out, err, order = self.analyze(gzip.compress(damaged, 1, mtime=0) if gz
                                               else damaged)
        self.assertEqual(status, 1, (name, offset, err))
        path = os.path.join(self.dir, "damaged.pcap")
        self.assertRegex(err, rf"^voipmon-analyze: {re.escape(path)}: .*byte offset "
                              rf"{offset}\b", (name, offset))
        self.assertEqual(err.count("\n"), 1, err)
        self.assertEqual(order[-1][0], "err", "the error comes after the calls")
        self.assertEqual(out, self.clean(self.prefix(data, offset)), (name, offset, err))

    def damage_everywhere(self, path: str, gz: bool) -> None:
        with open(path, "rb") as handle:
            data = handle.read()
        name = os.path.basename(path)
        order, recs = records(data)
        self.assertEqual(recs[-1][1], len(data), name)  # the walk is right
        # cut short inside a record, at eight places spread over the file
        for i in range(8):
            start, end, _ = recs[(len(recs) - 1) * i // 7]
            cut = start + max(1, (end - start) * (i + 1) // 9)
            if gz:  # a gzip stream cut short: what inflates is what the reader gets
                packed = gzip.compress(data, 1, mtime=0)
                short = packed[:max(11, len(packed) * (i + 1) // 9)]
                got = zlib.decompressobj(31).decompress(short)
                status, out, err, order_ = self.analyze(short)
                self.assertEqual(status, 1, (name, err))
                self.assertIn("byte offset", err)
                self.assertEqual(order_[-1][0], "err")
                self.assertEqual(out, self.clean(self.prefix(data, len(got))), (name, err))
            else:
                self.assertStopped(data, data[:cut], start, name)
        # absurd lengths in four records spread over the file, five values each
        for i in range(4):
            start, _end, where = recs[(len(recs) - 1) * (i + 1) // 4]
            for value in ABSURD:
                damaged = bytearray(data)
                struct.pack_into(order + "I", damaged, where, value)
                self.assertStopped(data, bytes(damaged), start, name, gz)
        # bit flips at 24 places (header, record headers, payloads), one bit each
        for i in range(24):
            at = (len(data) - 1) * i // 23
            damaged = bytearray(data)
            damaged[at] ^= 1 << (i % 8)
            status, out, err, order_ = self.analyze(gzip.compress(bytes(damaged), 1, mtime=0)
                                                    if gz else bytes(damaged))
            self.assertIn(status, (0, 1), (name, at, err))
            if status:
                self.assertIn("byte offset", err, (name, at))
                self.assertEqual(order_[-1][0], "err")
            calls = {json.loads(line)["callid"] for line in out.splitlines()}
            before = {json.loads(line)["callid"]
                      for line in self.clean(self.prefix(data, at)).splitlines()}
            self.assertLessEqual(before, calls, (name, at))

    def test_every_public_capture(self) -> None:
        """pcap and pcapng: cut, absurd lengths, bit flips; the calls before still print."""
        for path in public_pcaps():
            self.damage_everywhere(path, gz=False)
        self.assertGreater(self.runs, 36 * 60)

    def test_every_public_capture_gzipped(self) -> None:
        """The same damage inside a gzip'd capture, and gzip streams cut short."""
        for path in public_pcaps()[::3]:
            self.damage_everywhere(path, gz=True)
        self.assertGreater(self.runs, 12 * 60)

    def test_reported_case(self) -> None:
        """The report's case: a record header whose length reads as -1287056544 signed."""
        path = next(p for p in public_pcaps() if "rtcp_multiple_pkts" in p)
        with open(path, "rb") as handle:
            data = handle.read()
        order, recs = records(data)
        start, _end, where = recs[len(recs) // 2]
        damaged = bytearray(data)
        struct.pack_into(order + "I", damaged, where, 0xB3492E60)
        self.assertStopped(data, bytes(damaged), start, os.path.basename(path))

    def test_compressed_corruption(self) -> None:
        """Bad compressed bytes (not inflatable, or a wrong CRC) name the file and the
        offset in the decompressed data; the calls before it print."""
        path = next(p for p in public_pcaps() if "sip-rtp-g711" in p)
        with open(path, "rb") as handle:
            data = handle.read()
        packed = bytearray(gzip.compress(data, 1, mtime=0))
        packed[-6] ^= 0xFF  # the CRC-32 of the data
        status, out, err, _ = self.analyze(bytes(packed))
        self.assertEqual(status, 1)
        self.assertIn("cannot read compressed data", err)
        self.assertEqual(out, self.clean(self.prefix(data, len(data))))
        packed = bytearray(gzip.compress(data, 1, mtime=0))
        packed[len(packed) // 2:len(packed) // 2 + 64] = b"\xff" * 64
        status, out, err, _ = self.analyze(bytes(packed))
        self.assertEqual(status, 1)
        offset = int(re.search(r"byte offset (\d+)", err)[1])
        self.assertEqual(out, self.clean(self.prefix(data, offset)), err)


class ClosedStdoutTests(SynchronousTestCase):
    """``voipmon-analyze F | head``: a real pipe, closed early by a real head."""

    def test_head_closes_the_pipe(self) -> None:
        path = os.path.abspath(self.mktemp())
        write_calls_pcap(path, 3000)
        for extra in ([], ["--json"]):
            analyze = subprocess.Popen([*command(), *extra, path], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
            head = subprocess.run(["head", "-n", "3"], stdin=analyze.stdout,
                                  capture_output=True, check=True, timeout=120)
            analyze.stdout.close()  # head's end is the only reader left
            err = analyze.stderr.read()
            analyze.stderr.close()
            status = analyze.wait(120)
            self.assertEqual(len(head.stdout.splitlines()), 3)
            self.assertEqual(err, b"", extra)  # no BrokenPipeError, no traceback
            self.assertEqual(status, -signal.SIGPIPE, extra)  # as `cat` ends: 141 in a shell

    def test_bash_pipeline_status(self) -> None:
        """In a shell, with pipefail: status 141 (128 + SIGPIPE) and silence."""
        path = os.path.abspath(self.mktemp())
        write_calls_pcap(path, 3000)
        done = subprocess.run(["bash", "-c", 'set -o pipefail; "$@" | head -n 1 >/dev/null',
                               "bash", *command(), path],
                              capture_output=True, timeout=120, check=False)
        self.assertEqual((done.returncode, done.stderr), (141, b""))

    def test_complete_output_still_exits_0(self) -> None:
        path = os.path.abspath(self.mktemp())
        write_calls_pcap(path, 20)
        done = subprocess.run([*command(), "--json", path], capture_output=True, timeout=120,
                              check=False)
        self.assertEqual((done.returncode, done.stderr), (0, b""))
        self.assertEqual(len(done.stdout.splitlines()), 20)

    def test_corrupt_capture_as_a_command(self) -> None:
        """The command itself (its own process): exit 1, no traceback, calls then error."""
        with open(CAPTURE, "rb") as handle:
            data = handle.read()
        order, recs = records(data)
        start, _end, where = recs[len(recs) * 2 // 3]
        damaged = bytearray(data)
        struct.pack_into(order + "I", damaged, where, 0xB3492E60)
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as handle:
            handle.write(damaged)
        done = subprocess.run([*command(), "--json", path], capture_output=True, timeout=120,
                              check=False, text=True)
        self.assertEqual(done.returncode, 1)
        self.assertNotIn("Traceback", done.stderr)
        self.assertRegex(done.stderr, rf"^voipmon-analyze: {re.escape(path)}: at byte offset "
                                      rf"{start}: record length 3007917664 exceeds")
        self.assertGreater(len(done.stdout.splitlines()), 0)


class ReplayCorruptTests(Base):
    """The sensor's --read-pcap of a damaged capture, both modes: the calls before the
    damage reach the central, the error names the file and offset, the exit status is 1."""

    destinations = "primary"

    def damaged(self, how: str) -> tuple[str, str, int]:
        with open(CAPTURE, "rb") as handle:
            data = handle.read()
        order, recs = records(data)
        start, end, where = recs[len(recs) * 2 // 3]
        if how == "cut":
            damaged = data[:start + (end - start) // 2]
        else:
            damaged = bytearray(data)
            struct.pack_into(order + "I", damaged, where, 0xFFFFFFFF)
        path = os.path.join(self.base, f"{how}.pcap")
        clean = os.path.join(self.base, "clean.pcap")
        os.makedirs(self.base, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(damaged)
        with open(clean, "wb") as handle:
            handle.write(data[:start])
        return path, clean, start

    def check(self, how: str, **extra: str) -> None:
        path, clean, offset = self.damaged(how)
        svc = self.sensor(read_pcap=path, **extra)
        svc.startService()
        self.advance()
        store = self.centrals["primary"].store
        self.assertEqual(sorted(map(comparable, store.stored_cdrs()), key=repr),
                         sorted(map(comparable, expected_cdrs(clean)), key=repr))
        self.assertGreater(len(store.stored_cdrs()), 0)
        [(status, message)] = self.exits
        self.assertEqual(status, 1, message)
        self.assertIn(f"{path}", message)
        self.assertIn(f"byte offset {offset}", message)

    def test_truncated_local(self) -> None:
        self.check("cut")

    def test_absurd_length_local(self) -> None:
        self.check("length")

    def test_truncated_mirror(self) -> None:
        self.check("cut", packetbuffer_sender="yes")

    def test_absurd_length_mirror(self) -> None:
        self.check("length", packetbuffer_sender="yes")
