"""``GET /api/cdrs/<id>/audio``: a call's audio, stereo WAV (``?format=ogg``: Ogg/Opus).

Rendered by ``voipmon.audio.render`` from the call's pcap (caller left, callee right,
losses and silence suppression as silence where the RTP timestamps put them) through
``CallMedia``, cached, and served as a file (Range requests work, so a player can seek).
Audio is as sensitive as the pcap: the same guard protects it, and every request is
logged with the user and the call. What cannot be played is a 422 whose message says why
(the codec that has no decoder, or ``savertp = header``), never a broken file.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import server, static

from voipmon.analysis.replay import CallNotFound
from voipmon.audio.render import AudioUnavailable, output_rate, render_audio
from voipmon.records.cdr import Cdr
from voipmon.web.api import ApiError
from voipmon.web.callmedia import CallMedia, sip_ports

log = Logger()
TYPES = {"wav": "audio/wav", "ogg": "audio/ogg"}


def audio_file(source: str, out: str, cdr: dict[str, Any], fmt: str) -> None:
    """Render the call's audio from its pcap ``source`` into ``out``."""
    try:
        render_audio(source, out, fmt, cdr.get("sensor_cdr_uid"),
                     rate=output_rate(Cdr.from_json(cdr)), sip_ports=sip_ports(cdr))
    except AudioUnavailable as exc:
        raise ApiError(422, f"call {cdr.get('id')} has no audio to play: {exc}")
    except CallNotFound as exc:
        raise ApiError(404, f"call {cdr.get('id')}: its pcap does not hold it ({exc})")


def request_user(request: Any) -> str:
    """The HTTP Basic user of ``request`` ("" when the site has no credentials)."""
    return request.getUser().decode("utf-8", "replace")


class AudioView:
    """The audio resource of one call (``ApiResource`` hands it the stored CDR)."""

    def __init__(self, media: CallMedia) -> None:
        self.media = media

    @defer.inlineCallbacks
    def render(self, request: Any, cdr: dict[str, Any]) -> Any:
        fmt = request.args.get(b"format", [b"wav"])[-1].decode("utf-8", "replace")
        if fmt not in TYPES:
            raise ApiError(400, "format must be wav or ogg")
        client = request.getClientAddress()
        log.info("audio of call {cdr_id} ({callid}, sensor {id_sensor}) as {audio_format} for user "
                 "{user!r} from {client}", cdr_id=cdr.get("id"), callid=cdr.get("callid"),
                 id_sensor=cdr.get("id_sensor"), audio_format=fmt, user=request_user(request),
                 client=getattr(client, "host", str(client)),
                 range=(request.getHeader(b"range") or b"").decode("ascii", "replace"))
        path = yield self.media.compute(cdr, f"audio.{fmt}",
                                        lambda source, out: audio_file(source, out, cdr, fmt))
        name = "".join(c if c.isalnum() or c in "-_.@" else "_"
                       for c in (cdr.get("fbasename") or f"call-{cdr.get('id')}"))[:150]
        request.setHeader(b"content-disposition", f'inline; filename="{name}.{fmt}"'.encode())
        request.setHeader(b"cache-control", b"private, no-cache")
        resource = static.File(path)
        resource.type = TYPES[fmt]
        resource.encoding = None
        body = resource.render(request)
        if body is not server.NOT_DONE_YET:
            request.write(body)
            request.finish()
