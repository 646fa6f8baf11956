"""/metrics as a twisted.web resource: ``generate_latest`` rendered on the reactor thread.

prometheus_client's own ``twisted.MetricsResource`` is a WSGI resource that collects on a
thread-pool thread (and imports the global reactor); voipmon's collectors read plain
counters that the reactor thread changes, so they are read on that thread instead. One
render reads every source once; ``bench/metrics.py`` measures what a scrape costs.

``metrics_resource`` is what a site mounts at /metrics (gzip when the scraper accepts it,
as Prometheus does); ``metrics_site`` is a site of its own for a port of its own.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.server import Request

log = Logger()


class MetricsResource(resource.Resource):
    """The registry's exposition, in Prometheus's text format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry
        self.failures = 0

    def render_GET(self, request: Request) -> bytes:
        try:
            body = generate_latest(self.registry)
        except Exception:
            self.failures += 1
            log.failure("collecting the metrics failed")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"collecting the metrics failed; the server's log says why\n"
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body


def metrics_resource(registry: CollectorRegistry) -> resource.Resource:
    """``MetricsResource``, gzip-encoded for a client that accepts it."""
    return resource.EncodingResourceWrapper(MetricsResource(registry),
                                            [server.GzipEncoderFactory()])


def metrics_site(registry: CollectorRegistry) -> server.Site:
    """A site serving only /metrics (404 elsewhere), for a port of its own."""
    root = resource.Resource()
    root.putChild(b"metrics", metrics_resource(registry))
    site = server.Site(root)
    site.displayTracebacks = False
    return site


__all__ = ["MetricsResource", "metrics_resource", "metrics_site"]
