"""IPv4 and IPv6 fragment reassembly with bounded memory.

Fragments are keyed by (source, destination, identification, protocol). Overlaps are resolved
"first copy wins": a later fragment only fills bytes nobody supplied yet, so a crafted
overlap can neither rewrite data already accepted nor make a buffer grow past the largest
legal datagram. Memory is bounded by ``max_bytes`` (stored payload bytes over all
datagrams in flight) and ``max_datagrams``; past either, the oldest datagram is dropped.
``expire(now)`` drops datagrams whose first fragment is older than ``timeout`` seconds of
capture time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable

Frames = tuple[tuple[float, bytes], ...]
MAX_DATAGRAM = 65535


class _Pending:
    __slots__ = ("first_ts", "frames", "head", "pieces", "stored", "total")

    def __init__(self, ts: float) -> None:
        self.first_ts = ts
        self.pieces: list[tuple[int, int, bytes]] = []  # sorted, disjoint (start, end, data)
        self.total = -1  # payload length, known once the last fragment arrived
        self.frames: list[tuple[float, bytes]] = []
        self.stored = 0
        self.head: object = None  # whatever the caller wants back from the offset-0 fragment


class Defragmenter:
    """Collect fragments; ``add`` returns (payload, frames, head) when a datagram completes."""

    def __init__(self, counters: Counter[str], max_bytes: int = 8 << 20,
                 max_datagrams: int = 4096, timeout: float = 30.0,
                 max_size: int = MAX_DATAGRAM) -> None:
        self.counters = counters
        self.max_bytes = max_bytes
        self.max_datagrams = max_datagrams
        self.timeout = timeout
        self.max_size = max_size
        self._pending: dict[Hashable, _Pending] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def stored_bytes(self) -> int:
        return self._bytes

    def add(self, key: Hashable, ts: float, offset: int, data: bytes, more: bool,
            frames: Frames, head: object = None) -> tuple[bytes, Frames, object] | None:
        counters = self.counters
        end = offset + len(data)
        if end > self.max_size:
            counters["absurd_offset"] += 1
            return None
        if more and len(data) % 8:
            counters["bad_length"] += 1  # every fragment but the last is a multiple of 8
            return None
        p = self._pending.get(key)
        if p is None:
            if len(self._pending) >= self.max_datagrams:
                self._evict("evicted_count")
            p = self._pending[key] = _Pending(ts)
        if not more:
            if p.total >= 0 and p.total != end:
                counters["conflicting_end"] += 1
                self._drop(key, p)
                return None
            p.total = end
        elif p.total >= 0 and end > p.total:
            counters["beyond_end"] += 1
            self._drop(key, p)
            return None
        p.frames.extend(frames)
        if offset == 0 and head is not None:
            p.head = head
        added = self._insert(p, offset, end, data)
        p.stored += added
        self._bytes += added
        while self._bytes > self.max_bytes and self._pending:
            self._evict("evicted_bytes")
        if key not in self._pending:
            return None
        if p.total >= 0 and len(p.pieces) == 1 and p.pieces[0][0] == 0 \
                and p.pieces[0][1] == p.total:
            del self._pending[key]
            self._bytes -= p.stored
            counters["reassembled"] += 1
            return p.pieces[0][2], tuple(p.frames), p.head
        return None

    def _insert(self, p: _Pending, start: int, end: int, data: bytes) -> int:
        """Add the parts of [start, end) not covered yet; merge adjacent pieces."""
        if start >= end:
            return 0
        pieces = p.pieces
        new: list[tuple[int, int, bytes]] = []
        cur = start
        added = 0
        overlapped = False
        for s, e, _d in pieces:
            if e <= cur or s >= end:
                continue
            overlapped = True
            if s > cur:
                new.append((cur, s, data[cur - start:s - start]))
                added += s - cur
            cur = max(cur, e)
            if cur >= end:
                break
        if cur < end:
            new.append((cur, end, data[cur - start:]))
            added += end - cur
        if overlapped:
            self.counters["overlap"] += 1
        if not added:
            return 0
        merged = sorted(pieces + new)
        out = [merged[0]]
        for s, e, d in merged[1:]:
            ls, le, ld = out[-1]
            if s == le:
                out[-1] = (ls, e, ld + d)
            else:
                out.append((s, e, d))
        p.pieces = out
        return added

    def _drop(self, key: Hashable, p: _Pending) -> None:
        del self._pending[key]
        self._bytes -= p.stored

    def _evict(self, reason: str) -> None:
        key = next(iter(self._pending))
        self.counters[reason] += 1
        self._drop(key, self._pending[key])

    def expire(self, now: float) -> None:
        limit = now - self.timeout
        stale = [k for k, p in self._pending.items() if p.first_ts < limit]
        for k in stale:
            self.counters["timeout"] += 1
            self._drop(k, self._pending[k])

    def clear(self) -> None:
        n = len(self._pending)
        if n:
            self.counters["incomplete_at_end"] += n
        self._pending.clear()
        self._bytes = 0
