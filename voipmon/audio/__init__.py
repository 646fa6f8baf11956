"""A call's audio: RTP payloads decoded with PyAV (FFmpeg), both directions in stereo.

A package apart from ``voipmon.analysis`` because it needs PyAV (FFmpeg's decoders) and
the engine must not: sensors analyse calls without ever importing it. It builds on the
engine through its observer hooks (``voipmon.analysis.observe``), so which packets are
whose is decided once, by the engine. ``render.render_audio`` is the entry point;
``codecs`` knows the payload formats, ``stream`` decodes and places one stream, ``mixer``
mixes and writes WAV or Ogg/Opus.
"""
