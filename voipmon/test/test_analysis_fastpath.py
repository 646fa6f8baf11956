"""Tests for voipmon.analysis.fastpath: the engine's ways in for frames (``feed``,
``feed_all`` of any records, of a classic pcap in the reader's batches) give the same CDRs,
spool files and counters, on real captures and on synthetic ones in every pcap flavour."""

from __future__ import annotations

import hashlib
import os
import random
import struct

from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.engine import Engine
from voipmon.counters import nested
from voipmon.packet.readers import CaptureFormatError, CaptureReader, read_capture
from voipmon.spool.writer import SpoolWriter
from voipmon.test.callsupport import Harness, sdp, sip_message
from voipmon.test.common import data_path, public_pcaps
from voipmon.test.test_analysis_engine import AM, BM, invite, reply
from voipmon.test.test_packet_decode import A4, B4
from voipmon.test.test_packet_tcp import tcp
from voipmon.test.test_packet_tcpclassify import mixed_traffic

Record = tuple[float, int, bytes]


class _Recorder:
    def __init__(self) -> None:
        self.frames: list[Record] = []

    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        self.frames.append((ts, linktype, frame))


STP = b"\x01\x80\xc2\x00\x00\x00\x00\x11\x22\x33\x44\x55\x00\x26\x42\x42\x03" + bytes(39)


def call_traffic(calls: int = 3, packets: int = 700) -> list[Record]:
    """SIP calls over UDP with RTP both ways, among TCP connections (some 802.1Q tagged)
    that never carry SIP or turn SIP later, and spanning-tree frames, in capture-time
    order; then the clock goes back two hours for a few more."""
    h = Harness()
    rec = h.engine = _Recorder()  # type: ignore[assignment]
    for i in range(calls):
        h.basic_call(f"call-{i}@hot", t=1000.0 + 7 * i, caller_media=("10.0.0.1", 40000 + 2 * i),
                     callee_media=("10.0.0.2", 50000 + 2 * i), packets=packets, bye=i != 1)
    noise = mixed_traffic(random.Random(5), 1500)
    frames = rec.frames + noise + [(1000.0 + i * 0.7, 1, STP) for i in range(200)]
    frames.sort(key=lambda r: r[0])
    end = frames[-1][0]
    back = [(ts - 7200.0, lt, f) for ts, lt, f in noise[:300]]
    frames += [(end - 7200.0 + i * 0.6, 1, STP) for i in range(3)] + back + \
        [(back[-1][0] + 0.5 + i * 0.4, 1, STP) for i in range(10)]
    return [(ts + 1e6, lt, f) for ts, lt, f in frames]


def pcap_file(path: str, frames: list[Record], order: str = "<", nano: bool = False,
              modified: bool = False) -> None:
    """Write ``frames`` as a classic pcap: either byte order, micro- or nanoseconds, or
    the "modified" format with 8 more bytes per record header."""
    magic = 0xA1B2CD34 if modified else 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, 1)]
    for ts, _, data in frames:
        sec = int(ts)
        frac = min(round((ts - sec) * (1e9 if nano else 1e6)), 999999999 if nano else 999999)
        out.append(struct.pack(order + "IIII", sec, frac, len(data), len(data)))
        if modified:
            out.append(b"\0" * 8)
        out.append(data)
    with open(path, "wb") as f:
        f.write(b"".join(out))


def analyse(source: str | list[Record], how: str, spooldir: str | None = None,
            sip_ports: tuple[int, ...] = (5060,), **limits: object) -> tuple:
    """Frames of a capture file (or a list) through ``how``: "walk" (``feed_all`` of a
    ``CaptureReader``), "records" (``feed_all`` of a list) or "feed" (one call per frame).
    Returns the frame count, CDRs, orphan streams, every counter and the spool's files."""
    cdrs: list = []
    orphans: list = []
    engine = Engine(id_sensor=1, on_cdr=cdrs.append, on_orphan=orphans.append,
                    sip_ports=sip_ports, spool=SpoolWriter(spooldir) if spooldir else None,
                    **limits)  # type: ignore[arg-type]
    if how == "walk":
        with CaptureReader(source) as reader:  # type: ignore[arg-type]
            n = engine.feed_all(reader)
            assert reader.frames == n
    else:
        records = list(read_capture(source)) if isinstance(source, str) else source
        if how == "records":
            n = engine.feed_all(records)
        else:
            for record in records:
                engine.feed(*record)
            n = len(records)
    engine.finish()
    files = {}
    for root, _, names in os.walk(spooldir) if spooldir else ():
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                files[os.path.relpath(os.path.join(root, name), spooldir)] = \
                    hashlib.sha256(f.read()).hexdigest()
    return (n, [c.to_json() for c in cdrs], [o.to_json() for o in orphans],
            nested(engine.counters()), files)


