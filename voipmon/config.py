"""voipmonitor.conf parsing, the option table, and validated config objects.

One table (``OPTIONS``) says, for every key: its type, default, which role reads it
(sensor, central or both) and one line of doc. The parser reads VoIPmonitor's syntax
(``key = value``, ``#``/``;`` comments, an optional ``[general]`` header, repeated keys);
``load_sensor_config``/``load_central_config`` validate and return frozen objects.
Every problem is a ``usage.UsageError`` naming the file, line, key, value and what is
allowed, so twistd prints one clear line instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.python import usage

SENSOR = frozenset({"sensor"})
CENTRAL = frozenset({"central"})
BOTH = SENSOR | CENTRAL

DEFAULT_SERVER_PORT = 60024
DEFAULT_MANAGER_PORT = 5029

_TRUE = {"yes", "true", "1", "on", "y"}
_FALSE = {"no", "false", "0", "off", "n"}


class ConfigError(usage.UsageError):
    """A config problem; the message names file, line, key, value and what is allowed."""


# -- value types -----------------------------------------------------------------


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
    is_list = False

    def parse(self, text: str) -> Any:
        return text


class Text(Kind):
    def __init__(self, allow_empty: bool = True) -> None:
        self.allow_empty = allow_empty
        self.allowed = "any text" if allow_empty else "a non-empty text"

    def parse(self, text: str) -> str:
        if not text and not self.allow_empty:
            raise ValueError
        return text


class Integer(Kind):
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
    def __init__(self, lo: float = 0.0) -> None:
        self.lo = lo
        self.allowed = f"a number >= {lo:g}"

    def parse(self, text: str) -> float:
        value = float(text)
        if not self.lo <= value < float("inf"):  # also refuses nan
            raise ValueError
        return value


class Boolean(Kind):
    allowed = "yes or no (also true/false, 1/0, on/off)"

    def parse(self, text: str) -> bool:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError


class Choice(Kind):
    def __init__(self, *choices: str, aliases: Mapping[str, str] | None = None) -> None:
        self.choices = choices
        self.aliases = dict(aliases or {})
        self.allowed = "one of " + ", ".join(choices)

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

    def parse(self, text: str) -> list[str]:
        return split_list(text)


class PortList(Kind):
    """Ports and ranges (``5060, 5070-5072``); repeated keys add to it (``sipport``)."""

    is_list = True
    allowed = "ports 1..65535 or ranges like 5060-5070, comma-separated"

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

    def parse(self, text: str) -> tuple[Destination, ...]:
        items = [item for item in re.split(r"[,;\s]+", text) if item]
        return tuple(parse_destination(item) for item in items)


class HostPort(Kind):
    """``ip:port`` as in VoIPmonitor's ``mirror_bind``/``mirror_destination``."""

    allowed = "host:port ([v6addr]:port for IPv6)"

    def parse(self, text: str) -> Destination:
        dest = parse_destination(text)
        if dest.port is None:
            raise ValueError
        return dest


PORT = Integer(1, 65535)


# -- the option table -------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    name: str
    kind: Kind
    default: Any
    roles: frozenset[str]
    doc: str
    required: bool = False


