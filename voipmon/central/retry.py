"""Writes that wait out a database outage: a CDR batch (``StoreRetry``) and a sensor's
registry state (``RegistryWriter``), retried 0.5 s doubling to 5 s, logged once per outage."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from voipmon.protocols.failover import describe_failure
from voipmon.store.interfaces import StoreUnavailable

log = Logger()


class StoreRetry:
    """Run ``attempt`` until it succeeds, waiting 0.5 s doubling to 5 s between tries.

    A database outage is logged once when it starts and once when it ends, not per try.
    """

    def __init__(self, clock: IReactorTime, attempt: Callable[[], defer.Deferred], what: str,
                 on_success: Callable[[object], None], initial: float = 0.5,
                 maximum: float = 5.0) -> None:
        self.clock = clock
        self.attempt = attempt
        self.what = what
        self.on_success = on_success
        self.initial = initial
        self.maximum = maximum
        self.tries = 0
        self._call: IDelayedCall | None = None
        self._running: defer.Deferred | None = None
        self.cancelled = False

    def start(self) -> None:
        self._call = None
        self.tries += 1
        try:
            d = self.attempt()
        except Exception:
            d = defer.fail()
        self._running = d
        d.addCallbacks(self._succeeded, self._failed)

    def _succeeded(self, result: object) -> None:
        self._running = None
        if self.cancelled:
            return
        if self.tries > 1:
            log.info("database reachable again: stored {what} after {tries} tries",
                     what=self.what, tries=self.tries)
        self.on_success(result)

    def _failed(self, failure: Failure) -> None:
        self._running = None
        if self.cancelled:
            return
        delay = min(self.initial * 2 ** (self.tries - 1), self.maximum)
        if self.tries == 1:
            log.warn("cannot store {what}: {error}; retrying every {delay:g}..{maximum:g} s, "
                     "nothing is acknowledged meanwhile", what=self.what,
                     error=describe_failure(failure), delay=delay, maximum=self.maximum)
        if not failure.check(StoreUnavailable):
            log.failure("storing {what}", failure, what=self.what)
        self._call = self.clock.callLater(delay, self.start)

    def cancel(self) -> None:
        self.cancelled = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class RegistryWriter:
    """Writes one sensor's registry state: one write at a time, always the newest state.

    Connect (upsert) and disconnect (offline) of a sensor may both wait for a database
    that is down; whatever happens, the state written last is the state asked for last.
    """

    def __init__(self, clock: IReactorTime, initial: float = 0.5, maximum: float = 5.0):
        self.clock = clock
        self.initial = initial
        self.maximum = maximum
        self._op: tuple[Callable[[], defer.Deferred], str] | None = None
        self._version = 0
        self._busy = False
        self._tries = 0
        self._call: IDelayedCall | None = None

    def set(self, call: Callable[[], defer.Deferred], what: str) -> None:
        self._op = (call, what)
        self._version += 1
        self._tries = 0
        if self._call is not None:
            self._call.cancel()
            self._call = None
            self._run()
        elif not self._busy:
            self._run()

    @property
    def idle(self) -> bool:
        return not self._busy and self._call is None

    def _run(self) -> None:
        self._call = None
        if self._op is None:
            return
        self._busy = True
        version = self._version
        call, what = self._op
        self._tries += 1
        d = defer.maybeDeferred(call)

        def done(_: object) -> None:
            self._busy = False
            if self._version != version:
                self._run()
            else:
                self._op = None

        def failed(failure: Failure) -> None:
            self._busy = False
            if self._version != version:
                self._run()
                return
            if self._tries == 1:
                log.warn("cannot store {what}: {error}; retrying", what=what,
                         error=describe_failure(failure))
            delay = min(self.initial * 2 ** (self._tries - 1), self.maximum)
            self._call = self.clock.callLater(delay, self._run)

        d.addCallbacks(done, failed)

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._op = None
