"""The central's web site: the API under /api, the page's static files at /, HTTP Basic.

Basic auth protects everything (page and API) when credentials are configured; they must
be when ``http_bind`` is not loopback (the central's Options refuse such a config, and
:func:`make_site` refuses it again). Off loopback it is HTTPS by default (``http_tls``),
with the certificate the sensors' channel uses. Responses carry headers that keep the page
from being framed or from running anything but its own scripts. A path with a control
character once percent-decoded (NUL, a line break, an escape ...) is a 400 and one that is
not UTF-8 a 404, for every route, before any route sees it.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application import internet, service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.web import resource, server, static

from voipmon.config import is_loopback
from voipmon.config.settings import HttpSettings
from voipmon.counters import Counters, family
from voipmon.metrics.fleet import Health
from voipmon.metrics.resource import metrics_resource
from voipmon.web.api import ApiResource, ICallView, find_sensor, write_json
from voipmon.web.audio import AudioView
from voipmon.web.callmedia import CACHE_DIRECTORY, CallMedia, MediaCache
from voipmon.web.pcaps import CallPcaps, SensorLink
from voipmon.web.quality import QualityView

if TYPE_CHECKING:
    from voipmon.central.metrics import CentralMetrics

log = Logger()

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"content-security-policy": b"default-src 'self'; img-src 'self' data:; "
                                b"style-src 'self'; script-src 'self'; frame-ancestors 'none'",
}
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


class StaticFiles(static.File):
    """The page's files; no directory listings."""

    def directoryListing(self) -> resource.Resource:
        return resource.NoResource("no directory listings")


class Guard(resource.Resource):
    """The site's root: adds the security headers and, with credentials, requires HTTP
    Basic before handing the request to ``inner`` (except for the top-level names in
    ``open_paths``: /metrics when the operator says it needs none)."""

    def __init__(self, inner: resource.Resource, user: str = "", password: str = "",
                 open_paths: frozenset[bytes] = frozenset()) -> None:
        super().__init__()
        self.inner = inner
        self.credentials = (user.encode(), password.encode()) if user or password else None
        self.open_paths = open_paths

    def getChildWithDefault(self, path: bytes, request: Any) -> resource.Resource:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        if (self.credentials is not None and path not in self.open_paths
                and not self._authorized(request)):
            return _Unauthorized()
        segments = [path, *request.postpath]  # percent-decoded already
        if any(_CONTROL.search(segment) for segment in segments):
            return _Refused(400, "the path has a control character")
        try:
            for segment in segments:
                segment.decode("utf-8")
        except UnicodeDecodeError:
            return _Refused(404, "no such resource (the path is not UTF-8)")
        return self.inner.getChildWithDefault(path, request)

    def _authorized(self, request: Any) -> bool:
        header = request.getHeader(b"authorization") or b""
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).partition(b":")
        except ValueError:
            return False
        want_user, want_password = self.credentials
        # compare both, always, in constant time
        ok_user = hmac.compare_digest(user, want_user)
        ok_password = hmac.compare_digest(password, want_password)
        return bool(sep) and ok_user and ok_password


class _Refused(resource.Resource):
    """A JSON error answer to any method."""

    isLeaf = True

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self.status = status
        self.message = message

    def render(self, request: Any) -> Any:
        write_json(request, self.status, {"error": self.message})
        return server.NOT_DONE_YET


class _Unauthorized(_Refused):
    def __init__(self) -> None:
        super().__init__(401, "authentication required (HTTP Basic)")

    def render(self, request: Any) -> Any:
        request.setHeader(b"www-authenticate", b'Basic realm="voipmon", charset="UTF-8"')
        return super().render(request)


class CountingSite(server.Site):
    """A site that counts its responses by status code (the central's metrics)."""

    displayTracebacks = False

    def __init__(self, root: resource.Resource) -> None:
        super().__init__(root)
        self.responses: dict[int, int] = {}

    def log(self, request: Any) -> None:
        super().log(request)
        code = request.code if isinstance(request.code, int) else 0
        self.responses[code] = self.responses.get(code, 0) + 1

    def counters(self) -> Counters:
        return family("responses", dict(sorted(self.responses.items())))


def call_views(media: CallMedia) -> dict[bytes, ICallView]:
    """The resources of one call computed from its pcap: quality over time and audio."""
    return {b"quality": QualityView(media), b"audio": AudioView(media)}


def make_site(store: Any, pcaps: CallPcaps, user: str = "", password: str = "",
              bind: str = "127.0.0.1", static_dir: str = STATIC_DIR,
              metrics: resource.Resource | None = None,
              metrics_auth: bool = True,
              health: Callable[[], list[Health]] | None = None,
              media: CallMedia | None = None,
              mirror_calls: Any = None) -> CountingSite:
    """The site; refuses to serve beyond loopback without credentials. ``metrics``: the
    /metrics resource, behind the page's credentials unless ``metrics_auth`` is False;
    ``health``: the sensors' health for /api/sensors (CentralMetrics.health); ``media``
    serves the calls' quality and audio (absent: those are 404s); ``mirror_calls``: a
    mirroring sensor's calls in progress (ApiResource)."""
    if not is_loopback(bind) and not (user and password):
        raise ValueError(f"http_bind = {bind} is not loopback: http_user and http_password "
                         "are required")
    files = StaticFiles(static_dir)
    files.putChild(b"api", ApiResource(store, pcaps, health,
                                       call_views(media) if media is not None else None,
                                       mirror_calls))
    if metrics is not None:
        files.putChild(b"metrics", metrics)
    open_paths = frozenset({b"metrics"}) if metrics is not None and not metrics_auth else (
        frozenset())
    return CountingSite(Guard(files, user, password, open_paths))


