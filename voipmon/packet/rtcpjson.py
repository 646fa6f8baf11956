"""HEP type 5 (RTCP as JSON) back to a binary RTCP sender or receiver report.

captagent, heplify and rtpengine send the reports they see as JSON instead of the RTCP
packet itself. The engine's RTCP analysis (``voipmon.analysis.rtcp``: fraction lost,
jitter, round trip per SSRC, tied to the call by the RTCP address in the SDP) reads binary
RTCP, so we rebuild the packet the endpoint sent, as VoIPmonitor does
(``createRtcpPayloadFromJson``), and it goes through the same path as sniffed RTCP and into
the per-call pcap. The format, as those senders write it::

    {"ssrc": N, "type": 200|201, "report_count": N,
     "sender_information": {"ntp_timestamp_sec", "ntp_timestamp_usec", "rtp_timestamp",
                            "packets", "octets"},
     "report_blocks": [{"source_ssrc", "fraction_lost", "packets_lost", "highest_seq_no",
                        "ia_jitter", "lsr", "dlsr"}, ...],
     "report_blocks_xr": {...}, "sdes_ssrc": N}

Read leniently, since forks differ: numbers may be strings (or floats), key case varies,
``report_count`` may disagree with the blocks (the blocks win, at most 31), a single block
may come as an object, and missing numbers are 0. heplify folds a whole compound packet
into one object: the sender information of its SR (zeros without one, but always there),
the report blocks of its SR and RRs together, and the type of its *last* packet (201
after SR + RR, 202 after an SDES): it is an SR when the type says 200 or the NTP time is
set, else an RR. A report without blocks is an empty RR, as RFC 3550 allows, so the
engine counts the packet as it counts sniffed RTCP without reports. The values are the
packet's own fields:
``fraction_lost`` is the 8-bit fraction (0..255), ``ia_jitter`` in timestamp units,
``dlsr`` in 1/65536 s, ``ntp_timestamp_sec``/``_usec`` the NTP timestamp's two words (what
heplify, captagent and rtpengine put there, whatever the names say); a pair that is
plainly Unix seconds and microseconds (seconds 2000..2036, microseconds below 10^6) is
converted. The XR block is not rebuilt (the engine reads SR and RR only).
"""

from __future__ import annotations

import struct
from typing import Any

from voipmon.packet.hep import HepError
from voipmon.protocols.wire import parse_json

_HEAD = struct.Struct("!BBHI").pack
_SENDER = struct.Struct("!IIIII").pack
_BLOCK = struct.Struct("!IIIIII").pack
_NTP_UNIX = 2208988800  # seconds from 1900 to 1970
_UNIX_2000, _UNIX_2036 = 946684800, 2085978496


def rtcp_from_json(payload: bytes) -> bytes:
    """The binary RTCP SR or RR that a type 5 payload describes; ``HepError`` if none."""
    try:
        doc = parse_json(payload)  # the one parser of JSON off the network
    except ValueError as e:  # UnicodeDecodeError too
        raise HepError("bad_rtcp_json", f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise HepError("bad_rtcp_json", "not a JSON object")
    doc = _lower(doc)
    info = doc.get("sender_information")
    sender = _lower(info)
    blocks = doc.get("report_blocks")
    if isinstance(blocks, dict):
        blocks = [blocks]
    elif not isinstance(blocks, list):
        blocks = []
    blocks = [b for b in (_lower(b) for b in blocks[:31]) if b]
    if "ssrc" not in doc and not sender and not blocks:
        raise HepError("bad_rtcp_json", "no ssrc, sender information or report blocks")
    msw = _int(sender.get("ntp_timestamp_sec"), 32)
    lsw = _int(sender.get("ntp_timestamp_usec"), 32)
    # heplify writes the type of the compound's last packet (201 after SR + RR, 202
    # after an SDES): sender information with a time is an SR whatever the type says
    kind = 200 if msw or lsw or _int(doc.get("type"), 8) == 200 else 201
    ssrc = _int(doc.get("ssrc"), 32)
    body = [_pack_block(b) for b in blocks]
    if kind == 200:
        if _UNIX_2000 <= msw < _UNIX_2036 and lsw < 1000000:
            msw, lsw = msw + _NTP_UNIX, (lsw << 32) // 1000000
        body.insert(0, _SENDER(msw, lsw, _int(sender.get("rtp_timestamp"), 32),
                               _int(sender.get("packets"), 32),
                               _int(sender.get("octets"), 32)))
    length = (4 + sum(len(part) for part in body)) // 4
    return _HEAD(0x80 | len(blocks), kind, length, ssrc) + b"".join(body)


def _pack_block(b: dict[str, Any]) -> bytes:
    return _BLOCK(_int(b.get("source_ssrc"), 32),
                  _int(b.get("fraction_lost"), 8) << 24 | _int(b.get("packets_lost"), 24),
                  _int(b.get("highest_seq_no"), 32), _int(b.get("ia_jitter"), 32),
                  _int(b.get("lsr"), 32), _int(b.get("dlsr"), 32))


def _lower(obj: Any) -> dict[str, Any]:
    """A JSON object with its keys lower-cased ({} for anything else)."""
    if not isinstance(obj, dict):
        return {}
    return {str(k).lower(): v for k, v in obj.items()}


def _int(value: Any, bits: int) -> int:
    """A JSON number or numeric string as an unsigned ``bits``-bit field (two's complement
    for negatives, such as a cumulative loss below zero); anything else is 0."""
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text, 0) if text[:2].lower() == "0x" else int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return 0
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return 0
        value = int(value)
    if not isinstance(value, int):
        return 0
    return value & ((1 << bits) - 1)
