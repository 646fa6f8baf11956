"""Which TCP connections carry SIP, and a bounded cache of those that (so far) do not.

``classify`` decides from a segment of a connection the reassembler does not track yet:
an endpoint on a SIP port, or (``heuristics``, see ``sniff``) first data that looks like
SIP, an HTTP WebSocket Upgrade, or a WebSocket frame holding SIP. Nothing is kept for the
rest, so every later segment of, say, an HTTP download used to pay the whole decoding
path again only to get the same answer. ``NotSipFlows`` remembers those connections by
the key the frame itself holds (source and destination address, then both ports,
packed), so the fast paths of the ``Decoder`` and of the analysis engine drop such a
segment after one dictionary lookup and, mostly, a look at one byte.

The drop is exact, never a guess:

- a cached connection has no endpoint on a SIP port, so ``classify`` answers what
  ``sniff`` answers (or None without heuristics). A segment is dropped only when
  ``sniff`` sees nothing in it: at once when it is empty or its first byte can start
  nothing ``sniff`` looks for, else after calling ``sniff``. Any other segment takes the
  full path, so a connection that later shows SIP is found on exactly the segment where
  ``classify`` finds it, and counted there.
- the reassembler discards a key as soon as it starts tracking that flow (for instance
  when the other direction turned out to be SIP), so a cached key is never a tracked one.

Bounded: at most ``max_size`` keys (the oldest go first; 0 turns the cache off), each
kept ``ttl`` seconds of capture time (the Decoder limits ``tcp_not_sip_max`` and
``tcp_not_sip_ttl``); a connection still active when its key expires costs one
classification more.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Collection

from voipmon.packet.sipframe import looks_like_sip_start, looks_like_ws_sip

#: Kinds of tracked flow: SIP messages, an HTTP Upgrade to WebSocket, WebSocket frames,
#: and a flow whose content turned out unusable (kept so its segments are recognised).
SIP, WS_HTTP, WS, DEAD = 0, 1, 2, 3


def sniff(data: bytes) -> int | None:
    """The kind the heuristics see in the first data of a connection on no SIP port, or
    None. Never anything but None for empty data or a first byte that is neither A-Z
    nor the start of a WebSocket text or binary frame (the fast paths test that first)."""
    if not data:
        return None
    c = data[0]
    if 65 <= c <= 90:
        if data[:4] == b"GET " and b"websocket" in data[:2048].lower():
            return WS_HTTP
        if looks_like_sip_start(data):
            return SIP
        return None
    if c & 0x0F in (1, 2) and looks_like_ws_sip(data):
        return WS
    return None


_FOUND = {WS_HTTP: "websocket_upgrade", SIP: "heuristic_sip", WS: "heuristic_websocket"}


def classify(sport: int, dport: int, data: bytes, sip_ports: Collection[int],
             heuristics: bool, counters: Counter[str]) -> int | None:
    """The kind of a new flow from one of its segments, or None if it is not SIP."""
    if sport in sip_ports or dport in sip_ports:
        if data[:4] == b"GET " and b"websocket" in data[:2048].lower():
            return WS_HTTP
        return SIP
    if not heuristics:
        return None
    kind = sniff(data)
    if kind is not None:
        counters[_FOUND[kind]] += 1
    return kind


class NotSipFlows:
    """Keys (``src + dst + sport + dport``, as packed in the frame) of flows classified
    as not SIP. ``keys`` is what the fast paths test membership in (changed in place, never
    replaced): each key with the capture time it was added, oldest first."""

    __slots__ = ("evicted", "keys", "max_size", "ttl")

    def __init__(self, max_size: int = 65536, ttl: float = 30.0) -> None:
        self.max_size = max(0, max_size)  # 0: remember nothing
        self.ttl = ttl
        self.keys: OrderedDict[bytes, float] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: bytes) -> bool:
        return key in self.keys

    def add(self, key: bytes, ts: float) -> None:
        keys = self.keys
        if key in keys:
            return
        if len(keys) >= self.max_size:
            if not keys:
                return
            keys.popitem(last=False)
            self.evicted += 1
        keys[key] = ts

    def discard(self, key: bytes) -> None:
        self.keys.pop(key, None)

    def expire(self, now: float) -> None:
        """Forget keys added more than ``ttl`` ago (all of them if the clock went back)."""
        keys = self.keys
        limit = now - self.ttl
        while keys:
            added = keys[next(iter(keys))]
            if added > now:
                keys.clear()
                return
            if added >= limit:
                return
            keys.popitem(last=False)

    def clear(self) -> None:
        self.keys.clear()
