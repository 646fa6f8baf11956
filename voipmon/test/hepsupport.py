"""A HEP encoder for tests, written from the HEP3 specification (rev 37) and the HEPv2
header layout, independent of the decoder in ``voipmon.packet.hep``.

``hep3`` builds a message from chunks given byte by byte; ``hep3_message`` builds the
messages real senders send, with each sender's chunk order (``KAMAILIO``, ``SNGREP``,
``HEPLIFY``), optional compression of the payload (chunk 0x0010, gzip or zlib) and of the
whole frame (``gzip_frame``, heplify's ``payload_zip``). ``capture_as_hep`` turns the SIP,
RTP and RTCP of a capture file into HEP messages (RTCP as heplify's JSON, ``rtcp_json``),
as an agent on the capture point would have sent them.
"""

from __future__ import annotations

import gzip
import json
import socket
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from voipmon.analysis.rtcp import is_rtcp
from voipmon.analysis.sip import looks_like_sip
from voipmon.packet.datagram import IPPROTO_UDP, Datagram
from voipmon.packet.decode import Decoder
from voipmon.packet.readers import CaptureReader

# chunk types of the specification's table
FAMILY, IP_PROTO, SRC4, DST4, SRC6, DST6, SPORT, DPORT = 1, 2, 3, 4, 5, 6, 7, 8
TS_SEC, TS_USEC, PROTO_TYPE, CAPTURE_ID, KEEPALIVE, AUTH_KEY = 9, 10, 11, 12, 13, 14
PAYLOAD, ZIPPED, CORRELATION_ID, VLAN, NODE_NAME = 15, 16, 17, 18, 19
MOS, R_FACTOR = 0x20, 0x21

#: The order in which each sender writes its chunks ("addr" is the address pair).
KAMAILIO = ("family", "proto", "addr", "ports", "time", "type", "capture", "cid", "auth",
            "payload")
SNGREP = ("family", "proto", "ports", "time", "type", "capture", "addr", "auth", "payload")
HEPLIFY = ("family", "proto", "addr", "ports", "time", "type", "capture", "vlan", "auth",
           "cid", "name", "payload")


def u8(v: int) -> bytes:
    return bytes((v,))


def u16(v: int) -> bytes:
    return struct.pack("!H", v)


def u32(v: int) -> bytes:
    return struct.pack("!I", v)


def chunk(ctype: int, value: bytes, vendor: int = 0) -> bytes:
    """One chunk: vendor id, type, length (6-byte header included), value."""
    return struct.pack("!HHH", vendor, ctype, 6 + len(value)) + value


def hep3(chunks: Iterable[bytes], magic: bytes = b"HEP3") -> bytes:
    """A HEP3 message: the id, the total length, the chunks."""
    body = b"".join(chunks)
    return magic + struct.pack("!H", 6 + len(body)) + body


