#!/usr/bin/env python3
"""Benchmark: live capture of SIPp calls at a high call rate, every call's CDR, no drop.

SIPp calls SIPp on ``lo`` at ``--rate`` calls/s for ``--seconds`` (short answered calls
with about ``--rtp-seconds`` of G.711 each way, as bench/sipheavy.py makes them). A
sensor's capture (``LiveCapture`` on ``lo``, the sensor's default ring, its BPF filter
narrowed to this run's ports) feeds the analysis engine in this process, as a
local-processing sensor runs it. At the end it prints the calls SIPp made and completed,
the CDRs (and how many are answered calls confirmed by a 200 to the BYE), the kernel's
drop counter, frames captured and this process's CPU time. Pass: one CDR per call,
every one answered, 0 kernel drops. Needs root, sipp (sip-tester) and editcap.

    .venv/bin/python bench/sipplive.py [--rate 500] [--seconds 60] [--rtp-seconds 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from sipheavy import Calls  # noqa: E402
from twisted.internet import defer, protocol, task  # noqa: E402

from voipmon.analysis.engine import Engine  # noqa: E402
from voipmon.records.cdr import BYE_CONFIRMED, Cdr  # noqa: E402
from voipmon.sources.live import LiveCapture  # noqa: E402


class Sipp(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended: defer.Deferred[int] = defer.Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


@defer.inlineCallbacks
def main(reactor: Any, args: argparse.Namespace) -> Any:
    tmp = tempfile.mkdtemp(prefix="voipmon-bench-sipplive-")
    calls = args.rate * args.seconds
    try:
        run = Calls(tmp, calls, args.rate, args.rtp_seconds, args.media_base)
        cdrs: list[Cdr] = []
        engine = Engine(id_sensor=1, on_cdr=cdrs.append, sip_ports=run.sip_ports)
        capture = LiveCapture(["lo"], run.sip_ports, engine, reactor=reactor,
                              status_interval=0, user_filter=run.expression)
        capture.startService()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        uas, caller = Sipp(), Sipp()
        reactor.spawnProcess(uas, run.uas[0], run.uas, env=dict(os.environ), path=tmp)
        yield task.deferLater(reactor, 0.5, lambda: None)  # the answerer binds its ports
        start = time.perf_counter()
        reactor.spawnProcess(caller, run.uac[0], run.uac, env=dict(os.environ), path=tmp)
        status = yield caller.ended
        made = time.perf_counter() - start
        uas_status = yield uas.ended
        yield task.deferLater(reactor, 1.0, lambda: None)  # the last frames into the ring
        capture.stopService()   # reads the ring to its end first
        stats = capture.stats()
        engine.finish()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        answered = sum(1 for c in cdrs if c.lastSIPresponseNum == 200 and c.bye == BYE_CONFIRMED)
        ids = {c.callid for c in cdrs}
        print(f"SIPp: {calls} calls at {args.rate}/s over {made:.1f} s "
              f"(caller exit {status}, answerer exit {uas_status}; 0 = every call completed)")
        print(f"sensor: {stats['packets']} frames captured, kernel drops "
              f"{stats['kernel_dropped']}, interface drops {stats['interface_dropped']}, "
              f"CPU {cpu:.1f} s ({cpu / made:.0%} of one core over the calls)")
        print(f"CDRs: {len(cdrs)} ({len(ids)} distinct Call-IDs), answered and confirmed "
              f"{answered}")
        ok = status == 0 and len(ids) == calls and answered == calls and \
            stats["kernel_dropped"] == 0
        print(f"target (every call its CDR, kernel drops 0): {'met' if ok else 'NOT met'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rtp-seconds", type=float, default=2.0)
    parser.add_argument("--media-base", type=int, default=40000)
    return parser.parse_args()


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench/sipplive.py: needs root (live capture)")
    for tool in ("sipp", "editcap"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/sipplive.py: {tool} is not installed")
    task.react(main, [parse()])
