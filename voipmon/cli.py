"""``voipmon-analyze``: run the call analysis engine over capture files, print the CDRs.

Each FILE (pcap or pcapng) is analysed by its own engine, as if it were a capture of its
own: calls still open at its end are closed there. CDRs are printed as they close, as a
readable table, or with ``--json`` as one JSON object per line (the CDR record of the
design, ``Cdr.to_json``). ``--spool DIR`` also writes each call's SIP and RTP pcaps
under DIR. ``--quality`` prints each call's quality over time instead (per stream and
``--interval``: packets, lost, jitter, MOS; SIP and DTMF marks), ``--audio DIR`` writes
each call's audio into DIR (``voipmon.cli_media``). On a terminal, big files show a
progress line on stderr.

An unreadable file is reported on stderr with the reason and the others are still
analysed; the exit status is then 1 (2 for bad options). With ``--audio``, a call whose
audio could not be written (no RTP, no payloads kept, a codec without decoder) is named on
stderr with the reason, and the exit status is 3 if nothing else went wrong (0 when every
call's file was written). A corrupt or truncated capture
(pcap, pcapng, either gzip'd) is analysed up to the damage: its calls are printed, then
one line names the file and the byte offset, and the exit status is 1. Like any Unix
tool, the command ends quietly when its output is closed (``voipmon-analyze F | head``):
SIGPIPE ends it as it ends ``cat``.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from twisted.python import usage

from voipmon.analysis.engine import Engine
from voipmon.cli_media import AudioFiles, QualityPrinter
from voipmon.counters import nested
from voipmon.packet.readers import CaptureFormatError, CaptureReader
from voipmon.records.cdr import Cdr, RtpStream
from voipmon.records.times import iso_ms
from voipmon.spool.writer import SpoolWriter

#: Exit statuses: all went well; a file could not be read (or only up to damage); bad
#: options; with --audio, a call's audio could not be written (and nothing worse).
EXIT_OK, EXIT_FILE, EXIT_USAGE, EXIT_NO_AUDIO = 0, 1, 2, 3

#: Files at least this big get a progress line on a terminal.
PROGRESS_BYTES = 8 << 20
_BATCH = 65536


class Options(usage.Options):
    synopsis = ("Usage: voipmon-analyze [--json] [--spool DIR] [--id-sensor N] "
                "[--sipport P ...] [--quality [--interval S] | --audio DIR "
                "[--audio-format wav|ogg]] FILE...")
    longdesc = ("Analyse SIP/RTP capture files (pcap or pcapng) and print one CDR per call: "
                "a table by default, one JSON object per line with --json. Exit status: 0 "
                "when all went well, 1 when a file could not be read (or only up to damage), "
                "2 for bad options, 3 with --audio when a call's audio could not be "
                "written (each such call is named on stderr with the reason).")
    optFlags = [
        ["json", "j", "Print one JSON object per line (the CDR record)."],
        ["orphans", None, "With --json, also print RTP streams seen without signalling."],
        ["stats", None, "Print the engine's counters to stderr after each file."],
        ["quality", "q", "Print each call's quality over time (per stream and interval: "
                         "packets, lost, jitter, MOS; SIP and DTMF marks) instead of its CDR."],
    ]
    optParameters = [
        ["spool", "s", None, "Write each call's SIP and RTP pcaps under this directory."],
        ["id-sensor", "i", 0, "Sensor id to put in the CDRs (0..65535).", int],
        ["savertp", None, "yes", "With --spool: RTP packets to keep: yes, no or header."],
        ["rtptimeout", None, 300.0, "Close a call after this many seconds without RTP.",
         float],
        ["interval", None, 1.0, "With --quality: the interval, in seconds.", float],
        ["audio", "a", None, "Write each call's audio into this directory (stereo, caller "
                             "left, callee right) instead of printing its CDR."],
        ["audio-format", None, "wav", "With --audio: wav or ogg (Ogg/Opus)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["sipport"] = []

    def opt_sipport(self, value: str) -> None:
        """A UDP/TCP port carrying SIP (repeatable, or comma separated; default 5060)."""
        for part in value.replace(";", ",").split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or not 0 < int(part) < 65536:
                raise usage.UsageError(f"--sipport: {part!r} is not a port (1..65535)")
            self["sipport"].append(int(part))

    def parseArgs(self, *files: str) -> None:
        if not files:
            raise usage.UsageError("give at least one capture FILE")
        self["files"] = list(files)

    def postOptions(self) -> None:
        if not 0 <= self["id-sensor"] <= 65535:
            raise usage.UsageError(f"--id-sensor {self['id-sensor']}: allowed 0..65535")
        if self["savertp"] not in ("yes", "no", "header"):
            raise usage.UsageError(f"--savertp {self['savertp']}: allowed yes, no, header")
        if self["rtptimeout"] <= 0:
            raise usage.UsageError("--rtptimeout must be positive")
        if self["spool"] is not None and os.path.exists(self["spool"]) and \
                not os.path.isdir(self["spool"]):
            raise usage.UsageError(f"--spool {self['spool']}: not a directory")
        if not self["sipport"]:
            self["sipport"] = [5060]
        if self["quality"] and self["audio"] is not None:
            raise usage.UsageError("--quality and --audio: one at a time")
        if not 0.001 <= self["interval"] <= 3600:
            raise usage.UsageError("--interval: allowed 0.001..3600 seconds")
        if self["audio-format"] not in ("wav", "ogg"):
            raise usage.UsageError(f"--audio-format {self['audio-format']}: allowed wav, ogg")
        if self["audio"] is not None:
            try:
                os.makedirs(self["audio"], exist_ok=True)
            except OSError as e:
                raise usage.UsageError(f"--audio {self['audio']}: {e.strerror or e}")


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table_header() -> str:
    return (f"{'calldate (UTC)':24} {'dur s':>8} {'caller':>16} -> {'called':<16} "
            f"{'code':>4} {'bye':>3} {'sip caller -> called':<44} streams")


def table_row(cdr: Cdr) -> list[str]:
    sip = f"{cdr.sipcallerip}:{cdr.sipcallerport} -> {cdr.sipcalledip}:{cdr.sipcalledport}"
    lines = [f"{iso_ms(cdr.calldate):24} {cdr.duration:8.2f} {cdr.caller[:16]:>16} -> "
             f"{cdr.called[:16]:<16} {cdr.lastSIPresponseNum:>4} {cdr.bye:>3} {sip:<44} "
             f"{len(cdr.rtp)}  {cdr.callid}"]
    for i, s in enumerate(cdr.rtp):
        side = "a" if i == cdr.a_index else "b" if i == cdr.b_index else " "
        lines.append("    " + stream_row(s, side))
    return lines


def stream_row(s: RtpStream, side: str = " ") -> str:
    return (f"{side} {s.saddr}:{s.sport} -> {s.daddr}:{s.dport} ssrc 0x{s.ssrc:08X} "
            f"{s.codec or s.payload} recv {s.received} lost {s.lost} "
            f"jitter avg {s.avgjitter:.2f} max {s.maxjitter:.2f} ms "
            f"MOS {_fmt(s.mos_f1, '.1f')}/{_fmt(s.mos_f2, '.1f')}/{_fmt(s.mos_adapt, '.1f')}")


class _Counting:
    """A file wrapper that counts the bytes read and reports each read (the reader reads
    in 1 MiB chunks), for the progress line."""

    def __init__(self, f: IO[bytes]):
        self.f = f
        self.count = 0
        self.name = getattr(f, "name", "<stream>")
        self.on_read: Callable[[int], Any] | None = None

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.count += len(data)
        if self.on_read is not None:
            self.on_read(self.count)
        return data

    def seekable(self) -> bool:  # a gzip'd capture is rewound and read through GzipFile
        return self.f.seekable()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self.f.seek(offset, whence)
        self.count = position
        return position

    def close(self) -> None:
        self.f.close()


class Progress:
    """``\\r``-updated progress on a terminal; silent elsewhere."""

    def __init__(self, stream: IO[str], name: str, size: int, enabled: bool):
        self.stream, self.name, self.size = stream, name, max(size, 1)
        self.enabled = enabled
        self.start = time.monotonic()
        self.shown = False

    def update(self, done: int, frames: int) -> None:
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self.start, 1e-6)
        pct = min(100.0, 100.0 * done / self.size)
        self.stream.write(f"\r{os.path.basename(self.name)}: {pct:5.1f}%  "
                          f"{frames} frames  {frames / elapsed:,.0f} frames/s ")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 78 + "\r")
            self.stream.flush()


def analyse_file(path: str, options: Options, emit: Callable[[Cdr], Any],
                 emit_orphan: Callable[[RtpStream], Any], err: IO[str],
                 observer: Any = None) -> str:
    """Analyse one file, emitting its CDRs; what went wrong ("" if nothing), naming the file
    and, for a corrupt or truncated capture, the byte offset where the calls stop."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    counting = _Counting(raw)
    try:
        reader = CaptureReader(counting, name=path)  # type: ignore[arg-type]
    except (CaptureFormatError, OSError) as e:
        raw.close()
        return str(e)
    spool = SpoolWriter(options["spool"]) if options["spool"] else None
    engine = Engine(id_sensor=options["id-sensor"], on_cdr=emit, on_orphan=emit_orphan,
                    sip_ports=options["sipport"], spool=spool, savertp=options["savertp"],
                    rtptimeout=options["rtptimeout"], observer=observer)
    size = os.fstat(raw.fileno()).st_size
    progress = Progress(err, path, size, err.isatty() and size >= PROGRESS_BYTES)
    problem = ""
    try:
        if reader.format == "pcap":
            # the engine takes a classic pcap in the reader's batches, one per buffer
            # (readers.batches); the progress line follows the reader's reads
            if progress.enabled:
                counting.on_read = lambda done: progress.update(done, reader.frames)
            engine.feed_all(reader)
        else:  # pcapng: fed in batches, the progress line updated between them
            records = iter(reader)
            frames = 0
            while True:
                n = engine.feed_all(itertools.islice(records, _BATCH))
                frames += n
                if n < _BATCH:
                    break
                progress.update(counting.count, frames)
    except CaptureFormatError as e:
        problem = str(e)  # names the file and the byte offset
    except OSError as e:  # a read error: the bytes before it were taken
        problem = f"{path}: at byte offset {counting.count}: {e.strerror or e}"
    finally:
        progress.clear()
        engine.finish()  # the calls read so far are printed before the error
        reader.close()
        raw.close()
    if options["stats"]:
        err.write(f"{path}: {reader.frames} frames; " +
                  json.dumps(nested(engine.counters()), sort_keys=True) + "\n")
    if not problem and reader.truncated:
        problem = "; ".join(reader.notes)  # each names the file and the byte offset
    elif problem:
        problem += "; stopped there"
    if problem:
        calls = engine.stats.cdrs
        problem += f" ({calls} call{'' if calls == 1 else 's'} reported)"
    return problem


