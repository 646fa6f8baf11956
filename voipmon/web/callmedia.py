"""A call's quality over time and its audio, computed on demand from its pcap.

The pcap is the source of truth: the central gets it through ``CallPcaps.send`` (its own
spool, or the sensor's), the one way the central fetches a call's packets, into a file of
its media cache; a fresh engine then replays it with an observer
(``voipmon.analysis.timeline``, ``voipmon.audio.render``), in a thread so the reactor keeps
serving, at most ``MAX_RENDERS`` at a time. Nothing new is stored per call.

The cache (``<spooldir>/media``, ``MediaCache``) keeps the fetched pcap and the results,
one directory per call, bounded in bytes: after each answer the least recently used
directories go first until the bound holds (0 keeps nothing). A request that comes while
the same pcap is being fetched waits for that fetch instead of starting a second one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from voipmon.web.api import ApiError
from voipmon.web.pcaps import BoundedConsumer, CallPcaps, PcapUnavailable

log = Logger()

CACHE_DIRECTORY = "media"
MAX_PCAP = 2 << 30          # bytes of pcap a call's media reads at most
MAX_RENDERS = 2             # replays running at once
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
T = TypeVar("T")


class MediaCache:
    """Files of calls under ``root``, one directory per call, at most ``limit`` bytes."""

    def __init__(self, root: str, limit: int) -> None:
        self.root = root
        self.limit = limit
        self._busy: dict[str, int] = {}     # call directories in use: never removed

    def directory(self, key: str) -> str:
        return os.path.join(self.root, _UNSAFE.sub("_", key))

    def get(self, key: str, name: str) -> str | None:
        """The cached file's path (marked as just used), or None."""
        path = os.path.join(self.directory(key), name)
        try:
            os.utime(path)
        except OSError:
            return None
        return path

    def temporary(self, key: str, suffix: str) -> str:
        """A fresh file name in the call's directory, for ``put`` to rename."""
        folder = self.directory(key)
        os.makedirs(folder, exist_ok=True)
        handle, path = tempfile.mkstemp(prefix=".part-", suffix=suffix, dir=folder)
        os.close(handle)
        return path

    def put(self, key: str, name: str, temporary: str) -> str:
        path = os.path.join(self.directory(key), name)
        os.replace(temporary, path)
        return path

    def hold(self, key: str) -> None:
        self._busy[key] = self._busy.get(key, 0) + 1

    def release(self, key: str) -> None:
        left = self._busy.get(key, 0) - 1
        if left > 0:
            self._busy[key] = left
            return
        self._busy.pop(key, None)
        try:
            os.rmdir(self.directory(key))     # only if nothing was kept
        except OSError:
            pass
        self.trim()

    def trim(self) -> list[str]:
        """Remove the least recently used call directories (not those in use) until the
        cache is within its bound; the removed keys' directory names."""
        busy = {os.path.basename(self.directory(key)) for key in self._busy}
        entries = []
        total = 0
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        for name in names:
            size, used = _usage(os.path.join(self.root, name))
            total += size
            if name not in busy:
                entries.append((used, name, size))
        removed = []
        for _used, name, size in sorted(entries):
            if total <= self.limit:
                break
            shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
            total -= size
            removed.append(name)
        return removed


def _usage(folder: str) -> tuple[int, float]:
    """Bytes in ``folder`` and when its newest file was last used."""
    size, used = 0, 0.0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                size += info.st_size
                used = max(used, info.st_mtime)
    except OSError:
        pass
    return size, used


class FileSink(BoundedConsumer):
    """A consumer for ``CallPcaps.send`` that writes the pcap to a file, up to a limit."""

    def __init__(self, path: str, limit: int) -> None:
        super().__init__(limit, "the call's pcap", "its quality and audio read")
        self.handle = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size <= self.limit:
            self.handle.write(data)

    def verify(self) -> None:
        """After the transfer: the whole pcap was kept, or a 413."""
        if self.size > self.limit:
            raise PcapUnavailable(413, f"the call's pcap is more than the {self.limit} "
                                       "bytes its quality and audio read")

    def close(self) -> None:
        self.handle.close()


