"""HEP input: SIP, RTP and RTCP from proxies, SBCs and capture agents, as a packet source.

Kamailio (siptrace), OpenSIPS (proto_hep), FreeSWITCH, Asterisk (res_hep), heplify,
captagent and sngrep send what they see encapsulated in HEP (the HOMER encapsulation
protocol). ``HepSource`` listens for it on ``hep_bind_ip``/``hep_bind_port``, UDP and TCP on
the same port, and optionally TLS (TCP) on ``hep_tls_port`` with the sensor's certificate.
Every HEP message becomes the frame it describes (``voipmon.packet.synth``) and goes to the
sensor's sink like a sniffed frame, so CDRs, RTP quality, per-call pcaps and both channel
modes work unchanged. A sensor with only HEP input needs no interface and no root.

The pieces, wired by ``HepSource``:

- ``HepIntake`` (``voipmon.sources.hepintake``, pure, no reactor): one HEP message as
  bytes -> ``decode_hep`` -> the password (``hep_password`` against the auth-key chunk
  0x000e) and capture id checks (``hep_capture_id``) -> ``HepFrames`` -> the batch of the
  read in progress (``voipmon.sources.batch``, as live capture does), handed to the sink
  in one ``feed_all`` when the read is done. Malformed messages are counted by the decoder's
  reason and dropped; so are refused ones (``auth``, ``capture_id``).
  Time comes from the message's chunks, not the arrival: the engine's clock follows it.
  A message without a time (HEPv2 without its time header) is given the newest time seen
  plus the wall time elapsed since (the wall clock before any message), the way the sensor
  moves the engine's clock while the input is quiet. A message timed more than
  ``hep_max_future`` seconds ahead of the wall clock (a sender whose clock is wrong) gets
  that time too, and is counted (``clamped.future``): taken as sent, it would move the
  engine's clock forward and time out every open call.
- ``HepDatagramProtocol`` on a ``HepUdpPort``: one datagram, one message, from an allowed
  sender; the datagrams of one read of the socket are one batch. The socket asks the
  kernel for ``hep_udp_rcvbuf`` MB of receive buffer and warns when granted less (the
  kernel caps it at ``net.core.rmem_max``).
- ``HepStreamProtocol``: a TCP (or TLS) connection, cut into messages by
  ``HepStreamFramer``, whose buffer is bounded (a partial message is at most 64 KiB, a
  gzip member ``MAX_STREAM_BUFFER``). Bytes that are not HEP end the connection (a stream
  cannot be resynchronised); the admission gate (``voipmon.protocols.gated``) bounds the
  connections that have not yet sent an accepted message, and drops those that send none
  within its deadline.
- ``SenderFilter`` (``hepintake`` too): the ``hep_allow`` list (addresses and CIDR
  networks; empty = any).
  With neither an allow-list nor a password, every sender is accepted and a warning is
  logged when the port is bound beyond loopback: an open HEP port lets anyone inject calls.

The source is an ``IPushProducer``: a sink with a bounded buffer (the mirroring uplink)
pauses it while full, which stops reading the sockets (a TCP sender then waits; the UDP
socket's kernel buffer fills and drops, as a wire does). ``counters()``: messages
received, decoded, framed, dropped by reason, ignored (LOG and other types), clamped by
reason and by HEP protocol type, the TCP connections and the UDP receive buffer granted.
"""

from __future__ import annotations

import socket
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, protocol, udp
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python import failure, usage
from zope.interface import implementer

from voipmon.config import SensorSettings
from voipmon.config.kinds import is_loopback
from voipmon.counters import Counters, family
from voipmon.packet.hep import HepError, HepStreamFramer
from voipmon.protocols import tls
from voipmon.protocols.admission import SECURED, AdmissionGate, AdmissionPolicy, Ticket
from voipmon.protocols.gated import IGated, gated
from voipmon.sources.hepintake import MAX_FUTURE, HepIntake, SenderFilter
from voipmon.sources.interfaces import IFrameSink, ISource, SourceFactory, SourceRequest

log = Logger()

MAX_STREAM_BUFFER = 1 << 18       # bytes of one gzip member held per connection
UDP_RECEIVE_BUFFER = 8 << 20      # asked of the kernel (it caps it at net.core.rmem_max)
HEP_ADMISSION = AdmissionPolicy(capacity=256, per_source=64, hard_limit=1024, deadline=30.0)