def media_observer(options: Options, out: IO[str], err: IO[str]
                   ) -> tuple[Any, Any, AudioFiles | None]:
    """The engine observer and CDR handler of ``--quality`` or ``--audio`` (or Nones),
    and with ``--audio`` the ``AudioFiles`` that counts the calls it could not write."""
    if options["quality"]:
        printer = QualityPrinter(out, options["interval"], options["json"])
        return printer, printer.emit, None
    if options["audio"] is not None:
        files = AudioFiles(options["audio"], options["audio-format"], out, err)
        return files.observer, files.emit, files
    return None, None, None


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None,
         err: IO[str] | None = None) -> int:
    """The ``voipmon-analyze`` command; returns the exit status."""
    if out is None and hasattr(signal, "SIGPIPE"):
        # stdout closed early (``| head``): end quietly, killed by SIGPIPE as Unix tools are
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    out = out or sys.stdout
    err = err or sys.stderr
    options = Options()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        err.write(f"voipmon-analyze: {e}\n{options.getSynopsis()}\n")
        return EXIT_USAGE
    orphans: list[RtpStream] = []
    as_json = options["json"]

    def emit(cdr: Cdr) -> None:
        if as_json:
            out.write(json.dumps(cdr.to_json()) + "\n")
        else:
            out.write("\n".join(table_row(cdr)) + "\n")

    def emit_orphan(stream: RtpStream) -> None:
        if as_json:
            if options["orphans"]:
                out.write(json.dumps({"orphan_stream": stream.to_json()}) + "\n")
        else:
            orphans.append(stream)

    status = EXIT_OK
    unwritten = 0
    for path in options["files"]:
        observer, file_emit, audio = media_observer(options, out, err)
        if not as_json:
            out.write(f"== {path}\n" + ("" if observer else f"{table_header()}\n"))
        orphans.clear()
        problem = analyse_file(path, options, file_emit or emit, emit_orphan, err, observer)
        if orphans:
            out.write("RTP streams without signalling (not tied to a call):\n")
            for stream in orphans:
                out.write("    " + stream_row(stream) + "\n")
        out.flush()  # what was read comes first, then what stopped it
        if problem:
            err.write(f"voipmon-analyze: {problem}\n")
            err.flush()
            status = EXIT_FILE
        if audio is not None:
            unwritten += audio.unwritten
    if status == EXIT_OK and unwritten:
        return EXIT_NO_AUDIO
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
