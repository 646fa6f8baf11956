"""The channel handshake as pure logic: hello, challenge, mutual password proofs.

Both sides prove they know ``server_password`` with an HMAC over both nonces, the sensor id
and the TLS exporter value of *this* connection (RFC 5705/8446 keying material), so a
proof seen on one connection is worthless on any other, and the password itself never
crosses the wire. The key is stretched with PBKDF2 so a captured proof is expensive to
attack offline.

The sensor proves first and the central second. Proving first leaks a proof to whoever
receives it; the sensor only talks to the centrals it was configured with (and pinned or
CA-verified ones when set), while anyone on the network can open a connection to a
central. So the central never answers an unauthenticated peer with a proof. The sensor
verifies the central's proof before it sends any CDR or packet.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as field_
from typing import Any

from voipmon.protocols import capabilities
from voipmon.protocols.wire import (
    MAX_INT,
    MAX_TIME,
    ProtocolError,
    field,
    is_number,
    number_field,
)

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})
NONCE_BYTES = 32
EXPORTER_LABEL = b"EXPORTER-voipmon-channel-binding"
EXPORTER_BYTES = 32
MODES = ("local", "mirror")
ID_SENSOR_RANGE = (1, 65535)

_PBKDF2_SALT = b"voipmon channel password v1"
_PBKDF2_ROUNDS = 100_000

# Rejection codes. The reason text goes to both logs verbatim.
BAD_PASSWORD = "bad_password"
CLOCK_SKEW = "clock_skew"
ID_OUT_OF_RANGE = "id_out_of_range"
ID_IN_USE = "id_in_use"
UNSUPPORTED_VERSION = "unsupported_version"
UNSUPPORTED_COMPRESSION = "unsupported_compression"
MALFORMED = "malformed"
# A rejection the sensor cannot fix by retrying; --exit-when-done gives up on them.
PERMANENT = frozenset({BAD_PASSWORD, ID_OUT_OF_RANGE, UNSUPPORTED_VERSION,
                       UNSUPPORTED_COMPRESSION, MALFORMED})


class Rejection(Exception):
    """The central refused the sensor; ``reason`` is for humans, ``code`` for programs."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "reason": self.reason}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Rejection:
        code = body.get("code")
        reason = body.get("reason")
        if not isinstance(code, str) or not isinstance(reason, str):
            raise ProtocolError("malformed REJECT message")
        return cls(code[:64], reason[:1000])


class CentralProofFailed(Exception):
    """The central did not prove it knows the password: nothing may be sent to it."""


@functools.lru_cache(maxsize=8)
def derive_key(password: str) -> bytes:
    """The HMAC key both sides derive from ``server_password``."""
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), _PBKDF2_SALT,
                               _PBKDF2_ROUNDS)


def make_proof(key: bytes, role: bytes, sensor_nonce: bytes, central_nonce: bytes,
               id_sensor: int, binding: bytes) -> bytes:
    """HMAC-SHA256 over the role, both nonces, the sensor id and the channel binding."""
    message = b"".join((
        b"voipmon-proof-v1\x00", role, b"\x00",
        len(sensor_nonce).to_bytes(2, "big"), sensor_nonce,
        len(central_nonce).to_bytes(2, "big"), central_nonce,
        id_sensor.to_bytes(4, "big"),
        len(binding).to_bytes(2, "big"), binding,
    ))
    return hmac.new(key, message, hashlib.sha256).digest()


SENSOR_ROLE = b"sensor"
CENTRAL_ROLE = b"central"
_HEX = re.compile(r"[0-9a-f]{1,128}")


def _hex_field(body: dict[str, Any], name: str, message: str, size: int | None) -> bytes:
    text = field(body, name, str, message)
    if not _HEX.fullmatch(text) or len(text) % 2 or (size and len(text) != 2 * size):
        raise ProtocolError(f"malformed {message} message: bad {name!r}")
    return bytes.fromhex(text)