def packed(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


def compress(payload: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(payload, mtime=0)
    if how == "zlib":
        return zlib.compress(payload)
    if how == "deflate":
        c = zlib.compressobj(wbits=-15)
        return c.compress(payload) + c.flush()
    raise ValueError(how)


def hep3_message(src: str, sport: int, dst: str, dport: int, payload: bytes, *,
                 ts: tuple[int, int] = (1700000000, 0), proto_type: int = 1,
                 ip_proto: int = 17, capture_id: int = 2002, auth_key: bytes | None = None,
                 correlation_id: bytes | None = None, node_name: bytes | None = None,
                 compressed: str | None = None, order: Sequence[str] = KAMAILIO,
                 vendor_chunks: Sequence[bytes] = (), magic: bytes = b"HEP3") -> bytes:
    """A message as a sender writes it, chunks in ``order``; ``vendor_chunks`` go before
    the payload; ``compressed`` ("gzip", "zlib", "deflate") puts the payload in 0x0010."""
    v6 = ":" in src
    parts = {
        "family": [chunk(FAMILY, u8(10 if v6 else 2))],
        "proto": [chunk(IP_PROTO, u8(ip_proto))],
        "addr": [chunk(SRC6 if v6 else SRC4, packed(src)),
                 chunk(DST6 if v6 else DST4, packed(dst))],
        "ports": [chunk(SPORT, u16(sport)), chunk(DPORT, u16(dport))],
        "time": [chunk(TS_SEC, u32(ts[0])), chunk(TS_USEC, u32(ts[1]))],
        "type": [chunk(PROTO_TYPE, u8(proto_type))],
        "capture": [chunk(CAPTURE_ID, u32(capture_id))],
        "vlan": [chunk(VLAN, u16(0))],
        "auth": [chunk(AUTH_KEY, auth_key)] if auth_key is not None else [],
        "cid": [chunk(CORRELATION_ID, correlation_id)] if correlation_id is not None else [],
        "name": [chunk(NODE_NAME, node_name)] if node_name is not None else [],
        "payload": [*vendor_chunks,
                    chunk(ZIPPED, compress(payload, compressed)) if compressed
                    else chunk(PAYLOAD, payload)],
    }
    return hep3((c for name in order for c in parts[name]), magic)


def gzip_frame(message: bytes) -> bytes:
    """heplify's ``payload_zip``: the whole HEP3 message as one gzip member."""
    return gzip.compress(message, mtime=0)


def hep2_message(src: str, sport: int, dst: str, dport: int, payload: bytes, *,
                 version: int = 2, ts: tuple[int, int] = (1700000000, 0),
                 capture_id: int = 101, ip_proto: int = 17, little_endian: bool = True,
                 family: int | None = None, packed_time: bool = False) -> bytes:
    """A HEPv1/v2 datagram as Kamailio and captagent write it: the time header in host
    order (``little_endian``, as on x86) and as their C struct, 12 bytes with 2 of padding
    (10 with ``packed_time``)."""
    v6 = ":" in src
    addrs = packed(src) + packed(dst)
    head = struct.pack("!BBBBHH", version, 8 + len(addrs), family or (10 if v6 else 2),
                       ip_proto, sport, dport)
    timehdr = b""
    if version == 2:
        timehdr = struct.pack("<IIH" if little_endian else "!IIH", ts[0], ts[1], capture_id)
        if not packed_time:
            timehdr += b"\0\0"
    return head + addrs + timehdr + payload


def spec_example() -> bytes:
    """The 113-octet example message of the HEP3 specification, written out byte by byte:
    IPv4/UDP, 212.202.0.1:12010 -> 82.116.0.211:5060, 1313440459 s + 120000 us, SIP,
    capture id 228, payload "INVITE sip:bob"."""
    return bytes.fromhex(
        "48455033" "0071"                          # "HEP3", 113 octets
        "0000" "0001" "0007" "02"                  # IP family: IPv4
        "0000" "0002" "0007" "11"                  # IP protocol: UDP
        "0000" "0003" "000a" "d4ca0001"            # source 212.202.0.1
        "0000" "0004" "000a" "527400d3"            # destination 82.116.0.211
        "0000" "0007" "0008" "2eea"                # source port 12010
        "0000" "0008" "0008" "13c4"                # destination port 5060
        "0000" "0009" "000a" "4e4982cb"            # 1313440459 s
        "0000" "000a" "000a" "0001d4c0"            # 120000 us
        "0000" "000b" "0007" "01"                  # SIP
        "0000" "000c" "000a" "000000e4"            # capture id 228
        "0000" "000f" "0014" + b"INVITE sip:bob".hex())


def rtcp_json(payload: bytes) -> bytes:
    """heplify's JSON for a compound RTCP packet, quirks included: one object for the
    whole compound, the SR's sender information (zeros without an SR, but always there)
    with the NTP words as ``ntp_timestamp_sec``/``_usec``, the report blocks of every SR
    and RR, and the type, count and SSRC of the last packet that has them."""
    doc: dict = {"sender_information": {"ntp_timestamp_sec": 0, "ntp_timestamp_usec": 0,
                                        "rtp_timestamp": 0, "packets": 0, "octets": 0},
                 "ssrc": 0, "type": 0, "report_count": 0, "report_blocks": []}
    off = 0
    while off + 8 <= len(payload):
        b0, pt, length, ssrc = struct.unpack_from("!BBHI", payload, off)
        size = (length + 1) * 4
        if off + size > len(payload):
            break
        doc["type"], doc["report_count"] = pt, b0 & 0x1F
        p = off + 8
        if pt in (200, 201):
            doc["ssrc"] = ssrc
            if pt == 200:
                msw, lsw, rtpts, packets, octets = struct.unpack_from("!IIIII", payload, p)
                doc["sender_information"] = {
                    "ntp_timestamp_sec": msw, "ntp_timestamp_usec": lsw,
                    "rtp_timestamp": rtpts, "packets": packets, "octets": octets}
                p += 20
            for _ in range(b0 & 0x1F):
                if p + 24 > off + size:
                    break
                src, lost, seq, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", payload, p)
                doc["report_blocks"].append({
                    "source_ssrc": src, "fraction_lost": lost >> 24,
                    "packets_lost": lost & 0xFFFFFF, "highest_seq_no": seq,
                    "ia_jitter": jitter, "lsr": lsr, "dlsr": dlsr})
                p += 24
        off += size
    return json.dumps(doc).encode()


@dataclass(frozen=True)
class HepRecord:
    """One HEP message made from a capture, with what it was made from."""

    ts: float
    proto_type: int
    datagram: Datagram
    message: bytes


def capture_as_hep(path: str, sip_ports: Sequence[int] = (5060,), capture_id: int = 2002,
                   order: Sequence[str] = KAMAILIO,
                   auth_key: bytes | None = None) -> list[HepRecord]:
    """The SIP (type 1, one message per SIP message, as Kamailio sends it), RTP (4) and
    RTCP (5, as JSON) of a capture as HEP3 messages, in capture order, with the captured
    times. Other datagrams are left out."""
    datagrams: list[Datagram] = []
    decoder = Decoder(datagrams.append, sip_ports=sip_ports)
    with CaptureReader(path) as reader:
        decoder.feed_all(reader)
    decoder.flush()
    out = []
    for d in datagrams:
        payload = d.payload
        if d.proto != IPPROTO_UDP or looks_like_sip(payload):
            kind = 1
        elif is_rtcp(payload):
            kind, payload = 5, rtcp_json(payload)
        elif len(payload) >= 12 and payload[0] >> 6 == 2:
            kind = 4
        else:
            continue
        usec = round(d.ts * 1e6)
        out.append(HepRecord(d.ts, kind, d, hep3_message(
            socket.inet_ntop(socket.AF_INET6 if len(d.src) == 16 else socket.AF_INET, d.src),
            d.sport,
            socket.inet_ntop(socket.AF_INET6 if len(d.dst) == 16 else socket.AF_INET, d.dst),
            d.dport, payload, ts=(usec // 1000000, usec % 1000000), proto_type=kind,
            ip_proto=d.proto, capture_id=capture_id, order=order, auth_key=auth_key)))
    return out
