"""The settings and state of ``RegisterTracker``, and the ``register_state`` rows it writes.

``Info`` is what one REGISTER (or an unmatched 200) says about a registration; ``Txn`` is
one REGISTER transaction and ``Dialog`` the transactions of one Call-ID; a ``Binding`` is
one registration and its state; ``Wheel`` wakes bindings and failure runs up at a capture
time. Slotted and sharing equal strings, since there may be millions of bindings.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from voipmon.analysis import sipfields as sf
from voipmon.analysis.calls import ip_text
from voipmon.analysis.regalerts import AlertSettings
from voipmon.analysis.sip import SipMessage, split_uri
from voipmon.counters import Counts
from voipmon.records import register as rec
from voipmon.records.keys import stable_uid
from voipmon.records.times import iso_ms

#: States in which a registration is active (it expires unless refreshed).
ACTIVE = frozenset({rec.STATE_OK, rec.STATE_UNKNOWN_MESSAGE_OK})
_SHARED_STRINGS = 4096


@dataclass(frozen=True, slots=True)
class RegisterSettings:
    """VoIPmonitor's ``sip-register*`` options (names with ``_``), and our limits."""

    sip_register: str = "yes"                 # yes | nodb (analyse, write no rows)
    sip_register_timeout: float = 5.0
    sip_register_timeout_disable_save_failed: bool = False
    sip_register_max_registers: int = 4
    sip_register_max_messages: int = 20
    sip_register_state_timeout: float = 600.0
    sip_register_ignore_res401: bool = False
    sip_register_ignore_res401_nonce_has_changed: bool = False
    sip_register_failed_max_details_per_minute: int = 1000
    sip_register_compare_sipcallerip: bool = False
    sip_register_compare_sipcalledip: bool = False
    sip_register_compare_sipcallerport: bool = False
    sip_register_compare_sipcalledport: bool = False
    sip_register_compare_to_domain: bool = True
    sip_register_state_compare_from_num: bool = False
    sip_register_state_compare_from_name: bool = False
    sip_register_state_compare_from_domain: bool = False
    sip_register_state_compare_digest_realm: bool = False
    sip_register_state_compare_ua: bool = False
    expire_grace: float = 30.0                # VoIPmonitor's cleanup margin
    # Caps (about 1 kB each, measured by bench/register.py): registrations followed,
    # failure runs folding, REGISTER transactions waiting for an answer (1.4 kB each).
    max_registrations: int = 1_000_000
    max_failed: int = 100_000
    max_pending: int = 100_000
    alerts: AlertSettings = field(default_factory=AlertSettings)

    def __post_init__(self) -> None:
        if self.sip_register not in ("yes", "nodb"):
            raise ValueError(f"sip_register must be yes or nodb, not {self.sip_register!r}")
        for name in ("sip_register_timeout", "sip_register_state_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")
        if self.expire_grace < 0:
            raise ValueError(f"expire_grace must not be negative, not {self.expire_grace!r}")
        for name in ("sip_register_max_registers", "sip_register_max_messages",
                     "sip_register_failed_max_details_per_minute", "max_registrations",
                     "max_failed", "max_pending"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")


class Info:
    """What one REGISTER says about the registration (or a 200 that answers none we saw);
    kept by the registrations and failure runs it made, so without the Contact list."""

    __slots__ = ("callid", "digestrealm", "digestusername", "expires", "from_domain",
                 "from_name", "from_num", "proxy_creds", "to_domain", "to_num", "ua",
                 "www_creds")

    callid: str
    to_num: str
    to_domain: str
    from_num: str
    from_name: str
    from_domain: str
    digestusername: str
    digestrealm: str
    ua: str
    expires: int | None
    www_creds: bool
    proxy_creds: bool


def read_info(msg: SipMessage, strings: dict[str, str], response: bool = False) -> Info:
    """The registration fields of ``msg``. Equal strings are shared: within the message
    (From user = To user = digest username, ...) and, through the bounded ``strings``
    cache, across messages (domains, realms, user agents)."""
    info = Info()
    info.callid = msg.call_id[:sf.MAX_TEXT]
    to_num = (msg.to.user or split_uri(msg.request_uri)[0])[:sf.MAX_TEXT]
    to_domain = share(strings, msg.to.host.lower()[:sf.MAX_TEXT])
    from_num = msg.from_.user[:sf.MAX_TEXT]
    from_domain = msg.from_.host.lower()[:sf.MAX_TEXT]
    info.to_num = to_num
    info.to_domain = to_domain
    info.from_num = to_num if from_num == to_num else from_num
    info.from_name = msg.from_.display[:sf.MAX_TEXT]
    info.from_domain = to_domain if from_domain == to_domain else share(strings, from_domain)
    if response:
        username, realm, www, proxy = "", "", False, False
        info.ua = ""
    else:
        username, realm, www, proxy = sf.credentials(msg)
        info.ua = share(strings, sf.user_agent(msg))
    info.digestusername = to_num if username == to_num else username
    info.digestrealm = to_domain if realm == to_domain else share(strings, realm)
    info.www_creds = www
    info.proxy_creds = proxy
    info.expires = sf.header_int(msg, "expires")
    return info




def share(strings: dict[str, str], text: str) -> str:
    """``text``, or the equal string already in the bounded cache ``strings``."""
    shared = strings.get(text)
    if shared is None:
        if len(strings) >= _SHARED_STRINGS:
            strings.clear()
        shared = strings[text] = text
    return shared


Ends = tuple[bytes, int, bytes, int]   # (client ip, port, server ip, port)


class Txn:
    """One REGISTER transaction waiting for its final answer. Its Contact headers are
    parsed only when it is decided (a challenged REGISTER never needs them)."""

    __slots__ = ("_contacts", "copies", "ends", "info", "raw_contacts", "ts", "wildcard")

    def __init__(self, info: Info, raw_contacts: list[str], ts: float, ends: Ends) -> None:
        self.info = info
        self.raw_contacts = raw_contacts
        self._contacts: list[tuple[sf.Contact, int | None]] | None = None
        self.wildcard = False
        self.ts = ts
        self.ends = ends
        self.copies = 1

    @property
    def contacts(self) -> list[tuple[sf.Contact, int | None]]:
        """The bindings it asks for (``sipfields.contacts``), a user equal to the To user
        shared with it; ``wildcard`` is set too."""
        if self._contacts is None:
            bindings, self.wildcard = sf.parse_contacts(self.raw_contacts)
            to_num = self.info.to_num
            self._contacts = [((key, to_num if user == to_num else user, host), expires)
                              for (key, user, host), expires in bindings]
        return self._contacts


class Dialog:
    """The REGISTER transactions of one Call-ID and the attempt they make."""

    __slots__ = ("callid", "challenge", "challenges", "messages", "pending", "registers",
                 "retry_at")

    def __init__(self, callid: str) -> None:
        self.callid = callid
        self.pending: dict[tuple[int, str], Txn] = {}
        self.challenges: set[tuple[bytes, int]] = set()
        self.registers = 0        # REGISTER transactions in the attempt
        self.messages = 0         # messages in the attempt, copies included
        self.retry_at: float | None = None     # a challenge waits for a new REGISTER
        self.challenge: tuple[int, Txn] | None = None

    def reset(self) -> None:
        """The attempt is decided: the next REGISTER starts a new one."""
        self.challenges.clear()
        self.registers = 0
        self.messages = 0
        self.retry_at = None
        self.challenge = None


class Wheel:
    """Items (with ``due`` and ``gone`` attributes) to look at again at a capture time, in
    one-second buckets. An item keeps only its earliest look: a later ``put`` is ignored,
    and the look reschedules itself if it came too early, so an item refreshed every
    minute costs one entry, not one per refresh."""

    def __init__(self) -> None:
        self._buckets: dict[int, list[Any]] = {}
        self._heap: list[int] = []

    def put(self, item: Any, at: float) -> None:
        bucket = int(at) + 1
        if item.due is not None and item.due <= bucket:
            return
        item.due = bucket
        items = self._buckets.get(bucket)
        if items is None:
            self._buckets[bucket] = [item]
            heapq.heappush(self._heap, bucket)
        else:
            items.append(item)

    def due(self, now: float) -> Iterator[Any]:
        """The items due by ``now``; each may ``put`` itself again (later than ``now``)."""
        heap = self._heap
        while heap and heap[0] <= now:
            bucket = heapq.heappop(heap)
            for item in self._buckets.pop(bucket):
                if item.due == bucket and not item.gone:
                    item.due = None
                    yield item


class Binding:
    """One registration: a user bound to one Contact, and its state."""

    __slots__ = ("aor", "cmp", "contact", "contact_domain", "contact_num", "due", "ends",
                 "expires", "expires_at", "gone", "info", "rrd", "rrd_count", "rrd_sum", "seen",
                 "since", "state")

    def __init__(self, aor: tuple, contact: sf.Contact) -> None:
        self.aor = aor
        self.contact, self.contact_num, self.contact_domain = contact
        self.state = 0
        self.since = 0.0          # the state's row (created_at)
        self.seen = 0.0           # the last REGISTER that confirmed it
        self.expires = 0
        self.expires_at = 0.0
        self.info: Info | None = None
        self.ends: Ends = (b"", 0, b"", 0)
        self.cmp: tuple = ()
        self.rrd: float | None = None
        self.rrd_sum = 0.0
        self.rrd_count = 0
        self.due: int | None = None
        self.gone = False

    def view(self) -> dict[str, Any]:
        """For listregisters and the API's current state."""
        info = self.info
        assert info is not None
        active = self.state in ACTIVE
        return {
            "state": self.state, "state_name": rec.STATE_NAMES.get(self.state, ""),
            "created_at": iso_ms(self.since), "to_num": info.to_num,
            "to_domain": info.to_domain, "contact_num": self.contact_num,
            "contact_domain": self.contact_domain, "contact": self.contact,
            "sipcallerip": ip_text(self.ends[0]), "sipcallerport": self.ends[1],
            "sipcalledip": ip_text(self.ends[2]), "sipcalledport": self.ends[3],
            "from_num": info.from_num, "digestusername": info.digestusername,
            "digestrealm": info.digestrealm, "ua": info.ua, "callid": info.callid,
            "expires": self.expires, "expires_at": iso_ms(self.expires_at) if active else None,
            "last_seen": iso_ms(self.seen),
            "rrd_avg": round(self.rrd_sum / self.rrd_count, 3) if self.rrd_count else None,
        }


class Bindings:
    """The registrations, by user (the address-of-record key) and contact. Most users have
    one contact: that binding is stored as the user's value itself, without a dict."""

    def __init__(self) -> None:
        self._aors: dict[tuple, Binding | dict[str, Binding]] = {}
        self.count = 0

    def get(self, aor: tuple, contact: str) -> Binding | None:
        entry = self._aors.get(aor)
        if isinstance(entry, Binding):
            return entry if entry.contact == contact else None
        return entry.get(contact) if entry is not None else None

    def add(self, b: Binding) -> None:
        entry = self._aors.get(b.aor)
        if entry is None:
            self._aors[b.aor] = b
        elif isinstance(entry, Binding):
            self._aors[b.aor] = {entry.contact: entry, b.contact: b}
        else:
            entry[b.contact] = b
        self.count += 1

    def remove(self, b: Binding) -> None:
        entry = self._aors[b.aor]
        if entry is b:
            del self._aors[b.aor]
        elif isinstance(entry, dict):
            del entry[b.contact]
            if len(entry) == 1:
                self._aors[b.aor] = next(iter(entry.values()))
        self.count -= 1

    def of(self, aor: tuple) -> list[Binding]:
        """Every binding of one user."""
        entry = self._aors.get(aor)
        if entry is None:
            return []
        return [entry] if isinstance(entry, Binding) else list(entry.values())

    def __iter__(self) -> Iterator[Binding]:
        for entry in self._aors.values():
            if isinstance(entry, Binding):
                yield entry
            else:
                yield from entry.values()


def state_row(id_sensor: int, b: Binding, created_at: float,
              rrd: float | None) -> rec.RegisterState:
    info = b.info
    assert info is not None
    src, sport, dst, dport = b.ends
    caller = ip_text(src)
    return rec.RegisterState(
        uid=stable_uid("register_state", info.to_num, info.to_domain, b.contact, caller,
                       b.state, created_at),
        id_sensor=id_sensor, created_at=created_at, state=b.state, sipcallerip=caller,
        sipcallerport=sport, sipcalledip=ip_text(dst), sipcalledport=dport,
        from_num=info.from_num, to_num=info.to_num, to_domain=info.to_domain,
        contact_num=b.contact_num, contact_domain=b.contact_domain,
        digestusername=info.digestusername, digestrealm=info.digestrealm,
        expires=b.expires, ua=info.ua, from_domain=info.from_domain, callid=info.callid,
        rrd=rrd)


class RegisterStats(Counts):
    """Counters of the tracker (every refusal and drop is one of them)."""

    def __init__(self) -> None:
        self.requests = 0
        self.responses = 0
        self.transactions = 0
        self.retransmissions = 0
        self.duplicate_responses = 0
        self.unmatched_responses = 0
        self.malformed = 0
        self.challenges = 0
        self.rejected_credentials = 0
        self.abandoned_challenges = 0
        self.timeouts = 0
        self.redirects = 0
        self.queries = 0
        self.ok = 0
        self.failed = 0
        self.failed_not_saved = 0
        self.failed_details_dropped = 0
        self.failed_runs_evicted = 0
        self.unknown_ok = 0
        self.unknown_ok_skipped = 0
        self.many_reg_messages = 0
        self.expired = 0
        self.refused_transactions = 0
        self.registrations_refused = 0
        self.unresolved = 0
        self.records = 0
        self.errors = 0


__all__ = ["ACTIVE", "Binding", "Bindings", "Dialog", "Ends", "Info", "RegisterSettings",
           "RegisterStats", "Txn", "Wheel", "read_info", "share", "state_row"]