def _text_field(body: dict[str, Any], name: str, message: str, limit: int) -> str:
    text = body.get(name, "")
    if not isinstance(text, str) or len(text) > limit or any(ord(c) < 32 for c in text):
        raise ProtocolError(f"malformed {message} message: bad {name!r} (text of at most "
                            f"{limit} characters, no control characters)")
    return text


@dataclass(frozen=True)
class Hello:
    """What a sensor says about itself when it connects."""

    id_sensor: int
    name: str
    version: str
    mode: str                  # "local" (CDRs) or "mirror" (raw packets)
    compression: str
    time: float                # the sensor's clock, UTC epoch seconds
    nonce: bytes
    instance: str              # random per sensor process: lets it take over its own stale session
    probe: bool = False        # a failback probe: authenticate, then close; registers nothing
    manager: str = ""          # the sensor's management address, host:port
    replay: bool = False       # the sensor replays a capture file (not live packets)
    analysis: dict[str, Any] = field_(default_factory=dict)  # mirroring: the sensor's
    #                            sipport/timeouts/savesip/savertp for the central's engine
    protocol: int = PROTOCOL_VERSION
    capabilities: dict[str, int] = field_(default_factory=dict)  # what it can do
    #                            (voipmon.protocols.capabilities)

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol, "id_sensor": self.id_sensor, "name": self.name,
            "version": self.version, "mode": self.mode, "compression": self.compression,
            "time": self.time, "nonce": self.nonce.hex(), "instance": self.instance,
            "probe": self.probe, "manager": self.manager, "replay": self.replay,
            "analysis": self.analysis, "capabilities": dict(self.capabilities),
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Hello:
        """Parse a hello whose protocol version is already known to be supported."""
        mode = field(body, "mode", str, "HELLO")
        if mode not in MODES:
            raise ProtocolError(f"malformed HELLO message: unknown mode {mode[:20]!r}")
        probe = body.get("probe", False)
        replay = body.get("replay", False)
        if not isinstance(probe, bool) or not isinstance(replay, bool):
            raise ProtocolError("malformed HELLO message: bad 'probe' or 'replay'")
        instance = _hex_field(body, "instance", "HELLO", None).hex()
        return cls(
            id_sensor=number_field(body, "id_sensor", "HELLO", -MAX_INT, MAX_INT, integer=True),
            name=_text_field(body, "name", "HELLO", 200),
            version=_text_field(body, "version", "HELLO", 64),
            mode=mode,
            compression=_text_field(body, "compression", "HELLO", 16),
            time=float(number_field(body, "time", "HELLO", 0.0, MAX_TIME)),
            nonce=_hex_field(body, "nonce", "HELLO", NONCE_BYTES),
            instance=instance,
            probe=probe,
            manager=_text_field(body, "manager", "HELLO", 200),
            replay=replay,
            analysis=_analysis_field(body.get("analysis", {})),
            protocol=body["protocol"],
            capabilities=capabilities.parse(body, "HELLO").to_json(),
        )


_TIMEOUTS = ("rtptimeout", "sipwithoutrtptimeout", "absolute_timeout")
_MAX_TIMEOUT = sys.float_info.max  # any finite number of seconds, as the config allows


