"""Every metric voipmon exposes: its name, type, labels, help and, for a histogram, its
bucket bounds. One table, read by the snapshot (what a sensor may push), the collectors
(what /metrics renders), the docs (``python -m voipmon.metrics.catalog`` prints
docs/metrics.md's table) and the tests.

Names follow Prometheus practice: the prefix ``voipmon_``, base units (seconds, bytes,
ratios 0..1), ``_total`` on counters, ``_info`` for metadata, and no label with unbounded
values (never a Call-ID, a number or an address). Six names are a contract that dashboards
and alert rules rely on (``CONTRACT``); rename nothing here without a major version.

Scopes:
- ``sensor``: about one sensor, labelled ``id_sensor`` and ``name_sensor``. Counted by the
  sensor and pushed in its snapshot, or counted by the central for that sensor (CDRs it
  stored; for a mirroring sensor, what the central's engine and queue do for it).
- ``fleet``: about one sensor too, but from the central's own view of it (connected, last
  heard, its process's start), never in a snapshot.
- ``central``: the central's own figures, without sensor labels.
- ``process``: of the process that serves /metrics (its build), without sensor labels.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass


class Kind(enum.StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Scope(enum.StrEnum):
    SENSOR = "sensor"
    FLEET = "fleet"
    CENTRAL = "central"
    PROCESS = "process"


SENSOR_LABELS = ("id_sensor", "name_sensor")


@dataclass(frozen=True)
class Family:
    """One metric family. ``name`` is the name as exposed (a counter's ends in _total)."""

    name: str
    kind: Kind
    scope: Scope
    group: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()     # a histogram's upper bounds; +Inf is implied

    def __post_init__(self) -> None:
        if not self.name.startswith("voipmon_"):
            raise ValueError(f"{self.name}: every name starts with voipmon_")
        if (self.kind is Kind.COUNTER) != self.name.endswith("_total"):
            raise ValueError(f"{self.name}: counters, and only counters, end in _total")
        if (self.kind is Kind.HISTOGRAM) != bool(self.buckets):
            raise ValueError(f"{self.name}: histograms, and only histograms, have buckets")
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"{self.name}: bucket bounds must increase")
        if set(self.labels) & set(SENSOR_LABELS):
            raise ValueError(f"{self.name}: sensor labels are added by the scope")

    @property
    def label_names(self) -> tuple[str, ...]:
        """Every label of its series, the scope's included."""
        if self.scope in (Scope.SENSOR, Scope.FLEET):
            return SENSOR_LABELS + self.labels
        return self.labels


# MOS of a call: 1.0 .. 4.5 (the lowest of either side, any model, to 0.1 as stored).
MOS_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4)
# Packet loss of a call's worse direction, as a ratio.
LOSS_BUCKETS = (0.0, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
# Time to commit one batch of records to the database.
STORE_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                       5.0, 10.0)

C, G, H = Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM
S, F, X, P = Scope.SENSOR, Scope.FLEET, Scope.CENTRAL, Scope.PROCESS

