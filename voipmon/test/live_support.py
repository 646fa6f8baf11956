"""Helpers for tests that capture on real interfaces or drive real tools (SIPp, tcpdump).

They need root (or CAP_NET_RAW) and the Debian tools. Without them the tests skip with a
reason; CI sets VOIPMON_REQUIRE_LIVE=1, and then a missing part fails the test instead.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterable

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.trial.unittest import FailTest, SkipTest
from zope.interface import implementer

from voipmon.sources.interfaces import IFrameSink, ISource, Record

REQUIRE = "VOIPMON_REQUIRE_LIVE"


@implementer(IFrameSink)
class FunctionSink:
    """An IFrameSink that calls ``function(ts, linktype, frame)`` for every frame."""

    def __init__(self, function: Callable[[float, int, bytes], object]) -> None:
        self.function = function

    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        self.function(ts, linktype, frame)

    def feed_all(self, records: Iterable[Record]) -> int:
        count = 0
        for ts, linktype, frame in records:
            self.function(ts, linktype, frame)
            count += 1
        return count


@implementer(ISource)
class IdleSource(service.Service):
    """A live source that never captures anything (for tests of everything after it)."""

    name = "idle"
    live = True
    error = None
    sink = None

    def __init__(self) -> None:
        self.done: defer.Deferred[int] = defer.Deferred()

    def stats(self) -> dict[str, object]:
        return {"packets": 0, "dropped": 0}


def live_unavailable(reason: str) -> Exception:
    """SkipTest, or FailTest when VOIPMON_REQUIRE_LIVE=1."""
    if os.environ.get(REQUIRE) == "1":
        return FailTest(f"{reason} (required because {REQUIRE}=1)")
    return SkipTest(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        raise live_unavailable("live capture needs root (CAP_NET_RAW)")


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise live_unavailable(f"{name} is not installed (Debian package {package})")
    return path


def free_udp_port(host: str = "127.0.0.1", span: int = 1) -> int:
    """A port p such that p..p+span-1 are free for UDP and TCP right now on ``host``."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            base = probe.getsockname()[1]
        if base + span > 65535:
            continue
        if all(_free(host, port) for port in range(base, base + span)):
            return base
    raise RuntimeError("no free port range found")


def _free(host: str, port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


class ToolProcess(protocol.ProcessProtocol):
    """Collects a child's output; ``ready`` fires when ``marker`` appears on stdout or
    stderr (or at once without one), ``ended`` fires with the exit code."""

    def __init__(self, name: str, marker: bytes | None = None) -> None:
        self.name = name
        self.marker = marker
        self.out = bytearray()
        self.err = bytearray()
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        if marker is None:
            self.ready.callback(None)

    def _check(self) -> None:
        if not self.ready.called and self.marker is not None and \
                (self.marker in self.out or self.marker in self.err):
            self.ready.callback(None)

    def outReceived(self, data: bytes) -> None:
        self.out += data
        del self.out[:-65536]
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.err += data
        del self.err[:-65536]
        self._check()

    def processEnded(self, reason: object) -> None:
        code = getattr(getattr(reason, "value", None), "exitCode", None)
        if not self.ready.called:
            self.ready.errback(RuntimeError(
                f"{self.name} exited ({code}) before it was ready: {self.tail()}"))
        self.ended.callback(code)

    def tail(self) -> str:
        return (bytes(self.err[-2000:]) + bytes(self.out[-500:])).decode("utf-8", "replace")
