"""Our CDRs against tshark's, for every capture that has a ``.tshark.txt`` reference.

For each capture (``../shared/pcaps/{public,generated}`` relative to the repository, and
those bundled in ``voipmon/test/data``) the engine analyses the file, and the test
compares with tshark 4.0's ``-z rtp,streams`` and its list of SIP messages:

- the SDP-announced RTP streams: same (addresses, ports, SSRC), our main payload type
  among tshark's payload types;
- packets received exactly; lost exactly (where tshark's count is negative because
  DTMF end packets repeat a sequence number, ours is 0: we count those as duplicates);
- max jitter within max(0.05 ms, 2 %), mean jitter within max(0.05 ms, 5 %);
- the Call-IDs of INVITE dialogs, and each one's final response code.

Where we differ from tshark on purpose, ``DEVIATIONS`` names the item and the reason.
Streams without SDP (orphans) may appear in our output; tshark cannot see them.
Captures with a ``.decode_as`` file carry SIP on a non-standard port, which is then
configured as a ``sipport``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from twisted.trial.unittest import SynchronousTestCase

from voipmon.analysis.engine import Engine
from voipmon.packet.readers import CaptureReader
from voipmon.records.cdr import Cdr, RtpStream
from voipmon.test.common import shared_path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PCAPS = os.path.join(os.path.dirname(ROOT), "shared", "pcaps")

StreamKey = tuple[str, int, str, int, int]

#: tshark's names of static payload types (rtp_pt.h) as printed by -z rtp,streams.
TSHARK_NAMES = {0: "g711U", 3: "GSM", 4: "g723", 8: "g711A", 9: "g722", 13: "CN",
                15: "g728", 18: "g729", 19: "CN", 26: "JPEG", 31: "h261", 34: "h263"}

#: Where we differ from tshark on purpose. Keys: ("stream", src, sport, dst, dport, ssrc)
#: for a stream's counts, ("missing", ...same...) for a stream tshark has and we do not
#: tie to a call, ("code", callid) for a final response code.
DEVIATIONS: dict[str, dict[tuple, str]] = {
    "heplify__rtp_rtcp_sip_ipv4_udp.pcap": {
        ("missing", "200.57.7.202", 30000, "200.57.7.196", 40362, 0x2E3D):
            "announced only in MGCP SDP; we take SDP from SIP, so this 6-packet stream "
            "is an orphan to us (reported untied when long enough)",
    },
    "heplify__sip_ipv6_udp.pcap": {
        ("code", "c3eF6f58-363323Cd-8058EB88-10300252@fe80:0:0:0:21a:a0ff:fe07:32e0"):
            "the capture's timestamps jump by years between packets (1328589362 s, then "
            "1529707907 s, ...): capture time says the call outlived absolute_timeout "
            "(4 h) before its 100 Trying, so it is closed with bye=102 and no response",
    },
    "heplify__FAX-Call-t38-CA-TDM-SIP-FB-1.pcap": {
        ("stream", "10.35.60.100", 15580, "10.23.1.52", 16756, 0x0EAF0EAF):
            "tshark stops this stream at 64.7 s, where a MEGACO (H.248) SDP re-announces "
            "the port for T.38; the packets after it are still RTP (same SSRC, sequence "
            "continuing) and we count them: 3842 received instead of 1838",
    },
}


@dataclass
class TsharkStream:
    key: StreamKey
    payloads: tuple[str, ...]
    packets: int
    lost: int
    max_jitter: float
    mean_jitter: float


_ROW = re.compile(
    r"^\s*[\d.]+\s+[\d.]+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)\s+0x([0-9A-Fa-f]+)\s+(.*?)\s+"
    r"(\d+)\s+(-?\d+) \([^)]*\)\s+\S+\s+\S+\s+\S+\s+\S+\s+(\S+)\s+(\S+)")


def parse_reference(path: str) -> tuple[list[TsharkStream], list[tuple[str, str, str]]]:
    """tshark's RTP streams and its (Call-ID, method, status) SIP message list."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    streams: list[TsharkStream] = []
    messages: list[tuple[str, str, str]] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line
            continue
        if "rtp,streams" in section:
            m = _ROW.match(line)
            if m:
                streams.append(TsharkStream(
                    key=(m[1], int(m[2]), m[3], int(m[4]), int(m[5], 16)),
                    payloads=tuple(p.strip() for p in m[6].split(",")),
                    packets=int(m[7]), lost=int(m[8]), mean_jitter=float(m[9]),
                    max_jitter=float(m[10])))
        elif "-T fields" in section and line.strip():
            parts = line.split("\t")
            parts += [""] * (3 - len(parts))
            messages.append((parts[0], parts[1], parts[2]))
    return streams, messages


