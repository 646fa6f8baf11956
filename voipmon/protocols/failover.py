"""Ordered failover across centrals, as an endpoint under ``ClientService``.

``FailoverEndpoint.connect`` is one *round*: it tries each central in the listed order,
always from the first, and fires with the first connection that authenticated (its
children are authenticating endpoints, so a central that accepts TCP but hangs or refuses
the handshake counts as down). ``ClientService`` calls ``retry_delay`` between rounds:
1 s doubling to 30 s with jitter, or almost at once after losing a connection that had
been up for a while. While connected to a backup, ``FailbackProber`` probes the primary
and, when it answers, closes the current connection so the next round starts there.
Every switch is logged with its reason.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from voipmon.counters import Counters

log = Logger()


def describe_failure(failure: Failure) -> str:
    """A one-line reason for logs: the exception's message, or its class name."""
    value = failure.value
    text = str(value).strip()
    if isinstance(value, defer.CancelledError):
        return "cancelled"
    return text.splitlines()[0] if text else type(value).__name__


class FailoverRoundFailed(Exception):
    """Every central failed in one round; ``attempts`` holds (central, failure) pairs."""

    def __init__(self, attempts: Sequence[tuple[str, Failure]]) -> None:
        self.attempts = list(attempts)
        super().__init__("no central reachable: " + "; ".join(
            f"{name}: {describe_failure(failure)}" for name, failure in self.attempts))


@implementer(IStreamClientEndpoint)
class FailoverEndpoint:
    """Connects to the first central of an ordered list that accepts us."""

    def __init__(self, endpoints: Sequence[tuple[str, IStreamClientEndpoint]],
                 clock: IReactorTime, *, initial_delay: float = 1.0, max_delay: float = 30.0,
                 factor: float = 2.0, jitter: Callable[[], float] = random.random,
                 stable_after: float = 10.0, reconnect_jitter: float = 0.25,
                 on_round_failed: Callable[[FailoverRoundFailed], None] | None = None) -> None:
        if not endpoints:
            raise ValueError("FailoverEndpoint needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.clock = clock
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.factor = factor
        self.jitter = jitter
        self.stable_after = stable_after
        self.reconnect_jitter = reconnect_jitter
        self.on_round_failed = on_round_failed
        self.connected_index: int | None = None   # the central we are connected to now
        self.last_index: int | None = None        # the one we were last connected to
        self.failed_rounds = 0                    # in a row; reset by a stable connection
        self.switches = 0
        self._connected_at: float | None = None
        self._failback_reason: str | None = None
        self._last_round_errors: list[tuple[str, Failure]] = []

    def counters(self) -> Counters:
        return {"failed_rounds": self.failed_rounds, "switches": self.switches,
                "connected": int(self.connected_index is not None)}

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.endpoints]

    @property
    def current(self) -> str | None:
        """The central we are connected to, for logs and the management port."""
        return None if self.connected_index is None else self.endpoints[self.connected_index][0]

    def role(self, index: int) -> str:
        return "primary" if index == 0 else f"backup {index}"

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred:
        """One round over every central in order; fires with the first that accepts."""
        attempts: list[tuple[str, Failure]] = []
        pending: list[defer.Deferred | None] = [None]
        cancelled = [False]

        def cancel(_: defer.Deferred) -> None:
            cancelled[0] = True
            if pending[0] is not None:
                pending[0].cancel()

        result: defer.Deferred = defer.Deferred(cancel)

        def attempt(index: int) -> None:
            if index == len(self.endpoints):
                self._round_failed(attempts, result)
                return
            name, endpoint = self.endpoints[index]
            try:
                d = endpoint.connect(protocolFactory)
            except Exception:
                d = defer.fail()
            pending[0] = d

            def succeeded(protocol: object) -> None:
                pending[0] = None
                self._connected(index, attempts)
                result.callback(protocol)

            def failed(failure: Failure) -> None:
                pending[0] = None
                if cancelled[0]:
                    if not result.called:
                        result.errback(failure)
                    return
                attempts.append((name, failure))
                if index + 1 < len(self.endpoints):
                    log.warn("central {central} ({role}) unavailable: {reason}; trying "
                             "{next_central}", central=name, role=self.role(index),
                             reason=describe_failure(failure),
                             next_central=self.endpoints[index + 1][0])
                attempt(index + 1)

            d.addCallbacks(succeeded, failed)

        attempt(0)
        return result

    def _round_failed(self, attempts: list[tuple[str, Failure]],
                      result: defer.Deferred) -> None:
        self.failed_rounds += 1
        self._last_round_errors = attempts
        error = FailoverRoundFailed(attempts)
        if self.on_round_failed is not None:
            try:
                self.on_round_failed(error)
            except Exception:
                log.failure("on_round_failed hook")
        result.errback(error)

    def _connected(self, index: int, attempts: list[tuple[str, Failure]]) -> None:
        name = self.endpoints[index][0]
        previous = self.last_index
        self.connected_index = index
        self.last_index = index
        self._connected_at = self.clock.seconds()
        failback, self._failback_reason = self._failback_reason, None
        if previous is None:
            log.info("connected to central {central} ({role})", central=name,
                     role=self.role(index))
        elif previous != index:
            self.switches += 1
            if failback and index == 0:
                reason = failback
            elif attempts:
                reason = "; ".join(f"{n}: {describe_failure(f)}" for n, f in attempts)
            else:
                reason = f"the connection to {self.endpoints[previous][0]} was lost"
            log.warn("switched from central {previous_central} to {central} ({role}): "
                     "{reason}", previous_central=self.endpoints[previous][0], central=name,
                     role=self.role(index), reason=reason)
        else:
            log.info("reconnected to central {central} ({role})", central=name,
                     role=self.role(index))

    def failback(self, reason: str) -> None:
        """Remember why the next connection to the primary happens (for the switch log)."""
        self._failback_reason = reason

    def retry_delay(self, attempt: int) -> float:
        """``ClientService`` retry policy: seconds before the next round.

        Called after every failed round and after every lost connection. A connection
        that stayed up ``stable_after`` seconds earns a quick reconnect (a little jitter so
        a fleet of sensors does not stampede); a failed round, or a connection that died at
        once, doubles the wait, 1 s up to 30 s, +-25 % jitter.
        """
        now = self.clock.seconds()
        if self._connected_at is not None:
            lasted = now - self._connected_at
            self._connected_at = None
            self.connected_index = None
            if lasted >= self.stable_after:
                self.failed_rounds = 0
                return self.jitter() * self.reconnect_jitter
            self.failed_rounds += 1
        rounds = max(self.failed_rounds, 1)
        try:
            delay = min(self.initial_delay * self.factor ** (rounds - 1), self.max_delay)
        except OverflowError:
            delay = self.max_delay
        delay *= 0.75 + 0.5 * self.jitter()
        if self._last_round_errors:
            log.warn("no central reachable ({reasons}); next round in {delay:.1f} s",
                     reasons="; ".join(f"{n}: {describe_failure(f)}"
                                       for n, f in self._last_round_errors),
                     delay=delay)
            self._last_round_errors = []
        return delay


