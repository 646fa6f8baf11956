"""Domain records: what the analysis emits, the queue and channel carry and the store keeps.

Each record type is a frozen dataclass whose class provides ``IRecordType``
(``interfaces.py``): its KIND, TABLE, VERSION, per-sensor key and checked wire form
(``codec.py``). ``kinds.py`` lists them all. The package depends on nothing else of
voipmon, so the engine, the queue, the channel and the store all depend on it and not on
each other.

- ``cdr.py``: Cdr and RtpStream (VoIPmonitor's ``cdr`` and ``cdr_rtp``);
- ``register.py``, ``sipmsg.py``, ``alert.py``: registrations, non-call SIP, alerts;
- ``keys.py``: stable keys (``make_cdr_uid``, ``stable_uid``) and ``callid_bytes``;
- ``times.py``: epoch seconds to and from ISO 8601 text.
"""