def call_key(cdr: dict[str, Any]) -> str:
    return f"{cdr['id']}-{cdr.get('sensor_cdr_uid') or ''}"


def sip_ports(cdr: dict[str, Any]) -> tuple[int, ...]:
    """The ports to read SIP on when replaying the call (its own and 5060)."""
    return tuple(sorted({cdr.get("sipcallerport") or 5060, cdr.get("sipcalledport") or 5060,
                         5060}))


class CallMedia:
    """Fetches calls' pcaps into the cache and computes from them in threads."""

    def __init__(self, pcaps: CallPcaps, cache: MediaCache, reactor: Any,
                 run: Callable[..., defer.Deferred] | None = None) -> None:
        self.pcaps = pcaps
        self.cache = cache
        self.reactor = reactor
        self._run = run or (lambda f, *a, **kw: threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), f, *a, **kw))
        self._renders = defer.DeferredSemaphore(MAX_RENDERS)
        self._fetching: dict[str, list[defer.Deferred]] = {}

    def _check(self, cdr: dict[str, Any]) -> None:
        if not cdr.get("pcap_on") or not cdr.get("sip_pcap"):
            raise ApiError(404, f"call {cdr.get('id')} has no pcap (savesip/savertp "
                                        "were off, or no packet was saved)")
        if not cdr.get("rtp_pcap"):
            raise ApiError(404, f"call {cdr.get('id')} has no RTP pcap (savertp = no, "
                                        "or no RTP was seen): nothing to chart or play")

    def pcap(self, cdr: dict[str, Any]) -> defer.Deferred:
        """Deferred path of the call's merged pcap in the cache (fetched if needed)."""
        self._check(cdr)
        key = call_key(cdr)
        cached = self.cache.get(key, "call.pcap")
        if cached is not None:
            return defer.succeed(cached)
        waiting = self._fetching.get(key)
        d: defer.Deferred = defer.Deferred()
        if waiting is not None:
            waiting.append(d)
            return d
        self._fetching[key] = [d]
        self._fetch(cdr, key).addBoth(self._fetched, key)
        return d

    @defer.inlineCallbacks
    def _fetch(self, cdr: dict[str, Any], key: str) -> Any:
        self.cache.hold(key)
        temporary = self.cache.temporary(key, ".pcap")
        sink = FileSink(temporary, MAX_PCAP)
        try:
            yield self.pcaps.send(cdr, sink, sink.check)
            sink.close()
            sink.verify()
            return self.cache.put(key, "call.pcap", temporary)
        finally:
            sink.close()
            if os.path.exists(temporary):
                os.unlink(temporary)
            self.cache.release(key)

    def _fetched(self, result: Any, key: str) -> None:
        for d in self._fetching.pop(key, []):
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    @defer.inlineCallbacks
    def compute(self, cdr: dict[str, Any], name: str,
                make: Callable[[str, str], Any]) -> Any:
        """The cached file ``name`` of the call, made if missing by ``make(pcap path,
        temporary path)`` in a thread (its return value is dropped). Deferred path."""
        key = call_key(cdr)
        self.cache.hold(key)
        try:
            cached = self.cache.get(key, name)
            if cached is not None:
                return cached
            pcap = yield self.pcap(cdr)
            temporary = self.cache.temporary(key, os.path.splitext(name)[1])
            started = time.monotonic()
            try:
                yield self._renders.run(self._run, make, pcap, temporary)
                path = self.cache.put(key, name, temporary)
            finally:
                if os.path.exists(temporary):
                    os.unlink(temporary)
            log.info("{what} of call {cdr_id} made in {seconds:.3f} s", what=name,
                     cdr_id=cdr.get("id"), seconds=time.monotonic() - started)
            return path
        finally:
            self.cache.release(key)