FAMILIES: tuple[Family, ...] = (
    # -- a sensor as this central sees it ---------------------------------------------
    Family("voipmon_sensor_up", G, F, "sensor",
           "1 while the sensor is connected to this central (and heard within the "
           "staleness limit), else 0."),
    Family("voipmon_sensor_last_seen_timestamp_seconds", G, F, "sensor",
           "When this central last heard from the sensor (epoch seconds, central's clock)."),
    Family("voipmon_sensor_start_time_seconds", G, F, "sensor",
           "When the sensor's process started (epoch seconds, sensor's clock); a change "
           "is a restart, and its counters start again from 0."),
    Family("voipmon_sensor_info", G, F, "sensor",
           "Always 1: the sensor's software version and mode (local or mirror).",
           ("version", "mode")),
    Family("voipmon_sensor_held_by_info", G, F, "sensor",
           "Always 1 on a central sharing its database with others, for a sensor another "
           "central holds now or saw last (from the shared sensors table): that central. "
           "The sensor's own figures are exposed there only; here only up (0) and this "
           "central's own figures about it (CDRs it stored, ...).", ("central",)),
    # -- capture ------------------------------------------------------------------------
    Family("voipmon_sensor_packets_total", C, S, "capture",
           "Packets the sensor captured (or received over HEP)."),
    Family("voipmon_sensor_bytes_total", C, S, "capture",
           "Bytes of the packets the sensor captured, as captured."),
    Family("voipmon_sensor_dropped_packets_total", C, S, "capture",
           "Packets the kernel or the interface dropped before the sensor saw them "
           "(pcap statistics)."),
    Family("voipmon_sensor_undecoded_packets_total", C, S, "capture",
           "Packets, or parts of them, that were malformed, by reason.", ("reason",)),
    Family("voipmon_sensor_ignored_packets_total", C, S, "capture",
           "Well-formed packets that carry nothing to analyse (ARP, ICMP, other ports), "
           "by reason.", ("reason",)),
    Family("voipmon_sip_requests_total", C, S, "capture",
           "SIP requests analysed, by method (a method outside the known set is 'other').",
           ("method",)),
    Family("voipmon_sip_responses_total", C, S, "capture",
           "SIP responses analysed, by the method they answer and their class (1xx..6xx).",
           ("method", "status_class")),
    Family("voipmon_rtp_packets_total", C, S, "capture",
           "RTP packets analysed (counted as each flow's buffered packets are analysed: "
           "every 4096 packets of a flow and when its call ends)."),
    Family("voipmon_rtcp_packets_total", C, S, "capture", "RTCP packets analysed."),
    # -- HEP input (a sensor fed over HEP: hep_bind_port, hep_tls_port) ------------------
    Family("voipmon_hep_messages_total", C, S, "capture",
           "HEP messages decoded and let in (password, capture id and sender accepted), by "
           "HEP protocol type: sip, rtp, rtcp_json, log, other (log and other types are "
           "counted, not analysed).", ("type",)),
    Family("voipmon_hep_malformed_messages_total", C, S, "capture",
           "HEP messages dropped as malformed, by reason (the decoder's: truncated, "
           "bad_magic, ...; stream_<reason> for a TCP or TLS stream that could not be "
           "framed, which closes that connection).", ("reason",)),
    Family("voipmon_hep_refused_messages_total", C, S, "capture",
           "HEP messages refused, by reason: auth (hep_password), capture_id "
           "(hep_capture_id), not_allowed (a sender outside hep_allow; a refused TCP "
           "connection counts once).", ("reason",)),
    Family("voipmon_hep_connections", G, S, "capture",
           "HEP TCP and TLS connections open."),
    # -- calls ----------------------------------------------------------------------------
    Family("voipmon_calls_active", G, S, "calls",
           "Calls in progress in the engine analysing the sensor's packets (the "
           "central's engine for a mirroring sensor)."),
    Family("voipmon_calls_ended_total", C, S, "calls",
           "Calls ended, by VoIPmonitor's bye code (0 not answered, 1 answered without "
           "BYE, 2 BYE seen, 3 BYE answered, 101 one-way, 102 absolute timeout, "
           "103 timeout, 104 RTP timeout, 105 one-way timeout, 108 SIP without RTP).",
           ("bye",)),
    Family("voipmon_cdrs_made_total", C, S, "calls",
           "CDRs made by the engine analysing the sensor's packets."),
    Family("voipmon_call_mos", H, S, "calls",
           "MOS of ended calls with RTP: the lowest of either side and any model, to 0.1 "
           "(the CDR's mos_min).", buckets=MOS_BUCKETS),
    Family("voipmon_call_packet_loss_ratio", H, S, "calls",
           "Packet loss of ended calls with RTP, as a ratio, in the worse direction.",
           buckets=LOSS_BUCKETS),
    Family("voipmon_dead_letters_total", C, S, "calls",
           "Records that could not be taken and were kept as dead letters."),
    Family("voipmon_registrations_active", G, S, "calls",
           "Registrations in state OK or UnknownMessageOK the engine follows "
           "(sip-register)."),
    Family("voipmon_register_failures_total", C, S, "calls",
           "REGISTER attempts that failed (a transaction ended in failure, not a response)."),
    Family("voipmon_register_alerts_total", C, S, "calls",
           "Alerts raised from failed registrations: brute force, scans, a possible "
           "compromise (also stored in the alert table and logged)."),
    # -- delivery -------------------------------------------------------------------------
    Family("voipmon_sensor_queue_records", G, S, "delivery",
           "Records waiting for a central's acknowledgement: the sensor's durable queue, "
           "or for a mirroring sensor its CDRs waiting in the central's queue."),
    Family("voipmon_sensor_queue_bytes", G, S, "delivery",
           "Bytes of the records waiting (on disk), as voipmon_sensor_queue_records."),
    Family("voipmon_cdrs_sent_total", C, S, "delivery",
           "CDRs sent to a central, a resend after a reconnect counted again."),
    Family("voipmon_cdrs_acked_total", C, S, "delivery",
           "CDRs a central acknowledged (committed)."),
    Family("voipmon_cdrs_stored_total", C, S, "delivery",
           "CDRs this central committed to its database for the sensor (a CDR resent "
           "after a failover and already stored is not counted again)."),
    Family("voipmon_mirror_batches_sent_total", C, S, "delivery",
           "Batches of mirrored packets sent to a central."),
    Family("voipmon_mirror_batches_acked_total", C, S, "delivery",
           "Batches of mirrored packets a central acknowledged."),
    Family("voipmon_mirror_dropped_packets_total", C, S, "delivery",
           "Packets a mirroring sensor dropped because its buffer (max_buffer_mem) was full."),
    Family("voipmon_channel_payload_bytes_total", C, S, "delivery",
           "Bytes of the messages the sensor sent on the channel, before compression."),
    Family("voipmon_channel_wire_bytes_total", C, S, "delivery",
           "Bytes the sensor wrote on the channel, after compression and framing."),
    Family("voipmon_channel_reconnects_total", C, S, "delivery",
           "Channel sessions the sensor established after its first."),
    Family("voipmon_channel_failovers_total", C, S, "delivery",
           "Times the sensor moved to another central of its server_destination."),
    Family("voipmon_channel_central_in_use", G, S, "delivery",
           "1 for the central (of server_destination) the sensor is connected to, 0 for "
           "the others.", ("central",)),
    Family("voipmon_channel_clock_skew_seconds", G, S, "delivery",
           "The sensor's clock minus the central's, as the central measured it at the "
           "handshake (the sensor's HELLO time against its clock: the one-way network "
           "delay included)."),
    Family("voipmon_sensor_clock_skew_seconds", G, S, "delivery",
           "The sensor's clock minus the central's, as the sensor measured it at its "
           "last handshake (the midpoint of its HELLO and the CHALLENGE against the "
           "central's time in the CHALLENGE: the network delay cancels out)."),
    Family("voipmon_channel_rtt_seconds", G, S, "delivery",
           "Round-trip time of the channel's last ping."),
    Family("voipmon_sensor_process_cpu_seconds_total", C, S, "process",
           "CPU time (user and system) of the sensor's process."),
    Family("voipmon_sensor_process_resident_memory_bytes", G, S, "process",
           "Resident memory of the sensor's process."),
    # -- the central ----------------------------------------------------------------------
    Family("voipmon_central_sensors_connected", G, X, "central",
           "Sensors connected to this central now."),
    Family("voipmon_central_snapshots_total", C, X, "central",
           "Sensor snapshots received, by result: accepted, restart (a new sensor "
           "process), old (out of order, ignored), invalid (refused).", ("result",)),
    Family("voipmon_central_store_batch_seconds", H, X, "central",
           "Time to commit one batch of records to the database.",
           buckets=STORE_BATCH_BUCKETS),
    Family("voipmon_central_db_errors_total", C, X, "central",
           "Database failures, by kind (lost connection, retried transaction, "
           "unavailable, error).", ("kind",)),
    Family("voipmon_central_queue_records", G, X, "central",
           "CDRs made from mirrored packets waiting in the central's durable queue."),
    Family("voipmon_central_queue_bytes", G, X, "central",
           "Bytes on disk of the central's durable queue."),
    Family("voipmon_central_http_requests_total", C, X, "central",
           "HTTP requests answered by the central's web server, by status code.", ("code",)),
    Family("voipmon_central_dead_letters_total", C, X, "central",
           "Records the central could not take and kept as dead letters."),
    # -- the process serving /metrics -----------------------------------------------------
    Family("voipmon_build_info", G, P, "process",
           "Always 1: the version of voipmon serving these metrics.", ("version",)),
)