def metrics_only_site(metrics: resource.Resource, user: str = "", password: str = "",
                      auth: bool = True) -> CountingSite:
    """A site of its own for /metrics (``http_metrics_port``), 404 elsewhere."""
    root = resource.Resource()
    root.putChild(b"metrics", metrics)
    if auth:
        return CountingSite(Guard(root, user, password))
    return CountingSite(Guard(root))


def uses_tls(http: HttpSettings) -> bool:
    """HTTPS or not: ``http_tls`` yes/no, or auto (HTTPS unless bound to loopback)."""
    if http.http_tls == "auto":
        return not is_loopback(http.http_bind)
    return http.http_tls == "yes"


def make_web_service(http: HttpSettings, spooldir: str, reactor: Any, store: Any, *,
                     channels: Any, central_name: str = "", connector: Any = None,
                     mirror_calls: Any = None, port: int | None = None,
                     certificate: Any = None, metrics: CentralMetrics | None = None,
                     metrics_port: int | None = None) -> Any:
    """The central's web service on ``http_bind:http_port`` (None when http_port = 0).

    Pcaps are served from ``spooldir``, or asked of the sensor over its channel
    (``channels``, the registry of sensors connected here; ``central_name`` is this
    central as the sensors table names it), or with ``connector`` (a ManagerConnector,
    only when ``sensor_manager_dial`` is on) through the sensor's management port; so
    are the calls' quality and audio (cached in ``spooldir/media``);
    ``mirror_calls(id_sensor)`` lists a mirroring sensor's calls in progress; ``port``
    overrides http_port (0: ephemeral, for tests); ``certificate`` (a
    tls.ServerCertificate, the channel's) serves HTTPS when :func:`uses_tls` says so.
    With ``metrics`` (the central's), /metrics is served there, or on
    ``http_metrics_port`` (``metrics_port`` overrides it) alone, and the site's responses
    are counted.
    """
    if not http.http_port:
        return None

    link = SensorLink(channels, lambda id_sensor: find_sensor(store, id_sensor),
                      central_name, connector if http.sensor_manager_dial else None)
    pcaps = CallPcaps(spooldir, link)
    exposition = None if metrics is None else metrics_resource(metrics.prometheus())
    apart = http.http_metrics_port if metrics_port is None else metrics_port
    media = CallMedia(pcaps, MediaCache(os.path.join(spooldir, CACHE_DIRECTORY),
                                        http.http_media_cache << 20), reactor)
    site = make_site(store, pcaps, http.http_user, http.http_password, http.http_bind,
                     media=media,
                     metrics=exposition if not apart else None,
                     metrics_auth=http.http_metrics_auth,
                     health=metrics.health if metrics is not None else None,
                     mirror_calls=mirror_calls)
    svc = _listen(http, reactor, site, http.http_port if port is None else port, certificate,
                  "web page and API")
    if metrics is None or exposition is None:
        return svc
    metrics.bind_http(site.counters)
    if not apart:
        return svc
    both = service.MultiService()
    svc.setServiceParent(both)
    alone = metrics_only_site(exposition, http.http_user, http.http_password,
                              auth=http.http_metrics_auth)
    metrics.bind_http(alone.counters)
    _listen(http, reactor, alone, apart, certificate, "Prometheus metrics",
            "metrics").setServiceParent(both)
    both.setName("http")
    return both


def _listen(http: HttpSettings, reactor: Any, site: server.Site, number: int,
            certificate: Any, what: str, path: str = "") -> Any:
    host = http.http_bind
    secure = uses_tls(http)
    if secure:
        if certificate is None:
            raise ValueError("http_tls: HTTPS needs the central's certificate")
        endpoint: Any = endpoints.SSL4ServerEndpoint(reactor, number, certificate.options(),
                                                     interface=host)
    else:
        if not is_loopback(host):
            log.warn("http_tls = no on http_bind = {bind}: credentials, calls and pcaps cross "
                     "the network in clear text; terminate TLS in front of it",
                     bind=host)
        kind = endpoints.TCP6ServerEndpoint if ":" in host else endpoints.TCP4ServerEndpoint
        endpoint = kind(reactor, number, interface=host)
    shown = f"[{host}]" if ":" in host else host
    log.info("{what} on {url}", what=what,
             url=f"{'https' if secure else 'http'}://{shown}:{number}/{path}")
    svc = internet.StreamServerEndpointService(endpoint, site)
    svc.setName("http" if not path else "metrics")
    return svc