def invite_dialogs(messages: list[tuple[str, str, str]]) -> dict[str, int]:
    """Call-ID -> final response code of its INVITE, read from tshark's message list.

    The list has no CSeq, so responses are matched to requests the way transactions
    usually complete: a provisional, or a failure other than 481, answers the open
    INVITE; a success or 481 answers the newest open request (non-INVITE transactions
    such as PRACK, UPDATE, CANCEL and BYE finish first). The
    code then follows VoIPmonitor's rule: an answered call stays 200, 487 sticks unless
    a new INVITE is answered."""
    open_requests: dict[str, list[str]] = {}
    codes: dict[str, int] = {}
    answered: set[str] = set()
    after_487: set[str] = set()
    for callid, method, status in messages:
        if not callid:
            continue
        pending = open_requests.setdefault(callid, [])
        if method:
            for one in method.split(","):
                if one == "INVITE":
                    codes.setdefault(callid, 0)
                    if codes[callid] == 487:
                        after_487.add(callid)
                if one != "ACK":
                    pending.append(one)
            continue
        if callid not in codes or not status:
            continue
        code = int(status.split(",")[0])
        invite_open = "INVITE" in pending
        if code < 200 or (code >= 300 and code != 481 and invite_open):
            target = "INVITE" if invite_open else None
        else:
            target = pending[-1] if pending else None
        if target is None:
            continue
        if code >= 200:
            pending.reverse()
            pending.remove(target)
            pending.reverse()
        if target != "INVITE" or callid in answered:
            continue
        last = codes[callid]
        if last != 487 or (callid in after_487 and code == 200):
            codes[callid] = code
        if 200 <= code < 300:
            answered.add(callid)
    return codes


def payload_name(stream: RtpStream) -> str:
    if stream.payload in TSHARK_NAMES:
        return TSHARK_NAMES[stream.payload]
    if stream.codec.startswith("PT"):  # no rtpmap for it: tshark says RTPType-<n>
        return f"RTPType-{stream.payload}"
    return stream.codec.split("/")[0]


def analyse(path: str) -> tuple[list[Cdr], list[RtpStream]]:
    ports = [5060]
    decode_as = path + ".decode_as"
    if os.path.exists(decode_as):
        with open(decode_as) as f:
            for line in f:
                m = re.match(r"\s*(?:tcp|udp|sctp)\.port\s*==\s*(\d+)\s*,\s*sip", line)
                if m:
                    ports.append(int(m[1]))
    cdrs: list[Cdr] = []
    orphans: list[RtpStream] = []
    engine = Engine(id_sensor=1, on_cdr=cdrs.append, on_orphan=orphans.append,
                    sip_ports=ports)
    with CaptureReader(path) as reader:
        engine.feed_all(reader)
    engine.finish()
    if engine.stats.errors:
        raise AssertionError(f"{engine.stats.errors} errors analysing {path}")
    return cdrs, orphans


