"""Spool layout: where a call's pcaps live, and names that can never escape the spool.

A call's files are ``YYYY-MM-DD/HH/MM/{SIP,RTP}/<fbasename>.pcap`` under the spool
directory, the time being the call start in UTC (VoIPmonitor's layout, so existing
tooling and retention by minute work). ``fbasename`` is the Call-ID made safe: the
Call-ID comes off the wire, so it may hold ``/``, ``..``, NUL, control characters or
megabytes. Only ``[A-Za-z0-9._@+=,-]`` is kept (anything else becomes ``_``), a leading
dot is escaped, the length is bounded, and whenever the name had to change a hash of the
Call-ID's exact bytes as captured (bytes that are not UTF-8 included) is appended, so two
different Call-IDs never share a name by accident.
"""

from __future__ import annotations

import hashlib
import os
import re
import time

from voipmon.records.keys import callid_bytes

#: Longest base name (before ".pcap"); well under every filesystem's 255-byte limit.
MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=,-]")
KINDS = ("SIP", "RTP")


def fbasename(callid: str) -> str:
    """The file base name for ``callid``: safe as one path component, never empty."""
    raw = callid_bytes(callid)   # the exact bytes of the wire: the hash is theirs
    text = raw.decode("ascii", "replace")
    name = _UNSAFE.sub("_", text)
    if name.startswith("."):
        name = "_" + name[1:]
    changed = name != callid or len(name) > MAX_NAME
    if changed or not name:
        digest = hashlib.sha256(raw).hexdigest()[:12]
        name = f"{name[:MAX_NAME - 13]}-{digest}" if name else f"callid-{digest}"
    return name


def minute_dir(calldate: float) -> str:
    """``YYYY-MM-DD/HH/MM`` of an epoch time, in UTC."""
    moment = time.gmtime(int(calldate // 1))
    return time.strftime("%Y-%m-%d/%H/%M", moment)


def pcap_relpath(calldate: float, kind: str, name: str) -> str:
    """Spool-relative path of a call's ``kind`` ("SIP" or "RTP") pcap."""
    if kind not in KINDS:
        raise ValueError(f"unknown pcap kind {kind!r}")
    if _UNSAFE.search(name) or name.startswith(".") or not name or len(name) > MAX_NAME:
        raise ValueError(f"unsafe file base name {name!r}")
    return f"{minute_dir(calldate)}/{kind}/{name}.pcap"


def resolve(spooldir: str, relpath: str) -> str:
    """Absolute path of ``relpath`` inside ``spooldir``; ValueError if it would escape."""
    root = os.path.realpath(spooldir)
    path = os.path.realpath(os.path.join(root, relpath))
    if os.path.commonpath([root, path]) != root or path == root:
        raise ValueError(f"{relpath!r} is outside the spool directory")
    return path
