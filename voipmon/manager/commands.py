"""What the management port answers: pure command logic, no reactor, no transport.

The wire protocol (voipmon.manager.server) hands each command line to
:meth:`ManagerCommands.run` and writes what it returns. Command names follow VoIPmonitor's
manager API where one fits (``getversion``, ``sniffer_stat``, ``listcalls``,
``file_exists``, ``getfile``); ``getcallpcap`` is ours: one call's SIP and RTP pcaps merged
into one capture by time.

Replies are framed so a client can tell data from an error and knows when a body ends:
``OK <length>\\n`` and exactly ``length`` bytes, or one line ``ERR <code> <message>\\n``.

One registry, two transports: the management port (voipmon.manager.server) passes a command
line to :meth:`ManagerCommands.run`; the central's requests over the sensor's channel
(voipmon.protocols.rpc.responder) pass the command and its arguments to
:meth:`ManagerCommands.execute`. Both get the same :class:`Reply` or :class:`CommandError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from zope.interface import Interface, implementer

import voipmon
from voipmon.manager.paths import PathRefused, open_in_spool, resolve_in_spool
from voipmon.manager.pcapmerge import CHUNK, PcapMergeError, plan_merge
from voipmon.spool import layout

# Error codes of ``ERR <code> <message>`` lines.
E_UNKNOWN = "unknown_command"
E_USAGE = "usage"
E_REFUSED = "refused"
E_NOT_FOUND = "not_found"
E_UNAVAILABLE = "unavailable"
E_AUTH = "auth"
E_TOO_LONG = "too_long"
E_TIMEOUT = "timeout"
E_INTERNAL = "internal"


class IStatsProvider(Interface):
    """The sensor's live counters, as ``sniffer_stat`` shows them."""

    def sniffer_stat():
        """A JSON-able dict: packets, drops, active_calls, queue_depth, central, uptime..."""


class ICallLister(Interface):
    """The engine's table of calls in progress."""

    def list_active_calls():
        """A list of JSON-able dicts, one per active call."""

    def list_registrations(active_only):
        """A list of JSON-able dicts, one per registration the REGISTER tracker knows
        (only the active ones with ``active_only``); empty when it is off."""


class ICommands(Interface):
    """The command registry, whatever carries the command (management port, channel)."""

    def run(line):
        """The Reply to one command line (``name args``), or CommandError."""

    def execute(name, args):
        """The Reply to command ``name`` with its argument text ``args``, or CommandError."""


