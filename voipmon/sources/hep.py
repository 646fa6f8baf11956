"""HEP input: SIP, RTP and RTCP from proxies, SBCs and capture agents, as a packet source.

Kamailio (siptrace), OpenSIPS (proto_hep), FreeSWITCH, Asterisk (res_hep), heplify,
captagent and sngrep send what they see encapsulated in HEP (the HOMER encapsulation
protocol). ``HepSource`` listens for it on ``hep_bind_ip``/``hep_bind_port``, UDP and TCP on
the same port, and optionally TLS (TCP) on ``hep_tls_port`` with the sensor's certificate.
Every HEP message becomes the frame it describes (``voipmon.packet.synth``) and goes to the
sensor's sink like a sniffed frame, so CDRs, RTP quality, per-call pcaps and both channel
modes work unchanged. A sensor with only HEP input needs no interface and no root.

The pieces, wired by ``HepSource``:

- ``HepIntake`` (pure, no reactor): one HEP message as bytes -> ``decode_hep`` -> the
  password (``hep_password`` against the auth-key chunk 0x000e) and capture id checks
  (``hep_capture_id``) -> ``HepFrames`` -> ``sink.feed``. Malformed messages are counted by
  the decoder's reason and dropped; so are refused ones (``auth``, ``capture_id``).
  Time comes from the message's chunks, not the arrival: the engine's clock follows it.
  A message without a time (HEPv2 without its time header) is given the newest time seen
  plus the wall time elapsed since (the wall clock before any message), the way the sensor
  moves the engine's clock while the input is quiet.
- ``HepDatagramProtocol``: one datagram, one message, from an allowed sender.
- ``HepStreamProtocol``: a TCP (or TLS) connection, cut into messages by
  ``HepStreamFramer``, whose buffer is bounded (a partial message is at most 64 KiB, a
  gzip member ``MAX_STREAM_BUFFER``). Bytes that are not HEP end the connection (a stream
  cannot be resynchronised); the admission gate (``voipmon.protocols.gated``) bounds the
  connections that have not yet sent an accepted message, and drops those that send none
  within its deadline.
- ``SenderFilter``: the ``hep_allow`` list (addresses and CIDR networks; empty = any).
  With neither an allow-list nor a password, every sender is accepted and a warning is
  logged when the port is bound beyond loopback: an open HEP port lets anyone inject calls.

The source is an ``IPushProducer``: a sink with a bounded buffer (the mirroring uplink)
pauses it while full, which stops reading the sockets (a TCP sender then waits; the UDP
socket's kernel buffer fills and drops, as a wire does). ``counters()``: messages
received, decoded, framed, dropped by reason, ignored (LOG and other types) and by HEP
protocol type, and the TCP connections.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python import failure, usage
from zope.interface import implementer

from voipmon.config import SensorSettings
from voipmon.config.kinds import is_loopback
from voipmon.counters import Counters, family
from voipmon.packet.hep import MAX_PAYLOAD, HepError, HepStreamFramer, decode_hep
from voipmon.packet.synth import HepFrames
from voipmon.protocols import tls
from voipmon.protocols.admission import SECURED, AdmissionGate, AdmissionPolicy, Ticket
from voipmon.protocols.gated import IGated, gated
from voipmon.sources.interfaces import IFrameSink, ISource, SourceFactory, SourceRequest

log = Logger()

MAX_STREAM_BUFFER = 1 << 18       # bytes of one gzip member held per connection
UDP_RECEIVE_BUFFER = 8 << 20      # asked of the kernel (it caps it at net.core.rmem_max)
HEP_ADMISSION = AdmissionPolicy(capacity=256, per_source=64, hard_limit=1024, deadline=30.0)
_IGNORED = ("log", "type")        # HepFrames reasons that are not losses


class HepIntake:
    """HEP messages (bytes) into frames for ``sink``; see the module docstring.

    ``password`` (bytes, empty = none) must equal the auth-key chunk; ``capture_ids``
    (empty = any) must hold the capture id, or its value shifted right by 16 bits when the
    low 16 are zero (sngrep and sipgrep send ``htons(id)`` in the 32-bit chunk).
    ``seconds`` is the wall clock.
    """

    def __init__(self, sink: IFrameSink, seconds: Callable[[], float], *,
                 password: bytes = b"", capture_ids: Iterable[int] = (),
                 max_payload: int = MAX_PAYLOAD) -> None:
        self.sink = sink
        self.frames = HepFrames(sink.feed)
        self._seconds = seconds
        self.password = password
        self.capture_ids = frozenset(capture_ids)
        self.max_payload = max_payload
        self.received = 0
        self.decoded = 0
        self.sink_errors = 0
        self.dropped: Counter[str] = Counter()
        self.latest_ts: float | None = None
        self._latest_at = 0.0

    def message(self, data: bytes) -> bool:
        """One HEP message; True when it was accepted (framed, or counted and ignored)."""
        self.received += 1
        try:
            msg = decode_hep(data, self.max_payload)
        except HepError as e:
            self.dropped[e.reason] += 1
            return False
        self.decoded += 1
        if self.password and (msg[9] is None or not hmac.compare_digest(msg[9],
                                                                        self.password)):
            self.dropped["auth"] += 1
            return False
        ids = self.capture_ids
        if ids and msg[8] not in ids and (msg[8] & 0xFFFF or msg[8] >> 16 not in ids):
            self.dropped["capture_id"] += 1
            return False
        ts = msg[0]
        now = self._seconds()
        if ts is None:
            ts = now if self.latest_ts is None else \
                self.latest_ts + max(0.0, now - self._latest_at)
        elif self.latest_ts is None or ts >= self.latest_ts:
            self.latest_ts = ts
            self._latest_at = now
        try:
            self.frames.feed(msg, ts)
        except Exception:
            self.sink_errors += 1
            log.failure("HEP: the sink failed on a message")
        return True

    def refused(self, reason: str) -> None:
        """A message (or connection) refused before decoding: ``not_allowed``..."""
        self.dropped[reason] += 1

    def counters(self) -> Counters:
        synth = self.frames.stats
        dropped = Counter(self.dropped)
        ignored: Counter[str] = Counter()
        for reason, count in synth.dropped.items():
            (ignored if reason in _IGNORED else dropped)[reason] += count
        return {"received": self.received, "decoded": self.decoded,
                "frames": synth.frames, "sink_errors": self.sink_errors,
                "dropped": sum(dropped.values()), "connections": len(self.frames),
                **family("dropped", dropped), **family("ignored", ignored),
                **family("by_type", synth.by_type)}


class SenderFilter:
    """Which senders may send HEP: addresses and networks, or anyone when empty."""

    def __init__(self, allowed: Sequence[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(a, strict=False) for a in allowed)
        self._seen: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def allows(self, host: str) -> bool:
        if not self.networks:
            return True
        known = self._seen.get(host)
        if known is None:
            if len(self._seen) >= 4096:
                self._seen.clear()
            known = self._seen[host] = self._check(host)
        return known

    def _check(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)


class HepDatagramProtocol(protocol.DatagramProtocol):
    """HEP over UDP: each datagram one message."""

    def __init__(self, intake: HepIntake, senders: SenderFilter) -> None:
        self.intake = intake
        self.senders = senders

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self.senders and not self.senders.allows(addr[0]):
            self.intake.refused("not_allowed")
            return
        self.intake.message(data)


@implementer(IGated, IHandshakeListener)
class HepStreamProtocol(protocol.Protocol):
    """HEP over a TCP or TLS connection; see the module docstring."""

    admission: Ticket | None = None

    def __init__(self, source: HepSource) -> None:
        self.source = source
        self.framer: HepStreamFramer | None = None
        self.peer = "?"

    def connectionMade(self) -> None:
        source = self.source
        self.peer = source.peer_host(self.transport)
        if source.senders and not source.senders.allows(self.peer):
            source.streams["refused"] += 1
            source.intake.refused("not_allowed")
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.framer = HepStreamFramer(self._message, max_buffer=MAX_STREAM_BUFFER,
                                      max_payload=source.intake.max_payload)
        source.streams["opened"] += 1
        source.connections.add(self)
        if source.paused:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def handshakeCompleted(self) -> None:
        if self.admission is not None:
            self.admission.progress(SECURED)

    def _message(self, data: bytes) -> None:
        if self.source.intake.message(data) and self.admission is not None \
                and self.admission.waiting:
            self.admission.done()

    def dataReceived(self, data: bytes) -> None:
        if self.framer is None:
            return
        try:
            self.framer.feed(data)
        except HepError as e:
            self.framer = None
            source = self.source
            source.streams["garbage"] += 1
            source.intake.refused(f"stream_{e.reason}")
            log.warn("HEP over TCP from {peer}: {problem}; connection closed",
                     peer=self.peer, problem=str(e))
            self.transport.loseConnection()

    def connectionLost(self, reason: failure.Failure = protocol.connectionDone) -> None:
        self.framer = None
        self.source.connections.discard(self)


@implementer(ISource, IPushProducer)
class HepSource(service.Service):
    """HEP on UDP and TCP of ``port`` (and TLS on ``tls_port``) at ``host``, into ``sink``.

    ``port = 0`` picks a free port for both (tests, benchmarks): ``port`` is the one
    bound once started. ``certificate`` gives the TLS listener's certificate when it
    starts (the sensor's, from the spool).
    """

    live = True
    error = None

    def __init__(self, sink: IFrameSink, reactor: Any, *, host: str = "127.0.0.1",
                 port: int = 0, tls_port: int | None = None,
                 certificate: Callable[[], tls.ServerCertificate] | None = None,
                 password: str = "", capture_ids: Iterable[int] = (),
                 allow: Sequence[str] = (), clock: IReactorTime | None = None,
                 udp: bool = True, tcp: bool = True) -> None:
        self.sink = sink
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.host = host
        self.port = port
        self.tls_port = tls_port
        self.certificate = certificate
        self.udp, self.tcp = udp, tcp
        self.senders = SenderFilter(allow)
        self.intake = HepIntake(sink, self.clock.seconds, password=password.encode(),
                                capture_ids=capture_ids)
        self.name = f"hep {host}:{port}"
        self.done: defer.Deferred[int] = defer.Deferred()   # a listener has no end
        self.paused = False
        self.connections: set[HepStreamProtocol] = set()
        self.streams: Counter[str] = Counter()
        self.tls_options: Any = None
        self._udp_port: Any = None
        self._listening: list[Any] = []
        self._gates: list[AdmissionGate] = []

    # -- listening -------------------------------------------------------------------------

    def peer_host(self, transport: Any) -> str:
        host = getattr(transport.getPeer(), "host", None)
        return host if isinstance(host, str) else "?"

    def _stream_factory(self, label: str, tls_options: Any = None) -> Any:
        gate = AdmissionGate(label, self.clock, HEP_ADMISSION)
        self._gates.append(gate)
        factory = protocol.Factory.forProtocol(lambda: HepStreamProtocol(self))
        factory.noisy = False
        return gated(gate, factory, tls_options)

    def listen(self) -> None:
        """Bind every port (before privileges are dropped); ``CannotListenError`` if one
        cannot be bound, after closing those that were."""
        if self._listening:
            return
        try:
            self._bind()
        except Exception:
            for port in self._listening:
                port.stopListening()
            self._listening, self._udp_port = [], None
            raise
        self.name = f"hep {self.host}:{self.port}"
        where = f"{self.host}:{self.port}"
        if self.tls_port is not None:
            where += f", TLS on {self.tls_port}"
        log.info("HEP input listening on {where} ({transports})", where=where,
                 transports="+".join(t for t, on in (("UDP", self.udp), ("TCP", self.tcp))
                                     if on))
        if not self.senders and not self.intake.password and not is_loopback(self.host):
            log.warn("HEP port {host}:{port} accepts every sender: anyone who can reach it can "
                     "inject calls; set hep_allow or hep_password", host=self.host,
                     port=self.port)

    def _bind(self) -> None:
        tries = 20 if self.port == 0 and self.udp and self.tcp else 1
        for attempt in range(tries):
            tcp = None
            if self.tcp:
                tcp = self.reactor.listenTCP(self.port, self._stream_factory(
                    f"HEP port {self.port}"), interface=self.host)
            port = tcp.getHost().port if tcp is not None else self.port
            try:
                if self.udp:
                    self._udp_port = self.reactor.listenUDP(
                        port, HepDatagramProtocol(self.intake, self.senders),
                        interface=self.host, maxPacketSize=65535)
                    _grow_receive_buffer(self._udp_port)
                    port = self._udp_port.getHost().port
            except error.CannotListenError:
                if tcp is not None:
                    tcp.stopListening()
                if attempt + 1 == tries:
                    raise
                continue
            if tcp is not None:
                self._listening.append(tcp)
            if self._udp_port is not None:
                self._listening.append(self._udp_port)
            self.port = port
            break
        if self.tls_port is not None:
            if self.certificate is None:
                raise usage.UsageError("hep_tls_port: no certificate to listen with")
            self.tls_options = self.certificate().options()
            port = self.reactor.listenTCP(self.tls_port, self._stream_factory(
                f"HEP TLS port {self.tls_port}", self.tls_options), interface=self.host)
            self._listening.append(port)
            self.tls_port = port.getHost().port

    def privilegedStartService(self) -> None:
        try:
            self.listen()
        except (error.CannotListenError, usage.UsageError) as exc:
            log.critical("cannot listen for HEP: {reason}", reason=str(exc))
            raise SystemExit(f"voipmon-sensor: cannot listen for HEP: {exc}")
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        self.listen()
        service.Service.startService(self)

    def stopService(self) -> defer.Deferred[Any]:
        service.Service.stopService(self)
        ports, self._listening, self._udp_port = self._listening, [], None
        for conn in list(self.connections):
            conn.transport.loseConnection()  # type: ignore[union-attr]
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    # -- flow control: a bounded sink holds the sockets while it is full ---------------

    def pauseProducing(self) -> None:
        if self.paused:
            return
        self.paused = True
        if self._udp_port is not None:
            self._udp_port.stopReading()
        for conn in self.connections:
            conn.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        if not self.paused:
            return
        self.paused = False
        if self._udp_port is not None:
            self._udp_port.startReading()
        for conn in self.connections:
            conn.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.stopService()

    # -- counters --------------------------------------------------------------------------

    def counters(self) -> Counters:
        return {**self.intake.counters(), "tcp_open": len(self.connections),
                **family("tcp", self.streams)}

    def stats(self) -> dict[str, object]:
        c = self.counters()
        return {"name": self.name, "packets": c["frames"], **c}


def _grow_receive_buffer(port: Any) -> None:
    sock = port.getHandle()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
    except OSError:
        pass


def capture_ids(settings: SensorSettings) -> tuple[int, ...]:
    """``hep_capture_id`` as numbers; a ConfigError naming the key if one is not."""
    out = []
    for text in settings.hep.hep_capture_id:
        try:
            value = int(text, 0)
        except ValueError:
            value = -1
        if not 0 <= value < 1 << 32:
            raise settings.error("hep_capture_id", f"{text!r} is not a capture id",
                                 "numbers 0..4294967295")
        out.append(value)
    return tuple(out)


def from_settings(settings: SensorSettings, sink: IFrameSink, reactor: Any,
                  clock: IReactorTime | None = None) -> HepSource:
    hep = settings.hep
    try:
        SenderFilter(hep.hep_allow)
    except ValueError as exc:
        raise settings.error("hep_allow", str(exc), "IP addresses or networks (CIDR)")
    spooldir = settings.spool.spooldir

    def certificate() -> tls.ServerCertificate:
        try:
            return tls.load_or_create(spooldir)
        except (tls.CertificateError, OSError) as exc:
            raise usage.UsageError(f"spooldir = {spooldir}: cannot keep the HEP TLS port's "
                                   f"certificate in it: {exc}")

    return HepSource(sink, reactor, host=hep.hep_bind_ip, port=hep.hep_bind_port,
                     tls_port=hep.hep_tls_port or None, certificate=certificate,
                     password=hep.hep_password, capture_ids=capture_ids(settings),
                     allow=hep.hep_allow, clock=clock)


def _wanted(request: SourceRequest) -> bool:
    return request.read_pcap is None and bool(request.settings.hep.hep_bind_port)


def _build(request: SourceRequest, sink: IFrameSink) -> ISource:
    return from_settings(request.settings, sink, request.reactor, request.clock)


#: ``hep_bind_port = ...``: HEP from proxies and capture agents.
FACTORY = SourceFactory("hep", _wanted, _build)
