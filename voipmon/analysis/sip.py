"""SIP message parsing (RFC 3261): just what call analysis needs, tolerant of real traffic.

``parse_sip(payload)`` turns one SIP message (a UDP payload, or one message reassembled
from TCP/WebSocket/SCTP by the decoder) into a ``SipMessage``, or returns ``None`` when the
bytes are not SIP. It never raises on garbage: captures carry truncated, mangled and
hostile messages, and one bad packet must not cost the analysis of the rest.

Header names are case-insensitive and have compact forms (``i`` = Call-ID, ``f`` = From,
...). Folded header lines are joined. The body is cut to Content-Length when the message
carries one; an SDP part inside a multipart body is found and returned as ``sdp``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Longest message we look at; bigger payloads are cut (a SIP message is rarely > 64 KiB).
MAX_MESSAGE = 65536
#: At most this many header lines are kept (a flood of headers is not worth parsing).
MAX_HEADERS = 256

COMPACT = {
    "i": "call-id", "f": "from", "t": "to", "m": "contact", "l": "content-length",
    "c": "content-type", "v": "via", "e": "content-encoding", "k": "supported",
    "s": "subject", "o": "event", "u": "allow-events", "r": "refer-to", "b": "referred-by",
    "x": "session-expires", "y": "identity", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition",
}

METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
})

_TOKEN = re.compile(rb"^[A-Za-z][A-Za-z0-9.!%*_+`'~-]{0,31}$")
_TAG = re.compile(r";\s*tag\s*=\s*([^;,\s>]+)", re.IGNORECASE)
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)


@dataclass(frozen=True)
class NameAddr:
    """A From/To/Contact value: ``"Display" <sip:user@host:port;params>;tag=...``."""

    display: str = ""
    uri: str = ""
    user: str = ""
    host: str = ""
    tag: str = ""


@dataclass
class SipMessage:
    """One parsed SIP request or response."""

    is_request: bool
    method: str = ""             # request method; for a response, "" (see cseq_method)
    request_uri: str = ""
    status: int = 0              # response code, 0 for requests
    reason: str = ""
    call_id: str = ""
    from_: NameAddr = field(default_factory=NameAddr)
    to: NameAddr = field(default_factory=NameAddr)
    cseq: int = 0
    cseq_method: str = ""
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""
    sdp: bytes | None = None     # the SDP body (or SDP part of a multipart body), if any

    def header(self, name: str) -> str:
        """The first value of header ``name`` (lower-case long form), or ""."""
        values = self.headers.get(name)
        return values[0] if values else ""

    @property
    def transaction_method(self) -> str:
        """The method this message belongs to: its own, or the CSeq method of a response."""
        return self.method if self.is_request else self.cseq_method

    @property
    def first_line(self) -> str:
        if self.is_request:
            return f"{self.method} {self.request_uri} SIP/2.0"
        return f"SIP/2.0 {self.status} {self.reason}"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def looks_like_sip(payload: bytes) -> bool:
    """Cheap check on the first bytes: a SIP status line or a request line."""
    if payload[:8] == b"SIP/2.0 ":
        return True
    space = payload.find(b" ", 0, 33)
    return space > 0 and _TOKEN.match(payload[:space]) is not None and \
        payload[:space].upper() == payload[:space]


def parse_sip(payload: bytes) -> SipMessage | None:
    """Parse one SIP message; ``None`` if it is not SIP or has no usable start line."""
    if len(payload) < 12:
        return None
    data = payload[:MAX_MESSAGE]
    end = data.find(b"\r\n\r\n")
    sep = 4
    if end < 0:
        end = data.find(b"\n\n")
        sep = 2
    if end < 0:  # no blank line: headers run to the end (truncated capture)
        head, body = data, b""
    else:
        head, body = data[:end], data[end + sep:]
    nl = head.find(b"\n")
    start = (head if nl < 0 else head[:nl]).rstrip(b"\r")
    message = _start_line(start)
    if message is None:
        return None
    headers = message.headers
    try:  # valid UTF-8 (nearly always): decode the header block once
        text_lines = head.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        _bytes_headers(headers, head.split(b"\n"))
    else:
        _text_headers(headers, text_lines)
    message.call_id = message.header("call-id")
    message.from_ = parse_name_addr(message.header("from"))
    message.to = parse_name_addr(message.header("to"))
    cseq = message.header("cseq").split()
    if cseq:
        try:
            message.cseq = int(cseq[0]) & 0xFFFFFFFF
        except ValueError:
            message.cseq = 0
        if len(cseq) > 1:
            message.cseq_method = cseq[1].upper()
    length = message.header("content-length")
    if length:
        try:
            n = int(length)
        except ValueError:
            n = -1
        if 0 <= n < len(body):
            body = body[:n]
    message.body = body
    if body:
        message.sdp = _find_sdp(message.header("content-type"), body)
    return message


#: What ``bytes.strip()`` strips (ASCII whitespace); ``str.strip()`` would take more.
_WS = " \t\n\r\x0b\x0c"


def _text_headers(headers: dict[str, list[str]], lines: list[str]) -> None:
    """The header lines (after the start line) of a header block that decoded as UTF-8:
    the same as ``_bytes_headers`` gives for its bytes, with one decode for all."""
    last: str | None = None
    count = 0
    compact = COMPACT
    for i in range(1, len(lines)):
        line = lines[i].rstrip("\r")
        if not line:
            continue
        first = line[0]
        if (first == " " or first == "\t") and last is not None:  # folded continuation
            values = headers[last]
            values[-1] = values[-1] + " " + line.strip(_WS)
            continue
        colon = line.find(":")
        if colon <= 0:
            continue
        count += 1
        if count > MAX_HEADERS:
            break
        name = line[:colon].strip(_WS).lower()
        name = compact.get(name, name)
        value = line[colon + 1:].strip(_WS)
        values = headers.get(name)
        if values is None:
            headers[name] = [value]
        else:
            values.append(value)
        last = name


def _bytes_headers(headers: dict[str, list[str]], lines: list[bytes]) -> None:
    """The header lines (after the start line), line by line: Call-ID's bytes kept
    exactly (surrogateescape), other values with invalid UTF-8 replaced."""
    last: str | None = None
    count = 0
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and last is not None:  # folded continuation
            values = headers[last]
            values[-1] = values[-1] + " " + _text(line.strip())
            continue
        colon = line.find(b":")
        if colon <= 0:
            continue
        count += 1
        if count > MAX_HEADERS:
            break
        name = _text(line[:colon].strip()).lower()
        name = COMPACT.get(name, name)
        value = line[colon + 1:].strip()
        # Call-ID is an identifier: keep its bytes exactly (surrogateescape round-trips)
        text = value.decode("utf-8", "surrogateescape") if name == "call-id" else _text(value)
        headers.setdefault(name, []).append(text)
        last = name


def _start_line(start: bytes) -> SipMessage | None:
    if start.startswith(b"SIP/2.0 "):
        parts = start.split(b" ", 2)
        code = parts[1]
        if len(code) != 3 or not code.isdigit():
            return None
        status = int(code)
        if not 100 <= status <= 699:
            return None
        reason = _text(parts[2]) if len(parts) > 2 else ""
        return SipMessage(is_request=False, status=status, reason=reason)
    parts = start.split(b" ")
    if len(parts) != 3 or parts[2] != b"SIP/2.0" or not _TOKEN.match(parts[0]):
        return None
    method = parts[0].decode("ascii")
    if method.upper() != method:
        return None
    return SipMessage(is_request=True, method=method, request_uri=_text(parts[1]))


#: Values lately parsed by ``parse_name_addr`` (a dialog repeats its From and To in every
#: message); ``NameAddr`` is immutable, so one is shared. Emptied when full.
_NAME_ADDRS: dict[str, NameAddr] = {}
_NAME_ADDRS_MAX = 4096


def parse_name_addr(value: str) -> NameAddr:
    """Split a From/To/Contact value into display name, URI, user, host and tag."""
    known = _NAME_ADDRS.get(value)
    if known is not None:
        return known
    addr = _parse_name_addr(value)
    if len(_NAME_ADDRS) >= _NAME_ADDRS_MAX:
        _NAME_ADDRS.clear()
    _NAME_ADDRS[value] = addr
    return addr


def _parse_name_addr(value: str) -> NameAddr:
    if not value:
        return NameAddr()
    value = value.strip()
    display = ""
    lt = value.find("<")
    if lt >= 0:
        gt = value.find(">", lt)
        uri = value[lt + 1:gt if gt > 0 else len(value)].strip()
        display = value[:lt].strip()
        if len(display) >= 2 and display[0] == '"' and display[-1] == '"':
            display = display[1:-1].replace('\\"', '"')
        params = value[gt + 1:] if gt > 0 else ""
    else:
        # addr-spec without brackets: parameters after ';' belong to the header, not the URI
        semi = value.find(";")
        uri = value if semi < 0 else value[:semi]
        params = "" if semi < 0 else value[semi:]
        uri = uri.strip()
    tag_match = _TAG.search(params)
    user, host = split_uri(uri)
    return NameAddr(display=display, uri=uri, user=user,
                    host=host, tag=tag_match.group(1) if tag_match else "")


def split_uri(uri: str) -> tuple[str, str]:
    """``sip:alice:pw@example.com:5060;x=y`` -> (``alice``, ``example.com``)."""
    colon = uri.find(":")
    if colon < 0:
        return "", ""
    scheme = uri[:colon].lower()
    rest = uri[colon + 1:]
    if scheme == "tel":
        return rest.split(";", 1)[0], ""
    for stop in ("?",):
        cut = rest.find(stop)
        if cut >= 0:
            rest = rest[:cut]
    at = rest.rfind("@")
    if at >= 0:
        user = rest[:at].split(":", 1)[0]
        # user parameters (sip:+123;npdi@host) are not part of the number
        user = user.split(";", 1)[0]
        hostport = rest[at + 1:]
    else:
        user, hostport = "", rest
    hostport = hostport.split(";", 1)[0]
    if hostport.startswith("["):
        host = hostport[1:hostport.find("]")] if "]" in hostport else hostport[1:]
    else:
        host = hostport.split(":", 1)[0]
    return user, host


def _find_sdp(content_type: str, body: bytes) -> bytes | None:
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == "application/sdp":
        return body
    if ctype.startswith("multipart/"):
        match = _BOUNDARY.search(content_type)
        if match:
            boundary = (match.group(1) or match.group(2)).encode("utf-8", "replace")
            return _multipart_sdp(body, boundary)
        return None
    if not ctype and body.lstrip()[:2] == b"v=":
        return body  # no Content-Type but plainly SDP (seen from some UAs)
    return None


def _multipart_sdp(body: bytes, boundary: bytes) -> bytes | None:
    for part in body.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        end = part.find(b"\r\n\r\n")
        sep = 4
        if end < 0:
            end = part.find(b"\n\n")
            sep = 2
        if end < 0:
            continue
        head = part[:end].lower()
        if b"application/sdp" in head:
            content = part[end + sep:]
            if content.endswith(b"\r\n"):
                content = content[:-2]
            elif content.endswith(b"\n"):
                content = content[:-1]
            return content
    return None
