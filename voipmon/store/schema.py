"""The database schema, written once for both back ends, and its versioned migrations.

Tables are described abstractly (``Table``/``Column``/``Index`` with portable type names);
``voipmon.store.dialect`` turns them into MySQL or SQLite DDL. The schema is never created
by one big script: it is the result of applying ``MIGRATIONS`` in order, from version 0 (an
empty database) to ``SCHEMA_VERSION``, and the ``schema_version`` table's one row says how
far a database has come. A fresh database therefore takes the same path as an upgraded one,
and each step is idempotent (it checks what exists before adding it), so a step that was
interrupted on MySQL (where DDL cannot be rolled back) simply runs again.

Column names follow VoIPmonitor's (research notes, section 4) for what voipmon computes, so
reports written for VoIPmonitor keep working: ``cdr.calldate``, ``caller``, ``called``,
``sipcallerip`` (``varbinary(16)`` as VoIPmonitor's IPv6 layout, read with ``INET6_NTOA``),
``a_avgjitter_mult10``, ``a_mos_f1_mult10``, ``a_sl1``..``a_sl10``, ``a_d50``..``a_d300``,
``cdr_rtp.loss``, ``cdr_sip_response`` and ``cdr_ua`` lookups, ``cdr_next.fbasename``.
Columns of our own: ``cdr.sensor_cdr_uid`` (the idempotency key), ``cdr_next.callid``
(and ``callid_raw``, its exact bytes when the text cannot hold them),
``connect_time``, ``sip_pcap``/``rtp_pcap``/``pcap_on`` (where the call's pcap lives),
``hep_capture_id`` (the HEP capture agent id of a call received as HEP, NULL if sniffed),
``extra`` (JSON), and full-precision stream values in ``cdr_rtp`` (``avgjitter``, ``mos_f1``...)
beside VoIPmonitor's ``maxjitter_mult10``. ``cdr``'s summaries are VoIPmonitor-style:
``payload`` (caller's main codec, else callee's), ``jitter_mult10`` (the larger side's
average jitter), ``mos_min_mult10`` (lowest MOS of either side, any model) and
``packet_loss_perc_mult1000`` (the larger side's loss percentage).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from voipmon.store.figures import JITTER_EDGES, LOSS_EDGES

# Portable column types; voipmon.store.dialect maps each to DDL.
#   id            auto-increment 64-bit primary key
#   u8 u16 u32    unsigned integers; i32 i64 signed
#   bool          0/1
#   double        IEEE double; dec3 = decimal(9,3) (seconds with milliseconds)
#   datetime      UTC with milliseconds
#   ip            packed address: 4 bytes IPv4, 16 bytes IPv6 (INET6_ATON layout)
#   text:N        up to N characters, case-insensitive comparisons (caller, called...)
#   bintext:N     up to N characters compared exactly (lookup keys)
#   ascii:N       up to N ASCII characters compared exactly (ids)
#   longtext      unbounded text (JSON)
#   blob          bytes as they are, up to 16 MiB
#   enum:a,b      one of the listed words or NULL


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    null: bool = True
    default: int | None = None

    @property
    def length(self) -> int | None:
        """N of ``text:N``/``bintext:N``/``ascii:N``, else None."""
        kind, _, arg = self.type.partition(":")
        return int(arg) if kind in ("text", "bintext", "ascii") else None


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]
    unique: bool = False
    # MySQL indexes only the first ``prefix`` characters of each column (InnoDB keys are
    # at most 3072 bytes; a utf8mb4 varchar(1024) is 4096). SQLite indexes whole values.
    prefix: int | None = None


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    table: str
    ref_columns: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[Index, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"{self.name}.{name}")


def _cols(spec: str, type_: str, null: bool = True) -> tuple[Column, ...]:
    return tuple(Column(name, type_, null) for name in spec.split())


def _side_columns(side: str) -> tuple[Column, ...]:
    """VoIPmonitor's per-side (a_ caller, b_ callee) RTP summary columns of ``cdr``."""
    s = side
    return (
        Column(f"{s}_index", "u16"),
        Column(f"{s}_payload", "i32"),
        Column(f"{s}_saddr", "ip"),
        Column(f"{s}_received", "u32"),
        Column(f"{s}_lost", "i32"),
        Column(f"{s}_reordered", "u32"),
        Column(f"{s}_avgjitter_mult10", "u32"),
        Column(f"{s}_maxjitter", "u32"),
        *_cols(" ".join(f"{s}_sl{i}" for i in range(1, 11)), "u32"),
        *_cols(" ".join(f"{s}_d{d}" for d in (50, 70, 90, 120, 150, 200, 300)), "u32"),
        Column(f"{s}_mos_f1_mult10", "u8"),
        Column(f"{s}_mos_f2_mult10", "u8"),
        Column(f"{s}_mos_adapt_mult10", "u8"),
    )


