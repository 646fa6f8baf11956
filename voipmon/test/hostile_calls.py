"""Calls whose SIP headers hold any bytes, and the whole path they take in a test.

``HostileCall`` is one SIP call (INVITE, 200, ACK, BYE, 200 over UDP) whose text fields are
bytes as an attacker would send them: not UTF-8, NUL, 4-byte characters, quotes,
backslashes, longer than any column. ``write_capture`` writes calls to a pcap;
``hostile_calls`` is the Hypothesis strategy of such call lists.

``WholePath`` runs the real path on one ``task.Clock``: a ``SensorService`` replays the
capture (local processing: engine -> durable queue -> channel; packet mirroring: buffer ->
channel -> the central's engine -> the central's CDR queue) to an in-memory central
(``test_sensor_service.Central``) that stores into the store it is given. For a real
``SqlStore`` on that Clock, ``InlineDatabase`` is the reactor its adbapi pools get: the
database work runs at once in the test's thread (real SQL on SQLite or MariaDB, no thread
hop, so no waiting on a real reactor).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st
from twisted.enterprise import adbapi
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from voipmon.config import load_sensor_config
from voipmon.test.callsupport import udp_frame
from voipmon.test.channel_support import write_frames
from voipmon.test.fakes_channel import fixed_binding
from voipmon.test.services import build_sensor

CRLF = b"\r\n"


@dataclasses.dataclass(frozen=True)
class HostileCall:
    """One call; every field is the raw bytes of a header's text."""

    callid: bytes
    from_display: bytes = b"Alice"
    from_user: bytes = b"alice"
    from_host: bytes = b"example.org"
    to_user: bytes = b"bob"
    to_host: bytes = b"example.com"
    ua_a: bytes = b"caller-phone/1.0"
    ua_b: bytes = b"callee-pbx/2.0"
    reason: bytes = b"OK"


def _message(first: bytes, call: HostileCall, cseq: bytes, to_tag: bytes,
             extra: tuple[bytes, ...]) -> bytes:
    to = b"<sip:" + call.to_user + b"@" + call.to_host + b">"
    lines = [first, b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-hostile",
             b'From: "' + call.from_display + b'" <sip:' + call.from_user + b"@" +
             call.from_host + b">;tag=caller-tag",
             b"To: " + to + (b";tag=" + to_tag if to_tag else b""),
             b"Call-ID: " + call.callid, b"CSeq: " + cseq, *extra, b"Content-Length: 0"]
    return CRLF.join(lines) + CRLF + CRLF


def call_messages(call: HostileCall) -> list[tuple[float, bool, bytes]]:
    """(seconds after the call's start, from the caller?, SIP payload) of the call."""
    # (the request line stays a request line: a blank in its URI would make it no SIP)
    invite = b"INVITE sip:bob@10.0.0.2 SIP/2.0"
    bye = b"BYE sip:bob@10.0.0.2 SIP/2.0"
    return [
        (0.0, True, _message(invite, call, b"1 INVITE", b"", (b"User-Agent: " + call.ua_a,))),
        (0.1, False, _message(b"SIP/2.0 200 " + call.reason, call, b"1 INVITE", b"callee",
                              (b"Server: " + call.ua_b,))),
        (0.2, True, _message(b"ACK sip:x@10.0.0.2 SIP/2.0", call, b"1 ACK", b"callee", ())),
        (5.0, True, _message(bye, call, b"2 BYE", b"callee", ())),
        (5.1, False, _message(b"SIP/2.0 200 OK", call, b"2 BYE", b"callee", ())),
    ]


def write_capture(path: str, calls: list[HostileCall], start: float = 1_700_000_000.0) -> str:
    """A pcap of ``calls`` over UDP 5060, one second apart, each between its own hosts."""
    records = []
    for n, call in enumerate(calls):
        caller, callee = f"10.1.{n // 250}.{n % 250 + 1}", f"10.2.{n // 250}.{n % 250 + 1}"
        for offset, from_caller, payload in call_messages(call):
            src, dst = (caller, callee) if from_caller else (callee, caller)
            records.append((start + n + offset, udp_frame(src, 5060, dst, 5060, payload)))
    return write_frames(path, records)