def compare(path: str) -> tuple[list[str], dict[str, int]]:
    """Every difference from tshark not named in DEVIATIONS, and what was compared."""
    name = os.path.basename(path)
    named = DEVIATIONS.get(name, {})
    streams, messages = parse_reference(path + ".tshark.txt")
    cdrs, _ = analyse(path)
    ours: dict[StreamKey, RtpStream] = {}
    problems: list[str] = []
    for cdr in cdrs:
        for s in cdr.rtp:
            if s.tied_to_sip:
                key = (s.saddr, s.sport, s.daddr, s.dport, s.ssrc)
                if key in ours:
                    problems.append(f"stream {key} reported twice")
                ours[key] = s
    counts = {"streams": 0, "calls": 0}
    for ref in streams:
        counts["streams"] += 1
        s = ours.pop(ref.key, None)
        if s is None:
            if ("missing", *ref.key) not in named:
                problems.append(f"missing stream {ref.key}")
            continue
        if ("stream", *ref.key) in named:
            continue
        if payload_name(s) not in ref.payloads:
            problems.append(f"{ref.key}: payload {payload_name(s)} not in {ref.payloads}")
        if s.received != ref.packets:
            problems.append(f"{ref.key}: received {s.received}, tshark {ref.packets}")
        if s.lost != max(ref.lost, 0):
            problems.append(f"{ref.key}: lost {s.lost}, tshark {ref.lost}")
        if abs(s.maxjitter - ref.max_jitter) > max(0.05, 0.02 * ref.max_jitter):
            problems.append(f"{ref.key}: max jitter {s.maxjitter:.3f}, "
                            f"tshark {ref.max_jitter:.3f}")
        if abs(s.avgjitter - ref.mean_jitter) > max(0.05, 0.05 * ref.mean_jitter):
            problems.append(f"{ref.key}: mean jitter {s.avgjitter:.3f}, "
                            f"tshark {ref.mean_jitter:.3f}")
    for key in ours:
        problems.append(f"extra SDP-tied stream {key}")
    expected = invite_dialogs(messages)
    got = {cdr.callid: cdr.lastSIPresponseNum for cdr in cdrs}
    counts["calls"] = len(expected)
    if set(got) != set(expected):
        problems.append(f"Call-IDs: ours only {sorted(set(got) - set(expected))}, "
                        f"tshark only {sorted(set(expected) - set(got))}")
    for callid, code in expected.items():
        if callid in got and got[callid] != code and ("code", callid) not in named:
            problems.append(f"{callid}: final response {got[callid]}, tshark {code}")
    return problems, counts


def _captures(folders: tuple[str, ...]) -> list[str]:
    found = []
    for folder in folders:
        if os.path.isdir(folder):
            for entry in sorted(os.listdir(folder)):
                if entry.endswith(".tshark.txt"):
                    found.append(os.path.join(folder, entry[:-len(".tshark.txt")]))
    return found


class InviteDialogsTests(SynchronousTestCase):
    """The response matching used to read tshark's message list."""

    def test_prack_cancel_and_bye(self) -> None:
        messages = [("a", "INVITE", ""), ("a", "", "180"), ("a", "PRACK", ""),
                    ("a", "", "200"), ("a", "", "200"), ("a", "ACK", ""),
                    ("b", "INVITE", ""), ("b", "CANCEL", ""), ("b", "", "200"),
                    ("b", "", "487"), ("c", "INVITE", ""), ("c", "", "180"),
                    ("c", "", "403"), ("c", "BYE", ""), ("c", "", "200"),
                    ("d", "REGISTER", ""), ("d", "", "200"), ("e", "INVITE", ""),
                    ("e", "", "100"), ("e", "CANCEL", ""), ("e", "", "408"),
                    ("e", "CANCEL", ""), ("e", "", "408")]
        self.assertEqual(invite_dialogs(messages),
                         {"a": 200, "b": 487, "c": 403, "e": 408})


class TsharkReferenceTests(SynchronousTestCase):
    """One test per capture; skipped when the shared captures are not there."""


def _make(path: str):
    def test(self: SynchronousTestCase) -> None:
        problems, _ = compare(path)
        self.assertEqual(problems, [], os.path.basename(path))
    test.__doc__ = f"{os.path.basename(path)} matches tshark"
    return test


class BundledReferenceTests(SynchronousTestCase):
    """The same for the captures in voipmon/test/data that have a reference beside them."""


_FOUND = _captures((os.path.join(PCAPS, "public"), os.path.join(PCAPS, "generated")))
if _FOUND:
    for _path in _FOUND:
        _name = "test_" + re.sub(r"\W", "_", os.path.basename(_path))
        setattr(TsharkReferenceTests, _name, _make(_path))
else:
    def _skip(self: SynchronousTestCase) -> None:
        shared_path("pcaps", "public")  # skips, or fails in CI
        self.fail(f"no captures with a tshark reference at {PCAPS}")
    TsharkReferenceTests.test_shared_captures = _skip  # type: ignore[attr-defined]
for _path in _captures((os.path.join(ROOT, "voipmon", "test", "data"),)):
    setattr(BundledReferenceTests, "test_" + re.sub(r"\W", "_", os.path.basename(_path)),
            _make(_path))