SCHEMA_VERSION_TABLE = Table(
    "schema_version",
    (Column("id", "u8", null=False), Column("version", "u32", null=False),
     Column("updated", "datetime")),
    ("id",),
)

CDR_SIP_RESPONSE = Table(
    "cdr_sip_response",
    (Column("id", "id"), Column("lastSIPresponse", "bintext:255", null=False)),
    ("id",),
    (Index("cdr_sip_response_text", ("lastSIPresponse",), unique=True),),
)

CDR_UA = Table(
    "cdr_ua",
    (Column("id", "id"), Column("ua", "bintext:512", null=False)),
    ("id",),
    (Index("cdr_ua_text", ("ua",), unique=True),),
)

CDR = Table(
    "cdr",
    (
        Column("ID", "id"),
        Column("id_sensor", "u16", null=False),
        Column("sensor_cdr_uid", "ascii:64", null=False),
        Column("calldate", "datetime", null=False),
        Column("callend", "datetime", null=False),
        Column("duration", "dec3"),
        Column("connect_duration", "dec3"),
        Column("caller", "text:255"),
        Column("caller_domain", "text:255"),
        Column("callername", "text:255"),
        Column("called", "text:255"),
        Column("called_domain", "text:255"),
        Column("sipcallerip", "ip"),
        Column("sipcallerport", "u16"),
        Column("sipcalledip", "ip"),
        Column("sipcalledport", "u16"),
        Column("whohanged", "enum:caller,callee"),
        Column("bye", "u8"),
        Column("lastSIPresponse_id", "u32"),
        Column("lastSIPresponseNum", "u16"),
        Column("a_ua_id", "u32"),
        Column("b_ua_id", "u32"),
        *_side_columns("a"),
        *_side_columns("b"),
        Column("payload", "i32"),
        Column("jitter_mult10", "u32"),
        Column("mos_min_mult10", "u8"),
        Column("packet_loss_perc_mult1000", "u32"),
    ),
    ("ID",),
    (
        Index("cdr_sensor_uid", ("id_sensor", "sensor_cdr_uid"), unique=True),
        Index("cdr_calldate", ("calldate",)),
        Index("cdr_caller", ("caller",)),
        Index("cdr_called", ("called",)),
        # id_sensor leads, calldate follows: "this sensor's calls, newest first" is one scan.
        Index("cdr_id_sensor", ("id_sensor", "calldate")),
    ),
)

CDR_NEXT = Table(
    "cdr_next",
    (
        Column("cdr_ID", "u64", null=False),
        Column("callid", "text:1024"),
        Column("fbasename", "text:255"),
        Column("connect_time", "datetime"),
        Column("sip_pcap", "text:1024"),
        Column("rtp_pcap", "text:1024"),
        Column("pcap_on", "enum:sensor,central"),
        Column("extra", "longtext"),
    ),
    ("cdr_ID",),
    foreign_keys=(ForeignKey(("cdr_ID",), "cdr", ("ID",)),),
)