# -- what an attacker puts in a header ------------------------------------------------

SPECIAL = [b"\xff", b"\xfe\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
           b"\x00", "\U0001F600".encode(), "\U00010348".encode(), "ü".encode(), b'"', b"'",
           b"\\", b'\\"', b"\\udcff", b"<", b">", b";", b"@", b":", b"%00", b" ", b"\t"]
_piece = st.one_of(st.binary(max_size=12), st.text(max_size=6).map(str.encode),
                   st.sampled_from(SPECIAL),
                   st.integers(250, 1500).map(lambda n: b"L" * n))   # over every column
header_text = st.lists(_piece, max_size=4).map(
    lambda parts: b"".join(parts).replace(b"\r", b"").replace(b"\n", b""))
#: A Call-ID as the parser sees it: no line breaks, nothing to strip at its ends.
callid_text = header_text.map(bytes.strip).filter(bool)

hostile_call = st.builds(HostileCall, callid=callid_text, from_display=header_text,
                         from_user=header_text, from_host=header_text, to_user=header_text,
                         to_host=header_text, ua_a=header_text, ua_b=header_text,
                         reason=header_text)
hostile_calls = st.lists(hostile_call, min_size=1, max_size=3, unique_by=lambda c: c.callid)


# -- a real SqlStore on a Clock --------------------------------------------------------


class _InlineThreadPool:
    """What adbapi asks of a thread pool, the work done at once in the calling thread."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any, **kw: Any) -> None:
        try:
            result = f(*args, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class InlineDatabase:
    """The reactor a ``SqlStore`` gets in a test on a Clock: its pools run their work in
    the test's thread (real SQL), their times come from the Clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def seconds(self) -> float:
        return self.clock.seconds()

    def callWhenRunning(self, f: Any, *args: Any, **kw: Any) -> None:
        pool = getattr(f, "__self__", None)
        if isinstance(pool, adbapi.ConnectionPool):
            pool.threadpool = _InlineThreadPool()
        f(*args, **kw)

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        f(*args, **kw)

    def addSystemEventTrigger(self, *args: Any, **kw: Any) -> None:
        return None

    def removeSystemEventTrigger(self, trigger: Any) -> None:
        pass


# -- the whole path ----------------------------------------------------------------------


class WholePath:
    """A sensor replaying ``capture`` to ``central`` (a ``test_sensor_service.Central``),
    in ``mode`` ("local" or "mirror"), until it exits."""

    def __init__(self, central: Any, clock: Clock, spooldir: str, capture: str, mode: str,
                 id_sensor: int = 7) -> None:
        self.central = central
        self.clock = clock
        self.exits: list[tuple[int, str]] = []
        text = (f"id_sensor = {id_sensor}\nserver_destination = central\n"
                f"server_password = pw\nspooldir = {spooldir}\nmanagerport = 0\n"
                f"packetbuffer_sender = {'yes' if mode == 'mirror' else 'no'}\n")
        self.sensor = build_sensor(load_sensor_config("sensor.conf", text=text), None,
                                   read_pcap=capture, clock=clock,
                                   connect=lambda _d: central.pair.network,
                                   binding=fixed_binding,
                                   on_exit=lambda status, message: self.exits.append(
                                       (status, message)))

    def run(self, seconds: float = 10.0, step: float = 0.05) -> tuple[int, str]:
        """Start the sensor and move time until it exits; (status, message)."""
        self.sensor.startService()
        for _ in range(int(seconds / step)):
            if self.exits:
                break
            self.clock.advance(step)
            self.central.pair.flush()
        if not self.exits:
            raise AssertionError(f"the sensor did not finish in {seconds:g} s: "
                                 f"{self.sensor.sniffer_stat()}")
        return self.exits[0]

    def stop(self) -> None:
        """Stop the sensor and the central; nothing is left on the Clock."""
        if self.sensor.running:
            self.sensor.stopService()
        self.central.stop()
        self.clock.advance(30)
        self.central.pair.flush()
        leftover = self.clock.getDelayedCalls()
        if leftover:
            raise AssertionError(f"delayed calls left: {leftover}")
