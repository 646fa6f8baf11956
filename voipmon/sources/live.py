"""Live capture with pypcap, inside the reactor.

Each interface is a non-blocking pcap handle with a large kernel ring, registered with
the reactor as an ``IReadDescriptor`` on its file descriptor. ``doRead`` hands at most
``max_per_read`` frames to the sink, in one batch (``voipmon.sources.batch``: one
``feed_all``, which the engine's fast path takes in one loop), and returns, so one busy
interface cannot starve timers, other interfaces or the channel: the reactor comes back
to a readable descriptor on its next turn. Nothing blocks and no thread is involved.

The ring is TPACKET_V3 (blocks of packets packed by their real size, handed over when
full or after ``BLOCK_TIMEOUT_MS``) unless ``immediate=True``. Immediate mode makes
libpcap fall back to TPACKET_V2, whose slots are all snaplen-sized on interfaces with
offloading (lo, veth, most NICs with GRO): a 50 MB ring then holds ~800 packets, and
bench/live.py measured kernel drops from about 100,000 packets/s, where V3 with the same
ring and snaplen took a whole 340,000 packets/s replay burst without one. A sensor does
not need sub-100 ms delivery (calls are timed by packet timestamps), so V3 is the default.

Kernel drops (``pcap_stats``), interface drops and sink errors are counted per
interface, read by ``stats()`` (the management port's ``sniffer_stat``) and logged in a
periodic status line on the injected clock. Opening fails with one clear ``CaptureError``
line (no such interface, no permission), never a traceback; an interface that fails while
running is closed, logged, and reopened every ``retry_interval`` seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import pcap
from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IReadDescriptor
from twisted.logger import Logger
from twisted.python import failure, usage
from zope.interface import implementer

from voipmon.config import SensorSettings
from voipmon.packet.bpf import FilterError, build_filter, filter_for_config
from voipmon.sources.batch import FrameBatch
from voipmon.sources.interfaces import IFrameSink, ISource, SourceFactory, SourceRequest

log = Logger()

ANY = "any"
DEFAULT_SNAPLEN = 65535
DEFAULT_RINGBUFFER_MB = 50
DEFAULT_MAX_PER_READ = 1000
BLOCK_TIMEOUT_MS = 100


class CaptureError(usage.UsageError):
    """An interface cannot be captured on; the message is one line saying why and what to do."""


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _pcap_reason(exc: Exception) -> str:
    """libpcap's own words out of pypcap's exception text."""
    text = _text(exc.args[0] if exc.args else exc)
    marker = "library was "
    if marker in text:
        text = text.split(marker, 1)[1]
        if text[:2] in ("b'", 'b"') and text[-1:] == text[1]:
            text = text[2:-1]
    return text


def list_interfaces() -> list[str]:
    """The interfaces libpcap can capture on ([] when it cannot list them)."""
    try:
        return list(pcap.findalldevs())
    except OSError as exc:
        log.warn("cannot list interfaces: {reason}", reason=_pcap_reason(exc))
        return []


def check_interfaces(names: Sequence[str], available: Sequence[str]) -> None:
    """Raise CaptureError for a name not among the ``available`` interfaces (when libpcap
    could list them), or one pypcap would take for a capture file."""
    for name in names:
        if available and name not in available:
            raise CaptureError(f"interface {name!r}: no such interface "
                               f"(available: {', '.join(available)})")
        if os.path.exists(name):
            # pypcap tries the name as a capture file before trying it as an interface.
            raise CaptureError(f"interface {name!r}: a file of that name exists in the "
                               f"working directory {os.getcwd()!r}, and pypcap would read it "
                               f"instead")


def open_handle(name: str, snaplen: int, buffer_bytes: int, immediate: bool) -> Any:
    """Open ``name`` with pypcap; raise CaptureError with a clear one-line reason."""
    check_interfaces([name], list_interfaces())
    try:
        handle = pcap.pcap(name=name, snaplen=snaplen, promisc=(name != ANY),
                           immediate=immediate,
                           timeout_ms=0 if immediate else BLOCK_TIMEOUT_MS,
                           buffer_size=buffer_bytes)
    except OSError as exc:
        reason = _pcap_reason(exc)
        lowered = reason.lower()
        if "permitted" in lowered or "permission" in lowered:
            raise CaptureError(
                f"interface {name!r}: permission denied ({reason}); run as root or give the "
                f"interpreter CAP_NET_RAW and CAP_NET_ADMIN")
        if "no such device" in lowered:
            raise CaptureError(f"interface {name!r}: no such interface ({reason})")
        raise CaptureError(f"interface {name!r}: cannot capture: {reason}")
    handle.setnonblock(True)
    return handle


@implementer(IReadDescriptor)
class _Interface:
    """One interface: its pcap handle, reactor registration and counters."""

    def __init__(self, owner: LiveCapture, name: str) -> None:
        self.owner = owner
        self.name = name
        self.handle: Any = None
        self.linktype = -1
        self.expression = ""
        self.packets = 0
        self.bytes = 0          # of the frames as captured
        self.sink_errors = 0
        self.read_errors = 0
        # pcap_stats restart from zero on every reopen; totals of closed handles live here.
        self._closed_stats = (0, 0, 0)
        self.last_error = ""
        # The sink may stop the capture from inside dispatch; pcap_dispatch cannot be
        # re-entered and the handle must outlive it, so closing waits until it returns.
        self._reading = False
        self._close_pending = False
        # the frames of the read in progress, handed over in one batch after it
        self.batch = FrameBatch(self.linktype, self._sink_failed)

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> None:
        owner = self.owner
        handle = owner.opener(self.name, owner.snaplen, owner.ringbuffer_mb << 20,
                              owner.immediate)
        try:
            linktype = handle.datalink()
            expression = build_filter(owner.sipports, owner.user_filter, linktype)
            handle.setfilter(expression)
        except FilterError as exc:
            handle.close()
            raise CaptureError(f"interface {self.name!r}: filter = {owner.user_filter!r}: "
                               f"libpcap cannot compile it for link type {linktype}: "
                               f"{exc.reason}")
        except OSError as exc:
            handle.close()
            raise CaptureError(f"interface {self.name!r}: cannot set the capture filter: "
                               f"{_text(exc.args[0] if exc.args else exc)}")
        self.handle, self.linktype, self.expression = handle, linktype, expression
        self.batch.linktype = linktype

    def close(self) -> None:
        if self.handle is None:
            return
        if self._reading:
            self._close_pending = True
            return
        self._close_pending = False
        recv, drop, ifdrop = self.kernel_stats()
        self._closed_stats = (recv, drop, ifdrop)
        self.handle.close()
        self.handle = None

    def _deliver(self) -> None:
        """The frames of one read to the sink, in one batch (``FrameBatch``)."""
        batch = self.batch
        if batch.frames:
            self.bytes += sum(map(len, batch.frames))
            batch.deliver(self.owner.sink)

    def _sink_failed(self) -> None:
        self.sink_errors += 1
        if self.sink_errors == 1 or self.sink_errors % 10000 == 0:
            log.failure("capture {interface}: the packet sink failed "
                        "({count} times so far); the frame is skipped",
                        interface=self.name, count=self.sink_errors)

    # -- IReadDescriptor -------------------------------------------------------------

    def fileno(self) -> int:
        return self.handle.fd if self.handle is not None else -1

    def doRead(self) -> None:
        if self.handle is None or self._reading:
            return None
        self._reading = True
        try:
            count = self.handle.dispatch(self.owner.max_per_read, self.batch.collect)
            self._deliver()
        finally:
            self._reading = False
        if count < 0:
            self.owner._interface_failed(self, _text(self.handle.geterr()))
            return None
        self.packets += count
        if self._close_pending:
            self._close_pending = False
            self.close()
        return None

    def connectionLost(self, reason: failure.Failure) -> None:
        self.owner._interface_failed(self, reason.getErrorMessage())

    def logPrefix(self) -> str:
        return f"capture {self.name}"

    # -- counters ---------------------------------------------------------------------

    def kernel_stats(self) -> tuple[int, int, int]:
        """Totals of (received by filter, dropped by kernel, dropped by interface)."""
        base = self._closed_stats
        if self.handle is None:
            return base
        try:
            recv, drop, ifdrop = self.handle.stats()
        except OSError:
            return base
        return (base[0] + recv, base[1] + drop, base[2] + ifdrop)

    def stats(self) -> dict[str, Any]:
        recv, drop, ifdrop = self.kernel_stats()
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "kernel_received": recv,
            "kernel_dropped": drop,
            "interface_dropped": ifdrop,
            "sink_errors": self.sink_errors,
            "read_errors": self.read_errors,
            "linktype": self.linktype,
            "up": self.handle is not None,
            "last_error": self.last_error,
        }


@implementer(ISource)
class LiveCapture(service.Service):
    """Capture on one or several interfaces (or ``any``) and feed every frame to ``sink``.

    ``open()`` opens every interface and raises CaptureError on the first that fails; it
    runs in ``privilegedStartService`` if not called earlier, so the handles are opened
    before twistd drops privileges. ``drain()`` reads whatever the kernel rings hold.
    """

    live = True
    error = None

    def __init__(self, interfaces: Sequence[str], sipports: Sequence[int], sink: IFrameSink, *,
                 reactor: Any, clock: IReactorTime | None = None, user_filter: str = "",
                 ringbuffer_mb: int = DEFAULT_RINGBUFFER_MB, snaplen: int = DEFAULT_SNAPLEN,
                 immediate: bool = False, max_per_read: int = DEFAULT_MAX_PER_READ,
                 status_interval: float = 60.0, retry_interval: float = 5.0,
                 opener: Callable[[str, int, int, bool], Any] = open_handle) -> None:
        names = list(dict.fromkeys(interfaces))
        if not names:
            raise CaptureError("no interface to capture on: set interface (a list, or 'any')")
        if ANY in names and len(names) > 1:
            raise CaptureError("interface 'any' already captures every interface; "
                               "it cannot be listed with others")
        if max_per_read < 1:
            raise ValueError("max_per_read must be at least 1")
        self.sipports = tuple(sipports)
        self.sink = sink
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.user_filter = user_filter
        self.ringbuffer_mb = ringbuffer_mb
        self.snaplen = snaplen
        self.immediate = immediate
        self.max_per_read = max_per_read
        self.status_interval = status_interval
        self.retry_interval = retry_interval
        self.opener = opener
        self.interfaces = [_Interface(self, n) for n in names]
        self.name = "live " + ",".join(names)
        self.done: defer.Deferred[int] = defer.Deferred()   # a wire has no end
        self._status_loop: task.LoopingCall | None = None
        self._last_status: dict[str, Any] | None = None
        self._retries: dict[str, IDelayedCall] = {}

    # -- opening and closing ---------------------------------------------------------------

    def open(self) -> None:
        """Open every interface not open yet; on failure close them all and raise."""
        try:
            for iface in self.interfaces:
                if iface.handle is None:
                    iface.open()
        except Exception:
            self._close_all()
            raise
        for iface in self.interfaces:
            log.info("capture {interface}: open, link type {linktype}, filter: {expression}",
                     interface=iface.name, linktype=iface.linktype, expression=iface.expression)

    def privilegedStartService(self) -> None:
        """Open as root, before twistd drops privileges; a failure ends the process with
        one line (twistd runs this outside its option handling, so no UsageError here)."""
        if any(iface.handle is None for iface in self.interfaces):
            try:
                self.open()
            except CaptureError as exc:
                log.critical("cannot capture: {reason}", reason=str(exc))
                raise SystemExit(f"voipmon-sensor: {exc}")
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        self.open()  # no-op when privilegedStartService already opened them
        service.Service.startService(self)
        for iface in self.interfaces:
            self.reactor.addReader(iface)
        if self.status_interval > 0:
            self._last_status = self.stats()
            self._status_loop = task.LoopingCall(self._status)
            self._status_loop.clock = self.clock
            self._status_loop.start(self.status_interval, now=False)

    def stopService(self) -> None:
        service.Service.stopService(self)
        for iface in self.interfaces:
            if iface.handle is not None:
                self.reactor.removeReader(iface)
        for call in self._retries.values():
            if call.active():
                call.cancel()
        self._retries.clear()
        if self._status_loop is not None and self._status_loop.running:
            self._status_loop.stop()
        self._status_loop = None
        self.drain()
        log.info("{line}", line=self.status_line(final=True))
        self._close_all()

    def _close_all(self) -> None:
        for iface in self.interfaces:
            iface.close()

    def drain(self, limit: int = 1000) -> int:
        """Read until every ring is empty (at most ``limit`` slices each); return frames read."""
        total = 0
        for iface in self.interfaces:
            for _ in range(limit):
                if iface.handle is None:
                    break
                if iface._reading:
                    break
                before = iface.packets
                iface.doRead()
                got = iface.packets - before
                total += got
                if got < self.max_per_read:
                    break
        return total

    # -- failures and reopening ----------------------------------------------------------

    def _interface_failed(self, iface: _Interface, reason: str) -> None:
        iface.read_errors += 1
        iface.last_error = reason
        if iface.handle is not None:
            self.reactor.removeReader(iface)
            iface.close()
        log.error("capture {interface}: read failed: {reason}; retrying every {interval:g} s",
                  interface=iface.name, reason=reason, interval=self.retry_interval)
        if self.running:
            self._schedule_retry(iface)

    def _schedule_retry(self, iface: _Interface) -> None:
        self._retries[iface.name] = self.clock.callLater(self.retry_interval, self._retry, iface)

    def _retry(self, iface: _Interface) -> None:
        self._retries.pop(iface.name, None)
        if not self.running or iface.handle is not None:
            return
        try:
            iface.open()
        except CaptureError as exc:
            iface.last_error = str(exc)
            self._schedule_retry(iface)
            return
        self.reactor.addReader(iface)
        log.info("capture {interface}: reopened", interface=iface.name)

    # -- counters and status --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Totals over every interface, and each interface's own under ``interfaces``."""
        per = {iface.name: iface.stats() for iface in self.interfaces}
        totals = {key: sum(s[key] for s in per.values())
                  for key in ("packets", "bytes", "kernel_received", "kernel_dropped",
                              "interface_dropped", "sink_errors", "read_errors")}
        totals["dropped"] = totals["kernel_dropped"] + totals["interface_dropped"]
        return {"name": self.name, **totals, "interfaces": per}

    def status_line(self, final: bool = False) -> str:
        now = self.stats()
        last = self._last_status or {key: 0 for key in now if key != "interfaces"}
        parts = [f"{now['packets']} packets (+{now['packets'] - last['packets']})",
                 f"kernel drops {now['kernel_dropped']} "
                 f"(+{now['kernel_dropped'] - last['kernel_dropped']})",
                 f"interface drops {now['interface_dropped']}",
                 f"sink errors {now['sink_errors']}"]
        down = [name for name, s in now["interfaces"].items() if not s["up"]]
        if down:
            parts.append("down: " + ", ".join(down))
        return f"capture {','.join(now['interfaces'])}{' final' if final else ''}: " + \
            ", ".join(parts)

    def _status(self) -> None:
        try:
            line = self.status_line()
            last = self._last_status or {"dropped": 0}
            self._last_status = self.stats()
            if self._last_status["dropped"] > last["dropped"]:
                log.warn("{line}", line=line)
            else:
                log.info("{line}", line=line)
        except Exception:
            log.failure("capture status line failed")


