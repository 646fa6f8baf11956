"""Admission of connections still in their handshake: one gate per listening port.

A listener serves only peers that prove the password, but it must first accept a TCP
connection from anyone, and a peer that connects and says nothing costs a socket and a slot
until a deadline passes. A flood of such connections must not keep a real sensor out. The
``AdmissionGate`` learns from OpenSSH's ``MaxStartups``, ``PerSourceMaxStartups`` and
``PerSourcePenalties`` with one difference: under pressure it *evicts* an idle connection
instead of refusing the new one, because a refused newcomer is as likely to be the sensor
as the flooder (who reconnects at once and wins the next race), while an idle connection is
almost surely the flooder. For the same reason an address is not refused as a penalty (a
sensor may share it, behind NAT or on the same host): an address at its limit pays with
its own idle connections first.

- Every connection holds a ``Ticket`` from TCP accept until it has authenticated
  (``done``) or is gone (``release``). Its *stage* says how far it got: ``OPENED`` (nothing
  received), ``SPOKE`` (bytes came: a TLS ClientHello), ``SECURED`` (TLS established),
  ``GREETED`` (a well-formed protocol hello). A connection the server is closing anyway
  drops to ``CLOSING``. A real sensor climbs these within a round trip or two; an idle
  connection stays at ``OPENED``.
- At most ``capacity`` connections are in their handshake, and at most ``per_source`` from
  one address (IPv4 address, IPv6 /64). A newcomer is always let in; when a limit is
  reached the connection ranked lowest goes: the lowest stage, and in it the one that has
  waited longest since it last made progress (of that source, when the source is at its
  limit). The first bytes a newcomer sends take it past every idle connection.
- A newcomer cannot be evicted before the server has had a full turn of its event loop to
  read it: a flood accepted in one burst must not push out a sensor accepted in the same
  burst before its ClientHello is even looked at. Meanwhile the table may exceed its
  limits, up to ``hard_limit``. Before an idle connection is evicted the gate asks whether
  bytes wait unread on it (``has_input``): if so it spoke, and is ranked so.
- Eviction is oldest-first rather than random (``MaxStartups`` drops at random): a random
  victim would sometimes be the sensor that just connected; oldest-first gives every
  newcomer the same chance to speak.
- The handshake must end within ``deadline`` seconds of the connect (TLS included: the
  ticket starts at TCP accept). Beyond ``pressure`` (a fraction of ``capacity``) a
  connection that made no progress for ``idle_limit`` seconds is dropped, the limit
  shrinking linearly from ``deadline`` to ``min_idle`` as the table fills.
- Evictions and timeouts are logged together, at most once per ``report_interval``: how
  many, how many had sent nothing, the busiest source, the current idle limit.

The gate is pure: a clock is injected, eviction and the look at unread bytes are callbacks.
voipmon.protocols.gated puts it in front of any listening factory (below TLS, so it sees the
first raw bytes and can drop a connection that never completes TLS): the channel's, the
management port's, and any listener to come (HEP over TCP); the protocol on top reports the
stages it sees through ``IGated.admission``.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from voipmon.counters import Counters

log = Logger()

CLOSING, OPENED, SPOKE, SECURED, GREETED = range(5)
STAGE_NAMES = ("closing", "opened", "spoke", "secured", "greeted")


@dataclass(frozen=True)
class AdmissionPolicy:
    """The limits of one gate (OpenSSH's names in brackets)."""

    capacity: int = 256            # connections in their handshake at once [MaxStartups]
    per_source: int = 128          # of them from one address [PerSourceMaxStartups]
    hard_limit: int = 1024         # with newcomers not yet read: then even they go
    deadline: float = 10.0         # to finish the handshake [LoginGraceTime]
    pressure: float = 0.5          # the fill from which idle connections get less time
    min_idle: float = 2.0          # time without progress allowed when the table is full
    report_interval: float = 10.0  # one log line per interval at most
    sweep: float = 0.5             # how often deadlines are checked

    def idle_limit(self, pending: int) -> float:
        """How long a connection may go without progress with ``pending`` in the table."""
        fill = pending / self.capacity if self.capacity else 1.0
        if fill <= self.pressure:
            return self.deadline
        share = min(1.0, (fill - self.pressure) / max(1e-9, 1.0 - self.pressure))
        return self.deadline - (self.deadline - self.min_idle) * share


def source_key(address: Any) -> str:
    """Whose connection this is, for the per-source limit: the IPv4 address, or the IPv6
    /64 (one host's usual share); an IPv4-mapped IPv6 address counts as IPv4."""
    host = getattr(address, "host", address)
    if not isinstance(host, str):
        return "?"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Ticket:
    """One connection in its handshake; the protocol reports its progress here."""

    __slots__ = ("evict", "gate", "has_input", "opened", "peer", "since", "source", "stage",
                 "state", "turn")

    def __init__(self, gate: AdmissionGate, source: str, peer: str, now: float, turn: int,
                 evict: Callable[[str], None],
                 has_input: Callable[[], bool] | None) -> None:
        self.gate = gate
        self.source = source
        self.peer = peer
        self.opened = self.since = now
        self.turn = turn
        self.stage = OPENED
        self.evict = evict
        self.has_input = has_input
        self.state = "waiting"            # then "done", "evicted", "expired" or "gone"

    @property
    def waiting(self) -> bool:
        return self.state == "waiting"

    def progress(self, stage: int) -> None:
        """The connection got as far as ``stage`` (a later stage than before counts)."""
        if self.state == "waiting" and stage > self.stage:
            self.gate._restage(self, stage)

    def closing(self) -> None:
        """The server is closing this connection anyway: first to go if room is needed."""
        if self.state == "waiting" and self.stage != CLOSING:
            self.gate._restage(self, CLOSING)

    def done(self) -> None:
        """The peer authenticated: it no longer counts against the limits."""
        if self.state == "waiting":
            self.gate._leave(self, "done")

    def release(self) -> None:
        """The connection is gone (idempotent)."""
        if self.state == "waiting":
            self.gate._leave(self, "gone")


class _Ranked:
    """Tickets by stage, each stage oldest-progress first: the lowest-ranked in O(1)."""

    __slots__ = ("count", "stages")

    def __init__(self) -> None:
        self.stages: list[OrderedDict[Ticket, None]] = [OrderedDict() for _ in STAGE_NAMES]
        self.count = 0

    def add(self, ticket: Ticket) -> None:
        self.stages[ticket.stage][ticket] = None
        self.count += 1

    def remove(self, ticket: Ticket) -> None:
        del self.stages[ticket.stage][ticket]
        self.count -= 1

    def tickets(self) -> list[Ticket]:
        return [ticket for stage in self.stages for ticket in stage]


class AdmissionGate:
    """The connections in their handshake on one listener; see the module docstring."""

    def __init__(self, name: str, clock: IReactorTime,
                 policy: AdmissionPolicy | None = None) -> None:
        self.name = name
        self.clock = clock
        self.policy = policy or AdmissionPolicy()
        self._all = _Ranked()
        self._sources: dict[str, _Ranked] = {}
        self._loop: task.LoopingCall | None = None
        self.totals: Counter[str] = Counter()     # opened, done, evicted, expired
        self._window: Counter[str] = Counter()    # since the last report
        self._window_sources: Counter[str] = Counter()
        self._window_start: float | None = None
        self._example = ""
        self._last_report = float("-inf")
        self._turn = 0                            # turns of the event loop, while needed
        self._turn_call: Any = None
        self._last_admitted = -2

    # -- admission -----------------------------------------------------------------

    def admit(self, peer: Any, evict: Callable[[str], None],
              has_input: Callable[[], bool] | None = None, label: str = "") -> Ticket:
        """A new connection from ``peer`` (an address; ``label`` names it in the log);
        ``evict(reason)`` drops it; ``has_input()`` says whether bytes wait unread on it.

        The newcomer always gets in; when a limit is reached the lowest-ranked connection
        that has had a turn to speak (of the newcomer's source first) is evicted.
        """
        policy = self.policy
        source = source_key(peer)
        now = self.clock.seconds()
        ranked = self._sources.get(source)
        if ranked is not None and ranked.count >= policy.per_source:
            self._make_room(ranked, now, "source",
                            f"{ranked.count} connections from {source} in their handshake "
                            f"(the limit per address is {policy.per_source})")
        if self._all.count >= policy.capacity:
            self._make_room(self._all, now, "full",
                            f"{self._all.count} connections in their handshake (the limit "
                            f"is {policy.capacity})")
        ticket = Ticket(self, source, label or source, now, self._turn, evict, has_input)
        self._all.add(ticket)
        self._sources.setdefault(source, _Ranked()).add(ticket)
        self.totals["opened"] += 1
        self._last_admitted = self._turn
        if self._turn_call is None:
            self._turn_call = self.clock.callLater(0, self._next_turn)
        if self._loop is None:
            self._loop = task.LoopingCall(self._sweep)
            self._loop.clock = self.clock
            self._loop.start(policy.sweep, now=False)
        return ticket

    @property
    def pending(self) -> int:
        """Connections in their handshake now."""
        return self._all.count

    def from_source(self, peer: Any) -> int:
        ranked = self._sources.get(source_key(peer))
        return ranked.count if ranked is not None else 0

    def counters(self) -> Counters:
        return {"pending": self._all.count, "sources": len(self._sources),
                "idle_limit": self.policy.idle_limit(self._all.count), **self.totals}

    def stop(self) -> None:
        """The listener stopped: say what is left to say, stop the timer."""
        if self._to_report():
            self._report(self.clock.seconds())
        self._stop_timers()

    # -- inside ----------------------------------------------------------------------

    def _restage(self, ticket: Ticket, stage: int) -> None:
        self._all.remove(ticket)
        self._sources[ticket.source].remove(ticket)
        ticket.stage = stage
        ticket.since = self.clock.seconds()
        self._all.add(ticket)
        self._sources[ticket.source].add(ticket)

    def _leave(self, ticket: Ticket, state: str) -> None:
        self._all.remove(ticket)
        ranked = self._sources[ticket.source]
        ranked.remove(ticket)
        if not ranked.count:
            del self._sources[ticket.source]
        ticket.state = state
        self.totals[state] += 1
        if state == "done" and self._window:
            self._window["done"] += 1
        if not self._all.count and not self._to_report():
            self._stop_timers()

    def _next_turn(self) -> None:
        # A delayed call of 0 s runs at the start of the next loop iteration, before its
        # reads: a connection admitted in turn T has had the reads of turn T + 1 once the
        # counter says T + 2.
        self._turn_call = None
        self._turn += 1
        if self._last_admitted >= self._turn - 1:
            self._turn_call = self.clock.callLater(0, self._next_turn)

    def _make_room(self, ranked: _Ranked, now: float, why: str, reason: str) -> None:
        victim = self._victim(ranked, forced=self._all.count >= self.policy.hard_limit)
        if victim is not None:
            self._drop(victim, now, "evicted", why, f"evicted to make room: {reason}")

    def _victim(self, ranked: _Ranked, forced: bool) -> Ticket | None:
        """The lowest-ranked ticket that has had its turn to be read (any, when ``forced``).

        One found with bytes waiting unread spoke: it is ranked so, and the search goes on.
        A stage holding only newcomers stops the search: a connection that got further is
        not evicted for room that those newcomers will free once they have had their turn.
        """
        settled = self._turn - 1
        while True:
            promoted = None
            for number, stage in enumerate(ranked.stages):
                newcomers = False
                for ticket in stage:
                    if ticket.turn >= settled and not forced and number != CLOSING:
                        newcomers = True
                        if number == OPENED:
                            break      # in admission order: the rest are newer still
                        continue
                    if number == OPENED and ticket.has_input is not None and _safe(
                            ticket.has_input):
                        promoted = ticket
                        break
                    return ticket
                if promoted is not None or newcomers:
                    break
            if promoted is None:
                return None
            self._restage(promoted, SPOKE)

    def _drop(self, ticket: Ticket, now: float, state: str, why: str, reason: str) -> None:
        if self._window_start is None:
            self._window_start = now
        self._window[state] += 1                  # first: the timer stays for the report
        self._window[f"{state}_{why}"] += 1
        if ticket.stage <= OPENED:
            self._window["silent"] += 1
        self._window_sources[ticket.source] += 1
        self._example = f"{ticket.peer} ({STAGE_NAMES[ticket.stage]}): {reason}"
        self._leave(ticket, state)
        try:
            ticket.evict(reason)
        except Exception:
            log.failure("{listener}: dropping {peer} failed", listener=self.name,
                        peer=ticket.peer)
        if now - self._last_report >= self.policy.report_interval:
            self._report(now)

    def _sweep(self) -> None:
        now = self.clock.seconds()
        policy = self.policy
        pending = self._all.count
        limit = policy.idle_limit(pending)
        for ticket in self._all.tickets():
            if ticket.state != "waiting":
                continue
            if now - ticket.opened >= policy.deadline:
                self._drop(ticket, now, "expired", "deadline",
                           f"handshake not completed within {policy.deadline:g} s")
            elif now - ticket.since >= limit:
                self._drop(ticket, now, "expired", "idle",
                           f"no progress for {limit:.1f} s with {pending} connections in "
                           f"their handshake")
        if self._to_report() and now - self._last_report >= policy.report_interval:
            self._report(now)
        if not self._all.count and not self._to_report():
            self._stop_timers()

    def _to_report(self) -> bool:
        return bool(self._window["evicted"] or self._window["expired"])

    def _stop_timers(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        call, self._turn_call = self._turn_call, None
        if call is not None and call.active():
            call.cancel()

    def _report(self, now: float) -> None:
        window, self._window = self._window, Counter()
        sources, self._window_sources = self._window_sources, Counter()
        start = self._window_start if self._window_start is not None else now
        self._window_start = None
        self._last_report = now
        if not (window["evicted"] or window["expired"]):
            return
        busiest, busiest_count = sources.most_common(1)[0] if sources else ("-", 0)
        log.warn("{listener}: connections in their handshake: {evicted} evicted to make room "
                 "and {expired} timed out in {seconds:.0f} s ({silent} had sent nothing; most "
                 "from {source}: {source_count}); {pending} waiting now (limit {capacity}, "
                 "{per_source} per address), idle limit {idle_limit:.1f} s, {done} "
                 "authenticated; last: {example}",
                 listener=self.name, evicted=window["evicted"], expired=window["expired"],
                 seconds=max(0.0, now - start), silent=window["silent"], source=busiest,
                 source_count=busiest_count, pending=self._all.count,
                 capacity=self.policy.capacity, per_source=self.policy.per_source,
                 idle_limit=self.policy.idle_limit(self._all.count), done=window["done"],
                 example=self._example, evicted_full=window["evicted_full"],
                 evicted_source=window["evicted_source"])


def _safe(probe: Callable[[], bool]) -> bool:
    try:
        return bool(probe())
    except Exception:
        return False