def _analysis_field(value: Any) -> dict[str, Any]:
    """The hello's analysis settings, checked key by key (unknown keys are dropped)."""
    if not isinstance(value, dict):
        raise ProtocolError("malformed HELLO message: bad 'analysis'")
    out: dict[str, Any] = {}
    ports = value.get("sipport")
    if ports is not None:
        if (not isinstance(ports, list) or len(ports) > 10000 or not all(
                isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535
                for p in ports)):
            raise ProtocolError("malformed HELLO message: bad 'analysis.sipport'")
        out["sipport"] = ports
    for name in _TIMEOUTS:
        number = value.get(name)
        if number is not None:
            if not is_number(number, 1.0, _MAX_TIMEOUT):
                raise ProtocolError(f"malformed HELLO message: bad 'analysis.{name}'")
            out[name] = float(number)
    if "savesip" in value:
        if not isinstance(value["savesip"], bool):
            raise ProtocolError("malformed HELLO message: bad 'analysis.savesip'")
        out["savesip"] = value["savesip"]
    if "savertp" in value:
        if value["savertp"] not in ("yes", "no", "header"):
            raise ProtocolError("malformed HELLO message: bad 'analysis.savertp'")
        out["savertp"] = value["savertp"]
    # SIP that is not a call (sip-register, sip-options, ...)
    for name in _NONCALL_SWITCHES:
        if name in value:
            if value[name] not in ("no", "yes", "nodb"):
                raise ProtocolError(f"malformed HELLO message: bad 'analysis.{name}'")
            out[name] = value[name]
    for name, lowest in _NONCALL_SECONDS.items():
        if name in value:
            if not is_number(value[name], lowest, _MAX_TIMEOUT):
                raise ProtocolError(f"malformed HELLO message: bad 'analysis.{name}'")
            out[name] = float(value[name])
    if "sip_register_max_registers" in value:
        if not is_number(value["sip_register_max_registers"], 1, MAX_INT, integer=True):
            raise ProtocolError("malformed HELLO message: bad "
                                "'analysis.sip_register_max_registers'")
        out["sip_register_max_registers"] = value["sip_register_max_registers"]
    return out


_NONCALL_SWITCHES = ("sip_register", "sip_options", "sip_subscribe", "sip_notify",
                     "sip_message")
_NONCALL_SECONDS = {"sip_register_timeout": 0.1, "sip_register_state_timeout": 1.0}


def describe_skew(skew: float) -> str:
    """``skew`` = central clock - sensor clock, in words."""
    side = "behind" if skew > 0 else "ahead of"
    return f"the sensor's clock is {abs(skew):.1f} s {side} the central's"


