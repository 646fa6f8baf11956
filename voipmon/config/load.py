"""Reading voipmonitor.conf text into validated, typed settings.

The parser reads VoIPmonitor's syntax (``key = value``, ``#``/``;`` comments, an optional
``[general]`` header, repeated keys); ``load_sensor_config``/``load_central_config``
validate every key against the option table and return frozen ``SensorSettings`` /
``CentralSettings``. Every problem is a ``ConfigError`` (a ``usage.UsageError``) naming the
file, line, key, value and what is allowed, so twistd prints one clear line instead of a
traceback.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from voipmon.config import settings as generated
from voipmon.config.base import Origin, message
from voipmon.config.kinds import ConfigError, Destination
from voipmon.config.options import (
    OPTIONS_BY_NAME,
    Option,
    groups_for,
    members,
    options_for,
)
from voipmon.config.settings import CentralSettings, ChannelClientSettings, SensorSettings


@dataclass(frozen=True)
class Entry:
    key: str
    value: str
    line: int


class _LineError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


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


def _mirror_sender_needs_no_channel(name: str, values: Mapping[str, object]) -> bool:
    """A legacy mirror sender (mirror_destination) sends no CDRs, so needs no central."""
    return name == "server_destination" and bool(values.get("mirror_destination"))


def _read_entries(role: str, path: str, entries: list[Entry]
                  ) -> tuple[dict[str, object], dict[str, Origin], list[str]]:
    """Each known key's parsed value (lists accumulated) and origin, and the warnings."""
    values: dict[str, object] = {}
    origins: dict[str, Origin] = {}
    warnings: list[str] = []
    for entry in entries:
        origin = Origin(path if entry.line else "command line", entry.line or None)
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
                message(str(origin), entry.key, entry.value, "invalid value", opt.kind.allowed)
            )
        if role not in opt.roles and entry.key not in ("server_bind", "server_destination"):
            other = "central" if role == "sensor" else "sensor"
            warnings.append(f"{origin}: {entry.key} is a {other} option; the {role} ignores it")
        previous = values.get(entry.key)
        if opt.kind.is_list and isinstance(previous, list) and isinstance(value, list):
            values[entry.key] = previous + value
        else:
            if entry.key in values and entry.line:
                warnings.append(f"{origin}: {entry.key} repeated; this value overrides line "
                                f"{origins[entry.key].line}")
            values[entry.key] = value
        origins[entry.key] = origin
    return values, origins, warnings


def _value(opt: Option, path: str, values: Mapping[str, object],
           origins: Mapping[str, Origin]) -> object:
    """The option's validated value: as given, or its default; required ones must be set."""
    exempt = _mirror_sender_needs_no_channel(opt.name, values)
    if opt.name in values:
        value = values[opt.name]
    else:
        if opt.required and not exempt:
            raise ConfigError(f"{path}: {opt.name} is missing; allowed: {opt.kind.allowed} "
                              f"({opt.doc.rstrip('.')})")
        value = opt.default
    if value in ((), [], "") and opt.required and not exempt:
        raise ConfigError(message(str(origins.get(opt.name, path)), opt.name, value,
                                  "must not be empty", opt.kind.allowed))
    if isinstance(value, list):
        value = tuple(dict.fromkeys(value))  # frozen, de-duplicated, order kept
    return value


def _load(role: str, path: str, text: str | None,
          overrides: Iterable[tuple[str, str]]) -> dict[str, object]:
    """The keyword arguments of ``role``'s settings class: one instance per group."""
    if text is None:
        text = _read(path)
    try:
        entries = parse_text(text)
    except _LineError as exc:
        raise ConfigError(f"{path}:{exc.line}: {exc.message}")
    entries += [Entry(key.lower(), value, 0) for key, value in overrides]
    values, origins, warnings = _read_entries(role, path, entries)
    if values.get("server_bind") and values.get("server_destination"):
        raise ConfigError(
            f"{origins['server_destination']}: server_destination is set together with "
            f"server_bind ({origins['server_bind']}): a sniffer cannot be both server and client"
        )
    result = {opt.name: _value(opt, path, values, origins) for opt in options_for(role)}
    groups: dict[str, object] = {
        group.attr: generated.GROUP_CLASSES[group.name](
            **{opt.attr: result[opt.name] for opt in members(group)})
        for group in groups_for(role)
    }
    return {**groups, "path": path, "warnings": tuple(warnings), "origins": origins,
            "values": result}


def load_sensor_config(path: str, text: str | None = None,
                       overrides: Iterable[tuple[str, str]] = ()) -> SensorSettings:
    """Read and validate a sensor config; raise ConfigError on any problem."""
    return SensorSettings(**_load("sensor", path, text, overrides))


def load_central_config(path: str, text: str | None = None,
                        overrides: Iterable[tuple[str, str]] = ()) -> CentralSettings:
    """Read and validate a central config; raise ConfigError on any problem."""
    return CentralSettings(**_load("central", path, text, overrides))


def destinations(channel: ChannelClientSettings) -> tuple[Destination, ...]:
    """``server_destination`` entries with ``server_destination_port`` filled in."""
    return tuple(d.with_default_port(channel.server_destination_port)
                 for d in channel.server_destination)