class FailbackProber(Service):
    """While connected to a backup, probe the primary; when it answers, fail back.

    ``probe_endpoint`` connects to the primary and fires once that central has
    authenticated us (a probe registers nothing there); the prober closes the probe and
    calls ``disconnect(reason)`` to drop the backup connection, so ``ClientService``
    starts a new round from the primary.
    """

    def __init__(self, failover: FailoverEndpoint, probe_endpoint: IStreamClientEndpoint,
                 probe_factory: Any, interval: float, clock: IReactorTime,
                 disconnect: Callable[[str], None]) -> None:
        self.failover = failover
        self.probe_endpoint = probe_endpoint
        self.probe_factory = probe_factory
        self.interval = interval
        self.clock = clock
        self.disconnect = disconnect
        self.probes = 0
        self._loop: task.LoopingCall | None = None
        self._probing: defer.Deferred | None = None

    def counters(self) -> Counters:
        return {"probes": self.probes}

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("failback prober stopped", f))

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._probing is not None:
            self._probing.cancel()

    def tick(self) -> None:
        index = self.failover.connected_index
        if index is None or index == 0 or self._probing is not None:
            return
        primary = self.failover.endpoints[0][0]
        self.probes += 1
        try:
            d = self.probe_endpoint.connect(self.probe_factory)
        except Exception:
            d = defer.fail()
        self._probing = d

        def answered(protocol: Protocol) -> None:
            self._probing = None
            if protocol.transport is not None:
                protocol.transport.loseConnection()
            if self.failover.connected_index in (None, 0):
                return  # things changed while probing
            reason = f"failing back: primary {primary} answered the probe"
            self.failover.failback(reason)
            log.info("primary central {central} is back; leaving {current}",
                     central=primary, current=self.failover.current)
            self.disconnect(reason)

        def silent(failure: Failure) -> None:
            self._probing = None
            if not failure.check(defer.CancelledError):
                log.info("primary central {central} still unavailable: {reason}",
                         central=primary, reason=describe_failure(failure))

        d.addCallbacks(answered, silent)
