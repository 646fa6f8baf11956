"""A call in progress as listcalls shows it: duration so far, and per RTP stream its
received and lost packets, jitter and MOS up to now. Pure; read from the live state.

``listcalls`` (the management port, the central's tunnel, a mirroring sensor's calls on
the central) asks every couple of seconds, so this stays cheap: the packets a flow has
buffered are analysed first (``RtpFlow.drain``, what the engine does anyway once a flow
holds ``CHUNK`` of them; the analysis carries its state across chunks, so draining
early changes no final figure), then each stream's counters are read as they are.

MOS is read without settling the simulated jitter buffers: their last frames stay open
for late arrivals (``_Buffer.REORDER``), and settling them now would count a frame still
on its way as lost. So the live MOS counts the losses accounted for so far (the
histogram and the run of lost slots in progress), a few dozen frames behind the
newest packet, and never changes what the CDR will say.
"""

from __future__ import annotations

from typing import Any

from voipmon.analysis import mos
from voipmon.analysis.calls import Call, ip_text
from voipmon.analysis.rtp import RtpFlow, StreamAnalyzer

JB_NAMES = ("mos_f1", "mos_f2", "mos_adapt")


def call_state(call: Call) -> str:
    if call.bye_ts is not None:
        return "bye"
    if call.connect_time is not None:
        return "answered"
    if call.last_code >= 300:
        return "failed"
    if call.last_code >= 180:
        return "ringing"
    return "invite"


def durations(call: Call, now: float) -> dict[str, float | None]:
    """Seconds since the INVITE and since the answer (None: not answered), at capture
    time ``now`` (the engine's clock, which moves in steps of a second; never before the
    call's last packet)."""
    last_rtp = call.last_rtp()
    now = max(now, call.last_ts, call.first_ts, last_rtp if last_rtp is not None else now)
    connected = call.connect_time
    return {"duration": round(now - call.first_ts, 3),
            "connect_duration": None if connected is None
            else round(max(now - connected, 0.0), 3)}


def stream_now(flow: RtpFlow, ssrc: int, stream: StreamAnalyzer,
               connected: bool) -> dict[str, Any]:
    """One stream's figures so far (see the module docstring)."""
    received = stream.n
    expected = stream.ext_max - stream.ext_min + 1 if received else 0
    lost = max(0, expected - (received - stream.dups))
    payload = stream.main_payload() if received else -1
    scores = {}
    for name, jb in zip(JB_NAMES, stream.jb, strict=True):
        frames, bursts = mos.loss_counts(jb.hist)
        if jb.run:
            frames, bursts = frames + jb.run, bursts + 1
        scores[name] = (mos.mos_from_counts(frames, bursts, received, payload, connected)
                        if received else None)
    return {
        "ssrc": f"0x{ssrc:08x}", "direction": flow.direction,
        "src": f"{ip_text(flow.src)}:{flow.sport}", "dst": f"{ip_text(flow.dst)}:{flow.dport}",
        "codec": flow.pmap.name(payload) if payload >= 0 else "",
        "received": received, "lost": lost,
        "loss": round(100.0 * lost / expected, 2) if expected > 0 else 0.0,
        "jitter": round(stream.j, 2), "maxjitter": round(stream.max_j, 2),
        "avgjitter": round(stream.mean_j, 2), **scores,
        "last": stream.last_t,
    }


def streams_now(call: Call) -> list[dict[str, Any]]:
    """Every RTP stream of ``call`` so far (flows still open analysed up to now)."""
    connected = call.connect_time is not None
    out = []
    for flows, live in ((call.flows, True), (call.retired, False)):
        for flow in flows.values():
            if live and flow.pending():
                flow.drain()
            for ssrc, stream in flow.streams.items():
                out.append(stream_now(flow, ssrc, stream, connected))
    return out


__all__ = ["call_state", "durations", "stream_now", "streams_now"]
