"""Which counters of which component feed which series: the tables the services register
with ``CountersSource`` (``CountersSource(component.counters, ENGINE)``).

A key is a component's counter as its snapshot of counters names it (nested dicts read as
dotted keys); ``*`` fills a label. Keys marked "to count" are not counted by the component
yet: until it counts them, nothing is written for them (see the integration plan in
docs/metrics.md).
"""

from __future__ import annotations

from voipmon.metrics.catalog import OTHER, method_label
from voipmon.metrics.sources import Bind
from voipmon.packet.hep import LOG, REASONS, RTCP_JSON, RTP, SIP

# A packet source (live capture over every interface; a capture file; HEP): ISource.stats,
# whose ``dropped`` every source gives (a live capture's kernel and interface drops).
CAPTURE = {
    "packets": "voipmon_sensor_packets_total",
    "bytes": "voipmon_sensor_bytes_total",
    "dropped": "voipmon_sensor_dropped_packets_total",          # kernel + interface
}

# HEP input (HepSource.counters): messages by HEP protocol type, and those it did not take:
# refused (a filter said no) apart from malformed (an exact key wins over a pattern).
HEP_TYPES = {str(SIP): "sip", str(RTP): "rtp", str(RTCP_JSON): "rtcp_json", str(LOG): "log"}
HEP_MALFORMED = frozenset({*REASONS, *(f"stream_{reason}" for reason in REASONS),
                           "ip_proto", "empty"})


def hep_type_label(number: str) -> str:
    """A HEP protocol type (chunk 0x000b, any number a sender puts there) as a label."""
    return HEP_TYPES.get(number, OTHER)


def hep_reason_label(reason: str) -> str:
    return reason if reason in HEP_MALFORMED else OTHER


HEP = {
    "by_type.*": Bind("voipmon_hep_messages_total", each=("type",),
                      maps={"type": hep_type_label}),
    **{f"dropped.{reason}": Bind("voipmon_hep_refused_messages_total",
                                 labels={"reason": reason})
       for reason in ("auth", "capture_id", "not_allowed")},
    "dropped.*": Bind("voipmon_hep_malformed_messages_total", each=("reason",),
                      maps={"reason": hep_reason_label}),
    "tcp_open": "voipmon_hep_connections",
}

# The decoder (DecodeStats): why frames did not become datagrams.
DECODER = {
    "undecodable.*": Bind("voipmon_sensor_undecoded_packets_total", each=("reason",)),
    "ignored.*": Bind("voipmon_sensor_ignored_packets_total", each=("reason",)),
}

# The call engine (its counters, with its levels).
ENGINE = {
    "active_calls": "voipmon_calls_active",
    "rtcp_packets": "voipmon_rtcp_packets_total",
    "register.active": "voipmon_registrations_active",
    "register.failed": "voipmon_register_failures_total",
    "register.alerts.alerts": "voipmon_register_alerts_total",
    "rtp_packets": "voipmon_rtp_packets_total",
    "sip_requests.*": Bind("voipmon_sip_requests_total", each=("method",),
                           maps={"method": method_label}),
    "sip_responses.*.*": Bind("voipmon_sip_responses_total",
                              each=("method", "status_class"),
                              maps={"method": method_label}),
}

# A local-processing sensor's CDR uplink (its durable queue and the channel).
CDR_UPLINK = {
    "queue_depth": "voipmon_sensor_queue_records",
    "queue_bytes": "voipmon_sensor_queue_bytes",
    "sent": "voipmon_cdrs_sent_total",
    "delivered": "voipmon_cdrs_acked_total",
}

# A mirroring sensor's uplink.
MIRROR_UPLINK = {
    "dropped": "voipmon_mirror_dropped_packets_total",
    "batches_sent": "voipmon_mirror_batches_sent_total",
    "batches_acked": "voipmon_mirror_batches_acked_total",
}

# The channel as the sensor sees it (the framing, the failover endpoint, the pings).
CHANNEL = {
    "payload_bytes": "voipmon_channel_payload_bytes_total",
    "wire_bytes": "voipmon_channel_wire_bytes_total",
    "reconnects": "voipmon_channel_reconnects_total",
    "switches": "voipmon_channel_failovers_total",
    "central_in_use.*": Bind("voipmon_channel_central_in_use", each=("central",)),
    "clock_skew": "voipmon_sensor_clock_skew_seconds",          # the sensor's own measure
    "rtt": "voipmon_channel_rtt_seconds",
}

# Dead letters (DeadLetters), on the sensor.
DEAD_LETTERS = {"dead_letters": "voipmon_dead_letters_total"}

# -- the central -------------------------------------------------------------------------

# The central's durable queue of CDRs made from mirrored packets (CentralCdrQueue).
CENTRAL_QUEUE = {
    "queued": "voipmon_central_queue_records",
    "queue_bytes": "voipmon_central_queue_bytes",
    "dead_letters": "voipmon_central_dead_letters_total",
}

# The store's pools (SqlStore): failures by kind.
STORE = {
    "lost": Bind("voipmon_central_db_errors_total", labels={"kind": "lost_connection"}),
    "retried": Bind("voipmon_central_db_errors_total", labels={"kind": "retried"}),
    "unavailable": Bind("voipmon_central_db_errors_total", labels={"kind": "unavailable"}),
    "failed": Bind("voipmon_central_db_errors_total", labels={"kind": "error"}),
}

# Per sensor, on the central (``CountersSource(..., sensor=id_sensor)``): what it stored
# for the sensor, and for a mirroring sensor its CDRs waiting in the central's queue.
STORED_FOR_SENSOR = {"stored": "voipmon_cdrs_stored_total"}
CENTRAL_QUEUE_FOR_SENSOR = {"queued": "voipmon_sensor_queue_records"}

# The web site: requests answered, by status code.
HTTP = {"responses.*": Bind("voipmon_central_http_requests_total", each=("code",))}

__all__ = ["CAPTURE", "CDR_UPLINK", "CENTRAL_QUEUE", "CENTRAL_QUEUE_FOR_SENSOR", "CHANNEL",
           "DEAD_LETTERS", "DECODER", "ENGINE", "HEP", "HTTP", "MIRROR_UPLINK", "STORE",
           "STORED_FOR_SENSOR"]
