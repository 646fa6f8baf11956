"""SIP that is not a call and not a registration: OPTIONS, SUBSCRIBE, NOTIFY and MESSAGE,
one record per request and its answer (VoIPmonitor's ``sip_msg`` and ``message`` tables).

Pure and driven by capture time, like call analysis. The engine hands every request of
these methods and every response to one (``on_message``), calls ``advance(now)`` once a
capture-time second and ``finish()`` at the end of input; records go to ``emit``.

A request is (Call-ID, CSeq, method, branch of the bottom Via): retransmissions and copies
seen on other hops count as ``request_repetition``. Its first final answer (>= 200) makes
the record: response number and text, the time from the request to it, and ``qualify_ok``
(a 200, or another code of ``qualify_ok_codes``, within ``qualify_limit_ms``, VoIPmonitor's
2000 ms by default). A request that gets no final answer within ``timeout`` (SIP's 32 s
Timer F) is written as unanswered: ``response_number`` 0, ``qualify_ok`` false. That is the
record that answers "which trunks stopped answering our pings?".

Each method is switched by its VoIPmonitor option: ``sip-options``, ``sip-subscribe``,
``sip-notify``, ``sip-message`` = ``no`` (ignored), ``yes`` (recorded) or ``nodb`` (followed
for ``relations`` but not written). ``relations()`` keeps, per requester, target and
method, the last results (VoIPmonitor's "SIP Opt. Active" view). Memory is bounded:
pending requests (``max_pending``) and relations (``max_relations``) are capped, refusals
and evictions counted; requests still waiting at ``finish`` are counted as unresolved.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from voipmon.analysis import sipfields as sf
from voipmon.analysis.calls import ip_text
from voipmon.analysis.noncall import INonCallAnalyser
from voipmon.analysis.sip import SipMessage, split_uri
from voipmon.counters import Counters, Counts
from voipmon.packet.datagram import Datagram
from voipmon.records.keys import stable_uid
from voipmon.records.sipmsg import METHOD_TYPES, InstantMessage, SipMsg
from voipmon.records.times import iso_ms

log = Logger()

MODES = ("no", "yes", "nodb")


@dataclass(frozen=True, slots=True)
class SipMsgSettings:
    """VoIPmonitor's switches (names with ``_``), the qualify rule and our limits."""

    sip_options: str = "no"
    sip_subscribe: str = "no"
    sip_notify: str = "no"
    sip_message: str = "yes"
    qualify_limit_ms: int = 2000
    qualify_ok_codes: tuple[int, ...] = (200,)
    timeout: float = 32.0
    max_content: int = 4096          # characters of a body kept in the record
    max_pending: int = 100_000
    max_relations: int = 100_000
    history: int = 10                # results kept per relation (VoIPmonitor: 50)

    def __post_init__(self) -> None:
        for name in ("sip_options", "sip_subscribe", "sip_notify", "sip_message"):
            if getattr(self, name) not in MODES:
                raise ValueError(f"{name} must be no, yes or nodb, not {getattr(self, name)!r}")
        if not self.timeout > 0 or self.qualify_limit_ms < 0:
            raise ValueError("timeout must be positive and qualify_limit_ms not negative")
        for name in ("max_content", "max_pending", "max_relations", "history"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")

    def modes(self) -> dict[str, str]:
        """Method -> mode, for the methods not switched off."""
        pairs = (("OPTIONS", self.sip_options), ("SUBSCRIBE", self.sip_subscribe),
                 ("NOTIFY", self.sip_notify), ("MESSAGE", self.sip_message))
        return {method: mode for method, mode in pairs if mode != "no"}


class _Request:
    """What a record needs of a request waiting for its answer (not the whole message)."""

    __slots__ = ("body", "body_length", "content_type", "copies", "display", "dport", "dst",
                 "from_host", "from_user", "last", "sport", "src", "store", "to_host",
                 "to_user", "ts", "ua")

    def __init__(self, d: Datagram, msg: SipMessage, store: bool, max_content: int) -> None:
        self.ts = self.last = d.ts
        self.src, self.sport, self.dst, self.dport = d.src, d.sport, d.dst, d.dport
        self.copies = 0
        self.store = store
        self.from_user = msg.from_.user[:sf.MAX_TEXT]
        self.from_host = msg.from_.host[:sf.MAX_TEXT]
        self.display = msg.from_.display[:sf.MAX_TEXT]
        self.to_user = (msg.to.user or split_uri(msg.request_uri)[0])[:sf.MAX_TEXT]
        self.to_host = msg.to.host[:sf.MAX_TEXT]
        self.ua = sf.user_agent(msg)
        self.content_type = msg.header("content-type")[:sf.MAX_TEXT]
        self.body_length = len(msg.body)
        self.body = _text(msg.body, max_content) if store else ""


class SipMsgStats(Counts):
    def __init__(self) -> None:
        self.requests = 0
        self.repetitions = 0
        self.answered = 0
        self.unanswered = 0
        self.duplicate_responses = 0  # answers to requests already written
        self.unmatched_responses = 0
        self.refused = 0              # requests not followed because of max_pending
        self.relations_evicted = 0
        self.unresolved = 0           # still waiting at finish
        self.records = 0
        self.errors = 0


@implementer(INonCallAnalyser)
class SipMsgTracker:
    """Request/response pairs of OPTIONS, SUBSCRIBE, NOTIFY and MESSAGE; see the module
    docstring. ``emit`` receives ``SipMsg`` and ``InstantMessage`` records."""

    def __init__(self, settings: SipMsgSettings, id_sensor: int,
                 emit: Callable[[Any], Any]) -> None:
        self.settings = settings
        self.id_sensor = id_sensor
        self._emit_to = emit
        self._modes = settings.modes()
        self.stats = SipMsgStats()
        self._pending: dict[tuple[str, int, str, str], _Request] = {}
        # (when, key): the key only, so an answered request is freed at once
        self._deadlines: deque[tuple[float, tuple[str, int, str, str]]] = deque()
        self._finished_txns = sf.Finished()
        self._relations: OrderedDict[tuple, deque] = OrderedDict()
        self._finished = False

    @property
    def methods(self) -> frozenset[str]:
        """The methods this tracker follows (the engine hands it only those)."""
        return frozenset(self._modes)

    def on_message(self, d: Datagram, msg: SipMessage) -> None:
        """A parsed SIP message; requests of other methods and their answers are ignored."""
        try:
            if msg.is_request:
                mode = self._modes.get(msg.method)
                if mode is not None:
                    self._request(d, msg, mode == "yes")
            elif msg.cseq_method in self._modes and msg.status >= 200:
                self._response(d, msg)
        except Exception:
            self.stats.errors += 1
            log.failure("sip messages: message at {ts} could not be processed", ts=d.ts)

    def _request(self, d: Datagram, msg: SipMessage, store: bool) -> None:
        key = (msg.call_id, msg.cseq, msg.method, sf.origin_branch(msg))
        request = self._pending.get(key)
        if request is not None:
            request.copies += 1
            request.last = max(request.last, d.ts)
            self.stats.repetitions += 1
            return
        if key in self._finished_txns:
            self.stats.repetitions += 1
            return
        if len(self._pending) >= self.settings.max_pending:
            self.stats.refused += 1
            return
        self.stats.requests += 1
        request = self._pending[key] = _Request(d, msg, store, self.settings.max_content)
        self._deadlines.append((d.ts + self.settings.timeout, key))

    def _response(self, d: Datagram, msg: SipMessage) -> None:
        key = (msg.call_id, msg.cseq, msg.cseq_method, sf.origin_branch(msg))
        request = self._pending.pop(key, None)
        if request is None:
            if key in self._finished_txns:
                self.stats.duplicate_responses += 1
            else:
                self.stats.unmatched_responses += 1
            return
        self.stats.answered += 1
        self._finished_txns.add(key, d.ts)
        self._record(key, request, d, msg)

    def advance(self, now: float) -> None:
        """Capture-time clock: write the requests that waited ``timeout`` unanswered."""
        try:
            deadlines, timeout = self._deadlines, self.settings.timeout
            while deadlines and deadlines[0][0] <= now:
                _, key = deadlines.popleft()
                request = self._pending.get(key)
                if request is not None and request.ts + timeout <= now:
                    del self._pending[key]
                    self._finished_txns.add(key, now, answered=False)
                    self.stats.unanswered += 1
                    self._record(key, request, None, None)
            self._finished_txns.expire(now)
        except Exception:
            self.stats.errors += 1
            log.failure("sip messages: housekeeping at {now} failed", now=now)

    def finish(self) -> None:
        """End of input. A request still within its timeout is left undecided (counted):
        its answer may simply be after the end."""
        if not self._finished:
            self._finished = True
            self.stats.unresolved = len(self._pending)

    # -- records -------------------------------------------------------------------------

    def _record(self, key: tuple[str, int, str, str], req: _Request, d: Datagram | None,
                msg: SipMessage | None) -> None:
        callid, cseq, method, branch = key
        status = msg.status if msg is not None else 0
        duration = round((d.ts - req.ts) * 1000) if d is not None else None
        ok = duration is not None and status in self.settings.qualify_ok_codes and \
            duration <= self.settings.qualify_limit_ms
        self._remember(method, req, status, duration, ok)
        if not req.store:
            return
        uid = stable_uid("sip_msg", callid, cseq, method, branch, req.ts)
        src, dst = ip_text(req.src), ip_text(req.dst)
        if method == "MESSAGE":
            record: Any = InstantMessage(
                uid=uid, id_sensor=self.id_sensor, calldate=req.ts, caller=req.from_user,
                caller_domain=req.from_host, callername=req.display, called=req.to_user,
                called_domain=req.to_host, sipcallerip=src, sipcalledip=dst,
                lastSIPresponseNum=status, content_type=req.content_type,
                content_length=req.body_length, message=req.body, response_time=duration,
                lastSIPresponse=f"{status} {msg.reason}" if msg is not None else "",
                a_ua=req.ua, b_ua=sf.user_agent(msg) if msg is not None else "",
                sipcallerport=req.sport, sipcalledport=req.dport, callid=callid, cseq=cseq)
        else:
            limit = self.settings.max_content
            record = SipMsg(
                uid=uid, id_sensor=self.id_sensor, time=req.ts, type=METHOD_TYPES[method],
                ip_src=src, port_src=req.sport, ip_dst=dst, port_dst=req.dport,
                number_src=req.from_user, number_dst=req.to_user, domain_src=req.from_host,
                domain_dst=req.to_host, callid=callid, cseq=cseq, response_number=status,
                qualify_ok=ok, request_repetition=req.copies, request_time=req.last,
                response_time=d.ts if d is not None else None, response_duration_ms=duration,
                response_reason=msg.reason[:sf.MAX_TEXT] if msg is not None else "",
                ua_src=req.ua, ua_dst=sf.user_agent(msg) if msg is not None else "",
                callername=req.display, request_content_type=req.content_type,
                request_content_length=req.body_length, request_content=req.body,
                response_content_type=msg.header("content-type")[:sf.MAX_TEXT]
                if msg is not None else "",
                response_content_length=len(msg.body) if msg is not None else 0,
                response_content=_text(msg.body, limit) if msg is not None else "")
        self.stats.records += 1
        try:
            self._emit_to(record)
        except Exception:
            self.stats.errors += 1
            log.failure("sip messages: the record consumer failed")

    def _remember(self, method: str, req: _Request, status: int, duration: int | None,
                  ok: bool) -> None:
        key = (method, req.src, req.dst, req.to_user, req.to_host)
        relations = self._relations
        history = relations.get(key)
        if history is None:
            if len(relations) >= self.settings.max_relations:
                relations.popitem(last=False)
                self.stats.relations_evicted += 1
            history = relations[key] = deque(maxlen=self.settings.history)
        else:
            relations.move_to_end(key)
        history.append((req.ts, status, duration, ok))

    # -- views ---------------------------------------------------------------------------

    def relations(self, method: str | None = None) -> list[dict[str, Any]]:
        """Per requester, target and method: the last result and how many of the last
        ones failed (list_sip_msg; the OPTIONS qualify view)."""
        out = []
        for (meth, src, dst, user, host), history in self._relations.items():
            if method is not None and meth != method:
                continue
            ts, status, duration, ok = history[-1]
            out.append({
                "method": meth, "ip_src": ip_text(src), "ip_dst": ip_text(dst),
                "number_dst": user, "domain_dst": host, "last_time": iso_ms(ts),
                "last_response": status, "last_duration_ms": duration, "qualify_ok": ok,
                "failed_of_last": sum(1 for item in history if not item[3]),
                "last": len(history)})
        return out

    def counters(self) -> Counters:
        data = self.stats.counters()
        data.update(pending=len(self._pending), relations=len(self._relations),
                    completed=len(self._finished_txns))
        return data


def _text(body: bytes, limit: int) -> str:
    return body[:limit * 4].decode("utf-8", "replace")[:limit]


__all__ = ["MODES", "SipMsgSettings", "SipMsgStats", "SipMsgTracker"]