class HepDatagramProtocol(protocol.DatagramProtocol):
    """HEP over UDP: each datagram one message; the datagrams of one read (``readDone``)
    go to the sink as one batch."""

    def __init__(self, intake: HepIntake, senders: SenderFilter) -> None:
        self.intake = intake
        self.senders = senders

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self.senders and not self.senders.allows(addr[0]):
            self.intake.refused("not_allowed")
            return
        self.intake.take(data)

    def readDone(self) -> None:
        self.intake.deliver()


class HepUdpPort(udp.Port):
    """Twisted's UDP port, which reads up to ``maxThroughput`` bytes of datagrams a turn;
    when a read is done the protocol's ``readDone`` hands them over as one batch."""

    def doRead(self) -> None:
        try:
            super().doRead()
        finally:
            self.protocol.readDone()


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
        if self.source.intake.take(data) and self.admission is not None \
                and self.admission.waiting:
            self.admission.done()

    def dataReceived(self, data: bytes) -> None:
        """One read: its messages go to the sink as one batch."""
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
        finally:
            self.source.intake.deliver()

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
                 udp: bool = True, tcp: bool = True,
                 udp_rcvbuf: int = UDP_RECEIVE_BUFFER,
                 max_future: float = MAX_FUTURE) -> None:
        self.sink = sink
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.host = host
        self.port = port
        self.tls_port = tls_port
        self.certificate = certificate
        self.udp, self.tcp = udp, tcp
        self.udp_rcvbuf = udp_rcvbuf
        self.udp_rcvbuf_granted = 0
        self.senders = SenderFilter(allow)
        self.intake = HepIntake(sink, self.clock.seconds, password=password.encode(),
                                capture_ids=capture_ids, max_future=max_future)
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
                    self._udp_port = HepUdpPort(
                        port, HepDatagramProtocol(self.intake, self.senders),
                        interface=self.host, maxPacketSize=65535, reactor=self.reactor)
                    self._udp_port.startListening()
                    self.udp_rcvbuf_granted = grow_receive_buffer(self._udp_port.getHandle(),
                                                                  self.udp_rcvbuf)
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
                "udp_rcvbuf": self.udp_rcvbuf_granted, **family("tcp", self.streams)}

    def stats(self) -> dict[str, object]:
        c = self.counters()
        return {"name": self.name, "packets": c["frames"], **c}


def grow_receive_buffer(sock: socket.socket, wanted: int) -> int:
    """Ask the kernel for a ``wanted``-byte receive buffer on ``sock``; the bytes granted.
    Linux grants at most ``net.core.rmem_max`` (and reports twice what it grants, for its
    bookkeeping); less than asked is logged as a warning naming the sysctl to raise."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError as exc:
        log.warn("HEP over UDP: cannot set the receive buffer to {wanted} bytes: {reason}",
                 wanted=wanted, reason=str(exc))
        return 0
    if sys.platform.startswith("linux"):
        granted //= 2
    if granted < wanted:
        log.warn("HEP over UDP: asked the kernel for a {wanted}-byte receive buffer "
                 "(hep_udp_rcvbuf), it granted {granted}: bursts of UDP HEP beyond that are "
                 "lost. Raise net.core.rmem_max (sysctl -w net.core.rmem_max={wanted}, and in "
                 "/etc/sysctl.d to keep it)", wanted=wanted, granted=granted)
    return granted


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
                     allow=hep.hep_allow, clock=clock, udp_rcvbuf=hep.hep_udp_rcvbuf << 20,
                     max_future=hep.hep_max_future)


def _wanted(request: SourceRequest) -> bool:
    return request.read_pcap is None and bool(request.settings.hep.hep_bind_port)


def _build(request: SourceRequest, sink: IFrameSink) -> ISource:
    return from_settings(request.settings, sink, request.reactor, request.clock)


#: ``hep_bind_port = ...``: HEP from proxies and capture agents.
FACTORY = SourceFactory("hep", _wanted, _build)

__all__ = ["FACTORY", "HepDatagramProtocol", "HepIntake", "HepSource", "HepStreamProtocol",
           "HepUdpPort", "SenderFilter", "capture_ids", "from_settings", "grow_receive_buffer"]
