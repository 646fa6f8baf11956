"""Management commands, without any transport."""

from __future__ import annotations

import json
import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from voipmon.analysis.settings import engine_for
from voipmon.manager.commands import (
    CommandError,
    ICallLister,
    IStatsProvider,
    ManagerCommands,
    Reply,
    call_pcap_relpaths,
    parse_when,
)
from voipmon.packet.readers import read_capture
from voipmon.spool.layout import minute_dir
from voipmon.test.common import data_path
from voipmon.test.recordsupport import ANALYSIS, PHONES
from voipmon.test.test_manager_pcapmerge import read_records, write_pcap


@implementer(IStatsProvider, ICallLister)
class FakeSensor:
    def __init__(self) -> None:
        self.calls = [{"callid": "abc@host", "caller": "100"}]
        self.engine = engine_for(ANALYSIS, id_sensor=1, spooldir=tempfile.mkdtemp(),
                                 on_cdr=list.append, on_record=[].append)
        self.engine.feed_all(read_capture(data_path(PHONES)))

    def sniffer_stat(self) -> dict:
        return {"packets": 10, "drops": 1, "active_calls": len(self.calls), "queue_depth": 2,
                "central": "127.0.0.1:60024", "uptime": 5.0}

    def list_active_calls(self) -> list:
        return self.calls

    def list_registrations(self, active_only: bool) -> list:
        # a real engine's REGISTER tracker, over the SIPp phones against kamailio
        return self.engine.registrations(active_only)


def body(reply: Reply) -> bytes:
    data = b"".join(reply.chunks())
    assert len(data) == reply.size, (len(data), reply.size)
    return data


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.spool = os.path.abspath(self.mktemp())
        self.when = 1700000000.25  # 2023-11-14 22:13:20 UTC
        minute = minute_dir(self.when)
        self.assertEqual(minute, "2023-11-14/22/13")
        for kind in ("SIP", "RTP"):
            os.makedirs(os.path.join(self.spool, minute, kind))
        write_pcap(os.path.join(self.spool, minute, "SIP", "call1.pcap"),
                   [(self.when, b"INVITE"), (self.when + 2, b"BYE")])
        write_pcap(os.path.join(self.spool, minute, "RTP", "call1.pcap"),
                   [(self.when + 1, b"rtp")])
        self.sensor = FakeSensor()
        verifyObject(IStatsProvider, self.sensor)
        verifyObject(ICallLister, self.sensor)
        self.commands = ManagerCommands(self.spool, self.sensor, self.sensor, version="9.9")

    def error(self, line: str) -> CommandError:
        return self.assertRaises(CommandError, self.commands.run, line)

    def test_getversion_and_help(self) -> None:
        self.assertEqual(body(self.commands.run("getversion")), b"voipmon 9.9\n")
        self.assertIn(b"getcallpcap <time> <fbasename>", body(self.commands.run("help")))

    def test_sniffer_stat_and_listcalls(self) -> None:
        stat = json.loads(body(self.commands.run("sniffer_stat")))
        self.assertEqual(stat["packets"], 10)
        self.assertEqual(stat["central"], "127.0.0.1:60024")
        self.assertEqual(json.loads(body(self.commands.run("listcalls"))),
                         [{"callid": "abc@host", "caller": "100"}])
        bare = ManagerCommands(self.spool)
        self.assertEqual(self.assertRaises(CommandError, bare.run, "sniffer_stat").code,
                         "unavailable")

    def test_listregisters(self) -> None:
        """The registrations the sensor's engine follows, as VoIPmonitor's listregisters:
        the active ones, or every one known with 'all'."""
        active = json.loads(body(self.commands.run("listregisters")))
        self.assertEqual(sorted((r["to_num"], r["state_name"]) for r in active),
                         [("carol", "OK"), ("dave", "OK"), ("erin", "OK"), ("erin", "OK")])
        every = json.loads(body(self.commands.run("listregisters all")))
        self.assertIn(("alice", "Unregister"), [(r["to_num"], r["state_name"]) for r in every])
        self.assertEqual(self.error("listregisters now").code, "usage")
        self.assertIn(b"listregisters", body(self.commands.run("help")))

    def test_unknown_command(self) -> None:
        exc = self.error("sniffer_version")
        self.assertEqual(exc.code, "unknown_command")
        self.assertEqual(exc.line(), b"ERR unknown_command 'sniffer_version'; "
                                     b"'help' lists the commands\n")
        # no substring fallback as VoIPmonitor has: a longer word is not 'getfile'
        self.assertEqual(self.error("xgetfile a").code, "unknown_command")

    def test_file_exists(self) -> None:
        rel = "2023-11-14/22/13/SIP/call1.pcap"
        size = os.path.getsize(os.path.join(self.spool, rel))
        self.assertEqual(body(self.commands.run(f"file_exists {rel}")), b"%d\n" % size)
        self.assertEqual(body(self.commands.run("file_exists nope.pcap")), b"not_exists\n")
        self.assertEqual(self.error("file_exists ../etc/passwd").code, "refused")
        self.assertEqual(self.error("file_exists").code, "usage")

    def test_getfile(self) -> None:
        rel = "2023-11-14/22/13/RTP/call1.pcap"
        with open(os.path.join(self.spool, rel), "rb") as handle:
            self.assertEqual(body(self.commands.run(f"getfile {rel}")), handle.read())
        self.assertEqual(self.error("getfile /etc/passwd").code, "refused")
        self.assertEqual(self.error("getfile %2e%2e/x").code, "refused")
        self.assertEqual(self.error("getfile 2023-11-14/22/13/RTP/none.pcap").code, "not_found")

    def test_getcallpcap(self) -> None:
        for when in ("1700000000.25", "2023-11-14T22:13:20.250Z", "2023-11-14/22/13"):
            merged = body(self.commands.run(f"getcallpcap {when} call1"))
            self.assertEqual([r[2] for r in read_records(merged)], [b"INVITE", b"rtp", b"BYE"])
        self.assertEqual(self.error("getcallpcap 1700000000 nocall").code, "not_found")
        self.assertEqual(self.error("getcallpcap 1700000000 ../../x").code, "refused")
        self.assertEqual(self.error("getcallpcap 1700000000 a\x00b").code, "refused")
        self.assertEqual(self.error("getcallpcap yesterday call1").code, "usage")
        self.assertEqual(self.error("getcallpcap 1700000000").code, "usage")

    def test_only_sip_is_the_sip_file(self) -> None:
        os.remove(os.path.join(self.spool, "2023-11-14/22/13/RTP/call1.pcap"))
        with open(os.path.join(self.spool, "2023-11-14/22/13/SIP/call1.pcap"), "rb") as handle:
            self.assertEqual(body(self.commands.run("getcallpcap 1700000000 call1")),
                             handle.read())

    def test_helpers(self) -> None:
        self.assertEqual(call_pcap_relpaths("x", 0.0),
                         ["1970-01-01/00/00/SIP/x.pcap", "1970-01-01/00/00/RTP/x.pcap"])
        self.assertEqual(parse_when("1970-01-01T00:01:00+01:00"), -3540.0)
