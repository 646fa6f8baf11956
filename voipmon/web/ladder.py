"""The SIP messages of one call, for the web page's ladder diagram.

The store keeps summaries, not messages, so the messages come from the call's SIP pcap,
fetched like the pcap itself (central spool or the sensor's ``getfile``) and decoded on
demand with the project's packet decoder: no second copy of every message in the database,
and the diagram shows exactly what was captured (retransmissions included). This is a rare,
user-driven path, so it favours clarity over speed and caps what it reads.
"""

from __future__ import annotations

import io
import ipaddress
import re
from typing import Any

from voipmon.packet.decode import Decoder
from voipmon.packet.readers import CaptureReader
from voipmon.records.times import iso_ms

MAX_SIP_PCAP = 16 * 1024 * 1024   # bytes of SIP pcap a ladder reads at most
MAX_MESSAGES = 2000
_PROTO = {6: "TCP", 17: "UDP", 132: "SCTP"}
_START = re.compile(rb"(?:SIP/2\.0 (\d{3}) ?(.*)|([A-Z]+) (\S+) SIP/2\.0)")
_HEADER = re.compile(rb"^(call-id|i|cseq)\s*:\s*([^\r\n]*)", re.I | re.M)


def summarize(payload: bytes) -> dict[str, Any] | None:
    """Start line, CSeq and Call-ID of one SIP message; None if it is not SIP."""
    head, _, _ = payload.partition(b"\r\n\r\n")
    first, _, headers = head.partition(b"\n")
    first = first.rstrip(b"\r")
    match = _START.fullmatch(first)
    if match is None:
        return None
    fields = {}
    for name, value in _HEADER.findall(headers):
        key = name.lower()
        fields["callid" if key in (b"call-id", b"i") else "cseq"] = value.decode(
            "utf-8", "replace").strip()
    if match.group(1):
        label = f"{match.group(1).decode()} {match.group(2).decode('utf-8', 'replace')}"
        kind, method, status = "response", None, int(match.group(1))
    else:
        method = match.group(3).decode()
        label, kind, status = method, "request", None
    return {"kind": kind, "method": method, "status": status, "label": label.strip(),
            "first_line": first.decode("utf-8", "replace")[:300],
            "cseq": fields.get("cseq", ""), "callid": fields.get("callid", ""),
            "size": len(payload)}


def sip_messages(pcap: bytes, sip_ports: tuple[int, ...] = (5060,)) -> list[dict[str, Any]]:
    """Every SIP message of a capture, in capture order, as JSON-able dicts."""
    messages: list[dict[str, Any]] = []

    def sink(datagram: Any) -> None:
        if len(messages) >= MAX_MESSAGES:
            return
        info = summarize(datagram.payload)
        if info is None:
            return
        info.update(ts=datagram.ts, time=iso_ms(datagram.ts),
                    src=str(ipaddress.ip_address(datagram.src)), sport=datagram.sport,
                    dst=str(ipaddress.ip_address(datagram.dst)), dport=datagram.dport,
                    proto=_PROTO.get(datagram.proto, str(datagram.proto)))
        messages.append(info)

    decoder = Decoder(sink, sip_ports=sip_ports)
    reader = CaptureReader(io.BytesIO(pcap), name="SIP pcap")
    try:
        decoder.feed_all(reader)
        decoder.flush()
    finally:
        reader.close()
    messages.sort(key=lambda m: m["ts"])
    return messages
