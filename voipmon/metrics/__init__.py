"""Metrics: one seam for every component's figures, and their Prometheus exposition.

- ``catalog``: every metric's name, type, labels and help (the names are a contract).
- ``snapshot``: ``Figures``, ``Histogram`` (plain ints), ``Snapshot`` (what a sensor pushes
  in STATS, versioned JSON).
- ``sources``: ``IMetricsSource`` (the seam), ``MetricsRegistry`` (the sources of one
  process), ``CountersSource`` (a component's flat counters bound by a table),
  ``HistogramSource``, ``Carried``, ``SnapshotTaker``; ``bindings``: the tables.
- ``calls``: ``CallOutcomes`` (CDRs made, calls by bye code, MOS and loss histograms).
- ``fleet``: the central's view of its sensors' snapshots: up, staleness, restarts,
  failover, health.
- ``collectors``: prometheus_client collectors and registries for /metrics.
- ``resource``: /metrics as a twisted.web resource rendered on the reactor thread.

This package imports prometheus_client only in ``collectors`` and ``resource``.
"""
