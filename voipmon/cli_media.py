"""``voipmon-analyze --quality`` and ``--audio``: what the CLI prints and writes per call.

Both ride on the CLI's one engine run over each file, as observers
(``voipmon.analysis.observe``): ``QualityPrinter`` prints each call's quality over time as
it closes (``voipmon.analysis.timeline``: per stream and interval, packets, lost, max and
mean jitter, MOS; then the marks), ``AudioFiles`` writes each call's audio into a
directory (``voipmon.audio.render``), one file per call, says what it could not play
and counts those calls (the command's exit status 3).
"""

from __future__ import annotations

import json
import os
import re
from typing import IO, Any

from voipmon.analysis.calls import Call
from voipmon.analysis.timeline import QualityObserver
from voipmon.records.cdr import Cdr
from voipmon.records.keys import make_cdr_uid

_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def quality_table(timeline: dict[str, Any]) -> list[str]:
    """The lines of one call's quality over time: a block per stream, then the marks."""
    interval = timeline["interval"]
    lines = [f"quality of {timeline['callid']} from {timeline['start_iso']}, "
             f"{timeline['duration']:.2f} s, interval {interval:g} s, MOS over "
             f"{timeline['mos_window']:g} s"]
    for stream in timeline["streams"]:
        cdr = stream["cdr"]
        lines.append(f"  stream {stream['index']} {stream['side'] or '?'} {stream['saddr']}:"
                     f"{stream['sport']} -> {stream['daddr']}:{stream['dport']} ssrc "
                     f"{stream['ssrc']} {stream['codec']}: received {cdr['received']} lost "
                     f"{cdr['lost']} max jitter {cdr['maxjitter']:.2f} ms")
        lines.append(f"  {'t s':>9} {'packets':>7} {'lost':>5} {'jit max':>8} "
                     f"{'jit mean':>8} {'MOS f1':>6} {'f2':>4} {'adapt':>5}")
        offset = stream["offset"]
        for i, packets in enumerate(stream["packets"]):
            lines.append(
                f"  {(offset + i) * interval:9.2f} {packets:7d} {stream['lost'][i]:5d} "
                f"{_num(stream['jitter_max'][i], '8.2f')} "
                f"{_num(stream['jitter_mean'][i], '8.2f')} "
                f"{_num(stream['mos_f1'][i], '6.2f')} {_num(stream['mos_f2'][i], '4.2f')} "
                f"{_num(stream['mos_adapt'][i], '5.2f')}")
    if timeline["marks"]:
        lines.append("  marks: " + ", ".join(
            f"{m['t']:.3f} s {m['label']} ({m['side']})" for m in timeline["marks"]))
    return lines


class QualityPrinter(QualityObserver):
    """Prints the quality over time of each call of a run as its CDR closes."""

    def __init__(self, out: IO[str], interval: float, as_json: bool = False):
        super().__init__(interval)
        self.out = out
        self.as_json = as_json

    def emit(self, cdr: Cdr) -> None:
        timeline = self.timeline(cdr)
        self.discard(cdr)
        if self.as_json:
            self.out.write(json.dumps({"quality": timeline}, sort_keys=True) + "\n")
        else:
            self.out.write("\n".join(quality_table(timeline)) + "\n")


def audio_name(callid: str, uid: str, fmt: str) -> str:
    """A file name for a call's audio: its Call-ID made safe, and its uid (a Call-ID may
    be reused by a later call)."""
    return f"{_UNSAFE.sub('_', callid)[:120]}-{uid[:8]}.{fmt}"


class AudioFiles:
    """Each call's audio written to ``directory`` (``observer``, the engine's observer),
    finished and reported by ``emit(cdr)`` as each CDR closes: the file on ``out``, or why
    there is none on ``err``; ``unwritten`` counts the calls without a file."""

    def __init__(self, directory: str, fmt: str, out: IO[str], err: IO[str]):
        from voipmon.audio.render import AudioObserver  # PyAV only when audio is asked for

        self._directory = directory
        self._fmt = fmt
        self._out = out
        self._err = err
        self.unwritten = 0
        self.observer = AudioObserver(self._output, fmt)

    def _output(self, call: Call) -> str:
        return os.path.join(self._directory, audio_name(
            call.callid, make_cdr_uid(call.callid, call.first_ts), self._fmt))

    def emit(self, cdr: Cdr) -> None:
        info = self.observer.finish(cdr)
        path = os.path.join(self._directory,
                            audio_name(cdr.callid, cdr.sensor_cdr_uid, self._fmt))
        if info is not None and info["written"]:
            notes = f" ({'; '.join(info['notes'])})" if info["notes"] else ""
            self._out.write(f"{path}: {info['duration']:.2f} s of {cdr.callid}{notes}\n")
        else:
            self.unwritten += 1
            why = "; ".join(info["notes"]) if info else "nothing to play"
            self._err.write(f"voipmon-analyze: no audio for {cdr.callid}: {why}\n")
