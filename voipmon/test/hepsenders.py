"""Real HEP senders on loopback for tests: Debian's Kamailio (siptrace) relaying SIPp
calls, and sngrep replaying captures, with a plain collector for what they send.

``HepCollector`` listens on 127.0.0.1 (UDP and TCP, ephemeral ports) and keeps every
datagram, and every message of every TCP connection as cut by ``HepStreamFramer``.
``drained`` fires once everything a finished sender wrote has been read: it sends a marker
datagram to the collector's own UDP port, which arrives after everything queued before it;
``tcp_closed`` fires when a sender's connections are all closed.

``Kamailio`` runs ``kamailio -DD -E`` (foreground, log on stderr) on a generated
configuration in the test's directory (``-w`` working and ``-Y`` runtime directory there
too), on free loopback ports: a stateful proxy that record-routes and relays every request
to one SIPp UAS, with ``siptrace`` mirroring every message it receives and sends
(``trace_mode`` 1) as HEP to the collector. ``start`` fires when the first worker has run
its init route (a log line; its sockets are bound by then); ``stop`` sends SIGTERM to its
pid and fires when it has exited. ``run_sipp_calls`` runs SIPp's built-in UAC and UAS
through it (answered calls: INVITE, 100 from the proxy, 180, 200, ACK, BYE, 200).

``run_sngrep`` replays a capture with ``sngrep -I FILE -N -q -H udp:127.0.0.1:PORT`` (its
HOME in the test's directory, default configuration files ignored, an optional one with
``eep.send.id`` and ``eep.send.pass``) and fires with its exit code.

Every wait is on a process or socket event; the callers' trial timeouts bound them all.
"""

from __future__ import annotations

import os
import shutil
import signal
from typing import Any

from twisted.internet import defer, protocol

from voipmon.packet.hep import HepError, HepStreamFramer
from voipmon.test.common import missing_tool
from voipmon.test.live_support import ToolProcess, free_udp_port

HOST = "127.0.0.1"
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
_MARKER = b"voipmon-hep-collector-drained"
_READY = b"voipmon: kamailio ready"


def require_program(name: str, package: str, *extra_paths: str) -> str:
    """The program's path; skip, or fail in CI, when it (or a file it needs) is missing."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
    if path is None:
        raise missing_tool(f"{name} is not installed (Debian package {package})")
    for extra in extra_paths:
        if not os.path.exists(extra):
            raise missing_tool(f"{extra} is missing (Debian package {package})")
    return path


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self, collector: HepCollector) -> None:
        self.collector = collector

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        c = self.collector
        if data == _MARKER:
            waiting, c._drains = c._drains, []
            for d in waiting:
                d.callback(None)
        else:
            c.datagrams.append(data)


class _Stream(protocol.Protocol):
    def __init__(self, collector: HepCollector) -> None:
        self.collector = collector
        self.framer = HepStreamFramer(collector.tcp_messages.append)

    def connectionMade(self) -> None:
        self.collector.tcp_connections += 1
        self.collector._open += 1

    def dataReceived(self, data: bytes) -> None:
        try:
            self.framer.feed(data)
        except HepError as e:
            self.collector.tcp_errors.append(e)
            self.transport.loseConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        c = self.collector
        c._open -= 1
        if not c._open:
            waiting, c._closes = c._closes, []
            for d in waiting:
                d.callback(None)


class HepCollector:
    """What HEP senders send to 127.0.0.1: datagrams and TCP messages, kept raw."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.datagrams: list[bytes] = []
        self.tcp_messages: list[bytes] = []
        self.tcp_errors: list[HepError] = []
        self.tcp_connections = 0
        self._open = 0
        self._drains: list[defer.Deferred[None]] = []
        self._closes: list[defer.Deferred[None]] = []
        factory = protocol.Factory.forProtocol(lambda: _Stream(self))
        self._udp = reactor.listenUDP(0, _Datagrams(self), interface=HOST)
        self._tcp = reactor.listenTCP(0, factory, interface=HOST)
        self.udp_port: int = self._udp.getHost().port
        self.tcp_port: int = self._tcp.getHost().port

    def drained(self) -> defer.Deferred[None]:
        """Fires when every datagram sent to us before this call has been read."""
        d: defer.Deferred[None] = defer.Deferred()
        self._drains.append(d)
        self._udp.write(_MARKER, (HOST, self.udp_port))
        return d

    def tcp_closed(self) -> defer.Deferred[None]:
        """Fires when no sender's connection is open (at once if none is)."""
        if not self._open:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._closes.append(d)
        return d

    def stop(self) -> defer.Deferred[Any]:
        return defer.gatherResults([defer.maybeDeferred(self._udp.stopListening),
                                    defer.maybeDeferred(self._tcp.stopListening)])