class FastPathTests(SynchronousTestCase):
    def analyse(self, source: str | list[Record], how: str, **kw: object) -> tuple:
        return analyse(source, how, self.mktemp(), **kw)  # type: ignore[arg-type]

    def test_every_way_in_agrees_in_every_pcap_flavour(self) -> None:
        frames = call_traffic()
        results = []
        for order, nano, modified in (("<", False, False), (">", False, False),
                                      ("<", True, False), ("<", False, True)):
            path = self.mktemp()
            pcap_file(path, frames, order, nano, modified)
            self.assertGreater(os.path.getsize(path), 1 << 20)  # more than one buffer
            got = [self.analyse(path, how) for how in ("walk", "records", "feed")]
            self.assertEqual(got[0], got[1])
            self.assertEqual(got[0], got[2])
            results.append(got[0])
        n, cdrs, _, stats, files = results[0]
        self.assertEqual(n, len(frames))
        hot = sorted((c["callid"], c["a_received"], c["b_received"]) for c in cdrs
                     if c["callid"].endswith("@hot"))
        self.assertEqual(hot, [(f"call-{i}@hot", 700, 700) for i in range(3)])
        self.assertGreater(len(cdrs), 3)  # calls over TCP in the mixed traffic too
        self.assertGreater(stats["decoder"]["ignored"]["tcp_not_sip"], 500)
        for c in cdrs:  # the spool holds every pcap a CDR names, and nothing else
            self.assertIn(c["sip_pcap"], files)
        self.assertEqual(set(files), {c[k] for c in cdrs for k in ("sip_pcap", "rtp_pcap")
                                      if c[k]})
        for other in results[1:]:  # nanoseconds round differently: only times may differ
            self.assertEqual([c["a_received"] for c in other[1]],
                             [c["a_received"] for c in cdrs])

    def test_real_captures(self) -> None:
        for path in public_pcaps() + [data_path("sipp_uac_pcap_rtp_echo_lo_3calls.pcap"),
                                      data_path("sipp_tcp_2calls_udp_486_2calls_lo.pcap")]:
            for ports in ((5060,), ()):
                walk = self.analyse(path, "walk", sip_ports=ports)
                self.assertEqual(walk, self.analyse(path, "records", sip_ports=ports), path)
                self.assertEqual(walk, self.analyse(path, "feed", sip_ports=ports), path)

    def test_truncated_file(self) -> None:
        frames = call_traffic(calls=1, packets=300)
        path = self.mktemp()
        pcap_file(path, frames)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - len(frames[-1][2]) // 2)
        walk = self.analyse(path, "walk")
        self.assertEqual(walk, self.analyse(path, "records"))
        self.assertEqual(walk[0], len(frames) - 1)
        with CaptureReader(path) as reader:
            Engine(id_sensor=1, on_cdr=lambda c: None).feed_all(reader)
            self.assertEqual((reader.truncated, reader.frames), (1, len(frames) - 1))
            self.assertIn("truncated", reader.notes[0])

    def test_corrupt_record_stops_after_the_frames_before_it(self) -> None:
        frames = call_traffic(calls=1, packets=300)
        path = self.mktemp()
        pcap_file(path, frames[:400])
        with open(path, "ab") as f:
            f.write(struct.pack("<IIII", 1, 0, 0x7FFFFFFF, 10) + b"xx")
        got = []
        for walk in (True, False):
            cdrs: list = []
            engine = Engine(id_sensor=1, on_cdr=cdrs.append)
            with CaptureReader(path) as reader:
                records = reader if walk else iter(reader)
                e = self.assertRaises(CaptureFormatError, engine.feed_all, records)
                self.assertEqual(reader.frames, 400)
            engine.finish()
            got.append((e.offset, [c.to_json() for c in cdrs], nested(engine.counters())))
        self.assertEqual(got[0], got[1])
        # the call begun before the corruption
        self.assertIn("call-0@hot", [c["callid"] for c in got[0][1]])

    def test_pcapng_and_a_started_reader_take_the_generic_way(self) -> None:
        frames = call_traffic(calls=1, packets=50)
        path = self.mktemp()
        pcap_file(path, frames)
        with CaptureReader(path) as reader:
            records = iter(reader)
            first = next(records)
            self.assertEqual(list(reader.batches()), [])
            engine = Engine(id_sensor=1, on_cdr=lambda c: None)
            engine.feed(*first)
            self.assertEqual(engine.feed_all(records), len(frames) - 1)
        ng = [p for p in public_pcaps() if p.endswith(".pcapng")]
        self.assertTrue(ng)
        for path in ng:
            with CaptureReader(path) as reader:
                self.assertEqual(len(list(reader.batches())), 1)  # the whole file
            self.assertEqual(self.analyse(path, "walk"), self.analyse(path, "records"))


class TcpNotSipTests(SynchronousTestCase):
    def test_fast_paths_drop_exactly_what_the_decoder_would(self) -> None:
        # feed_all and the pcap walk drop segments of TCP flows cached as not SIP
        # themselves: the CDRs and every counter must be those of feed() (the decoder's
        # own drop) and of no cache at all
        frames = mixed_traffic(random.Random(11), 3000)
        seq, ts = 1, frames[100][0]
        call = [b"\x00\x01 binary first", b"", invite("tcp-call", sdp(*AM)),
                reply("SIP/2.0 200 OK", "tcp-call", body=sdp(*BM)),
                sip_message("BYE sip:bob@example.com SIP/2.0", "tcp-call", "2 BYE", "ft", "tt")]
        for i, data in enumerate(call):
            back = i == 3
            frames.append((ts + i, 1, tcp(data, seq=5000 if back else seq, sport=9000 if back
                                          else 40000, dport=40000 if back else 9000,
                                          src=B4 if back else A4, dst=A4 if back else B4)))
            seq += 0 if back else len(data)
        frames.sort(key=lambda r: r[0])
        path = self.mktemp()
        pcap_file(path, frames)
        runs = [analyse(frames, "records", tcp_not_sip_max=0), analyse(frames, "records"),
                analyse(frames, "feed"), analyse(path, "walk")]
        for other in runs[1:]:
            self.assertEqual(other, runs[0])
        _, cdrs, _, stats, _ = runs[0]
        self.assertEqual([c["bye"] for c in cdrs if c["callid"] == "tcp-call"], [2])
        self.assertGreater(stats["decoder"]["ignored"]["tcp_not_sip"], 1000)

