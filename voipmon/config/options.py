"""The option table: the one source of truth for every configuration key.

Each ``Option`` says its name (as VoIPmonitor spells it), how its text is parsed (its
``Kind``, hence its Python type), its default, which roles read it (sensor, central or
both), the settings group it belongs to (the component that reads it), a one-line doc and
the longer note conf/ shows above it. ``Heading`` entries start the sections of conf/.

From this table come the typed settings dataclasses (``voipmon.config.settings``), the
example configurations in conf/ and docs/configuration.md: ``python -m voipmon.config``
writes them, and a test checks that the files in the tree are what it writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from voipmon.config.kinds import (
    PORT,
    Boolean,
    Choice,
    DestinationList,
    HostPort,
    Integer,
    Kind,
    Number,
    PortList,
    Text,
    TextList,
)

SENSOR = frozenset({"sensor"})
CENTRAL = frozenset({"central"})
BOTH = SENSOR | CENTRAL
ROLES = ("sensor", "central")

DEFAULT_SERVER_PORT = 60024
DEFAULT_MANAGER_PORT = 5029


@dataclass(frozen=True)
class Group:
    """A settings dataclass: the options one component reads (``attr`` on the role's
    settings). A group of both roles is one class, the same on each side."""

    roles: frozenset[str]
    attr: str
    name: str
    doc: str


@dataclass(frozen=True)
class Option:
    name: str
    kind: Kind
    default: object
    roles: frozenset[str]
    group: str
    doc: str
    required: bool = False
    #: conf/'s comment above the key ("" continues the paragraph of the key before it; a
    #: newline starts a new line); a mapping gives each role its own text.
    note: str | Mapping[str, str] = ""
    #: shown uncommented in conf/ (a value to edit) instead of the commented default
    example: str | None = None

    def note_for(self, role: str) -> str:
        return self.note if isinstance(self.note, str) else self.note.get(role, "")

    @property
    def attr(self) -> str:
        """The settings field: the name with ``_`` for ``-`` (VoIPmonitor spells many keys
        with hyphens, ``sip-register``)."""
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class Heading:
    """A section of conf/, titled per role."""

    titles: Mapping[str, str]


GROUPS: tuple[Group, ...] = (
    Group(SENSOR, "channel", "ChannelClientSettings",
          "The sensor's channel to its centrals: who it is, where it sends, how it proves "
          "and trusts (the uplink, its TLS endpoints and the handshake)."),
    Group(SENSOR, "mirroring", "MirroringSettings",
          "Raw packets held for a central (the mirroring uplink, the legacy mirror sender)."),
    Group(SENSOR, "capture", "CaptureSettings",
          "Live capture on interfaces (the live packet source)."),
    Group(SENSOR, "hep", "HepSettings",
          "HEP3 input from SIP proxies, SBCs and capture agents (the HEP packet source)."),
    Group(SENSOR, "analysis", "AnalysisSettings",
          "The call engine: SIP ports, what goes into each call's pcap, call timeouts. A "
          "mirroring sensor sends them to the central's engine in its hello."),
    Group(SENSOR, "manager", "ManagerSettings", "The sensor's management port."),
    Group(BOTH, "spool", "SpoolSettings",
          "The spool directory and its retention (pcaps, queues, state)."),
    Group(CENTRAL, "channel", "ChannelServerSettings",
          "The central's listener for sensors: address, password, certificate, clock skew."),
    Group(CENTRAL, "legacy_mirror", "MirrorReceiverSettings",
          "The deprecated legacy mirror receiver."),
    Group(CENTRAL, "store", "StoreSettings",
          "The database (MySQL/MariaDB or embedded SQLite) and its retention."),
    Group(CENTRAL, "http", "HttpSettings", "The HTTP API and web page."),
)

Entry = Option | Heading

TABLE: tuple[Entry, ...] = (
    Heading({"sensor": "identity and the channel to the central",
             "central": "sensors' channel"}),
    Option("id_sensor", Integer(1, 65535), None, SENSOR, "channel",
           "Unique id of this sensor (1..65535), stored in cdr.id_sensor.",
           required=True, example="1",
           note="Unique id of this sensor, 1..65535 (required). Stored in cdr.id_sensor; two "
                "sensors connected at the same time may not share it."),
    Option("name_sensor", Text(), "", SENSOR, "channel",
           "Human name of this sensor shown by the central (default: 'sensor N').",
           note='Human name shown by the central (default: "sensor N").'),
    Option("server_destination", DestinationList(), (), SENSOR, "channel",
           "Centrals to send to, tried in order for failover: host, host:port or [v6]:port.",
           required=True, example="127.0.0.1",
           note="Centrals to send to (required), tried in listed order on every (re)connect: "
                "the first that answers wins, and while on a backup the sensor keeps probing "
                "the first and fails back. Entries are host, host:port, or [IPv6]:port, "
                "separated by commas or semicolons."),
    Option("server_destination_port", PORT, DEFAULT_SERVER_PORT, SENSOR, "channel",
           "Port of every server_destination entry that gives none.",
           note="Port of every server_destination entry that gives none."),
    Option("server_bind", Text(), "", CENTRAL, "channel",
           "Address the central listens on for sensors (0.0.0.0 or :: for all).",
           required=True, example="0.0.0.0",
           note="Address to accept sensors on (required): 0.0.0.0 or :: for every interface."),
    Option("server_bind_port", PORT, DEFAULT_SERVER_PORT, CENTRAL, "channel",
           "Port the central listens on for sensors."),
    Option("server_password", Text(allow_empty=False), None, BOTH, "channel",
           "Shared secret; both sides prove they know it; it never crosses the wire.",
           required=True, example="change-me",
           note={"sensor": "Shared secret (required, same as the central's). Both sides prove "
                           "they know it with an HMAC bound to the TLS session; it never "
                           "crosses the wire and is never logged.",
                 "central": "Shared secret (required, same as the sensors'). Never crosses "
                            "the wire, never logged."}),
    Option("packetbuffer_sender", Boolean(), False, SENSOR, "channel",
           "no: analyse here and send CDRs; yes: mirror raw packets to the central.",
           note="no: analyse calls here, keep pcaps in this spool, send CDRs (local "
                "processing).\nyes: send raw packets to the central, which analyses them "
                "(packet mirroring)."),
    Option("mirror_destination", HostPort(), None, SENSOR, "mirroring",
           "Deprecated legacy mirroring: send raw packets over plain TCP to this ip:port.",
           note="DEPRECATED legacy mirroring, as in older VoIPmonitor releases: forward every "
                "captured packet over plain, unencrypted TCP to a central's mirror_bind "
                "(ip:port), which analyses them. No CDRs are made here and "
                "server_destination may be left out. The packets cross the network in clear "
                "(the password proof only keeps strangers from feeding the receiver); use "
                "packetbuffer_sender = yes, which mirrors over the TLS channel, instead. Not "
                "wire-compatible with VoIPmonitor's own sender or receiver."),
    Option("server_type_compress", Choice("zstd", "gzip", "lzo", "none",
                                          aliases={"no": "none", "zip": "gzip"}),
           "zstd", SENSOR, "channel", "Channel compression: zstd, gzip, lzo or none.",
           note="Channel compression: zstd, gzip, lzo or none (VoIPmonitor's \"no\" and "
                "\"zip\" work too)."),
    Option("server_certificate_sha256", Text(), "", SENSOR, "channel",
           "Pin the central's TLS certificate by its SHA-256 fingerprint (hex, colons optional).",
           note="How to trust the central's TLS certificate. Pin its SHA-256 fingerprint (the "
                "central logs it at start), or verify it against a CA file with hostname "
                "checking. With neither, the mutual password proof still authenticates the "
                "central."),
    Option("server_ca_file", Text(), "", SENSOR, "channel",
           "Verify the central's certificate against this CA file, with hostname checking."),
    Option("failback_probe_interval", Number(lo=1.0), 30.0, SENSOR, "channel",
           "Seconds between probes of the primary central while connected to a backup.",
           note="Seconds between probes of the first central while connected to a backup."),
    Option("tls_certificate", Text(), "", CENTRAL, "channel",
           "PEM certificate chain for the channel; empty = self-signed, kept in spooldir.",
           note="TLS certificate chain and key (PEM). Empty: a self-signed certificate is made "
                "on first start, kept in <spooldir>/state/, and its SHA-256 fingerprint is "
                "logged for pinning."),
    Option("tls_private_key", Text(), "", CENTRAL, "channel",
           "PEM private key for tls_certificate."),
    Option("client_server_connect_maximum_time_diff_s", Number(lo=0.0), 2.0, CENTRAL,
           "channel",
           "Largest clock difference (seconds) allowed between a sensor and the central.",
           note="Largest clock difference, in seconds, allowed between a sensor and this "
                "central."),
    Option("mirror_bind", HostPort(), None, CENTRAL, "legacy_mirror",
           "Deprecated legacy mirroring: receive raw packets from mirror_destination senders.",
           note="DEPRECATED legacy mirroring, as in older VoIPmonitor releases: accept raw "
                "packets over plain, unencrypted TCP on this ip:port from sensors that set "
                "mirror_destination, and analyse them here (one call engine per sensor). "
                "Senders must prove server_password and have a clock within "
                "mirror_connect_maximum_time_diff_s seconds of this central's. Prefer "
                "packetbuffer_sender = yes on the sensors, which mirrors over the TLS "
                "channel."),
    Option("mirror_connect_maximum_time_diff_s", Number(lo=0.0), 2.0, CENTRAL,
           "legacy_mirror",
           "Largest clock difference (seconds) allowed for a legacy mirror sender."),

    Heading({"sensor": "capture and analysis"}),
    Option("interface", TextList(), (), SENSOR, "capture",
           "Interfaces to capture on (comma list, or 'any'); ignored with --read-pcap.",
           note='Interfaces to capture on: a list, or "any". Ignored with --read-pcap.'),
    Option("sipport", PortList(), (5060,), SENSOR, "analysis",
           "SIP ports (UDP and TCP); repeat the key or list several, ranges allowed.",
           note="SIP ports, UDP and TCP. Repeat the key or list several; ranges like "
                "5060-5070 work."),
    Option("filter", Text(), "", SENSOR, "capture",
           "Extra BPF filter ANDed with the SIP/RTP filter built from sipport.",
           note="Extra BPF filter, ANDed with the SIP/RTP filter built from sipport."),
    Option("savesip", Boolean(), True, SENSOR, "analysis",
           "Write each call's SIP packets to its pcap.",
           note="Write each call's SIP packets to "
                "<spooldir>/YYYY-MM-DD/HH/MM/SIP/<callid>.pcap."),
    Option("savertp", Choice("yes", "no", "header"), "yes", SENSOR, "analysis",
           "Write RTP: yes (whole packets), header (RTP headers only) or no.",
           note="Write RTP to <spooldir>/YYYY-MM-DD/HH/MM/RTP/<callid>.pcap: yes, no, or "
                "header (RTP headers only, no audio)."),
    Option("rtptimeout", Number(lo=1.0), 300.0, SENSOR, "analysis",
           "Close an answered call after this many seconds without RTP or SIP (bye=104).",
           note="Call timeouts in seconds of capture time: no RTP or SIP on an answered call "
                "(bye=104), SIP without any RTP, and the longest any call may last "
                "(bye=102)."),
    Option("sipwithoutrtptimeout", Number(lo=1.0), 3600.0, SENSOR, "analysis",
           "Close a call with SIP but no RTP after this many seconds of silence."),
    Option("absolute_timeout", Number(lo=1.0), 14400.0, SENSOR, "analysis",
           "Close any call this many seconds after it started (bye=102)."),
    Option("max_buffer_mem", Integer(1), 2000, SENSOR, "mirroring",
           "MB of packets held in memory for mirroring; beyond it packets are dropped, counted.",
           note="MB of packets held in memory while mirroring (packetbuffer_sender = yes, or "
                "the legacy mirror_destination). When full, packets are dropped and counted "
                "(logs, sniffer_stat), never silently."),
    Option("ringbuffer", Integer(1, 4096), 50, SENSOR, "capture",
           "MB of kernel ring buffer per captured interface; it absorbs bursts.",
           note="Kernel ring buffer per captured interface, in MB: it absorbs bursts while the "
                "sensor is busy; when it overflows the kernel drops packets, counted in "
                "sniffer_stat and in the periodic capture status line."),
    Option("snaplen", Integer(256, 262144), 65535, SENSOR, "capture",
           "Bytes kept of each captured packet; the default keeps whole packets.",
           note="Bytes kept of each packet. The default keeps whole packets, including the "
                "large TCP segments a NIC with GRO hands over (SIP over TCP needs them "
                "whole). The ring stores packets by their real size, so a smaller snaplen "
                "saves little."),

    Heading({"sensor": "HEP input (Kamailio, OpenSIPS, FreeSWITCH, Asterisk, heplify)"}),
    Option("hep_bind_port", Integer(0, 65535), 0, SENSOR, "hep",
           "Port for HEP input, UDP and TCP both (9060 is usual); 0 = no HEP input.",
           note="Accept SIP, RTP and RTCP encapsulated in HEP (v3, and v2 over UDP) from "
                "proxies, SBCs and capture agents, on UDP and TCP of this port (9060 is the "
                "usual one; 0 = off). HEP is analysed like sniffed packets: the same CDRs, "
                "quality figures and per-call pcaps. A sensor with HEP input needs no "
                "interface and no root. See README, \"HEP input\"."),
    Option("hep_bind_ip", Text(allow_empty=False), "127.0.0.1", SENSOR, "hep",
           "Address the HEP port listens on (0.0.0.0 or :: for every interface).",
           note="Address to listen on. Beyond loopback, set hep_password or hep_allow: an open "
                "HEP port lets anyone inject calls (a warning is logged otherwise)."),
    Option("hep_tls_port", Integer(0, 65535), 0, SENSOR, "hep",
           "Port for HEP over TLS (TCP), with the sensor's certificate; 0 = off.",
           note="HEP over TLS on this second port (0 = off), with the sensor's certificate "
                "(the management port's, kept in spooldir/state)."),
    Option("hep_password", Text(), "", SENSOR, "hep",
           "When set, only HEP messages whose auth key (chunk 0x000e) equals it are taken.",
           note="When set, a HEP message is taken only if its auth key (chunk 0x000e) is this "
                "password (Kamailio siptrace auth_key, heplify -hs password, sngrep "
                "eep.send.pass); others are counted and dropped. Never logged. It crosses the "
                "network in clear unless the sender uses hep_tls_port."),
    Option("hep_allow", TextList(), (), SENSOR, "hep",
           "Sender addresses or networks (CIDR) allowed to send HEP; empty = any.",
           note="Addresses or networks (CIDR) allowed to send HEP, a list; empty = any "
                "sender. Datagrams from others are counted and dropped, their TCP "
                "connections closed."),
    Option("hep_capture_id", TextList(), (), SENSOR, "hep",
           "Capture agent ids (chunk 0x000c) to take; empty = every id.",
           note="Capture agent ids (chunk 0x000c) to take, a list; empty = every id. sngrep "
                "and sipgrep send their id N shifted (as N * 65536); listing N accepts both "
                "forms."),
    Option("hep_udp_rcvbuf", Integer(1, 1024), 8, SENSOR, "hep",
           "Receive buffer asked of the kernel for the HEP UDP socket, in MB.",
           note="Receive buffer of the HEP UDP socket, in MB: what a burst of datagrams "
                "can wait in while the sensor is busy. The kernel grants at most "
                "net.core.rmem_max (often 208 KB); when it grants less, a warning says so: "
                "raise it (sysctl -w net.core.rmem_max=BYTES) or UDP HEP is lost in bursts "
                "(counted in the kernel's UDP RcvbufErrors)."),
    Option("hep_max_future", Number(lo=0.0), 60.0, SENSOR, "hep",
           "Seconds a HEP timestamp may be ahead of this host's clock; later ones are "
           "clamped.",
           note="A HEP message timed more than this many seconds ahead of this host's clock "
                "(a sender whose clock is wrong) would move the analysis clock forward and "
                "time out every open call: it is analysed at the time a message without a "
                "timestamp gets (the newest accepted time plus the wall time since), and "
                "counted (clamped.future)."),
    Heading({"sensor": "SIP that is not a call (registrations, OPTIONS, SUBSCRIBE, NOTIFY, "
                       "MESSAGE)"}),
    Option("sip-register", Choice("no", "yes", "nodb"), "no", SENSOR, "analysis",
           "Follow REGISTER: yes (register_state/_failed/_time_info rows and alerts), nodb "
           "(follow, write nothing) or no.",
           note="REGISTER tracking (VoIPmonitor's keys): yes writes register_state (a row when "
                "a registration's state changes), register_failed (failed attempts folded, "
                "with their counter), register_time_info (per-minute counts) and alerts "
                "(brute force, scans, a success after many failures); nodb follows "
                "registrations (listregisters) without writing rows. On a mirroring sensor "
                "the central's engine applies the same settings."),
    Option("sip-register-timeout", Number(lo=0.1), 5.0, SENSOR, "analysis",
           "Seconds to wait for the answer to a REGISTER before the attempt is Failed."),
    Option("sip-register-max-registers", Integer(1), 4, SENSOR, "analysis",
           "REGISTERs in one Call-ID without a 200 or a challenge before ManyRegMessages."),
    Option("sip-register-state-timeout", Number(lo=1.0), 600.0, SENSOR, "analysis",
           "Seconds after which an unchanged registration's state is written again."),
    Option("sip-options", Choice("no", "yes", "nodb"), "no", SENSOR, "analysis",
           "OPTIONS: yes (one sip_msg row per request and answer, with qualify_ok), nodb or no.",
           note="OPTIONS, SUBSCRIBE and NOTIFY: one sip_msg row per request and its answer "
                "(response time; qualify_ok: a 200 within 2000 ms), yes / nodb (followed, "
                "not written) / no. MESSAGE goes to the message table."),
    Option("sip-subscribe", Choice("no", "yes", "nodb"), "no", SENSOR, "analysis",
           "SUBSCRIBE: yes (sip_msg rows), nodb or no."),
    Option("sip-notify", Choice("no", "yes", "nodb"), "no", SENSOR, "analysis",
           "NOTIFY: yes (sip_msg rows), nodb or no."),
    Option("sip-message", Choice("no", "yes", "nodb"), "no", SENSOR, "analysis",
           "MESSAGE (instant messages): yes (message table), nodb or no."),

    Heading({"sensor": "management port (local tools: sniffer_stat, listcalls, getfile)"}),
    Option("managerip", Text(allow_empty=False), "127.0.0.1", SENSOR, "manager",
           "Address of the management port (local tools: pcaps, sniffer_stat, listcalls).",
           note="Address and port of the management port; managerport = 0 disables it (no "
                "listening port at all). The central does not need it: it sends the same "
                "commands over the channel this sensor opened to it (port 60024), so a "
                "sensor behind NAT or a firewall needs no inbound port. It requires TLS and "
                "the same password proof as the channel."),
    Option("managerport", Integer(0, 65535), DEFAULT_MANAGER_PORT, SENSOR, "manager",
           "Management port; 0 disables it."),
    Option("manager_enable_unencrypted", Boolean(), False, SENSOR, "manager",
           "Allow plain-text management commands; honoured only when managerip is loopback.",
           note="Allow plain-text management commands (like VoIPmonitor's `echo listcalls | "
                "nc`). Honoured only when managerip is a loopback address."),
    Option("metrics_port", Integer(0, 65535), 0, SENSOR, "manager",
           "Port of the sensor's own Prometheus /metrics (plain HTTP); 0 = none.",
           note="The sensor's own Prometheus /metrics (for a sensor used without a central; "
                "a central serves every sensor's figures already): plain HTTP on "
                "metrics_bind:metrics_port, no call data. 0 disables it."),
    Option("metrics_bind", Text(allow_empty=False), "127.0.0.1", SENSOR, "manager",
           "Address of the sensor's own /metrics."),

    Heading({"central": "database"}),
    Option("mysqlhost", Text(), "", CENTRAL, "store",
           "MySQL/MariaDB host; empty = embedded SQLite at sqlite_path.",
           note="MySQL/MariaDB. Leave mysqlhost empty to use the embedded SQLite database "
                "below. The database is created if it does not exist and the user may create "
                "it. Several centrals may share one database (or a Galera cluster)."),
    Option("mysqlport", PORT, 3306, CENTRAL, "store", "MySQL/MariaDB port."),
    Option("mysqldb", Text(allow_empty=False), "voipmonitor", CENTRAL, "store",
           "Database name; created if missing and the user may create it."),
    Option("mysqluser", Text(allow_empty=False), "root", CENTRAL, "store", "Database user."),
    Option("mysqlpassword", Text(), "", CENTRAL, "store", "Database password (never logged)."),
    Option("sqlite_path", Text(allow_empty=False), "/var/lib/voipmon/voipmon.sqlite", CENTRAL,
           "store", "Embedded SQLite database used when mysqlhost is empty.",
           note="Embedded SQLite database used when mysqlhost is empty."),

    Heading({"central": "HTTP API and web page"}),
    Option("http_bind", Text(allow_empty=False), "127.0.0.1", CENTRAL, "http",
           "Address of the HTTP API and web page.",
           note="http_port = 0 disables it. Off loopback, HTTP Basic credentials are "
                "required."),
    Option("http_port", Integer(0, 65535), 8080, CENTRAL, "http", "HTTP port; 0 disables it."),
    Option("http_user", Text(), "", CENTRAL, "http",
           "HTTP Basic user; required when http_bind is not loopback."),
    Option("http_password", Text(), "", CENTRAL, "http",
           "HTTP Basic password; required when http_bind is not loopback."),
    Option("sensor_manager_dial", Boolean(), False, CENTRAL, "http",
           "Also fetch from a sensor not connected here through its management port.",
           note="Pcaps and live calls of a sensor come over the channel the sensor opened "
                "to this central (sensors reach the central on 60024; nothing reaches the "
                "sensors). yes: for a sensor not connected here, also dial the management "
                "port (managerport, 5029) it advertised, as older versions did."),
    Option("http_tls", Choice("auto", "yes", "no"), "auto", CENTRAL, "http",
           "HTTPS with the channel's certificate; auto = unless http_bind is loopback.",
           note="HTTPS for the page and the API, with the channel's certificate "
                "(tls_certificate, or the one generated in spooldir/state). auto: HTTPS "
                "unless http_bind is loopback, so that credentials, phone numbers and pcaps "
                "never cross a network in clear text. Set no only behind a reverse proxy that "
                "terminates TLS."),
    Option("http_metrics_port", Integer(0, 65535), 0, CENTRAL, "http",
           "Port of /metrics if not http_port (0: on the page's port).",
           note="Prometheus /metrics: every sensor's figures and the central's own. 0 serves "
                "it on http_port beside the page; another port serves only /metrics there, "
                "on http_bind, with the page's TLS setting."),
    Option("http_metrics_auth", Boolean(), True, CENTRAL, "http",
           "no: /metrics answers without http_user/http_password (it holds no call data).",
           note="/metrics carries no call data (no numbers, addresses or Call-IDs): with no, "
                "Prometheus scrapes it without the page's Basic credentials."),
    Option("http_media_cache", Integer(0), 512, CENTRAL, "http",
           "MB of calls' quality and audio (and the pcaps they came from) kept in "
           "spooldir/media; 0 = keep nothing.",
           note="The quality charts and audio of calls are computed on demand from their "
                "pcaps; the fetched pcap and the results are kept in spooldir/media for the "
                "next request, the least recently used going first beyond this many MB."),

    Heading({"sensor": "spool", "central": "spool (pcaps of mirroring sensors, state)"}),
    Option("spooldir", Text(allow_empty=False), "/var/spool/voipmon", BOTH, "spool",
           "Directory for per-call pcaps, the CDR queue and state (certificate).",
           note={"sensor": "Per-call pcaps, the durable CDR queue and other state live here.",
                 "central": "Also holds central-queue/: the CDRs made here from mirrored "
                            "packets, fsync'd before the sensor is acknowledged and kept until "
                            "the database has committed them (they survive a crash or a "
                            "database outage). Put it on a local disk with room for an "
                            "outage's worth."}),
    Option("maxpoolsize", Integer(0), 0, BOTH, "spool",
           "MB of pcaps to keep in the spool; the oldest minutes go first. 0 = no limit.",
           note="Retention: keep at most this many MB of pcaps / this many days; the oldest "
                "minutes are removed first. 0 = no limit."),
    Option("maxpooldays", Integer(0), 0, BOTH, "spool",
           "Days of pcaps to keep in the spool. 0 = no limit."),
    Option("cleandatabase", Integer(0), 0, CENTRAL, "store",
           "Days of calls to keep in the database (cdr, cdr_rtp, cdr_next); older ones are "
           "deleted hourly, oldest first. 0 = keep them all.",
           note="Database retention (VoIPmonitor's key): keep this many days of calls in the "
                "database. Older calls (cdr with their cdr_rtp and cdr_next rows) are deleted "
                "every hour, oldest first, in short transactions; so are the rows of "
                "register_state, register_failed, register_time_info, sip_msg, message and "
                "alert older than that. The sensors list is kept. 0 = keep every call."),
)

OPTIONS: tuple[Option, ...] = tuple(e for e in TABLE if isinstance(e, Option))
OPTIONS_BY_NAME: dict[str, Option] = {opt.name: opt for opt in OPTIONS}


def options_for(role: str) -> tuple[Option, ...]:
    return tuple(opt for opt in OPTIONS if role in opt.roles)


def groups_for(role: str) -> tuple[Group, ...]:
    return tuple(group for group in GROUPS if role in group.roles)


def group_of(option: Option, role: str) -> Group:
    """The group that holds ``option`` in ``role``'s settings."""
    for group in groups_for(role):
        if group.attr == option.group:
            return group
    raise LookupError(f"{option.name}: no {role} group {option.group!r}")


def members(group: Group) -> tuple[Option, ...]:
    """The options of ``group``, in table order."""
    role = sorted(group.roles)[0]
    return tuple(opt for opt in options_for(role) if group_of(opt, role) is group)


def _check() -> None:
    """Every option has its group in each of its roles; a group of both roles holds only
    options of both roles (it is one class on either side)."""
    for opt in OPTIONS:
        for role in opt.roles:
            group = group_of(opt, role)
            if group.roles != opt.roles and len(group.roles) > 1:
                raise AssertionError(f"{opt.name}: group {group.name} is shared by both roles")


_check()