def kamailio_config(sip_port: int, uas_port: int, hep_port: int, *, sip_transport: str = "udp",
                    hep_transport: str = "udp", hep_version: int = 3, capture_id: int = 4242,
                    auth_key: str | None = None, modules: str = KAMAILIO_MODULES) -> str:
    """A stateful proxy relaying to the UAS at ``uas_port`` over ``sip_transport``,
    mirroring all it receives and sends as HEP to ``hep_port`` over ``hep_transport``."""
    hep_uri = f"sip:{HOST}:{hep_port}" + (";transport=tcp" if hep_transport == "tcp" else "")
    auth = f'modparam("siptrace", "auth_key", "{auth_key}")\n' if auth_key else ""
    return f"""#!KAMAILIO
debug=2
log_stderror=yes
children=1
tcp_children=1
auto_aliases=no
listen=udp:{HOST}:{sip_port}
listen=tcp:{HOST}:{sip_port}
mpath="{modules}/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "xlog.so"
loadmodule "siptrace.so"
modparam("siptrace", "duplicate_uri", "{hep_uri}")
modparam("siptrace", "hep_mode_on", 1)
modparam("siptrace", "hep_version", {hep_version})
modparam("siptrace", "hep_capture_id", {capture_id})
modparam("siptrace", "trace_to_database", 0)
modparam("siptrace", "trace_on", 1)
modparam("siptrace", "trace_mode", 1)
{auth}
request_route {{
    if (!is_method("INVITE") && loose_route()) {{
        t_relay();
        exit;
    }}
    if (is_method("INVITE")) {{
        record_route();
    }}
    $du = "sip:{HOST}:{uas_port};transport={sip_transport}";
    t_relay();
}}

event_route[core:worker-one-init] {{
    xlog("L_ALERT", "{_READY.decode()}\\n");
}}
"""


class Kamailio:
    """``kamailio -DD -E`` on a generated configuration, in ``workdir``."""

    def __init__(self, reactor: Any, workdir: str, binary: str, hep_port: int,
                 **options: Any) -> None:
        self.reactor = reactor
        self.workdir = workdir
        self.binary = binary
        self.sip_port = free_udp_port()
        self.uas_port = free_udp_port()
        self.config = os.path.join(workdir, "kamailio.cfg")
        os.makedirs(workdir, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(kamailio_config(self.sip_port, self.uas_port, hep_port, **options))
        self.process: ToolProcess | None = None
        self._transport: Any = None

    def start(self) -> defer.Deferred[None]:
        self.process = ToolProcess("kamailio", marker=_READY)
        argv = [self.binary, "-DD", "-E", "-f", self.config, "-Y", self.workdir,
                "-w", self.workdir]
        self._transport = self.reactor.spawnProcess(self.process, argv[0], argv,
                                                     env=dict(os.environ), path=self.workdir)
        return self.process.ready

    def stop(self) -> defer.Deferred[Any]:
        """SIGTERM to its pid (its children go with it); fires with its exit code."""
        if self.process is None:
            return defer.succeed(None)
        if not self.process.ended.called:
            try:
                os.kill(self._transport.pid, signal.SIGTERM)
            except (OSError, TypeError):
                pass
        return self.process.ended

    def kill(self) -> defer.Deferred[Any]:
        """Cleanup after a failure: SIGKILL the process group if it still runs."""
        if self.process is None or self.process.ended.called:
            return defer.succeed(None)
        try:
            os.kill(self._transport.pid, signal.SIGKILL)
        except (OSError, TypeError):
            pass
        return self.process.ended


@defer.inlineCallbacks
def run_sipp_calls(reactor: Any, sipp: str, workdir: str, kamailio: Kamailio, calls: int,
                   transport: str = "udp") -> Any:
    """``calls`` answered calls from SIPp's UAC through ``kamailio`` to SIPp's UAS; fires
    with the UAC's port once both have exited with 0."""
    uac_port = free_udp_port()
    mode = ["-t", "t1"] if transport == "tcp" else []
    common = ["-i", HOST, "-m", str(calls), "-nostdin", *mode]
    uas = ToolProcess("sipp uas", marker=b"Scenario Screen")
    argv = [sipp, "-sn", "uas", "-p", str(kamailio.uas_port), *common]
    uas_t = reactor.spawnProcess(uas, sipp, argv, env=dict(os.environ), path=workdir,
                                 usePTY=True)
    uac = ToolProcess("sipp uac")
    try:
        yield uas.ready
        argv = [sipp, "-sn", "uac", f"{HOST}:{kamailio.sip_port}", "-p", str(uac_port),
                "-s", "bob", "-timeout", "60s", "-timeout_error", *common]
        reactor.spawnProcess(uac, sipp, argv, env=dict(os.environ), path=workdir)
        codes = yield defer.gatherResults([uac.ended, uas.ended], consumeErrors=True)
    finally:
        if not uas.ended.called:
            uas_t.signalProcess(signal.SIGKILL)
            yield uas.ended
    for proc, code in zip((uac, uas), codes, strict=True):
        if code != 0:
            raise AssertionError(f"{proc.name} exited with {code}: {proc.tail()}")
    return uac_port


@defer.inlineCallbacks
def run_sngrep(reactor: Any, sngrep: str, workdir: str, capture: str, hep_port: int,
               capture_id: int | None = None, password: str | None = None) -> Any:
    """Replay ``capture`` as HEP3 over UDP; fires with sngrep's exit code."""
    os.makedirs(workdir, exist_ok=True)
    argv = [sngrep, "-F", "-I", capture, "-N", "-q", "-H", f"udp:{HOST}:{hep_port}"]
    settings = []
    if capture_id is not None:
        settings.append(f"set eep.send.id {capture_id}")
    if password is not None:
        settings.append(f"set eep.send.pass {password}")
    if settings:
        config = os.path.join(workdir, "sngreprc")
        with open(config, "w") as f:
            f.write("\n".join(settings) + "\n")
        argv[2:2] = ["-f", config]
    proc = ToolProcess("sngrep")
    reactor.spawnProcess(proc, sngrep, argv, env={**os.environ, "HOME": workdir},
                         path=workdir)
    code = yield proc.ended
    if code != 0:
        raise AssertionError(f"sngrep exited with {code}: {proc.tail()}")
    return code
