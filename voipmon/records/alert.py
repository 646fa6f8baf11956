"""Alert records: a source that brute-forces or scans a registrar, or that got in.

Raised by ``voipmon.analysis.regalerts`` from failed and successful REGISTER attempts
(rules and thresholds there). One alert is one incident: it is emitted when a rule first
fires (``revision`` 0) and again, with the same ``uid`` and a higher ``revision``, while
the incident goes on (at most once a minute) and when it ends (``closed``). The store
upserts on (id_sensor, uid) and keeps the highest revision, so repeated or reordered
deliveries leave the same row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from voipmon.records.codec import Record, record_type

BRUTE_FORCE = "brute-force"
SCAN = "scan"
POSSIBLE_COMPROMISE = "possible-compromise"
KINDS = (BRUTE_FORCE, SCAN, POSSIBLE_COMPROMISE)


@record_type("alert")
@dataclass(frozen=True, slots=True)
class Alert(Record):
    """One incident from one source IP against one SIP server."""

    TABLE: ClassVar[str] = "alert"

    uid: str
    id_sensor: int
    kind: str                 # BRUTE_FORCE, SCAN or POSSIBLE_COMPROMISE
    created_at: float         # when the rule fired
    sipcallerip: str          # the source
    sipcalledip: str          # the server it talks to
    window_start: float       # the first failure counted in the incident
    window_end: float         # the last event folded in so far
    failures: int             # failed attempts from the source in the incident
    extension_count: int      # distinct users (To user) they went to
    extensions: str           # those users, comma-separated, most tried first (at most 100);
                              # possible-compromise: the one user that got in
    successes: int = 0        # successful registrations from the source after failures
    ua: str = ""              # the User-Agent of the first failure (scanners often name themselves)
    message: str = ""         # one line for people and logs
    revision: int = 0
    closed: bool = False      # the incident is over (no failure for the rule's window)


__all__ = ["BRUTE_FORCE", "KINDS", "POSSIBLE_COMPROMISE", "SCAN", "Alert"]