CDR_RTP = Table(
    "cdr_rtp",
    (
        Column("cdr_ID", "u64", null=False),
        Column("index", "u16", null=False),
        Column("saddr", "ip"),
        Column("sport", "u16"),
        Column("daddr", "ip"),
        Column("dport", "u16"),
        Column("ssrc", "u32"),
        Column("payload", "i32"),
        Column("received", "u32"),
        Column("loss", "i32"),
        Column("firsttime", "double"),   # seconds after cdr.calldate
        Column("lasttime", "double"),    # seconds after cdr.calldate
        Column("maxjitter_mult10", "u32"),
        Column("avgjitter", "double"),
        Column("maxjitter", "double"),
        Column("mos_f1", "double"),
        Column("mos_f2", "double"),
        Column("mos_adapt", "double"),
        Column("codec", "text:64"),
        Column("duplicates", "u32"),
        Column("reordered", "u32"),
        Column("sl", "ascii:200"),       # loss bursts, comma-separated (sl1..sl10)
        Column("delay", "ascii:200"),    # delay buckets, comma-separated (d50..d300)
        Column("rtcp_fraclost", "double"),
        Column("rtcp_jitter", "double"),
        Column("rtcp_rtt", "double"),
        Column("tied_to_sip", "bool"),
    ),
    ("cdr_ID", "index"),
    foreign_keys=(ForeignKey(("cdr_ID",), "cdr", ("ID",)),),
)

# Version 5: the dashboard's per-minute pre-aggregation (voipmon.store.rollup): per minute
# of calldate (UTC) and sensor, the counts the figures of voipmon.store.stats are made of.
# The counts "below L" are cumulative: mos_lt_L counts calls whose mos_min_mult10 < L
# (the MOS share for any threshold 0.1..5.0), loss_lt_E / jitter_lt_E those whose
# packet_loss_perc_mult1000 / jitter_mult10 < E (the distributions' buckets are their
# differences). Changing an edge means a new table version.
MOS_LIMITS = tuple(range(1, 51))
CDR_MINUTE_COUNTERS = (
    "calls", "answered", "user_failures", "connected_ms", "mos_known",
    *(f"mos_lt_{limit}" for limit in MOS_LIMITS),
    "loss_known", *(f"loss_lt_{edge}" for edge in LOSS_EDGES),
    "jitter_known", *(f"jitter_lt_{edge}" for edge in JITTER_EDGES),
)
CDR_MINUTE = Table(
    "cdr_minute",
    (Column("minute", "u32", null=False), Column("id_sensor", "u16", null=False),
     *(Column(name, "i64", null=False, default=0) for name in CDR_MINUTE_COUNTERS)),
    ("minute", "id_sensor"),
)

SENSORS_V1 = Table(
    "sensors",
    (
        Column("id_sensor", "u32", null=False),
        Column("name", "text:256"),
        Column("name_locked", "bool", null=False, default=0),  # renamed by an operator
        Column("host", "text:255"),
        Column("mode", "ascii:16"),
        Column("version", "text:64"),
        Column("connected", "bool", null=False, default=0),
        Column("central", "text:255"),   # which central holds (held) its connection
        Column("first_seen", "datetime"),
        Column("last_seen", "datetime"),
        Column("manager_host", "text:255"),
        Column("manager_port", "u16"),
    ),
    ("id_sensor",),
)

# Version 2: counters a sensor's periodic stats update sets.
SENSORS_V2_COLUMNS = (
    Column("packets", "i64", null=False, default=0),
    Column("drops", "i64", null=False, default=0),
    Column("queue_depth", "i64", null=False, default=0),
    Column("stats_at", "datetime"),
)


# Version 7: SIP that is not a call (voipmon.records: register, sipmsg, alert), with
# VoIPmonitor's table and column names. Ours in each: ``uid`` (the idempotency key, unique
# with id_sensor) and the fields the records mark "ours". Times are datetime(3) UTC;
# user agents, response texts and content types go through the lookup tables
# (``ua_id``, ``response_id``/``lastSIPresponse_id``, ``*_content_type``/``id_contenttype``).
CONTENTTYPE = Table("contenttype", (
    Column("id", "id"), Column("contenttype", "bintext:255", null=False)), ("id",),
    (Index("contenttype_text", ("contenttype",), unique=True),))


def _key_columns() -> tuple[Column, ...]:
    return (Column("ID", "id"), Column("id_sensor", "u16", null=False),
            Column("uid", "ascii:64", null=False))


def _register_columns() -> tuple[Column, ...]:
    return (
        Column("created_at", "datetime", null=False),
        Column("sipcallerip", "ip"), Column("sipcallerport", "u16"),
        Column("sipcalledip", "ip"), Column("sipcalledport", "u16"),
        *_cols("from_num from_domain to_num to_domain contact_num contact_domain "
               "digestusername digestrealm", "text:255"),
        Column("ua_id", "u32"),
        Column("callid", "text:1024"),
    )


