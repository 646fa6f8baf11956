#!/usr/bin/env python3
"""Benchmark: a REGISTER flood through REGISTER tracking, beside references in the same run.

Synthesises (in memory, no capture file) 10k phones refreshing every 60 s (expiry 120 s)
for 5 minutes of capture time, each refresh a REGISTER, a 401 challenge, a REGISTER with
credentials and a 200 (one phone in ten has a wrong password: 401 again), plus a scanner
trying 2000 users at 100 a second (404): about 100k REGISTERs and as many answers. Each
measurement runs in a fresh process (peak RSS is the child's), as the median of ``--runs``:

- reference: ``parse_sip`` alone over the same messages (the tracker needs it anyway);
- reference: the call engine over the bundled SIPp call capture, frames/s;
- ``parse_sip`` + ``RegisterTracker`` (+ ``SipMsgTracker``, which ignores REGISTER), with
  ``advance`` once a capture-time second as the engine will call it: messages/s,
  records/s, peak RSS;
- the whole engine as a sensor runs it (``sip-register = yes``, ``sip-options = yes``):
  the same flood as Ethernet frames through ``Engine.feed_all`` (decoder, SIP routing,
  trackers), each record made into its queue item (``records.kinds.item_bytes``, what the
  sensor's durable queue stores): frames/s, records/s, peak RSS;
- memory held per registration: ``--hold`` users (default 200k) registered once, measured
  with tracemalloc after the run.

    .venv/bin/python bench/register.py [--runs 3] [--users 10000] [--hold 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CALLS = os.path.join(ROOT, "voipmon", "test", "data", "sipp_uac_pcap_rtp_echo_lo_3calls.pcap")
REGISTRAR = ("10.0.0.100", 5060)
T0 = 1_700_000_000.0


def request(user: str, callid: str, cseq: int, ip: str, auth: bool) -> bytes:
    credentials = (f'Authorization: Digest username="{user}", realm="example.com", '
                   f'nonce="abc{cseq}", uri="sip:example.com", response="0123456789abcdef"\r\n'
                   if auth else "")
    return (f"REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK-{callid}-{cseq};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@example.com>;tag=f{callid}\r\n"
            f"To: <sip:{user}@example.com>\r\nCall-ID: {callid}\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:{user}@{ip}:5060;transport=udp>\r\nExpires: 120\r\n{credentials}"
            f"User-Agent: BenchPhone/1.0\r\nContent-Length: 0\r\n\r\n").encode()


def answer(user: str, callid: str, cseq: int, ip: str, status: int) -> bytes:
    extra = {200: f"Contact: <sip:{user}@{ip}:5060;transport=udp>;expires=120\r\n",
             401: 'WWW-Authenticate: Digest realm="example.com", nonce="abc", qop="auth"\r\n',
             404: ""}[status]
    reason = {200: "OK", 401: "Unauthorized", 404: "Not Found"}[status]
    return (f"SIP/2.0 {status} {reason}\r\n"
            f"Via: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK-{callid}-{cseq};rport\r\n"
            f"From: <sip:{user}@example.com>;tag=f{callid}\r\n"
            f"To: <sip:{user}@example.com>;tag=reg\r\nCall-ID: {callid}\r\n"
            f"CSeq: {cseq} REGISTER\r\n"
            f"{extra}Server: BenchRegistrar\r\nContent-Length: 0\r\n\r\n").encode()


def flood(users: int, rounds: int = 5, period: float = 60.0) -> list[tuple]:
    """(ts, src ip, src port, dst ip, dst port, payload), in capture order."""
    out: list[tuple] = []
    server = socket.inet_aton(REGISTRAR[0])
    scanner = "203.0.113.9"
    for r in range(rounds):
        for i in range(users):
            ts = T0 + r * period + i * period / users
            ip = f"10.{1 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}"
            client = socket.inet_aton(ip)
            user, callid = f"u{i}", f"c{i}-{r}@bench"
            bad = i % 10 == 9
            out.append((ts, client, 5060, server, 5060, request(user, callid, 1, ip, False)))
            out.append((ts + 0.002, server, 5060, client, 5060, answer(user, callid, 1, ip, 401)))
            out.append((ts + 0.004, client, 5060, server, 5060, request(user, callid, 2, ip, True)))
            out.append((ts + 0.006, server, 5060, client, 5060,
                        answer(user, callid, 2, ip, 401 if bad else 200)))
        if r == 1:      # a scanner in the second round: 2000 users at 100 a second
            client = socket.inet_aton(scanner)
            for k in range(2000):
                ts = T0 + period + 5.0 + k * 0.01
                user, callid = f"x{k}", f"scan{k}"
                out.append((ts, client, 5062, server, 5060, request(user, callid, 1, scanner,
                                                                    False)))
                out.append((ts + 0.001, server, 5060, client, 5062,
                            answer(user, callid, 1, scanner, 404)))
    out.sort(key=lambda item: item[0])
    return out


def child(mode: str, users: int) -> dict:
    """One measurement in this (fresh) process."""
    import gc
    import resource

    sys.path.insert(0, ROOT)
    from voipmon.analysis.sip import parse_sip
    from voipmon.packet.datagram import IPPROTO_UDP, Datagram

    if mode == "calls":
        from voipmon.analysis.engine import Engine
        from voipmon.packet.readers import CaptureReader
        frames = 0
        start = time.perf_counter()
        for _ in range(40):
            engine = Engine(id_sensor=1, on_cdr=lambda cdr: None)
            with CaptureReader(CALLS) as reader:
                frames += engine.feed_all(reader)
            engine.finish()
        elapsed = time.perf_counter() - start
        return {"elapsed": elapsed, "frames": frames,
                "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    if mode == "hold":
        return hold(users)
    if mode == "engine":
        return engine_run(users)
    messages = [Datagram(ts, IPPROTO_UDP, src, sport, dst, dport, payload, 1, ())
                for ts, src, sport, dst, dport, payload in flood(users)]
    registers = sum(1 for d in messages if d.payload.startswith(b"REGISTER"))
    gc.collect()
    gc.freeze()   # the input held in memory is not the tracker's: keep it out of collections
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    records: list = []
    if mode == "parse":
        start = time.perf_counter()
        for d in messages:
            parse_sip(d.payload)
        elapsed = time.perf_counter() - start
    else:
        from voipmon.analysis.registers import RegisterSettings, RegisterTracker
        from voipmon.analysis.sipmsg import SipMsgSettings, SipMsgTracker
        tracker = RegisterTracker(RegisterSettings(), 1, records.append)
        others = SipMsgTracker(SipMsgSettings(sip_options="yes"), 1, records.append)
        tick = float("-inf")
        start = time.perf_counter()
        for d in messages:
            if d.ts >= tick:
                tick = d.ts + 1.0
                tracker.advance(d.ts)
                others.advance(d.ts)
            msg = parse_sip(d.payload)
            tracker.on_message(d, msg)
            others.on_message(d, msg)
        tracker.finish()
        others.finish()
        elapsed = time.perf_counter() - start
        if tracker.stats.errors:
            raise SystemExit(f"tracker errors: {tracker.counters()}")
    kinds: dict[str, int] = {}
    for record in records:
        kinds[type(record).__name__] = kinds.get(type(record).__name__, 0) + 1
    return {"elapsed": elapsed, "messages": len(messages), "registers": registers,
            "records": len(records), "kinds": kinds, "base_rss_kib": base_rss,
            "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def engine_run(users: int) -> dict:
    """The flood through the engine as a sensor builds it, records made into queue items."""
    import gc
    import resource
    import tempfile

    from voipmon.analysis.settings import engine_for
    from voipmon.config.settings import AnalysisSettings
    from voipmon.packet.synth import udp_frame
    from voipmon.records.kinds import item_bytes

    frames = [(ts, 1, udp_frame(src, sport, dst, dport, payload))
              for ts, src, sport, dst, dport, payload in flood(users)]
    gc.collect()
    gc.freeze()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    items: list[bytes] = []
    engine = engine_for(AnalysisSettings(sip_register="yes", sip_options="yes"), id_sensor=1,
                        spooldir=tempfile.mkdtemp(), on_cdr=lambda cdr: None,
                        on_record=lambda record: items.append(item_bytes(record)))
    start = time.perf_counter()
    engine.feed_all(frames)
    engine.finish()
    elapsed = time.perf_counter() - start
    counters = engine.counters()
    if counters["errors"] or counters.get("register.errors"):
        raise SystemExit(f"engine errors: {counters}")
    return {"elapsed": elapsed, "frames": len(frames), "records": len(items),
            "item_bytes": sum(map(len, items)), "base_rss_kib": base_rss,
            "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def hold(users: int) -> dict:
    """Bytes that ``users`` registrations (one login each, still active) keep alive."""
    import gc
    import tracemalloc

    from voipmon.analysis.registers import RegisterSettings, RegisterTracker
    from voipmon.analysis.sip import parse_sip
    from voipmon.packet.datagram import IPPROTO_UDP, Datagram

    server = socket.inet_aton(REGISTRAR[0])
    tracemalloc.start()
    tracker = RegisterTracker(RegisterSettings(max_registrations=max(users, 1)), 1,
                              lambda record: None)
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(users):
        ip = f"10.{1 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}"
        client = socket.inet_aton(ip)
        ts = T0 + i * 0.001
        user, callid = f"u{i}", f"c{i}@bench"
        for d in (Datagram(ts, IPPROTO_UDP, client, 5060, server, 5060,
                           request(user, callid, 1, ip, True), 1, ()),
                  Datagram(ts + 0.0005, IPPROTO_UDP, server, 5060, client, 5060,
                           answer(user, callid, 1, ip, 200), 1, ())):
            tracker.on_message(d, parse_sip(d.payload))
    tracker.advance(T0 + users * 0.001 + 60)     # transactions and their memory expire
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    stats = tracker.counters()
    return {"users": users, "active": stats["active"], "pending": stats["pending"],
            "bytes": held}


def run_child(argv: list[str]) -> tuple[dict, int]:
    proc = subprocess.run(argv, stdout=subprocess.PIPE, check=True)
    return json.loads(proc.stdout), 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--hold", type=int, default=200_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.hold if args.child == "hold" else args.users)))
        return 0
    me = [sys.executable, os.path.abspath(__file__), "--users", str(args.users),
          "--hold", str(args.hold), "--child"]
    samples: dict[str, list[dict]] = {"parse": [], "track": [], "engine": [], "calls": []}
    for _ in range(args.runs):       # interleaved, so that load changes touch all alike
        for mode in samples:
            samples[mode].append(json.loads(subprocess.run(
                me + [mode], stdout=subprocess.PIPE, check=True).stdout))
    held = json.loads(subprocess.run(me + ["hold"], stdout=subprocess.PIPE,
                                     check=True).stdout)

    def median(mode: str, key: str = "elapsed") -> float:
        return statistics.median(s[key] for s in samples[mode])

    track = samples["track"][0]
    messages, registers, records = track["messages"], track["registers"], track["records"]
    t_parse, t_track, t_calls = median("parse"), median("track"), median("calls")
    print(f"flood: {args.users} users, {registers} REGISTERs, {messages} messages; "
          f"median of {args.runs} runs; {os.cpu_count()} CPUs")
    print(f"records: {records} {json.dumps(track['kinds'], sort_keys=True)}")
    print(f"{'what':52} {'seconds':>8} {'messages/s':>11} {'records/s':>10} {'peak RSS':>10}")
    print(f"{'reference: parse_sip alone':52} {t_parse:8.3f} {messages / t_parse:11,.0f} "
          f"{'':>10} {max(s['rss_kib'] for s in samples['parse']) / 1024:7.1f} MB")
    print(f"{'parse_sip + REGISTER tracking (+ sip_msg tracker)':52} {t_track:8.3f} "
          f"{messages / t_track:11,.0f} {records / t_track:10,.0f} "
          f"{max(s['rss_kib'] for s in samples['track']) / 1024:7.1f} MB")
    print(f"{'  tracking alone (difference)':52} {t_track - t_parse:8.3f} "
          f"{messages / (t_track - t_parse):11,.0f}")
    whole = samples["engine"][0]
    t_engine = median("engine")
    print(f"{'the engine as a sensor runs it, records as queue items':52} {t_engine:8.3f} "
          f"{whole['frames'] / t_engine:11,.0f} {whole['records'] / t_engine:10,.0f} "
          f"{max(s['rss_kib'] for s in samples['engine']) / 1024:7.1f} MB  (frames/s; "
          f"{whole['records']} records, {whole['item_bytes'] / whole['records']:.0f} bytes "
          f"each)")
    frames = samples["calls"][0]["frames"]
    print(f"{'reference: call engine, bundled SIPp capture x40':52} {t_calls:8.3f} "
          f"{frames / t_calls:11,.0f} frames/s")
    growth = (max(s["rss_kib"] - s["base_rss_kib"] for s in samples["track"]) -
              max(s["rss_kib"] - s["base_rss_kib"] for s in samples["parse"])) / 1024
    print(f"peak RSS growth of the tracking run over the parse run: {growth:.1f} MB")
    print(f"memory held per active registration: {held['bytes'] / held['users']:.0f} bytes "
          f"({held['users']} registrations: {held['bytes'] / 2**20:.1f} MiB; "
          f"1M would take {held['bytes'] / held['users'] * 1e6 / 2**30:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
