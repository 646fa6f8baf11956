"""A CDRS message read into records, off the reactor thread. Pure.

``read_batch`` turns a CDRS payload into its records: the JSON parsed (``wire.parse_json``)
and every item checked into its record type (``records.kinds.from_item``). It touches no
shared state but the record codecs' caches of checked signatures (a set, added to
atomically), so it may run in any thread; the session keeps everything else (dead
letters, logging, acknowledgements) on the reactor.

How it runs is the session's ``Prepare``: ``inline`` (in the caller, for tests with fakes
and anything that wants no thread), or ``in_threads`` (a thread pool: while a big batch
is parsed, the reactor thread takes the GIL back every switch interval, so pings,
handshakes and other sensors go on being served). A central reads in ``ReadPool``, one
thread for all its sensors: a second thread gains nothing under the GIL (0.76x in
bench/encoding.py), and with one, batches waiting to be read stay compact bytes and fewer
threads contend with the reactor for the GIL. Processes were measured too and lose on
this machine: sending the records back costs more than reading them (0.45x).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.application import service
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.threadpool import ThreadPool

from voipmon.protocols.wire import (
    MAX_INT,
    MessageType,
    ProtocolError,
    decode_json,
    field,
    number_field,
)
from voipmon.records.codec import Record
from voipmon.records.kinds import from_item

#: Runs ``function(*args)`` somewhere and fires with its result (or its exception).
Prepare = Callable[..., defer.Deferred]


class Rejected(NamedTuple):
    """An item no record could be read from: its sequence number, the item, why."""

    seq: int
    item: Any
    reason: str


class ReadBatch(NamedTuple):
    """A CDRS message read: numbers ``first``..``last``, the records, the rejected items."""

    first: int
    last: int
    records: list[Record]
    rejected: list[Rejected]


def read_batch(payload: bytes) -> ReadBatch:
    """The records of a CDRS payload; ProtocolError if the message itself is malformed
    (a malformed item is not: it is listed in ``rejected``, naming the bad field)."""
    body = decode_json(MessageType.CDRS, payload)
    first = number_field(body, "first", "CDRS", 1, MAX_INT, integer=True)
    items = field(body, "cdrs", list, "CDRS")
    if not items:
        raise ProtocolError("malformed CDRS message: empty batch or bad 'first'")
    records: list[Record] = []
    rejected: list[Rejected] = []
    for seq, item in enumerate(items, first):
        try:
            records.append(from_item(item))
        except ValueError as exc:
            rejected.append(Rejected(seq, item, str(exc)))
    return ReadBatch(first, first + len(items) - 1, records, rejected)


def inline(function: Callable[..., Any], *args: Any) -> defer.Deferred:
    """Run ``function`` now, in the caller's thread."""
    return defer.maybeDeferred(function, *args)


def in_threads(reactor: IReactorFromThreads, pool: ThreadPool | None = None) -> Prepare:
    """Run functions in ``pool`` (started and stopped by its owner; by default the
    reactor's own, which the reactor starts and stops), results on the reactor."""

    def prepare(function: Callable[..., Any], *args: Any) -> defer.Deferred:
        return threads.deferToThreadPool(reactor, pool or reactor.getThreadPool(),
                                         function, *args)

    return prepare


class ReadPool(service.Service):
    """The central's thread reading CDR batches (``prepare``), started and stopped with it."""

    name = "cdr-read"

    def __init__(self, reactor: IReactorFromThreads, size: int = 1) -> None:
        self.pool = ThreadPool(size, size, "voipmon-cdr-read")
        self.prepare = in_threads(reactor, self.pool)

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> defer.Deferred | None:
        super().stopService()
        self.pool.stop()
        return None


__all__ = ["Prepare", "ReadBatch", "ReadPool", "Rejected", "in_threads", "inline",
           "read_batch"]