BY_NAME: dict[str, Family] = {family.name: family for family in FAMILIES}
if len(BY_NAME) != len(FAMILIES):
    raise ValueError("a metric name is listed twice")

# The names dashboards and alert rules rely on (issue 16), each with id_sensor.
CONTRACT = frozenset({
    "voipmon_sensor_up", "voipmon_sensor_packets_total",
    "voipmon_sensor_dropped_packets_total", "voipmon_calls_active",
    "voipmon_sensor_queue_records", "voipmon_cdrs_stored_total"})


def family(name: str) -> Family:
    """The family called ``name``; KeyError naming it if there is none."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a voipmon metric") from None


# -- label values: bounded sets ------------------------------------------------------------

SIP_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "INFO", "PRACK", "UPDATE", "MESSAGE", "REFER"})
OTHER = "other"


def method_label(method: str) -> str:
    """A SIP method as a label value: one of the known methods, else 'other' (a sender can
    put any token there, and a label must stay bounded)."""
    return method if method in SIP_METHODS else OTHER


def status_class(code: int) -> str:
    """A SIP status code's class as a label value: '1xx' .. '6xx', else 'other'."""
    return f"{code // 100}xx" if 100 <= code <= 699 else OTHER


def markdown_table() -> str:
    """The table of docs/metrics.md."""
    rows = ["| name | type | labels | scope | what |", "|---|---|---|---|---|"]
    for item in FAMILIES:
        labels = ", ".join(f"`{label}`" for label in item.label_names) or "-"
        mark = " (contract)" if item.name in CONTRACT else ""
        rows.append(f"| `{item.name}`{mark} | {item.kind} | {labels} | {item.scope} | "
                    f"{item.help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover - prints docs/metrics.md's table
    sys.stdout.write(markdown_table())