class CommandError(Exception):
    """A command that fails; becomes one ``ERR`` line and the connection stays usable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def line(self) -> bytes:
        text = " ".join(self.message.split())  # one line, whatever the message held
        return f"ERR {self.code} {text}\n".encode("utf-8", "backslashreplace")


TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
BINARY = "application/octet-stream"
PCAP = "application/vnd.tcpdump.pcap"


@dataclass(frozen=True)
class Reply:
    """A body of known ``size`` produced by ``chunks()`` (called once, lazily).

    ``content_type`` says what the body is to a transport that can tell (the channel's
    answers carry it; the management port's ``OK <length>`` does not)."""

    size: int
    chunks: Callable[[], Iterator[bytes]]
    content_type: str = BINARY

    @classmethod
    def of(cls, data: bytes, content_type: str = TEXT) -> Reply:
        return cls(len(data), lambda: iter((data,)), content_type)

    @classmethod
    def json(cls, value: Any) -> Reply:
        return cls.of(json.dumps(value, sort_keys=True).encode() + b"\n", JSON)

    def header(self) -> bytes:
        return b"OK %d\n" % self.size


def parse_when(text: str) -> float:
    """Epoch seconds, ISO 8601 (``Z`` or offset; naive means UTC), or ``YYYY-MM-DD/HH/MM``."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        if text.count("/") == 2:
            moment = datetime.strptime(text, "%Y-%m-%d/%H/%M")
        else:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise CommandError(E_USAGE, f"bad time {text!r}: use epoch seconds or ISO 8601")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def call_pcap_relpaths(fbasename: str, when: float) -> list[str]:
    """Where the spool writer keeps a call's pcaps: SIP, then RTP (CommandError if the
    name is not one the writer could have made)."""
    try:
        return [layout.pcap_relpath(when, kind, fbasename) for kind in layout.KINDS]
    except ValueError as exc:
        raise CommandError(E_REFUSED, str(exc))


@implementer(ICommands)
class ManagerCommands:
    """Answers management commands from the spool, the stats provider and the call table."""

    def __init__(self, spooldir: str, stats: Any = None, calls: Any = None,
                 version: str = voipmon.__version__) -> None:
        self.spooldir = spooldir
        self.stats = stats
        self.calls = calls
        self.version = version
        self._table: dict[str, tuple[Callable[[str], Reply], str]] = {
            "help": (self.help, "list the commands"),
            "getversion": (self.getversion, "the sensor's version"),
            "sniffer_stat": (self.sniffer_stat, "counters as JSON"),
            "listcalls": (self.listcalls, "calls in progress as JSON"),
            "listregisters": (self.listregisters,
                              "[all]: active registrations as JSON (all: every one known)"),
            "file_exists": (self.file_exists, "<relpath>: its size, or not_exists"),
            "getfile": (self.getfile, "<relpath>: the file from the spool"),
            "getcallpcap": (self.getcallpcap,
                            "<time> <fbasename>: the call's SIP and RTP merged into one pcap"),
        }

    def run(self, line: str) -> Reply:
        """The reply to one command line, or CommandError."""
        name, _, args = line.strip().partition(" ")
        return self.execute(name, args)

    def execute(self, name: str, args: str = "") -> Reply:
        """The reply to command ``name`` with the argument text ``args`` (what follows the
        name on a command line), or CommandError."""
        entry = self._table.get(name)
        if entry is None:
            shown = name if len(name) <= 40 else name[:40] + "..."
            raise CommandError(E_UNKNOWN, f"{shown!r}; 'help' lists the commands")
        return entry[0](args.strip())

    def help(self, args: str) -> Reply:
        lines = [f"{name} {doc}" for name, (_, doc) in sorted(self._table.items())]
        return Reply.of(("\n".join(lines) + "\n").encode())

    def getversion(self, args: str) -> Reply:
        return Reply.of(f"voipmon {self.version}\n".encode())

    def sniffer_stat(self, args: str) -> Reply:
        if self.stats is None:
            raise CommandError(E_UNAVAILABLE, "no statistics on this node")
        return Reply.json(self.stats.sniffer_stat())

    def listcalls(self, args: str) -> Reply:
        if self.calls is None:
            raise CommandError(E_UNAVAILABLE, "no call table on this node")
        return Reply.json(self.calls.list_active_calls())

    def listregisters(self, args: str) -> Reply:
        if self.calls is None:
            raise CommandError(E_UNAVAILABLE, "no analysis on this node")
        if args not in ("", "all"):
            raise CommandError(E_USAGE, "listregisters takes nothing or 'all'")
        return Reply.json(self.calls.list_registrations(args != "all"))

    def _resolve(self, relpath: str) -> str:
        if not relpath:
            raise CommandError(E_USAGE, "a spool-relative path is required")
        try:
            return resolve_in_spool(self.spooldir, relpath)
        except PathRefused as exc:
            raise CommandError(E_REFUSED, str(exc))
        except FileNotFoundError:
            raise CommandError(E_NOT_FOUND, f"{relpath!r} is not in the spool")

    def file_exists(self, args: str) -> Reply:
        try:
            real = self._resolve(args)
        except CommandError as exc:
            if exc.code != E_NOT_FOUND:
                raise
            return Reply.of(b"not_exists\n")
        return Reply.of(b"%d\n" % os.stat(real).st_size)

    def getfile(self, args: str) -> Reply:
        self._resolve(args)
        try:
            handle = open_in_spool(self.spooldir, args)
        except PathRefused as exc:
            raise CommandError(E_REFUSED, str(exc))
        except OSError as exc:
            raise CommandError(E_NOT_FOUND, f"{args!r}: {exc.strerror or exc}")
        size = os.fstat(handle.fileno()).st_size  # a file still growing is sent as it was

        def chunks() -> Iterator[bytes]:
            with handle:
                left = size
                while left > 0:
                    data = handle.read(min(CHUNK, left))
                    if not data:
                        raise OSError(f"{args}: shrank while being sent")
                    left -= len(data)
                    yield data

        return Reply(size, chunks, PCAP if args.endswith(".pcap") else BINARY)

    def getcallpcap(self, args: str) -> Reply:
        when_text, _, fbasename = args.partition(" ")
        fbasename = fbasename.strip()
        if not when_text or not fbasename:
            raise CommandError(E_USAGE, "getcallpcap <time> <fbasename>")
        return merged_call_pcap(self.spooldir, call_pcap_relpaths(fbasename, parse_when(when_text)))


def merged_call_pcap(spooldir: str, relpaths: list[str]) -> Reply:
    """The merge of those of ``relpaths`` that exist in the spool (CommandError if none)."""
    found = []
    for relpath in relpaths:
        try:
            found.append(resolve_in_spool(spooldir, relpath))
        except PathRefused as exc:
            raise CommandError(E_REFUSED, str(exc))
        except FileNotFoundError:
            continue
    if not found:
        raise CommandError(E_NOT_FOUND, "no pcap of this call in the spool: "
                           + ", ".join(relpaths))
    try:
        plan = plan_merge(found)
    except PcapMergeError as exc:
        raise CommandError(E_INTERNAL, str(exc).replace(os.path.realpath(spooldir) + "/", ""))
    return Reply(plan.size, plan.chunks, PCAP)
