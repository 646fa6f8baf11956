"""REGISTER tracking: VoIPmonitor's registration states from the SIP messages seen.

Pure and reactor-free, like call analysis: time is capture time (``Datagram.ts`` and the
``now`` given to ``advance``), so a capture replayed gives the same records as the live
traffic did. The engine hands every REGISTER request and every response to one
(``on_message``), calls ``advance(now)`` once a capture-time second and ``finish()`` at
the end of input; records go to ``emit``.

Transactions. A REGISTER transaction is (Call-ID, CSeq, branch of the bottom Via), so
retransmissions and copies of one request seen on two hops are one transaction, while
tools that reuse a CSeq with a new branch (sipvicious) make new ones. Its first final
answer decides; later copies are recognised for 32 s (``sipfields.Finished``).

Attempts and VoIPmonitor's rules. The transactions of one Call-ID up to a decision form an
attempt:

- 2xx: every Contact of the request becomes **OK** (1) with the expiry granted in the
  200 (its Contact ``;expires``, else its ``Expires``, else what was asked), or
  **Unregister** (6) when expiry 0 was asked (``Contact: *`` unregisters every binding of
  the user). The registration request delay (RRD) is the time from the REGISTER to it.
- 401/407: a challenge, normal once per challenger in an attempt, on the first REGISTER
  and on each refresh. The attempt fails when a challenge answers a REGISTER that already
  carried credentials (they were rejected; sipvicious' svcrack), when the same challenger
  challenges twice, or when no new REGISTER follows within ``sip-register-timeout``
  (abandoned: svwar). ``stale=true`` is a normal challenge. 423 asks for a retry too.
- 403, 404, other 4xx-6xx, and no final answer within ``sip-register-timeout``: **Failed**
  (2), as ``RegisterFailed`` rows that fold repeated failures (``counter``).
- More than ``sip-register-max-registers`` REGISTERs unanswered by a 2xx or a challenge,
  or more than ``sip-register-max-messages`` messages in an attempt: **ManyRegMessages** (4).
- A 2xx that answers no REGISTER seen: **UnknownMessageOK** (3) for its one Contact.
- **Expired** (5) when an OK registration is not refreshed: written once capture time is
  ``expire_grace`` past its expiry, dated at the expiry itself.

A registration is one binding: the user (To user, and To domain with
``sip-register-compare-to_domain``; optionally the addresses) and one Contact, so a user
with two phones has two. A ``register_state`` row is written only when its state changes,
when a compared field changes (``sip-register-state-compare-*``), or when a refresh comes
``sip-register-state-timeout`` after the row: a phone refreshing every 60 s costs nothing
in between.

Memory is bounded: pending transactions (``max_pending``), registrations
(``max_registrations``) and failure runs (``max_failed``) are capped and every refusal is
counted; attempts, runs and non-active registrations expire; failed attempts above
``sip-register-failed-max-details-per-minute`` per client and server fold into
``register_time_info.counter_2`` only, as in VoIPmonitor.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from voipmon.analysis import regstate as rs
from voipmon.analysis import sipfields as sf
from voipmon.analysis.calls import ip_text
from voipmon.analysis.noncall import INonCallAnalyser
from voipmon.analysis.regalerts import RegisterAlerts
from voipmon.analysis.regfailed import FailureBook
from voipmon.analysis.regstate import ACTIVE, Binding, Dialog, Ends, Info, RegisterSettings
from voipmon.analysis.sip import SipMessage
from voipmon.counters import Counters, prefixed
from voipmon.packet.datagram import Datagram
from voipmon.records import register as rec

log = Logger()

AUTH_FAILURES = frozenset({401, 403, 404, 407})  # what the alert rules count
_NO_CONTACT = (("", "", ""), None)


@implementer(INonCallAnalyser)
class RegisterTracker:
    """Registrations, failed attempts and alerts from REGISTER traffic; see the module
    docstring. ``emit`` receives ``RegisterState``, ``RegisterFailed``,
    ``RegisterTimeInfo`` and ``Alert`` records."""

    methods = frozenset({"REGISTER"})

    def __init__(self, settings: RegisterSettings, id_sensor: int,
                 emit: Callable[[Any], Any]) -> None:
        self.settings = settings
        self.id_sensor = id_sensor
        self._emit_to = emit
        self._store = settings.sip_register == "yes"
        self.stats = rs.RegisterStats()
        self.alerts = RegisterAlerts(settings.alerts, id_sensor, self._emit)
        self._dialogs: dict[str, Dialog] = {}
        # (when, Call-ID[, key]): names only, so a decided transaction is freed at once
        self._deadlines: deque[tuple[float, str, tuple[int, str]]] = deque()
        self._retries: deque[tuple[float, str]] = deque()
        self._finished_txns = sf.Finished(limit=500_000)
        self._bindings = rs.Bindings()
        self._active = 0
        self._wheel = rs.Wheel()
        self._failures = FailureBook(
            id_sensor, settings.sip_register_state_timeout, settings.max_failed,
            settings.sip_register_failed_max_details_per_minute, self._row, self._wheel,
            self.stats)
        self._lag = 2 * settings.sip_register_timeout + 2.0
        self._minute: float | None = None
        self._finished = False
        s = settings
        self._aor_fields = (
            s.sip_register_compare_to_domain, s.sip_register_compare_sipcallerip,
            s.sip_register_compare_sipcallerport, s.sip_register_compare_sipcalledip,
            s.sip_register_compare_sipcalledport)
        self._cmp_fields = tuple(name for name, on in (
            ("from_num", s.sip_register_state_compare_from_num),
            ("from_name", s.sip_register_state_compare_from_name),
            ("from_domain", s.sip_register_state_compare_from_domain),
            ("digestrealm", s.sip_register_state_compare_digest_realm),
            ("ua", s.sip_register_state_compare_ua)) if on)
        self._strings: dict[str, str] = {}
        self._ip_cache: dict[bytes, bytes] = {}

    # -- input -------------------------------------------------------------------------

    def on_message(self, d: Datagram, msg: SipMessage) -> None:
        """A parsed SIP message; anything but REGISTER requests and responses is ignored."""
        try:
            if msg.is_request:
                if msg.method == "REGISTER":
                    self._request(d, msg)
            elif msg.cseq_method == "REGISTER":
                self._response(d, msg)
        except Exception:
            self.stats.errors += 1
            log.failure("registers: message at {ts} could not be processed", ts=d.ts)

    def _request(self, d: Datagram, msg: SipMessage) -> None:
        stats = self.stats
        stats.requests += 1
        callid = msg.call_id
        if not callid:
            stats.malformed += 1
            return
        key = (msg.cseq, sf.origin_branch(msg))
        dialog = self._dialogs.get(callid)
        if dialog is not None:
            dialog.messages += 1
            txn = dialog.pending.get(key)
            if txn is not None:
                txn.copies += 1
                stats.retransmissions += 1
                self._check_many(dialog, txn, d.ts)
                return
        if (callid, *key) in self._finished_txns:
            stats.retransmissions += 1
            return
        if dialog is None:
            if len(self._dialogs) >= self.settings.max_pending:
                stats.refused_transactions += 1
                return
            dialog = self._dialogs[callid] = Dialog(callid)
            dialog.messages = 1
        info = rs.read_info(msg, self._strings)
        src = self._ip_cache.setdefault(d.src, d.src) if len(self._ip_cache) < 65536 else d.src
        dst = self._ip_cache.setdefault(d.dst, d.dst) if len(self._ip_cache) < 65536 else d.dst
        txn = rs.Txn(info, msg.headers.get("contact", []), d.ts, (src, d.sport, dst, d.dport))
        dialog.pending[key] = txn
        dialog.registers += 1
        dialog.retry_at = None    # a challenge, if any, is being answered
        self._deadlines.append((d.ts + self.settings.sip_register_timeout, callid, key))
        stats.transactions += 1
        self._check_many(dialog, txn, d.ts)

    def _response(self, d: Datagram, msg: SipMessage) -> None:
        stats = self.stats
        stats.responses += 1
        callid = msg.call_id
        key = (msg.cseq, sf.origin_branch(msg))
        dialog = self._dialogs.get(callid)
        txn = dialog.pending.get(key) if dialog is not None else None
        status = msg.status
        if txn is None:
            if self._finished_txns.answered((callid, *key)):
                stats.duplicate_responses += 1
            elif 200 <= status < 300:
                self._unknown_ok(d, msg)
            else:
                stats.unmatched_responses += 1
            return
        dialog.messages += 1
        if status < 200:
            self._check_many(dialog, txn, d.ts)
            return
        del dialog.pending[key]
        self._finished_txns.add((callid, *key), d.ts)
        if status < 300:
            self._success(dialog, txn, d, msg)
        elif status in (401, 407):
            self._challenge(dialog, txn, d, msg)
        elif status == 423:      # Interval Too Brief: the client retries with a longer one
            self._await_retry(dialog, txn, status, d.ts)
        elif status < 400:
            stats.redirects += 1
            dialog.reset()
            self._settle(dialog)
        else:
            self._fail(dialog, txn, status, d.ts)

    # -- outcomes ----------------------------------------------------------------------

    def _success(self, dialog: Dialog, txn: rs.Txn, d: Datagram, msg: SipMessage) -> None:
        dialog.reset()
        self._settle(dialog)
        self.stats.ok += 1
        info = txn.info
        rrd = round((d.ts - txn.ts) * 1000.0, 3)
        granted = {contact[0]: asked for contact, asked in sf.contacts(msg)[0] if asked}
        header = sf.header_int(msg, "expires")
        aor = self._aor(info, txn.ends)
        asked_for = txn.contacts
        if txn.wildcard:
            for b in self._bindings.of(aor):
                self._set_state(aor, (b.contact, b.contact_num, b.contact_domain),
                                rec.STATE_UNREGISTER, 0, info, txn.ts, rrd, txn.ends)
        for contact, asked in asked_for:
            requested = asked if asked is not None else \
                info.expires if info.expires is not None else sf.DEFAULT_EXPIRES
            if requested == 0:
                self._set_state(aor, contact, rec.STATE_UNREGISTER, 0, info, txn.ts, rrd,
                                txn.ends)
            else:
                expires = granted.get(contact[0]) or header or requested
                self._set_state(aor, contact, rec.STATE_OK, expires, info, txn.ts, rrd,
                                txn.ends)
        if not asked_for and not txn.wildcard:
            self.stats.queries += 1
        self._failures.succeeded(aor, txn.ends[0], d.ts)
        self.alerts.success(d.ts, ip_text(txn.ends[0]), ip_text(txn.ends[2]), info.to_num)

    def _challenge(self, dialog: Dialog, txn: rs.Txn, d: Datagram, msg: SipMessage) -> None:
        status = msg.status
        info = txn.info
        stale = sf.challenge_is_stale(msg) or (
            self.settings.sip_register_ignore_res401_nonce_has_changed
            and "nonce has changed" in msg.reason.lower())
        had_credentials = info.www_creds if status == 401 else info.proxy_creds
        challenger = (d.src, status)
        if not stale and (had_credentials or challenger in dialog.challenges):
            self.stats.rejected_credentials += 1
            self._fail(dialog, txn, status, d.ts)
            return
        self.stats.challenges += 1
        dialog.challenges.add(challenger)
        self._await_retry(dialog, txn, status, d.ts)

    def _await_retry(self, dialog: Dialog, txn: rs.Txn, status: int, ts: float) -> None:
        deadline = ts + self.settings.sip_register_timeout
        dialog.retry_at = deadline
        dialog.challenge = (status, txn)
        self._retries.append((deadline, dialog.callid))

    def _fail(self, dialog: Dialog, txn: rs.Txn, status: int, ts: float) -> None:
        if dialog.pending:
            dialog.retry_at = None
            dialog.challenge = None
        else:
            dialog.reset()
        self._settle(dialog)
        stats = self.stats
        stats.failed += 1
        info = txn.info
        if status in AUTH_FAILURES:
            self.alerts.failure(ts, ip_text(txn.ends[0]), ip_text(txn.ends[2]), info.to_num,
                                info.ua)
        if (status == 0 and self.settings.sip_register_timeout_disable_save_failed) or \
                (status == 401 and self.settings.sip_register_ignore_res401):
            stats.failed_not_saved += 1
            return
        contact = txn.contacts[0][0] if txn.contacts else _NO_CONTACT[0]
        self._failures.add(self._aor(info, txn.ends), info, contact, txn.ends, status, txn.ts)

    def _check_many(self, dialog: Dialog, txn: rs.Txn, ts: float) -> None:
        settings = self.settings
        if dialog.messages <= settings.sip_register_max_messages and (
                dialog.challenges or dialog.registers <= settings.sip_register_max_registers):
            return
        self.stats.many_reg_messages += 1
        for key in dialog.pending:
            self._finished_txns.add((dialog.callid, *key), ts)
        dialog.pending.clear()
        dialog.reset()
        self._settle(dialog)
        info = txn.info
        aor = self._aor(info, txn.ends)
        for contact, _ in txn.contacts or (_NO_CONTACT,):
            self._set_state(aor, contact, rec.STATE_MANY_REG_MESSAGES, 0, info, ts, None,
                            txn.ends)

    def _unknown_ok(self, d: Datagram, msg: SipMessage) -> None:
        bindings = sf.contacts(msg)[0]
        if len(bindings) != 1:  # several: the one at the client's address, if just one
            host = ip_text(d.dst)
            bindings = [b for b in bindings if b[0][2] == host]
            if len(bindings) != 1:
                self.stats.unknown_ok_skipped += 1
                return
        self.stats.unknown_ok += 1
        contact, asked = bindings[0]
        info = rs.read_info(msg, self._strings, response=True)
        expires = asked or sf.header_int(msg, "expires") or sf.DEFAULT_EXPIRES
        ends = (d.dst, d.dport, d.src, d.sport)
        self._set_state(self._aor(info, ends), contact, rec.STATE_UNKNOWN_MESSAGE_OK, expires,
                        info, d.ts, None, ends)

    # -- registrations -----------------------------------------------------------------

    def _aor(self, info: Info, ends: Ends) -> tuple:
        """The user part of a registration's identity: To user, To domain
        (``sip-register-compare-to_domain``) and the addresses the options name."""
        domain, callerip, callerport, calledip, calledport = self._aor_fields
        if not (callerip or callerport or calledip or calledport):
            return (info.to_num, info.to_domain) if domain else (info.to_num,)
        return (info.to_num, info.to_domain if domain else "",
                ends[0] if callerip else b"", ends[1] if callerport else 0,
                ends[2] if calledip else b"", ends[3] if calledport else 0)

    def _set_state(self, aor: tuple, contact: tuple[str, str, str], state: int, expires: int,
                   info: Info, ts: float, rrd: float | None,
                   ends: Ends) -> None:
        b = self._bindings.get(aor, contact[0])
        cmp = tuple(getattr(info, name) for name in self._cmp_fields) if self._cmp_fields \
            else ()
        if b is None:
            if self._bindings.count >= self.settings.max_registrations:
                self.stats.registrations_refused += 1
                return
            b = Binding(aor, contact)
            self._bindings.add(b)
            changed = True
        else:
            changed = state != b.state or cmp != b.cmp or \
                ts - b.since >= self.settings.sip_register_state_timeout
        was_active = b.state in ACTIVE
        b.info = info
        b.ends = ends
        b.seen = max(b.seen, ts)
        if rrd is not None:
            b.rrd = rrd
            b.rrd_sum += rrd
            b.rrd_count += 1
        active = state in ACTIVE
        b.expires = expires if active else 0
        if active:
            b.expires_at = ts + expires
        if changed:
            b.state = state
            b.since = ts
            b.cmp = cmp
            self._row(rs.state_row(self.id_sensor, b, ts, rrd))
        self._active += active - was_active
        self._wheel.put(b, b.expires_at + self.settings.expire_grace if active else
                        b.seen + self.settings.sip_register_state_timeout)

    def _due_binding(self, b: Binding, now: float) -> None:
        if b.state in ACTIVE:
            deadline = b.expires_at + self.settings.expire_grace
            if deadline > now:
                self._wheel.put(b, deadline)
                return
            b.state = rec.STATE_EXPIRED
            b.since = b.expires_at
            b.expires = 0
            self._active -= 1
            self.stats.expired += 1
            self._row(rs.state_row(self.id_sensor, b, b.since, None))
        until = max(b.seen, b.since) + self.settings.sip_register_state_timeout
        if until > now:
            self._wheel.put(b, until)
            return
        b.gone = True
        self._bindings.remove(b)

    # -- time ----------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Capture-time clock: time out transactions and challenges, expire registrations,
        close failure runs, write the minutes that are over."""
        try:
            self._advance(now)
        except Exception:
            self.stats.errors += 1
            log.failure("registers: housekeeping at {now} failed", now=now)

    def _advance(self, now: float) -> None:
        deadlines, dialogs = self._deadlines, self._dialogs
        timeout = self.settings.sip_register_timeout
        while deadlines and deadlines[0][0] <= now:
            _, callid, key = deadlines.popleft()
            dialog = dialogs.get(callid)
            if dialog is None:
                continue
            txn = dialog.pending.get(key)
            if txn is not None and txn.ts + timeout <= now:
                del dialog.pending[key]
                self._finished_txns.add((dialog.callid, *key), now, answered=False)
                self.stats.timeouts += 1
                self._fail(dialog, txn, 0, txn.ts)
        retries = self._retries
        while retries and retries[0][0] <= now:
            deadline, callid = retries.popleft()
            dialog = dialogs.get(callid)
            if dialog is not None and dialog.retry_at == deadline \
                    and dialog.challenge is not None:
                status, txn = dialog.challenge
                self.stats.abandoned_challenges += 1
                dialog.retry_at = None
                self._fail(dialog, txn, status, deadline)
        for item in self._wheel.due(now):
            if isinstance(item, Binding):
                self._due_binding(item, now)
            else:
                self._failures.due(item, now)
        self._finished_txns.expire(now)
        self._failures.time_info.flush(now - self._lag)
        minute = float(now // 60 * 60)
        if self._minute is None:
            self._minute = minute
        elif minute > self._minute:
            self._minute = minute
            self._failures.time_info.active(minute, self._active)
        self.alerts.advance(now)

    def finish(self) -> None:
        """End of input: write what is still folding (failure runs, minutes, alerts).
        Transactions still waiting for an answer are left undecided (counted)."""
        if self._finished:
            return
        self._finished = True
        self.stats.unresolved = sum(len(d.pending) + (d.retry_at is not None)
                                    for d in self._dialogs.values())
        self._failures.finish()
        self.alerts.finish()

    # -- helpers -------------------------------------------------------------------------

    def _settle(self, dialog: Dialog) -> None:
        if not dialog.pending and dialog.retry_at is None:
            self._dialogs.pop(dialog.callid, None)

    def _row(self, record: Any) -> None:
        if self._store:
            self._emit(record)

    def _emit(self, record: Any) -> None:
        self.stats.records += 1
        try:
            self._emit_to(record)
        except Exception:
            self.stats.errors += 1
            log.failure("registers: the record consumer failed")

    # -- views ---------------------------------------------------------------------------

    @property
    def active_count(self) -> int:
        """Registrations in state OK or UnknownMessageOK."""
        return self._active

    def registrations(self, active_only: bool = True) -> list[dict[str, Any]]:
        """The registrations known (listregisters), oldest state first."""
        out = [b.view() for b in self._bindings if not active_only or b.state in ACTIVE]
        return sorted(out, key=lambda row: row["created_at"])

    def counters(self) -> Counters:
        data = self.stats.counters()
        data.update(registrations=self._bindings.count, active=self._active,
                    pending=len(self._dialogs), completed=len(self._finished_txns),
                    failure_runs=len(self._failures))
        data.update(prefixed("alerts", self.alerts.stats.counters()))
        return data


__all__ = ["RegisterSettings", "RegisterTracker"]
