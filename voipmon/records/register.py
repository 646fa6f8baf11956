"""Registration records: VoIPmonitor's ``register_state``, ``register_failed`` and
``register_time_info`` rows.

Column names are VoIPmonitor's; fields it does not have are marked "ours". Times are UTC
epoch seconds (float), addresses are text, the user agent is text (the store maps it to
``cdr_ua``). Every field is a JSON value (str, int, float, bool or None), so one typed
codec can carry all of them.

Exactly once. Each record has ``uid``, a key derived from the packets (``keys.stable_uid``).

- ``RegisterState`` and ``RegisterTimeInfo`` are written once: insert on (id_sensor, uid)
  and ignore a duplicate.
- ``RegisterFailed`` is a row that grows: it is emitted when a run of failures starts
  (``revision`` 0, ``counter`` 1) and again, with the same ``uid`` and a higher
  ``revision``, as more failed attempts fold into it (at most every 20 s, and when the run
  ends). The store upserts on (id_sensor, uid) and keeps the highest revision, so any
  number of deliveries in any order leave the same row. VoIPmonitor does the same with an
  ``UPDATE ... SET counter`` on the id it assigned itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from voipmon.records.codec import Record, record_type

# VoIPmonitor's register states (register.h) and their names in its GUI.
STATE_OK = 1
STATE_FAILED = 2
STATE_UNKNOWN_MESSAGE_OK = 3
STATE_MANY_REG_MESSAGES = 4
STATE_EXPIRED = 5
STATE_UNREGISTER = 6
STATE_NAMES = {
    STATE_OK: "OK", STATE_FAILED: "Failed", STATE_UNKNOWN_MESSAGE_OK: "UnknownMessageOK",
    STATE_MANY_REG_MESSAGES: "ManyRegMessages", STATE_EXPIRED: "Expired",
    STATE_UNREGISTER: "Unregister",
}

TIME_INFO_FAILED = "failed"
TIME_INFO_ACTIVE = "active"


@record_type("register_state")
@dataclass(frozen=True, slots=True)
class RegisterState(Record):
    """A ``register_state`` row: a registration (one binding of a user to a contact)
    entered a state, or stayed in it for ``sip-register-state-timeout``."""

    TABLE: ClassVar[str] = "register_state"

    uid: str
    id_sensor: int
    created_at: float             # when the state began (Expired: the moment it expired)
    state: int                    # STATE_*, never STATE_FAILED (that is RegisterFailed)
    sipcallerip: str              # the registering client
    sipcallerport: int
    sipcalledip: str              # the registrar (or the proxy the client talks to)
    sipcalledport: int
    from_num: str
    to_num: str                   # the registered user (address-of-record user part)
    to_domain: str
    contact_num: str
    contact_domain: str
    digestusername: str
    digestrealm: str
    expires: int                  # granted seconds; 0 for Expired and Unregister
    ua: str = ""                  # User-Agent (column ua_id through cdr_ua)
    from_domain: str = ""         # ours
    callid: str = ""              # ours: the REGISTER dialog that made the state
    rrd: float | None = None      # ours: registration request delay, ms (REGISTER to 200)


@record_type("register_failed")
@dataclass(frozen=True, slots=True)
class RegisterFailed(Record):
    """A ``register_failed`` row: ``counter`` failed REGISTER attempts (one per transaction
    that ended in failure, not per response) of one user from one client with one answer,
    folded together from ``created_at`` to ``last_at``."""

    TABLE: ClassVar[str] = "register_failed"

    uid: str
    id_sensor: int
    created_at: float             # the first failed attempt's REGISTER
    counter: int
    sipcallerip: str
    sipcallerport: int
    sipcalledip: str
    sipcalledport: int
    from_num: str
    to_num: str
    to_domain: str
    contact_num: str
    contact_domain: str
    digestusername: str
    digestrealm: str
    ua: str = ""
    revision: int = 0             # ours: grows with every re-emission of this row
    last_at: float = 0.0          # ours: the last folded attempt's REGISTER
    response: int = 0             # ours: the failing answer (401, 403, ...), 0 = none
    from_domain: str = ""         # ours
    callid: str = ""              # ours: the first failed attempt's Call-ID


@record_type("register_time_info")
@dataclass(frozen=True, slots=True)
class RegisterTimeInfo(Record):
    """A ``register_time_info`` row for one minute.

    ``failed``: failed attempts from ``sipcallerip`` to ``sipcalledip`` in the minute;
    ``counter_2`` is the part above ``sip-register-failed-max-details-per-minute``, for
    which no ``register_failed`` detail was kept. ``active``: registrations active at the
    minute's start (addresses empty)."""

    TABLE: ClassVar[str] = "register_time_info"

    uid: str
    id_sensor: int
    created_at: float             # the minute (epoch seconds, a multiple of 60)
    type_info: str                # TIME_INFO_FAILED or TIME_INFO_ACTIVE
    sipcallerip: str
    sipcalledip: str
    counter: int
    counter_2: int = 0


__all__ = [
    "STATE_EXPIRED", "STATE_FAILED", "STATE_MANY_REG_MESSAGES", "STATE_NAMES", "STATE_OK",
    "STATE_UNKNOWN_MESSAGE_OK", "STATE_UNREGISTER", "TIME_INFO_ACTIVE", "TIME_INFO_FAILED",
    "RegisterFailed", "RegisterState", "RegisterTimeInfo",
]