OPTIONS: tuple[Option, ...] = (
    # identity and channel (sensor side)
    Option("id_sensor", Integer(1, 65535), None, SENSOR,
           "Unique id of this sensor (1..65535), stored in cdr.id_sensor.",
           required=True),
    Option("name_sensor", Text(), "", SENSOR,
           "Human name of this sensor shown by the central (default: 'sensor N')."),
    Option("server_destination", DestinationList(), (), SENSOR,
           "Centrals to send to, tried in order for failover: host, host:port or [v6]:port.",
           required=True),
    Option("server_destination_port", PORT, DEFAULT_SERVER_PORT, SENSOR,
           "Port of every server_destination entry that gives none."),
    Option("server_password", Text(allow_empty=False), None, BOTH,
           "Shared secret; both sides prove they know it; it never crosses the wire.",
           required=True),
    Option("packetbuffer_sender", Boolean(), False, SENSOR,
           "no: analyse here and send CDRs; yes: mirror raw packets to the central."),
    Option("server_type_compress", Choice("zstd", "gzip", "lzo", "none",
                                          aliases={"no": "none", "zip": "gzip"}),
           "zstd", SENSOR, "Channel compression: zstd, gzip, lzo or none."),
    Option("server_certificate_sha256", Text(), "", SENSOR,
           "Pin the central's TLS certificate by its SHA-256 fingerprint (hex, colons optional)."),
    Option("server_ca_file", Text(), "", SENSOR,
           "Verify the central's certificate against this CA file, with hostname checking."),
    Option("failback_probe_interval", Number(lo=1.0), 30.0, SENSOR,
           "Seconds between probes of the primary central while connected to a backup."),
    # capture and analysis (sensor side)
    Option("interface", TextList(), [], SENSOR,
           "Interfaces to capture on (comma list, or 'any'); ignored with --read-pcap."),
    Option("sipport", PortList(), [5060], SENSOR,
           "SIP ports (UDP and TCP); repeat the key or list several, ranges allowed."),
    Option("filter", Text(), "", SENSOR,
           "Extra BPF filter ANDed with the SIP/RTP filter built from sipport."),
    Option("savesip", Boolean(), True, SENSOR, "Write each call's SIP packets to its pcap."),
    Option("savertp", Choice("yes", "no", "header"), "yes", SENSOR,
           "Write RTP: yes (whole packets), header (RTP headers only) or no."),
    Option("rtptimeout", Number(lo=1.0), 300.0, SENSOR,
           "Close an answered call after this many seconds without RTP or SIP (bye=104)."),
    Option("sipwithoutrtptimeout", Number(lo=1.0), 3600.0, SENSOR,
           "Close a call with SIP but no RTP after this many seconds of silence."),
    Option("absolute_timeout", Number(lo=1.0), 14400.0, SENSOR,
           "Close any call this many seconds after it started (bye=102)."),
    Option("max_buffer_mem", Integer(1), 2000, SENSOR,
           "MB of packets held in memory for mirroring; beyond it packets are dropped, counted."),
    Option("ringbuffer", Integer(1, 4096), 50, SENSOR,
           "MB of kernel ring buffer per captured interface; it absorbs bursts."),
    Option("snaplen", Integer(256, 262144), 65535, SENSOR,
           "Bytes kept of each captured packet; the default keeps whole packets."),
    Option("mirror_destination", HostPort(), None, SENSOR,
           "Deprecated legacy mirroring: send raw packets over plain TCP to this ip:port."),
    # management port (sensor side)
    Option("managerip", Text(allow_empty=False), "127.0.0.1", SENSOR,
           "Address of the management port (pcap retrieval, sniffer_stat)."),
    Option("managerport", Integer(0, 65535), DEFAULT_MANAGER_PORT, SENSOR,
           "Management port; 0 disables it."),
    Option("manager_enable_unencrypted", Boolean(), False, SENSOR,
           "Allow plain-text management commands; honoured only when managerip is loopback."),
    # spool (both)
    Option("spooldir", Text(allow_empty=False), "/var/spool/voipmon", BOTH,
           "Directory for per-call pcaps, the CDR queue and state (certificate)."),
    Option("maxpoolsize", Integer(0), 0, BOTH,
           "MB of pcaps to keep in the spool; the oldest minutes go first. 0 = no limit."),
    Option("maxpooldays", Integer(0), 0, BOTH,
           "Days of pcaps to keep in the spool. 0 = no limit."),
    Option("cleandatabase", Integer(0), 0, CENTRAL,
           "Days of calls to keep in the database (cdr, cdr_rtp, cdr_next); older ones are "
           "deleted hourly, oldest first. 0 = keep them all."),
    # central
    Option("server_bind", Text(), "", CENTRAL,
           "Address the central listens on for sensors (0.0.0.0 or :: for all).",
           required=True),
    Option("server_bind_port", PORT, DEFAULT_SERVER_PORT, CENTRAL,
           "Port the central listens on for sensors."),
    Option("tls_certificate", Text(), "", CENTRAL,
           "PEM certificate chain for the channel; empty = self-signed, kept in spooldir."),
    Option("tls_private_key", Text(), "", CENTRAL,
           "PEM private key for tls_certificate."),
    Option("client_server_connect_maximum_time_diff_s", Number(lo=0.0), 2.0, CENTRAL,
           "Largest clock difference (seconds) allowed between a sensor and the central."),
    Option("mirror_bind", HostPort(), None, CENTRAL,
           "Deprecated legacy mirroring: receive raw packets from mirror_destination senders."),
    Option("mirror_connect_maximum_time_diff_s", Number(lo=0.0), 2.0, CENTRAL,
           "Largest clock difference (seconds) allowed for a legacy mirror sender."),
    Option("mysqlhost", Text(), "", CENTRAL,
           "MySQL/MariaDB host; empty = embedded SQLite at sqlite_path."),
    Option("mysqlport", PORT, 3306, CENTRAL, "MySQL/MariaDB port."),
    Option("mysqldb", Text(allow_empty=False), "voipmonitor", CENTRAL,
           "Database name; created if missing and the user may create it."),
    Option("mysqluser", Text(allow_empty=False), "root", CENTRAL, "Database user."),
    Option("mysqlpassword", Text(), "", CENTRAL, "Database password (never logged)."),
    Option("sqlite_path", Text(allow_empty=False), "/var/lib/voipmon/voipmon.sqlite", CENTRAL,
           "Embedded SQLite database used when mysqlhost is empty."),
    Option("http_bind", Text(allow_empty=False), "127.0.0.1", CENTRAL,
           "Address of the HTTP API and web page."),
    Option("http_port", Integer(0, 65535), 8080, CENTRAL, "HTTP port; 0 disables it."),
    Option("http_user", Text(), "", CENTRAL,
           "HTTP Basic user; required when http_bind is not loopback."),
    Option("http_password", Text(), "", CENTRAL,
           "HTTP Basic password; required when http_bind is not loopback."),
    Option("http_tls", Choice("auto", "yes", "no"), "auto", CENTRAL,
           "HTTPS with the channel's certificate; auto = unless http_bind is loopback."),
)