def _record_indexes(table: str, when: str, *more: tuple[str, ...]) -> tuple[Index, ...]:
    return (Index(f"{table}_sensor_uid", ("id_sensor", "uid"), unique=True),
            Index(f"{table}_{when}", (when,)),
            *(Index(f"{table}_{'_'.join(cols)}", cols) for cols in more))


REGISTER_STATE = Table("register_state", (
    *_key_columns(), *_register_columns(), Column("expires", "u32"),
    Column("state", "u8", null=False), Column("rrd", "double")), ("ID",),
    _record_indexes("register_state", "created_at", ("to_num",), ("sipcallerip",)))
REGISTER_FAILED = Table("register_failed", (
    *_key_columns(), *_register_columns(), Column("counter", "u32", null=False),
    Column("response", "u16"), Column("last_at", "datetime"),
    Column("revision", "u32", null=False, default=0)), ("ID",),
    _record_indexes("register_failed", "created_at", ("to_num",), ("sipcallerip",)))
REGISTER_TIME_INFO = Table("register_time_info", (
    *_key_columns(), Column("created_at", "datetime", null=False),
    Column("type_info", "enum:failed,active"), Column("sipcallerip", "ip"),
    Column("sipcalledip", "ip"), Column("counter", "u32"), Column("counter_2", "u32")),
    ("ID",), _record_indexes("register_time_info", "created_at"))

SIP_MSG = Table(
    "sip_msg",
    (*_key_columns(), Column("time", "datetime", null=False), Column("type", "u8"),
     Column("ip_src", "ip"), Column("port_src", "u16"),
     Column("ip_dst", "ip"), Column("port_dst", "u16"),
     *_cols("number_src number_dst domain_src domain_dst callername", "text:255"),
     Column("ua_src_id", "u32"), Column("ua_dst_id", "u32"),
     Column("callid", "text:1024"), Column("cseq", "u32"),
     Column("request_id_content_type", "u32"), Column("request_content_length", "u32"),
     Column("request_content", "longtext"),
     Column("response_id_content_type", "u32"), Column("response_content_length", "u32"),
     Column("response_content", "longtext"),
     Column("response_number", "u16"), Column("response_id", "u32"),
     Column("request_repetition", "u32"), Column("request_time", "datetime"),
     Column("response_time", "datetime"), Column("response_duration_ms", "u32"),
     Column("qualify_ok", "bool")),
    ("ID",),
    _record_indexes("sip_msg", "time", ("ip_dst", "time")),
)

MESSAGE = Table(
    "message",
    (*_key_columns(), Column("calldate", "datetime", null=False),
     *_cols("caller caller_domain callername called called_domain", "text:255"),
     Column("sipcallerip", "ip"), Column("sipcallerport", "u16"),
     Column("sipcalledip", "ip"), Column("sipcalledport", "u16"),
     Column("lastSIPresponse_id", "u32"), Column("lastSIPresponseNum", "u16"),
     Column("a_ua_id", "u32"), Column("b_ua_id", "u32"),
     Column("id_contenttype", "u32"), Column("content_length", "u32"),
     Column("message", "longtext"), Column("response_time", "u32"),
     Column("callid", "text:1024"), Column("cseq", "u32")),
    ("ID",),
    _record_indexes("message", "calldate"),
)

ALERT = Table(
    "alert",
    (*_key_columns(), Column("kind", "ascii:32", null=False),
     Column("created_at", "datetime", null=False),
     Column("sipcallerip", "ip"), Column("sipcalledip", "ip"),
     Column("window_start", "datetime"), Column("window_end", "datetime"),
     Column("failures", "u32"), Column("extension_count", "u32"),
     Column("extensions", "longtext"), Column("successes", "u32"),
     Column("ua", "text:512"), Column("message", "text:1024"),
     Column("revision", "u32", null=False, default=0), Column("closed", "bool")),
    ("ID",),
    _record_indexes("alert", "created_at", ("sipcallerip",)),
)

