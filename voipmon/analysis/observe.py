"""Observers of the engine: what quality over time and audio see of a call's analysis.

The engine computes each stream's figures once (``rtp.StreamAnalyzer``, ``mos``). Features
that need more than the totals, such as per-interval quality and the audio of a call,
observe that same computation instead of repeating it:

- ``Engine(observer=...)`` takes an ``IAnalysisObserver``: it is told of every SIP message
  of a call and of every new RTP flow of a call, before the flow's first packet. It may
  set ``flow.observer`` (``IFlowObserver``) to hear of the flow's streams, and give the
  flow a frame tap in ``flow.pcap``/``flow.pcap1``: the sink the engine already fills with
  the call's RTP frames (see ``voipmon.spool.writer.PcapSink`` for what a sink takes).
- A stream's ``StreamAnalyzer.observer`` (``IStreamObserver``) sees each chunk with the
  per-packet figures the analyzer computed for it; each jitter buffer's ``observer``
  callable (``mos._Buffer``) sees each loss burst as it is counted.

Each hook is one ``is not None`` test per flow, stream or chunk, never per packet: with no
observer the engine does exactly what it did.
"""

from __future__ import annotations

from zope.interface import Interface


class IAnalysisObserver(Interface):
    """Told of the calls' SIP messages and RTP flows (``Engine(observer=...)``)."""

    def sip_message(call, datagram, msg, side):
        """``msg`` (a ``SipMessage`` in ``datagram``) of ``call`` was handled; ``side``
        is CALLER or CALLEE, who sent it."""

    def flow_started(call, flow, linktype):
        """``flow`` (an ``RtpFlow``) is a new RTP flow of ``call``, first seen in a frame
        of ``linktype``; its first packet follows."""


class IFlowObserver(Interface):
    """Set as ``RtpFlow.observer``: told of the flow's streams and payload maps."""

    def stream_started(flow, ssrc, analyzer):
        """A new stream (``analyzer``, a ``StreamAnalyzer``) of ``flow``, before its first
        chunk: the place to set ``analyzer.observer`` and its jitter buffers' observers."""

    def payload_map_changed(flow, pmap):
        """New SDP for the flow: packets from now on use ``pmap``; the earlier ones have
        been analysed with the old map."""


class IStreamObserver(Interface):
    """Set as ``StreamAnalyzer.observer``: each analysed chunk of one stream."""

    def packets(t, ext_seq, fresh, ext_ts, pt, marker, jitter, rated,
                counted):
        """Arrays of one chunk in arrival order: capture time ``t`` (s), extended sequence
        numbers and RTP timestamps, ``fresh`` (not a duplicate), payload type, marker bit;
        ``jitter`` is the RFC 3550 jitter (ms) after each packet where ``rated`` holds, and
        ``counted`` says which of those count for max and mean jitter."""
