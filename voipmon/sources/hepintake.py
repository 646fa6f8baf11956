"""The pure part of the HEP source (``voipmon.sources.hep``): HEP messages into frames.

``HepIntake`` takes HEP messages as bytes (a datagram, or a message the stream framer
cut), decodes and checks them, frames them (``voipmon.packet.synth``) into the batch of
the read in progress and hands that batch to the sink; ``SenderFilter`` is the
``hep_allow`` list. No reactor: the wall clock is a function given to it. The module
docstring of ``voipmon.sources.hep`` says what each check does and why.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from twisted.logger import Logger

from voipmon.counters import Counters, family
from voipmon.packet.hep import (
    MAX_PAYLOAD,
    Q_CAPTURE_ID,
    Q_SEC,
    Q_USEC,
    HepError,
    decode_hep,
    quick_hep3,
)
from voipmon.packet.synth import LINKTYPE_ETHERNET, HepFrames
from voipmon.sources.batch import FrameBatch
from voipmon.sources.interfaces import IFrameSink

log = Logger()

MAX_FUTURE = 60.0                 # seconds a message's time may be ahead of the wall clock
_IGNORED = ("log", "type")        # HepFrames reasons that are not losses


class HepIntake:
    """HEP messages (bytes) into frames for ``sink``; see the module docstring.

    ``take(data)`` decodes and checks one message and adds its frames to the batch of the
    read in progress (``FrameBatch``); ``deliver()`` hands that batch to the sink in one
    ``feed_all`` once the read is done; ``message(data)`` is both, for one message.
    ``password`` (bytes, empty = none) must equal the auth-key chunk; ``capture_ids``
    (empty = any) must hold the capture id, or its value shifted right by 16 bits when the
    low 16 are zero (sngrep and sipgrep send ``htons(id)`` in the 32-bit chunk).
    ``seconds`` is the wall clock; a message timed more than ``max_future`` seconds ahead
    of it is clamped (see the module docstring).
    """

    def __init__(self, sink: IFrameSink, seconds: Callable[[], float], *,
                 password: bytes = b"", capture_ids: Iterable[int] = (),
                 max_payload: int = MAX_PAYLOAD, max_future: float = MAX_FUTURE) -> None:
        self.sink = sink
        self.batch = FrameBatch(LINKTYPE_ETHERNET, self._sink_failed)
        self.frames = HepFrames(self.batch.emit)
        self._seconds = seconds
        self.password = password
        self.capture_ids = frozenset(capture_ids)
        self.max_payload = max_payload
        self.max_future = max_future
        self.received = 0
        self.decoded = 0
        self.sink_errors = 0
        self.dropped: Counter[str] = Counter()
        self.clamped: Counter[str] = Counter()
        self.latest_ts: float | None = None
        self._latest_at = 0.0

    def message(self, data: bytes) -> bool:
        """One HEP message, delivered at once (a batch of one); True when accepted."""
        try:
            return self.take(data)
        finally:
            self.deliver()

    def deliver(self) -> int:
        """The frames taken since the last delivery to the sink, in one batch."""
        return self.batch.deliver(self.sink)

    def take(self, data: bytes) -> bool:
        """One HEP message into the batch; True when it was accepted (framed, or counted
        and ignored)."""
        self.received += 1
        t = quick_hep3(data)
        if t is not None and not self.password \
                and (not self.capture_ids or t[Q_CAPTURE_ID] in self.capture_ids):
            # the common shape (SIP or RTP over UDP, IPv4): no HepMessage on the way
            self.decoded += 1
            self.frames.quick(t, data, self._time(t[Q_SEC] + t[Q_USEC] / 1e6))
            return True
        try:
            msg = decode_hep(data, self.max_payload)
        except HepError as e:
            self.dropped[e.reason] += 1
            return False
        self.decoded += 1
        if self.password and (msg[9] is None or not hmac.compare_digest(msg[9],
                                                                        self.password)):
            self.dropped["auth"] += 1
            return False
        ids = self.capture_ids
        if ids and msg[8] not in ids and (msg[8] & 0xFFFF or msg[8] >> 16 not in ids):
            self.dropped["capture_id"] += 1
            return False
        try:
            self.frames.feed(msg, self._time(msg[0]))
        except Exception:
            self.dropped["error"] += 1
            log.failure("HEP: a message could not be framed")
        return True

    def _time(self, ts: float | None) -> float:
        """The capture time a message is given: its own, unless it has none or is more
        than ``max_future`` ahead of the wall clock (counted); then the newest accepted
        time plus the wall time elapsed since (the wall clock before any)."""
        now = self._seconds()
        if ts is not None and ts > now + self.max_future:
            self.clamped["future"] += 1
            ts = None
        latest = self.latest_ts
        if ts is None:
            return now if latest is None else latest + max(0.0, now - self._latest_at)
        if latest is None or ts >= latest:
            self.latest_ts = ts
            self._latest_at = now
        return ts

    def _sink_failed(self) -> None:
        self.sink_errors += 1
        if self.sink_errors == 1 or self.sink_errors % 10000 == 0:
            log.failure("HEP: the sink failed on a frame ({count} times so far); the frame "
                        "is skipped", count=self.sink_errors)

    def refused(self, reason: str) -> None:
        """A message (or connection) refused before decoding: ``not_allowed``..."""
        self.dropped[reason] += 1

    def counters(self) -> Counters:
        synth = self.frames.stats
        dropped = Counter(self.dropped)
        ignored: Counter[str] = Counter()
        for reason, count in synth.dropped.items():
            (ignored if reason in _IGNORED else dropped)[reason] += count
        return {"received": self.received, "decoded": self.decoded,
                "frames": synth.frames, "sink_errors": self.sink_errors,
                "dropped": sum(dropped.values()), "connections": len(self.frames),
                "clamped": sum(self.clamped.values()),
                **family("dropped", dropped), **family("ignored", ignored),
                **family("clamped", self.clamped), **family("by_type", synth.by_type)}


class SenderFilter:
    """Which senders may send HEP: addresses and networks, or anyone when empty."""

    def __init__(self, allowed: Sequence[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(a, strict=False) for a in allowed)
        self._seen: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def allows(self, host: str) -> bool:
        if not self.networks:
            return True
        known = self._seen.get(host)
        if known is None:
            if len(self._seen) >= 4096:
                self._seen.clear()
            known = self._seen[host] = self._check(host)
        return known

    def _check(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)