OPTIONS_BY_NAME: dict[str, Option] = {opt.name: opt for opt in OPTIONS}


def options_for(role: str) -> tuple[Option, ...]:
    return tuple(opt for opt in OPTIONS if role in opt.roles)


# -- parsing --------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    key: str
    value: str
    line: int


def parse_text(text: str) -> list[Entry]:
    """Split voipmonitor.conf text into entries (no validation, keys lower-cased).

    Raises ValueError(line, message) for a line that is not ``key = value``.
    """
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            continue  # [general] and other section headers carry no meaning here
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or not key or not re.fullmatch(r"[a-z0-9_.\-]+", key):
            raise _LineError(number, f"expected 'key = value', found {raw.strip()!r}")
        value = value.strip()
        # A trailing comment needs whitespace before it, so passwords may hold '#'.
        value = re.split(r"\s+[#;]", value, maxsplit=1)[0].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        entries.append(Entry(key, value, number))
    return entries


class _LineError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class _Origin:
    path: str
    line: int | None

    def __str__(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"


class _ConfigBase:
    """Fields shared by both roles' config objects."""

    path: str
    warnings: tuple[str, ...]
    _origins: Mapping[str, _Origin]

    def where(self, key: str) -> str:
        """``file:line`` of the key, or just the file when it took its default."""
        origin = self._origins.get(key)
        return str(origin) if origin else self.path

    def error(self, key: str, problem: str, allowed: str | None = None) -> ConfigError:
        """A ConfigError about ``key`` for checks made after loading (e.g. a missing file)."""
        value = getattr(self, key, None)
        return ConfigError(_message(self.where(key), key, value, problem, allowed))


def _make_config_class(name: str, role: str, doc: str) -> type:
    fields = [(opt.name, Any) for opt in options_for(role)]
    fields += [
        ("path", str, field(default="")),
        ("warnings", tuple, field(default=())),
        ("_origins", Mapping, field(default_factory=dict, repr=False, compare=False)),
    ]
    cls = dataclasses.make_dataclass(name, fields, bases=(_ConfigBase,), frozen=True)
    cls.__doc__ = doc
    cls.__module__ = __name__
    return cls


SensorConfig = _make_config_class(
    "SensorConfig", "sensor", "Validated sensor settings; attributes are the option names."
)
CentralConfig = _make_config_class(
    "CentralConfig", "central", "Validated central settings; attributes are the option names."
)


def _message(where: str, key: str, value: Any, problem: str, allowed: str | None) -> str:
    text = f"{where}: {key}"
    if value not in (None, "", (), []):
        shown = value if isinstance(value, str) else str(value)
        text += f" = {shown!r}"
    text += f": {problem}"
    if allowed:
        text += f"; allowed: {allowed}"
    return text


def _nearest(key: str) -> str | None:
    close = difflib.get_close_matches(key, list(OPTIONS_BY_NAME), n=1, cutoff=0.6)
    return close[0] if close else None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="strict") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found")
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file")
    except PermissionError:
        raise ConfigError(f"{path}: cannot read config file: permission denied")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: config file is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        )
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}")


