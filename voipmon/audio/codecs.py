"""RTP payload formats: which FFmpeg decoder, and how a payload splits into frames.

``codec_for(pt, rtpmap)`` names the codec of a payload type (static, or dynamic through the
SDP's ``a=rtpmap`` that the engine keeps per flow in ``PayloadMap``). Each ``Codec`` says
which decoder of PyAV (FFmpeg) plays it and splits a payload into frames: ``(ticks, data)``
pairs, ``ticks`` the frame's length on the RTP clock (None when only the decoder knows),
``data`` None for a frame that carries no sound (G.729 Annex B and G.723.1 SID frames,
AMR SID and NO_DATA): those are silence at their place, like lost packets and comfort noise.

Payload formats handled here, from the RTP side:

- G.711 µ/A-law, L16: samples; G.722: one byte per tick of its 8 kHz RTP clock (RFC 3551
  keeps 8000 for G.722 although it samples at 16 kHz; the decoder gives 16 kHz);
- G.726-16/24/32/40: RFC 3551 packs codewords from the least significant bit, FFmpeg's
  ``g726le`` (``AAL2-G726-*`` is the other order, ``g726``);
- G.729: 10-byte frames (8 for G.729D) and a trailing 2-byte Annex B SID frame;
- G.723.1: 24/20-byte frames, 4-byte SID, the frame type in each frame's first byte;
- GSM: 33-byte frames; iLBC: 38-byte (20 ms) or 50-byte (30 ms) frames, the mode told by
  the size (RFC 3952);
- AMR and AMR-WB: RFC 4867 single-channel payloads, octet-aligned or bandwidth-efficient
  (told apart by which parse accounts for every byte, as the SDP's fmtp is not kept),
  turned into the storage format (ToC byte, speech bits) that FFmpeg decodes;
- Opus, Speex: one packet per packet; the decoder says how long.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from voipmon.analysis.sdp import STATIC_PT

Frames = list[tuple[int | None, bytes | None]]

#: Payload types that carry no audio of their own: silence where they are.
SILENT_NAMES = frozenset({"cn", "telephone-event"})
# AMR speech bits per frame type (RFC 4867 / 3GPP TS 26.101 and 26.201); SID frames
# (NB 8, WB 9) and NO_DATA (15) are silence.
AMR_NB_BITS = (95, 103, 118, 134, 148, 159, 204, 244, 39)
AMR_WB_BITS = (132, 177, 253, 285, 317, 365, 397, 461, 477, 40)
_G723_SIZES = (24, 20, 4, 1)


@dataclass(frozen=True)
class Codec:
    """How to decode one RTP payload format."""

    name: str                     # as the SDP names it, e.g. "PCMU", "AMR-WB"
    decoder: str                  # FFmpeg decoder
    clock: int                    # RTP clock rate (ticks per second)
    rate: int                     # sample rate of the decoded audio
    split: Callable[[bytes], Frames]
    channels: int = 1
    joinable: bool = True         # frames in a row decode as one packet
    options: dict[str, str] = field(default_factory=dict)
    frame_options: Callable[[bytes], dict[str, str]] | None = None


class Unsupported(Exception):
    """A payload type that has no decoder here; the message names it."""


def _per_byte(ticks_per_byte: float) -> Callable[[bytes], Frames]:
    def split(payload: bytes) -> Frames:
        return [(round(len(payload) * ticks_per_byte), payload)] if payload else []
    return split


def _fixed(size: int, ticks: int, sid: int = 0, alt: tuple[int, int] | None = None
           ) -> Callable[[bytes], Frames]:
    """Frames of ``size`` bytes; a trailing ``sid``-byte frame is silence; ``alt`` is
    another (size, ticks) used when ``size`` does not divide the payload."""
    def split(payload: bytes) -> Frames:
        n = len(payload)
        step, length = size, ticks
        if sid and n % size == sid:
            n -= sid
        elif n % size and alt is not None and n % alt[0] == 0:
            step, length = alt
        frames: Frames = [(length, payload[i:i + step])
                          for i in range(0, n - n % step, step)]
        if n < len(payload):
            frames.append((length, None))   # SID: comfort noise, played as silence
        return frames
    return split


def _g723(payload: bytes) -> Frames:
    frames: Frames = []
    pos = 0
    while pos < len(payload):
        size = _G723_SIZES[payload[pos] & 3]
        if pos + size > len(payload):
            break
        frames.append((240, payload[pos:pos + size] if size > 4 else None))
        pos += size
    return frames


def _ilbc(payload: bytes) -> Frames:
    size, ticks = (50, 240) if len(payload) % 38 and not len(payload) % 50 else (38, 160)
    return [(ticks, payload[i:i + size]) for i in range(0, len(payload) // size * size, size)]


def _ilbc_options(frame: bytes) -> dict[str, str]:
    return {"block_align": str(len(frame))}


def _single(payload: bytes) -> Frames:
    return [(None, payload)] if payload else []


# -- AMR (RFC 4867) -------------------------------------------------------------------------

def _amr_octet(payload: bytes, bits: tuple[int, ...]) -> list[tuple[int, bytes]] | None:
    """(frame type, storage frame) of an octet-aligned payload; None if it is not one."""
    if len(payload) < 2 or payload[0] & 0x0F:
        return None
    tocs = []
    pos = 1
    while pos < len(payload):
        toc = payload[pos]
        pos += 1
        if toc & 0x03:
            return None
        tocs.append(toc)
        if not toc & 0x80:
            break
    else:
        return None
    out = []
    for toc in tocs:
        ft = toc >> 3 & 0x0F
        size = (bits[ft] + 7) // 8 if ft < len(bits) else 0
        if ft < 15 and ft >= len(bits):
            return None
        out.append((ft, bytes([toc & 0x7C]) + payload[pos:pos + size]))
        pos += size
    return out if pos == len(payload) else None


def _amr_efficient(payload: bytes, bits: tuple[int, ...]) -> list[tuple[int, bytes]] | None:
    """The same for a bandwidth-efficient payload: fields are packed without padding."""
    total = len(payload) * 8
    value = int.from_bytes(payload, "big")

    def take(pos: int, n: int) -> int:
        return (value >> (total - pos - n)) & ((1 << n) - 1) if n else 0

    pos = 4                                  # CMR
    tocs = []
    while True:
        if pos + 6 > total:
            return None
        toc = take(pos, 6)
        pos += 6
        tocs.append(toc)
        if not toc & 0x20:
            break
    out = []
    for toc in tocs:
        ft = toc >> 1 & 0x0F
        if ft < 15 and ft >= len(bits):
            return None
        n = bits[ft] if ft < len(bits) else 0
        if pos + n > total:
            return None
        pad = (-n) % 8
        data = (take(pos, n) << pad).to_bytes((n + pad) // 8, "big") if n else b""
        out.append((ft, bytes([(toc & 0x1F) << 2]) + data))
        pos += n
    return out if total - pos < 8 else None


def _amr(bits: tuple[int, ...], ticks: int) -> Callable[[bytes], Frames]:
    speech = len(bits) - 1        # frame types below this are speech; the last is SID

    def split(payload: bytes) -> Frames:
        frames = _amr_octet(payload, bits)
        if frames is None:
            frames = _amr_efficient(payload, bits)
        if frames is None:
            return []
        return [(ticks, storage if ft < speech else None) for ft, storage in frames]
    return split


# -- the table ------------------------------------------------------------------------------

def _g726(name: str, bits: int) -> Codec:
    decoder = "g726" if name.startswith("AAL2") else "g726le"
    return Codec(name, decoder, 8000, 8000, _per_byte(8 / bits),
                 options={"bits_per_coded_sample": str(bits)})


def _table() -> dict[str, Codec]:
    table = {
        "PCMU": Codec("PCMU", "pcm_mulaw", 8000, 8000, _per_byte(1)),
        "PCMA": Codec("PCMA", "pcm_alaw", 8000, 8000, _per_byte(1)),
        "G722": Codec("G722", "g722", 8000, 16000, _per_byte(1)),
        "G729": Codec("G729", "g729", 8000, 8000, _fixed(10, 80, sid=2, alt=(8, 80))),
        "G723": Codec("G723", "g723_1", 8000, 8000, _g723),
        "GSM": Codec("GSM", "gsm", 8000, 8000, _fixed(33, 160)),
        "ILBC": Codec("iLBC", "ilbc", 8000, 8000, _ilbc, joinable=False,
                      frame_options=_ilbc_options),
        "AMR": Codec("AMR", "amrnb", 8000, 8000, _amr(AMR_NB_BITS, 160)),
        "AMR-WB": Codec("AMR-WB", "amrwb", 16000, 16000, _amr(AMR_WB_BITS, 320)),
        "OPUS": Codec("opus", "opus", 48000, 48000, _single, channels=2, joinable=False),
    }
    for bits in (2, 3, 4, 5):
        for prefix in ("", "AAL2-"):
            name = f"{prefix}G726-{bits * 8}"
            table[name] = _g726(name, bits)
    table["G721"] = table["G726-32"]
    table["G729A"] = table["G729AB"] = table["G729B"] = table["G729"]
    return table


CODECS = _table()


def codec_for(pt: int, rtpmap: dict[int, tuple[str, int]]) -> Codec | None:
    """The codec of payload type ``pt``; None for comfort noise and telephone-events.
    Raises ``Unsupported`` (naming it) when nothing here can decode it."""
    name, clock = rtpmap.get(pt) if pt >= 35 and pt in rtpmap else \
        STATIC_PT.get(pt, rtpmap.get(pt, ("", 0)))
    if pt == 2 and not name:
        name, clock = "G721", 8000
    key = name.upper()
    if key.lower() in SILENT_NAMES:
        return None
    if key == "SPEEX":
        rate = clock or 8000
        return Codec("speex", "speex", rate, rate, _single, joinable=False)
    if key == "L16":
        rate = clock or 44100
        channels = 2 if pt == 10 else 1
        return Codec("L16", "pcm_s16be", rate, rate, _per_byte(1 / (2 * channels)),
                     channels=channels)
    codec = CODECS.get(key)
    if codec is None:
        label = f"{name}/{clock}" if name and clock else name or "unknown"
        raise Unsupported(f"codec {label} (payload type {pt}) cannot be decoded")
    return codec
