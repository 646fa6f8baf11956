"""Header fields that REGISTER tracking and non-call SIP need beyond ``parse_sip``, and
the memory of transactions lately decided (``Finished``).

``parse_sip`` keeps every header (``SipMessage.headers``) and parses only what call
analysis reads on every packet. These helpers read the rest on demand, for the few
messages that need them: Contact bindings with their ``expires``, ``Expires``, the digest
parameters of Authorization and WWW-Authenticate, the originating Via branch, and the
User-Agent. They never raise on odd input; a value that does not parse is left out.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable, Iterable

from voipmon.analysis.sip import SipMessage, parse_name_addr

#: At most this many Contact bindings are read from one message (a flood of them is not
#: a registration worth following).
MAX_CONTACTS = 16
#: A REGISTER without any expiry asks for the registrar's default (RFC 3261 10.2.1.1).
DEFAULT_EXPIRES = 3600
#: Longest text kept from one header value (user agents and such).
MAX_TEXT = 255

_EXPIRES_PARAM = re.compile(r";\s*expires\s*=\s*(\d{1,10})", re.IGNORECASE)
_DIGEST_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_BRANCH = re.compile(r";\s*branch\s*=\s*([^;,\s]+)", re.IGNORECASE)
_USERNAME = re.compile(r'(?:^|[\s,])username\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))',
                       re.IGNORECASE)
_REALM = re.compile(r'(?:^|[\s,])realm\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))',
                    re.IGNORECASE)

# A binding: (key, user, host); key is "user@host:port" with the host in lower case.
Contact = tuple[str, str, str]


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, keeping commas inside quotes and <...>."""
    if "," not in value:
        return [value]
    out: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            out.append(value[start:i])
            start = i + 1
        i += 1
    out.append(value[start:])
    return [part for part in (p.strip() for p in out) if part]


def contact_key(uri: str, user: str, host: str) -> str:
    """``user@host:port`` of a Contact URI, host in lower case, without parameters."""
    colon = uri.find(":")
    rest = uri[colon + 1:] if colon >= 0 else uri
    at = rest.rfind("@")
    hostport = rest[at + 1:] if at >= 0 else rest
    hostport = hostport.split(";", 1)[0].split("?", 1)[0]
    return f"{user}@{hostport.lower()}" if user else hostport.lower()


def contacts(msg: SipMessage) -> tuple[list[tuple[Contact, int | None]], bool]:
    """The message's Contact bindings, each with its ``;expires`` parameter (or None),
    and whether it is the wildcard ``Contact: *`` (remove every binding)."""
    return parse_contacts(msg.headers.get("contact", ()))


def parse_contacts(values: Iterable[str]) -> tuple[list[tuple[Contact, int | None]], bool]:
    """``contacts`` of the values of Contact headers."""
    out: list[tuple[Contact, int | None]] = []
    wildcard = False
    for value in values:
        for item in split_list(value):
            if item == "*":
                wildcard = True
                continue
            if len(out) >= MAX_CONTACTS:
                return out, wildcard
            addr = parse_name_addr(item)
            if not addr.uri:
                continue
            gt = item.rfind(">")
            params = item[gt + 1:] if gt >= 0 else item[len(addr.uri):]
            match = _EXPIRES_PARAM.search(params)
            expires = int(match.group(1)) if match else None
            out.append(((contact_key(addr.uri, addr.user, addr.host), addr.user, addr.host),
                        expires))
    return out, wildcard


def header_int(msg: SipMessage, name: str) -> int | None:
    """The first value of header ``name`` as a non-negative integer, or None."""
    value = msg.header(name).strip()
    if value.isdigit() and len(value) <= 10:
        return int(value)
    return None


def digest_params(value: str) -> dict[str, str]:
    """``Digest username="a", realm="b", ...`` as {"username": "a", "realm": "b", ...}
    (names in lower case, quotes and escapes removed)."""
    space = value.find(" ")
    if space < 0:
        return {}
    params: dict[str, str] = {}
    for match in _DIGEST_PARAM.finditer(value, space + 1):
        quoted, bare = match.group(2), match.group(3)
        text = quoted.replace('\\"', '"') if quoted is not None else bare
        params.setdefault(match.group(1).lower(), text[:MAX_TEXT])
        if len(params) >= 16:
            break
    return params


def credentials(msg: SipMessage) -> tuple[str, str, bool, bool]:
    """(username, realm, has Authorization, has Proxy-Authorization) of a request."""
    www = msg.header("authorization")
    proxy = msg.header("proxy-authorization")
    value = www or proxy
    if not value:
        return "", "", False, False
    return _param(_USERNAME, value), _param(_REALM, value), bool(www), bool(proxy)


def _param(pattern: re.Pattern[str], value: str) -> str:
    match = pattern.search(value)
    if match is None:
        return ""
    quoted = match.group(1)
    text = quoted.replace('\\"', '"') if quoted is not None else match.group(2)
    return text[:MAX_TEXT]


def challenge_is_stale(msg: SipMessage) -> bool:
    """True when a 401/407 only says the nonce went stale (``stale=true``): the client's
    credentials were right and it is asked to retry with a fresh nonce (RFC 2617 3.2.1)."""
    name = "proxy-authenticate" if msg.status == 407 else "www-authenticate"
    for value in msg.headers.get(name, ()):
        if "stale" in value.lower() and \
                digest_params(value).get("stale", "").lower() == "true":
            return True
    return False


def origin_branch(msg: SipMessage) -> str:
    """The branch of the bottom Via: the request's originator, the same on every hop
    (each proxy adds its own Via on top), so copies of one request seen on two hops, and
    their answers, share it."""
    vias = msg.headers.get("via")
    if not vias:
        return ""
    last = vias[-1]
    comma = last.rfind(",")
    match = _BRANCH.search(last, comma + 1 if comma >= 0 else 0)
    return match.group(1)[:MAX_TEXT] if match else ""


def user_agent(msg: SipMessage) -> str:
    """The User-Agent (requests) or Server (responses) header, cut to MAX_TEXT."""
    return (msg.header("user-agent") or msg.header("server"))[:MAX_TEXT]


class Finished:
    """SIP transactions decided lately, and whether an answer decided them, so that late
    copies of their request or answer are recognised instead of taken for new ones. A key
    is kept ``ttl`` seconds after its decision (64 x T1, the life of a non-INVITE server
    transaction) and at most ``limit`` keys (the oldest go first)."""

    def __init__(self, ttl: float = 32.0, limit: int = 200_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._keys: OrderedDict[Hashable, tuple[float, bool]] = OrderedDict()

    def add(self, key: Hashable, now: float, answered: bool = True) -> None:
        keys = self._keys
        keys[key] = (now, answered)
        if len(keys) > self.limit:
            keys.popitem(last=False)

    def answered(self, key: Hashable) -> bool | None:
        """True: decided by an answer; False: by a timeout; None: not known."""
        done = self._keys.get(key)
        return None if done is None else done[1]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def expire(self, now: float) -> None:
        keys = self._keys
        horizon = now - self.ttl
        while keys and next(iter(keys.values()))[0] < horizon:
            keys.popitem(last=False)


__all__ = [
    "DEFAULT_EXPIRES",
    "MAX_CONTACTS",
    "Contact",
    "Finished",
    "challenge_is_stale",
    "contact_key",
    "contacts",
    "credentials",
    "digest_params",
    "header_int",
    "origin_branch",
    "parse_contacts",
    "split_list",
    "user_agent",
]