#: The tables of the records that are not CDRs, by the record's KIND.
RECORD_TABLES = {"register_state": REGISTER_STATE, "register_failed": REGISTER_FAILED,
                 "register_time_info": REGISTER_TIME_INFO, "sip_msg": SIP_MSG,
                 "message": MESSAGE, "alert": ALERT}


# -- migrations ------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateTable:
    table: Table


@dataclass(frozen=True)
class AddColumn:
    table: str
    column: Column


@dataclass(frozen=True)
class CreateIndex:
    table: str
    index: Index


@dataclass(frozen=True)
class Backfill:
    """Fill a derived table from the tables it is derived from, if it is empty (the SQL
    comes from the module that maintains it: ``voipmon.store.migrate.BACKFILLS``)."""
    table: str


Step = CreateTable | AddColumn | CreateIndex | Backfill


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    steps: tuple[Step, ...] = field(default_factory=tuple)


def _create(table: Table) -> tuple[Step, ...]:
    """A table and then each of its indexes (indexes are separate, idempotent steps)."""
    bare = replace(table, indexes=())
    return (CreateTable(bare), *(CreateIndex(table.name, idx) for idx in table.indexes))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema: cdr, cdr_next, cdr_rtp, lookups, sensors", (
        CreateTable(SCHEMA_VERSION_TABLE),
        *_create(CDR_SIP_RESPONSE),
        *_create(CDR_UA),
        *_create(CDR),
        *_create(CDR_NEXT),
        *_create(CDR_RTP),
        *_create(SENSORS_V1),
    )),
    Migration(2, "sensors: packet, drop and queue-depth counters from stats updates", tuple(
        AddColumn("sensors", col) for col in SENSORS_V2_COLUMNS
    )),
    Migration(3, "cdr_next: index on callid, for the API's Call-ID search", (
        CreateIndex("cdr_next", Index("cdr_next_callid", ("callid",), prefix=255)),
    )),
    # A Call-ID is the key operators search by, and anyone can put any byte in it: its
    # exact bytes when ``callid`` (utf8mb4 text, 1024 characters) cannot hold them.
    Migration(4, "cdr_next: callid_raw, the exact bytes of a Call-ID its text cannot hold", (
        AddColumn("cdr_next", Column("callid_raw", "blob")),
    )),
    # The dashboard reads a day of a million calls as 1440 rows per sensor: the writer
    # adds each new CDR to its minute in the same transaction, retention takes it away;
    # the calls stored before are counted once here (Backfill, in the same transaction
    # as on SQLite; on MySQL it runs again if the table is empty).
    Migration(5, "cdr_minute: the dashboard's per-minute counts, filled from cdr", (
        CreateTable(CDR_MINUTE),
        Backfill("cdr_minute"),
    )),
    # HEP input: which capture agent (a proxy node, an SBC) reported the call.
    Migration(6, "cdr_next: hep_capture_id, the HEP capture agent id of the call", (
        AddColumn("cdr_next", Column("hep_capture_id", "u32")),
    )),
    Migration(7, "SIP that is not a call: register_state, register_failed, "
                 "register_time_info, sip_msg, message, alert, contenttype", (
        *_create(CONTENTTYPE),
        *(step for table in RECORD_TABLES.values() for step in _create(table)),
    )),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


def tables_at(version: int = SCHEMA_VERSION) -> dict[str, Table]:
    """Every table as it stands after migrating to ``version`` (the schema, derived once)."""
    tables: dict[str, Table] = {}
    for migration in MIGRATIONS:
        if migration.version > version:
            break
        for step in migration.steps:
            apply_step(tables, step)
    return tables


def apply_step(tables: dict[str, Table], step: Step) -> None:
    """What a step does to the abstract schema (used to derive ``tables_at``)."""
    if isinstance(step, CreateTable):
        tables[step.table.name] = step.table
    elif isinstance(step, AddColumn):
        old = tables[step.table]
        tables[step.table] = replace(old, columns=(*old.columns, step.column))
    elif isinstance(step, CreateIndex):
        old = tables[step.table]
        tables[step.table] = replace(old, indexes=(*old.indexes, step.index))
    elif isinstance(step, Backfill):
        pass   # data only
    else:  # pragma: no cover - a new Step kind without handling is a programming error
        raise TypeError(step)


TABLES: dict[str, Table] = tables_at()