def _mirror_sender_needs_no_channel(name: str, values: Mapping[str, Any]) -> bool:
    """A legacy mirror sender (mirror_destination) sends no CDRs, so needs no central."""
    return name == "server_destination" and bool(values.get("mirror_destination"))


def _load(role: str, path: str, text: str | None, overrides: Iterable[tuple[str, str]]) -> Any:
    if text is None:
        text = _read(path)
    try:
        entries = parse_text(text)
    except _LineError as exc:
        raise ConfigError(f"{path}:{exc.line}: {exc.message}")
    entries += [Entry(key.lower(), value, 0) for key, value in overrides]

    values: dict[str, Any] = {}
    origins: dict[str, _Origin] = {}
    warnings: list[str] = []
    for entry in entries:
        origin = _Origin(path if entry.line else "command line", entry.line or None)
        opt = OPTIONS_BY_NAME.get(entry.key)
        if opt is None:
            hint = _nearest(entry.key)
            warnings.append(
                f"{origin}: unknown key {entry.key!r} ignored"
                + (f"; did you mean {hint!r}?" if hint else "")
            )
            continue
        try:
            value = opt.kind.parse(entry.value)
        except ValueError:
            raise ConfigError(
                _message(str(origin), entry.key, entry.value, "invalid value", opt.kind.allowed)
            )
        if role not in opt.roles and entry.key not in ("server_bind", "server_destination"):
            other = "central" if role == "sensor" else "sensor"
            warnings.append(f"{origin}: {entry.key} is a {other} option; the {role} ignores it")
        if opt.kind.is_list and entry.key in values:
            values[entry.key] = values[entry.key] + value
        else:
            if entry.key in values and entry.line:
                warnings.append(f"{origin}: {entry.key} repeated; this value overrides line "
                                f"{origins[entry.key].line}")
            values[entry.key] = value
        origins[entry.key] = origin

    if values.get("server_bind") and values.get("server_destination"):
        raise ConfigError(
            f"{origins['server_destination']}: server_destination is set together with "
            f"server_bind ({origins['server_bind']}): a sniffer cannot be both server and client"
        )

    result: dict[str, Any] = {}
    for opt in options_for(role):
        if opt.name in values:
            value = values[opt.name]
        else:
            if opt.required and not _mirror_sender_needs_no_channel(opt.name, values):
                raise ConfigError(
                    f"{path}: {opt.name} is missing; allowed: {opt.kind.allowed} "
                    f"({opt.doc.rstrip('.')})"
                )
            value = opt.default
        if value in ((), [], "") and opt.required and \
                not _mirror_sender_needs_no_channel(opt.name, values):
            raise ConfigError(_message(str(origins.get(opt.name, path)), opt.name, value,
                                       "must not be empty", opt.kind.allowed))
        if isinstance(value, list):
            value = tuple(dict.fromkeys(value))  # frozen, de-duplicated, order kept
        result[opt.name] = value

    cls = SensorConfig if role == "sensor" else CentralConfig
    return cls(**result, path=path, warnings=tuple(warnings), _origins=origins)


def load_sensor_config(path: str, text: str | None = None,
                       overrides: Iterable[tuple[str, str]] = ()) -> Any:
    """Read and validate a sensor config; raise ConfigError on any problem."""
    return _load("sensor", path, text, overrides)


def load_central_config(path: str, text: str | None = None,
                        overrides: Iterable[tuple[str, str]] = ()) -> Any:
    """Read and validate a central config; raise ConfigError on any problem."""
    return _load("central", path, text, overrides)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def destinations(config: Any) -> tuple[Destination, ...]:
    """``server_destination`` entries with ``server_destination_port`` filled in."""
    return tuple(d.with_default_port(config.server_destination_port)
                 for d in config.server_destination)
