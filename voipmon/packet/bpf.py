"""The kernel capture filter: what a sensor lets through, built from ``sipport`` and ``filter``.

The filter must pass everything the decoder can turn into a call and as little else as
it can, because every frame it passes costs Python time. What it passes, and why:

- ``udp``: all UDP. RTP and RTCP ports are negotiated in SDP, so no static filter can
  name them; UDP also carries SIP on every ``sipport`` and the UDP tunnels we decode
  (VXLAN 4789, TZSP 37008, L2TP 1701). VoIPmonitor captures all UDP by default too.
- ``(tcp or sctp) and (port P or portrange A-B ...)``: SIP over TCP/SCTP on the SIP ports.
- IPv4 fragments (``ip[6:2] & 0x3fff != 0``) and IPv6 fragment headers: a large SIP
  message's later fragments have no transport header, so a port test cannot see them.
- IP-in-IP (4), IPv6-in-IPv4 (41) and GRE (47, which includes ERSPAN): tunnel carriers.
- MPLS and PPPoE session frames, whole (the decoder sorts them out); on Ethernet, all
  of the above again inside one or two VLAN tags.

libpcap's ``vlan`` keyword shifts the offsets of everything written after it, whatever
the ``or``/``and`` around it. So the VLAN chain is written last and nested
(``X or (vlan and (X or (vlan and (X))))``), MPLS and PPPoE are matched by ethertype
(which shifts nothing) at each level, and the user's ``filter`` is ANDed inside each level,
so it applies to the packet inside the tags. A user filter that uses ``vlan``, ``mpls``,
``pppoes`` or ``geneve`` itself takes charge of the encapsulation: it is then placed
first, ANDed with the plain clauses, and no chain of ours follows it. With a user
filter, whole MPLS/PPPoE frames are no longer passed, since it cannot be applied to them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voipmon.config import SensorSettings

DLT_NULL = 0
DLT_EN10MB = 1
DLT_RAW = 12
DLT_LOOP = 108
DLT_LINUX_SLL = 113
DLT_IPV4 = 228
DLT_IPV6 = 229
DLT_LINUX_SLL2 = 276

#: Link types whose header has an ethertype, so MPLS/PPPoE frames can be named.
_ETHERTYPE_LINKS = frozenset({DLT_EN10MB, DLT_LINUX_SLL, DLT_LINUX_SLL2})
#: User-filter keywords that move libpcap's decoding offsets for the rest of the expression.
_OFFSET_KEYWORDS = re.compile(r"\b(vlan|mpls|pppoes|geneve)\b", re.IGNORECASE)

ETHERTYPE_MPLS = 0x8847
ETHERTYPE_PPPOE_SESSION = 0x8864


class FilterError(ValueError):
    """libpcap refused to compile ``expression``; ``reason`` is libpcap's own message."""

    def __init__(self, expression: str, reason: str) -> None:
        super().__init__(f"{reason} (in {expression!r})")
        self.expression = expression
        self.reason = reason


def port_ranges(ports: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged ``(first, last)`` runs of ``ports``."""
    runs: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if runs and port == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], port)
        else:
            runs.append((port, port))
    return runs


def port_expression(ports: Iterable[int]) -> str:
    """``port 5060 or portrange 5070-5080`` for the given ports."""
    terms = [f"port {lo}" if lo == hi else f"portrange {lo}-{hi}" for lo, hi in port_ranges(ports)]
    if not terms:
        raise ValueError("at least one SIP port is needed")
    return " or ".join(terms)


def _clauses(sipports: Iterable[int]) -> list[str]:
    return [
        "udp",
        f"((tcp or sctp) and ({port_expression(sipports)}))",
        "(ip[6:2] & 0x3fff != 0)",
        "(ip6[6] == 44)",
        "(ip proto 4 or ip proto 41 or ip proto 47)",
        "(ip6 proto 4 or ip6 proto 41 or ip6 proto 47)",
    ]


def build_filter(sipports: Iterable[int], user_filter: str = "",
                 linktype: int = DLT_EN10MB) -> str:
    """The capture filter for an interface of ``linktype``; see the module docstring.

    Clauses that libpcap cannot express for the link type (IPv6 on an IPv4-only link)
    are left out. Raises FilterError if the user filter does not compile.
    """
    user = user_filter.strip()
    if user:
        check_filter(user, linktype)
    base = " or ".join(c for c in _clauses(sipports) if _compiles(c, linktype))
    if user and _OFFSET_KEYWORDS.search(user):
        return f"({user}) and ({base})"
    inner = f"(({user}) and ({base}))" if user else f"({base})"
    if not user and linktype in _ETHERTYPE_LINKS:
        inner = (f"ether proto 0x{ETHERTYPE_MPLS:04x} or "
                 f"ether proto 0x{ETHERTYPE_PPPOE_SESSION:04x} or {inner}")
    if linktype == DLT_EN10MB:
        expression = f"{inner} or (vlan and ({inner} or (vlan and ({inner}))))"
    else:
        expression = inner
    check_filter(expression, linktype)
    return expression


def filter_for_config(settings: SensorSettings, linktype: int = DLT_EN10MB) -> str:
    """``build_filter`` from a sensor's settings; a bad ``filter`` becomes a ConfigError
    naming it."""
    try:
        return build_filter(settings.analysis.sipport, settings.capture.filter, linktype)
    except FilterError as exc:
        raise settings.error("filter", f"libpcap cannot compile it: {exc.reason}",
                           "a BPF expression as tcpdump takes it (man pcap-filter)")


# -- compiling with libpcap, for its error messages -------------------------------------


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


_libpcap: Any = None


def _lib() -> Any:
    global _libpcap
    if _libpcap is None:
        name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
        lib = ctypes.CDLL(name)
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram),
                                     ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        _libpcap = lib
    return _libpcap


def check_filter(expression: str, linktype: int = DLT_EN10MB, snaplen: int = 65535) -> int:
    """Compile ``expression`` for ``linktype``; return its instruction count.

    Raises FilterError with libpcap's message (e.g. "syntax error") when it cannot.
    """
    lib = _lib()
    handle = lib.pcap_open_dead(linktype, snaplen)
    if not handle:
        raise FilterError(expression, f"libpcap cannot open a handle for link type {linktype}")
    try:
        program = _BpfProgram()
        PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
        if lib.pcap_compile(handle, ctypes.byref(program), expression.encode("utf-8"), 1,
                            PCAP_NETMASK_UNKNOWN) < 0:
            reason = (lib.pcap_geterr(handle) or b"cannot compile").decode("utf-8", "replace")
            raise FilterError(expression, reason)
        count = program.bf_len
        lib.pcap_freecode(ctypes.byref(program))
        return count
    finally:
        lib.pcap_close(handle)


def _compiles(expression: str, linktype: int) -> bool:
    try:
        check_filter(expression, linktype)
    except FilterError:
        return False
    return True