def _wanted(request: SourceRequest) -> bool:
    return request.read_pcap is None and bool(request.settings.capture.interface)


def from_settings(settings: SensorSettings, sink: IFrameSink, *, reactor: Any,
                  clock: IReactorTime | None = None,
                  available: Callable[[], Sequence[str]] = list_interfaces,
                  **kwargs: Any) -> LiveCapture:
    """The interfaces of the sensor's capture settings, filtered by its SIP ports.

    A ``filter`` libpcap cannot compile, or an interface this host does not have, is a
    ConfigError naming its key, file and line, here rather than when the capture opens.
    ``kwargs`` go to LiveCapture (an ``opener`` in tests)."""
    filter_for_config(settings)
    capture = settings.capture
    try:
        source = LiveCapture(capture.interface, settings.analysis.sipport, sink,
                             reactor=reactor, clock=clock, user_filter=capture.filter,
                             ringbuffer_mb=capture.ringbuffer, snaplen=capture.snaplen,
                             **kwargs)
        check_interfaces(capture.interface, available())
    except CaptureError as exc:
        raise settings.error("interface", str(exc), "interface names, or 'any'")
    return source


def _wanted(request: SourceRequest) -> bool:
    return request.read_pcap is None and bool(request.settings.capture.interface)


def _build(request: SourceRequest, sink: IFrameSink) -> ISource:
    return from_settings(request.settings, sink, reactor=request.reactor, clock=request.clock)


#: ``interface = ...``: capture on this host's interfaces.
FACTORY = SourceFactory("live", _wanted, _build)
