"""How one option's text becomes a typed value, and the value types themselves.

A ``Kind`` parses the text of one ``key = value`` line (``ValueError`` when it cannot),
says what is ``allowed`` (shown in every error about the key), names the Python type the
settings dataclasses declare for it (``annotation``), and renders a value back as
voipmonitor.conf text (``render``, for conf/ and the docs).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from twisted.python import usage

_TRUE = {"yes", "true", "1", "on", "y"}
_FALSE = {"no", "false", "0", "off", "n"}


class ConfigError(usage.UsageError):
    """A config problem; the message names file, line, key, value and what is allowed."""


@dataclass(frozen=True)
class Destination:
    """One entry of ``server_destination``: a host and an optional explicit port."""

    host: str
    port: int | None = None

    def with_default_port(self, port: int) -> Destination:
        return Destination(self.host, self.port if self.port is not None else port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


class Kind:
    """How one option's text becomes a value. ``allowed`` is shown in errors."""

    allowed = "any text"
    annotation = "str"
    is_list = False

    def parse(self, text: str) -> object:
        return text

    def render(self, value: object) -> str:
        """The value as a config line writes it ("" for none)."""
        if value is None:
            return ""
        if isinstance(value, tuple):
            return ", ".join(self.render(item) for item in value)
        return str(value)


class Text(Kind):
    def __init__(self, allow_empty: bool = True) -> None:
        self.allow_empty = allow_empty
        self.allowed = "any text" if allow_empty else "a non-empty text"

    def parse(self, text: str) -> str:
        if not text and not self.allow_empty:
            raise ValueError
        return text


class Integer(Kind):
    annotation = "int"

    def __init__(self, lo: int | None = None, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi
        if lo is not None and hi is not None:
            self.allowed = f"an integer {lo}..{hi}"
        elif lo is not None:
            self.allowed = f"an integer >= {lo}"
        else:
            self.allowed = "an integer"

    def parse(self, text: str) -> int:
        value = int(text, 10)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise ValueError
        return value


class Number(Kind):
    annotation = "float"

    def __init__(self, lo: float = 0.0) -> None:
        self.lo = lo
        self.allowed = f"a number >= {lo:g}"

    def parse(self, text: str) -> float:
        value = float(text)
        if not self.lo <= value < float("inf"):  # also refuses nan
            raise ValueError
        return value

    def render(self, value: object) -> str:
        return f"{value:g}" if isinstance(value, float) else super().render(value)


class Boolean(Kind):
    allowed = "yes or no (also true/false, 1/0, on/off)"
    annotation = "bool"

    def parse(self, text: str) -> bool:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError

    def render(self, value: object) -> str:
        return "yes" if value else "no"


class Choice(Kind):
    def __init__(self, *choices: str, aliases: Mapping[str, str] | None = None) -> None:
        self.choices = choices
        self.aliases = dict(aliases or {})
        self.allowed = "one of " + ", ".join(choices)
        self.annotation = "Literal[" + ", ".join(f'"{c}"' for c in choices) + "]"

    def parse(self, text: str) -> str:
        lowered = text.lower()
        lowered = self.aliases.get(lowered, lowered)
        if lowered not in self.choices:
            raise ValueError
        return lowered


def split_list(text: str) -> list[str]:
    """Split a VoIPmonitor list value on commas, semicolons and whitespace."""
    return [item for item in re.split(r"[,;\s]+", text) if item]


class TextList(Kind):
    """A list of words; repeated keys add to it (as VoIPmonitor's ``interface``)."""

    is_list = True
    allowed = "a comma-separated list"
    annotation = "tuple[str, ...]"

    def parse(self, text: str) -> list[str]:
        return split_list(text)


class PortList(Kind):
    """Ports and ranges (``5060, 5070-5072``); repeated keys add to it (``sipport``)."""

    is_list = True
    allowed = "ports 1..65535 or ranges like 5060-5070, comma-separated"
    annotation = "tuple[int, ...]"

    def parse(self, text: str) -> list[int]:
        ports: list[int] = []
        for item in split_list(text):
            lo_text, _, hi_text = item.partition("-")
            lo = int(lo_text, 10)
            hi = int(hi_text, 10) if hi_text else lo
            if not 1 <= lo <= hi <= 65535 or hi - lo > 10000:
                raise ValueError
            ports.extend(range(lo, hi + 1))
        if not ports:
            raise ValueError
        return ports


def parse_destination(item: str) -> Destination:
    """Parse ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; ValueError if malformed."""
    if item.startswith("["):
        end = item.find("]")
        if end < 0:
            raise ValueError
        host, rest = item[1:end], item[end + 1 :]
        ipaddress.IPv6Address(host)
        if rest and not rest.startswith(":"):
            raise ValueError
        port_text = rest[1:] if rest else None
    elif item.count(":") > 1:
        ipaddress.IPv6Address(item)  # a bare IPv6 address, no port
        host, port_text = item, None
    else:
        host, _, port_text = item.partition(":")
        port_text = port_text if ":" in item else None
    if not host or not re.fullmatch(r"[A-Za-z0-9._:%-]+", host) or host.startswith("-"):
        raise ValueError
    port = None
    if port_text is not None:
        port = int(port_text, 10)
        if not 1 <= port <= 65535:
            raise ValueError
    return Destination(host, port)


class DestinationList(Kind):
    allowed = "a comma/semicolon list of host or host:port ([v6addr]:port for IPv6)"
    annotation = "tuple[Destination, ...]"

    def parse(self, text: str) -> tuple[Destination, ...]:
        return tuple(parse_destination(item) for item in split_list(text))


class HostPort(Kind):
    """``ip:port`` as in VoIPmonitor's ``mirror_bind``/``mirror_destination``."""

    allowed = "host:port ([v6addr]:port for IPv6)"
    annotation = "Destination | None"

    def parse(self, text: str) -> Destination:
        dest = parse_destination(text)
        if dest.port is None:
            raise ValueError
        return dest


PORT = Integer(1, 65535)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
