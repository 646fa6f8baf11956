"""Where packets come from: one module per kind of source, behind one interface.

- ``interfaces``: ``ISource`` (a Twisted service delivering ``(ts, linktype, frame)`` to
  an ``IFrameSink``: the engine, the mirroring uplink or the legacy mirror sender),
  ``IFlowControlledSink`` (a bounded sink that pauses a source able to wait);
- ``capture_file``: ``--read-pcap`` (pcap or pcapng), a push producer;
- ``live``: pypcap on the host's interfaces (the BPF filter: ``voipmon.packet.bpf``);
- ``registry``: every source by name, and ``from_config``, the one way to build the
  sensor's source (the sensor service and the legacy mirror sender alike).
"""
