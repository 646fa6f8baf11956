"""What the dashboard counts: each class of call defined once, as SQL and as Python.

The dashboard's figures (``voipmon.store.stats``) and the ``/api/cdrs`` filters that list
the calls behind each figure (``voipmon.store.query``) both use these definitions, so a
figure and its list cannot drift apart. All read columns of the ``cdr`` row alone:

- **seizure**: every stored call (one CDR: one INVITE dialog), whatever its outcome.
- **answered**: the final response to the call's INVITE was a 2xx
  (``lastSIPresponseNum`` 200-299). The call engine freezes that code once a 2xx arrives,
  so this is "the callee picked up", including calls that were answered and hung up at
  once (connect_duration 0). A call with no final response (code 0) is not answered.
- **NER-effective** (ITU-T E.411 network effectiveness, with SIP codes as RFC 6076's SEER
  counts them): answered, or failed for a reason of the called user rather than of the
  network: 480 Temporarily Unavailable (no answer / not registered), 486 Busy Here,
  487 Request Terminated (the caller gave up while it rang: E.411's "ring, no answer"),
  600 Busy Everywhere, 603 Decline. Every other outcome (4xx but those, 5xx, 408, no
  final response) is **NER-ineffective**: what the network failed to deliver.
- **MOS**: ``mos_min_mult10``, the lowest MOS of the call's two main streams in any model
  (F1, F2, adaptive), to 0.1: the worse side decides, as a customer hears it. A call
  without one (no media) has no MOS and is left out of the MOS share.
- **loss**: ``packet_loss_perc_mult1000``, the larger of the two sides' loss percentages
  (to 0.001 %); **jitter**: ``jitter_mult10``, the larger side's mean RFC 3550 jitter (to
  0.1 ms). A call without media has neither; the distributions count calls that have one.
"""

from __future__ import annotations

ANSWERED = (200, 299)                       # lastSIPresponseNum, inclusive
NER_USER_CODES = (480, 486, 487, 600, 603)  # failures that still count as effective

# Distribution buckets: [edge[i-1], edge[i]) in stored units (the first from 0, the last
# open-ended). Loss in 1/1000 %: 0 %, under 1 %, 1-2 %, 2-5 %, 5-10 %, 10 % and more.
LOSS_EDGES = (1, 1000, 2000, 5000, 10000)
LOSS_SCALE = 1000                           # stored units per percent
# Jitter in 1/10 ms: under 5 ms, 5-10, 10-20, 20-30, 30-50, 50 ms and more.
JITTER_EDGES = (50, 100, 200, 300, 500)
JITTER_SCALE = 10                           # stored units per millisecond

CODE = "`lastSIPresponseNum`"


def answered_sql(alias: str = "") -> str:
    """SQL true for an answered call (NULL code: false)."""
    return f"{alias}{CODE} BETWEEN {ANSWERED[0]} AND {ANSWERED[1]}"


def user_failure_sql(alias: str = "") -> str:
    """SQL true for a failure that counts as NER-effective."""
    return f"{alias}{CODE} IN ({', '.join(map(str, NER_USER_CODES))})"


def effective_sql(alias: str = "") -> str:
    return f"({answered_sql(alias)} OR {user_failure_sql(alias)})"


def negated_sql(condition: str, alias: str = "") -> str:
    """The complement of a condition on the code, NULL codes included."""
    return f"({alias}{CODE} IS NULL OR NOT {condition})"


def is_answered(code: int | None) -> bool:
    return code is not None and ANSWERED[0] <= code <= ANSWERED[1]


def is_user_failure(code: int | None) -> bool:
    return code in NER_USER_CODES


def is_effective(code: int | None) -> bool:
    return is_answered(code) or is_user_failure(code)