class ServerHandshake:
    """The central's half: ``receive_hello`` -> challenge, ``receive_proof`` -> verified.

    Raises Rejection for anything the sensor should be told, ProtocolError for garbage.
    """

    def __init__(self, key: bytes, max_time_diff: float, seconds: Callable[[], float],
                 codecs: frozenset[str] | set[str],
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 skew_key: str = "client_server_connect_maximum_time_diff_s") -> None:
        self._key = key
        self._max_time_diff = max_time_diff
        self._skew_key = skew_key      # the setting a clock-skew refusal names
        self._seconds = seconds
        self._codecs = codecs
        self._random = random_bytes
        self.hello: Hello | None = None
        self.skew: float | None = None
        self._nonce = b""
        self.verified = False

    def receive_hello(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.hello is not None:
            raise ProtocolError("HELLO sent twice")
        protocol = body.get("protocol")
        if not is_number(protocol, 0, MAX_INT, integer=True):
            raise ProtocolError("malformed HELLO message: bad or missing 'protocol'")
        if protocol not in SUPPORTED_VERSIONS:
            supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
            raise Rejection(UNSUPPORTED_VERSION,
                            f"unsupported protocol version {protocol} (this central speaks "
                            f"{supported})")
        hello = Hello.from_json(body)
        low, high = ID_SENSOR_RANGE
        if not low <= hello.id_sensor <= high:
            raise Rejection(ID_OUT_OF_RANGE,
                            f"id_sensor {hello.id_sensor} is outside {low}..{high}")
        if hello.compression not in self._codecs:
            raise Rejection(UNSUPPORTED_COMPRESSION,
                            f"compression {hello.compression!r} is not supported (use one of "
                            f"{', '.join(sorted(self._codecs))})")
        now = self._seconds()
        self.skew = now - hello.time
        if abs(self.skew) > self._max_time_diff:
            raise Rejection(CLOCK_SKEW,
                            f"clock skew of {abs(self.skew):.1f} s exceeds {self._skew_key} "
                            f"= {self._max_time_diff:g} s ({describe_skew(self.skew)})")
        self.hello = hello
        self._nonce = self._random(NONCE_BYTES)
        return {"nonce": self._nonce.hex(), "time": now}

    def receive_proof(self, body: dict[str, Any], binding: bytes) -> None:
        """Check the sensor's proof; Rejection(BAD_PASSWORD) if it is wrong."""
        if self.hello is None or self.verified:
            raise ProtocolError("PROOF out of order")
        proof = _hex_field(body, "proof", "PROOF", 32)
        expected = make_proof(self._key, SENSOR_ROLE, self.hello.nonce, self._nonce,
                              self.hello.id_sensor, binding)
        if not hmac.compare_digest(proof, expected):
            raise Rejection(BAD_PASSWORD,
                            "bad password: the sensor's proof does not match server_password")
        self.verified = True

    def accept(self, binding: bytes, **extra: Any) -> dict[str, Any]:
        """The ACCEPT body with the central's own proof; only after a verified proof."""
        if not self.verified or self.hello is None:
            raise RuntimeError("accept() before the sensor's proof was verified")
        proof = make_proof(self._key, CENTRAL_ROLE, self.hello.nonce, self._nonce,
                           self.hello.id_sensor, binding)
        return {"proof": proof.hex(), **extra}


class ClientHandshake:
    """The sensor's half: ``hello`` -> ``receive_challenge`` -> ``receive_accept``."""

    def __init__(self, key: bytes, *, id_sensor: int, name: str, version: str, mode: str,
                 compression: str, instance: str, seconds: Callable[[], float],
                 probe: bool = False, manager: str = "", replay: bool = False,
                 analysis: dict[str, Any] | None = None,
                 capabilities: dict[str, int] | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 protocol: int = PROTOCOL_VERSION) -> None:
        self._key = key
        self._seconds = seconds
        self._random = random_bytes
        self._params = dict(id_sensor=id_sensor, name=name, version=version, mode=mode,
                            compression=compression, instance=instance, probe=probe,
                            manager=manager, replay=replay, analysis=analysis or {},
                            protocol=protocol, capabilities=dict(capabilities or {}))
        self._hello: Hello | None = None
        self._central_nonce: bytes | None = None
        self.central_time: float | None = None
        #: This clock minus the central's, as measured here: the midpoint of sending the
        #: HELLO and receiving the CHALLENGE against the central's time in the CHALLENGE,
        #: so the network delay cancels out (to within half of ``handshake_rtt``).
        self.skew: float | None = None
        self.handshake_rtt: float | None = None
        self.accepted = False

    @property
    def capabilities(self) -> capabilities.Capabilities:
        """What this sensor offers in its hello."""
        return capabilities.Capabilities(self._params["capabilities"])

    def hello(self) -> dict[str, Any]:
        self._hello = Hello(time=self._seconds(), nonce=self._random(NONCE_BYTES),
                            **self._params)
        return self._hello.to_json()

    def receive_challenge(self, body: dict[str, Any], binding: bytes) -> dict[str, Any]:
        """The PROOF body answering the central's challenge."""
        if self._hello is None or self._central_nonce is not None:
            raise ProtocolError("CHALLENGE out of order")
        self._central_nonce = _hex_field(body, "nonce", "CHALLENGE", NONCE_BYTES)
        self.central_time = float(number_field(body, "time", "CHALLENGE", 0.0, MAX_TIME))
        now = self._seconds()
        self.handshake_rtt = max(0.0, now - self._hello.time)
        self.skew = (self._hello.time + now) / 2 - self.central_time
        proof = make_proof(self._key, SENSOR_ROLE, self._hello.nonce, self._central_nonce,
                           self._hello.id_sensor, binding)
        return {"proof": proof.hex()}

    def receive_accept(self, body: dict[str, Any], binding: bytes) -> dict[str, Any]:
        """Verify the central's proof; CentralProofFailed if it does not know the password."""
        if self._hello is None or self._central_nonce is None or self.accepted:
            raise ProtocolError("ACCEPT out of order")
        try:
            proof = _hex_field(body, "proof", "ACCEPT", 32)
        except ProtocolError:
            raise CentralProofFailed("the central's ACCEPT carries no valid proof")
        expected = make_proof(self._key, CENTRAL_ROLE, self._hello.nonce, self._central_nonce,
                              self._hello.id_sensor, binding)
        if not hmac.compare_digest(proof, expected):
            raise CentralProofFailed(
                "the central failed the password proof (wrong server_password on the central, "
                "or someone in the middle)")
        self.accepted = True
        return body
