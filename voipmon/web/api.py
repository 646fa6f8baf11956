"""The central's HTTP API (design 2.4), as one twisted.web resource over IStore.

``GET /api/sensors`` (each with ``health``: the central's live view of it, from its metrics,
or null for a sensor this central has not seen since it started), ``PATCH
/api/sensors/<id>`` (``{"name": ...}``), ``GET /api/cdrs``
(filters parsed and validated by the store's query: a bad one is a 400 naming it),
``GET /api/cdrs/<id>``, ``GET /api/cdrs/<id>/pcap`` and ``GET /api/cdrs/<id>/sip`` (the
call's SIP messages for the ladder diagram), the call views given to it (``views``: e.g.
``/api/cdrs/<id>/quality`` and ``/audio``, ``voipmon.web.quality`` and ``.audio``),
``GET /api/sensors/<id>/calls`` (the calls in progress on that sensor: its ``listcalls``,
asked over its channel; for a mirroring sensor the central's own engine for it answers),
``GET /api/stats`` (the dashboard's figures: ``voipmon.store.stats``; each names the
``/api/cdrs`` query that lists its calls).

SIP that is not a call (``voipmon.store.recordread``; filters and paging as the calls'):
``GET /api/registrations?user=&ip=&state=&from=&to=&current=yes`` (register_state: the
history, or with ``current=yes`` each registration's current state),
``GET /api/register_failed?user=&ip=&response=``, ``GET /api/register_time_info``,
``GET /api/sip_messages?method=OPTIONS&qualify=no&ip=`` (sip_msg), ``GET /api/messages``
(MESSAGE) and ``GET /api/alerts?ip=&kind=`` (brute force, scans, possible compromise).

Every error is JSON ``{"error": message}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server
from zope.interface import Interface

from voipmon.metrics.fleet import Health
from voipmon.protocols.wire import parse_json
from voipmon.web.ladder import MAX_SIP_PCAP, sip_messages
from voipmon.web.pcaps import CallPcaps, PcapUnavailable, sensor_label

log = Logger()
MAX_BODY = 64 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def write_json(request: Any, status: int, body: Any) -> None:
    data = json.dumps(body, sort_keys=True).encode() + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % len(data))
    request.write(data)
    request.finish()


def _id(text: bytes, what: str) -> int:
    if not text.isdigit() or len(text) > 19:
        shown = text.decode("utf-8", "replace")
        raise ApiError(400, f"{what} must be a whole number, not {shown!r}")
    return int(text)


def find_sensor(store: Any, id_sensor: int) -> defer.Deferred:
    """The store's dict of one sensor, or None."""
    d = store.list_sensors()
    return d.addCallback(lambda sensors: next(
        (s for s in sensors if s.get("id_sensor") == id_sensor), None))


class ICallView(Interface):
    """A resource of one call, ``/api/cdrs/<id>/<name>`` (GET)."""

    def render(request, cdr):
        """Answer ``request`` about the stored call ``cdr`` (the API's dict of it); a
        Deferred that fires once the answer is under way or done. Raise ``ApiError`` or
        ``PcapUnavailable`` for an answer the user should see."""


#: /api/<name> -> (record kind, the answer's key)
RECORD_PATHS = {b"registrations": ("register_state", "registrations"),
                b"register_failed": ("register_failed", "register_failed"),
                b"register_time_info": ("register_time_info", "register_time_info"),
                b"sip_messages": ("sip_msg", "sip_messages"),
                b"messages": ("message", "messages"),
                b"alerts": ("alert", "alerts")}


class ApiResource(resource.Resource):
    """Everything under /api. ``pcaps`` is a CallPcaps (its ``link`` asks the sensors);
    ``views`` maps a name to the ``ICallView`` serving ``/api/cdrs/<id>/<name>``;
    ``mirror_calls(id_sensor)`` lists the calls in progress of a mirroring sensor
    connected here (None: not connected), from the central's engine for it."""

    isLeaf = True

    def __init__(self, store: Any, pcaps: CallPcaps,
                 health: Callable[[], list[Health]] | None = None,
                 views: Mapping[bytes, ICallView] | None = None,
                 mirror_calls: Any = None) -> None:
        super().__init__()
        self.store = store
        self.pcaps = pcaps
        self.health = health
        self.views = dict(views or {})
        self.mirror_calls = mirror_calls

    def render(self, request: Any) -> Any:
        d = defer.maybeDeferred(self._route, request)
        d.addErrback(self._error, request)
        return server.NOT_DONE_YET

    def _error(self, failure: Any, request: Any) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        if getattr(request, "startedWriting", False):
            # a body was already under way: cut the connection so the client sees a
            # truncated download, not a complete-looking corrupt file
            log.warn("{uri}: aborted mid-body: {problem}", uri=request.uri,
                     problem=failure.getErrorMessage())
            request.channel.transport.abortConnection()
            return
        exc = failure.value
        if isinstance(exc, ApiError | PcapUnavailable):
            write_json(request, exc.status, {"error": exc.message})
        elif isinstance(exc, ValueError):
            write_json(request, 400, {"error": str(exc)})
        else:
            log.failure("{method} {uri} failed", failure, method=request.method,
                        uri=request.uri)
            write_json(request, 500, {"error": "internal error; see the central's log"})

    @defer.inlineCallbacks
    def _route(self, request: Any) -> Any:
        path = [part for part in request.postpath if part]
        method = request.method
        if path == [b"sensors"]:
            self._allow(method, b"GET")
            sensors = yield self.store.list_sensors()
            write_json(request, 200, {"sensors": self._with_health(sensors)})
        elif len(path) == 3 and path[0] == b"sensors" and path[2] == b"calls":
            self._allow(method, b"GET")
            id_sensor = _id(path[1], "a sensor id")
            body = yield self._calls(id_sensor)
            write_json(request, 200, body)
        elif len(path) == 2 and path[0] == b"sensors":
            self._allow(method, b"PATCH", b"GET")
            id_sensor = _id(path[1], "a sensor id")
            if method == b"PATCH":
                yield self._rename(request, id_sensor)
            sensor = yield find_sensor(self.store, id_sensor)
            if sensor is None:
                raise ApiError(404, f"no sensor {id_sensor}")
            write_json(request, 200, {"sensor": sensor})
        elif path == [b"stats"]:
            self._allow(method, b"GET")
            stats = yield self.store.cdr_stats(dict(request.args))
            write_json(request, 200, stats)
        elif path == [b"cdrs"]:
            self._allow(method, b"GET")
            args = dict(request.args)
            cdrs = yield self.store.list_cdrs(args)
            limit = int(args.get(b"limit", [b"100"])[-1] or 100)
            offset = int(args.get(b"offset", [b"0"])[-1] or 0)
            write_json(request, 200, {"cdrs": cdrs, "limit": limit, "offset": offset})
        elif len(path) == 1 and path[0] in RECORD_PATHS:
            self._allow(method, b"GET")
            kind, key = RECORD_PATHS[path[0]]
            args = dict(request.args)
            rows = yield self.store.list_records(kind, args)
            limit = int(args.get(b"limit", [b"100"])[-1] or 100)
            offset = int(args.get(b"offset", [b"0"])[-1] or 0)
            write_json(request, 200, {key: rows, "limit": limit, "offset": offset})
        elif len(path) in (2, 3) and path[0] == b"cdrs":
            self._allow(method, b"GET")
            cdr = yield self._cdr(_id(path[1], "a call id"))
            if len(path) == 2:
                write_json(request, 200, {"cdr": cdr})
            elif path[2] == b"pcap":
                yield self._pcap(request, cdr)
            elif path[2] == b"sip":
                messages = yield self._sip(cdr)
                write_json(request, 200, {"messages": messages})
            elif path[2] in self.views:
                yield self.views[path[2]].render(request, cdr)
            else:
                raise ApiError(404, f"no such resource {request.path.decode('utf-8', 'replace')}")
        else:
            raise ApiError(404, f"no such resource {request.path.decode('utf-8', 'replace')}")

    def _with_health(self, sensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The store's sensors, each with this central's view of its health."""
        seen = {h.id_sensor: h.to_json() for h in self.health()} if self.health else {}
        return [{**sensor, "health": seen.get(sensor.get("id_sensor"))} for sensor in sensors]

    @staticmethod
    def _allow(method: bytes, *allowed: bytes) -> None:
        if method not in allowed:
            raise ApiError(405, f"method {method.decode('ascii', 'replace')} not allowed here; "
                                f"use {', '.join(m.decode() for m in allowed)}")

    @defer.inlineCallbacks
    def _rename(self, request: Any, id_sensor: int) -> Any:
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if ctype != b"application/json":
            raise ApiError(415, "send the new name as JSON: {\"name\": \"...\"} with "
                                "Content-Type: application/json")
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        try:
            body = parse_json(raw)
        except ValueError as exc:
            raise ApiError(400, f"the body is not JSON: {exc}")
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip() or len(name) > 256 \
                or any(ord(c) < 32 for c in name):
            raise ApiError(400, "name must be a non-empty text of at most 256 characters "
                                "without control characters")
        found = yield self.store.rename_sensor(id_sensor, name.strip())
        if not found:
            raise ApiError(404, f"no sensor {id_sensor}")

    @defer.inlineCallbacks
    def _cdr(self, cdr_id: int) -> Any:
        cdr = yield self.store.get_cdr(cdr_id)
        if cdr is None:
            raise ApiError(404, f"no call {cdr_id}")
        return cdr

    @defer.inlineCallbacks
    def _calls(self, id_sensor: int) -> Any:
        """The calls in progress of one sensor, asked where they live."""
        sensor = yield find_sensor(self.store, id_sensor)
        if sensor is None:
            raise ApiError(404, f"no sensor {id_sensor}")
        label = sensor_label(sensor, id_sensor)
        if sensor.get("mode") == "mirror":
            calls = self.mirror_calls(id_sensor) if self.mirror_calls is not None else None
            if calls is None:
                raise PcapUnavailable(502, f"{label} mirrors its packets to another central "
                                           "or is offline: its calls are analysed there")
            source = "central"
        else:
            raw = yield self.pcaps.link.query(id_sensor, "listcalls")
            try:
                calls = parse_json(raw)
            except ValueError as exc:
                raise PcapUnavailable(502, f"{label} answered listcalls with no JSON: {exc}")
            source = "sensor"
        return {"id_sensor": id_sensor, "name": sensor.get("name"), "source": source,
                "calls": calls}

    @defer.inlineCallbacks
    def _pcap(self, request: Any, cdr: dict[str, Any]) -> Any:
        name = "".join(c if c.isalnum() or c in "-_.@" else "_"
                       for c in (cdr.get("fbasename") or f"call-{cdr.get('id')}"))[:150]

        def headers(size: int) -> None:
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"application/vnd.tcpdump.pcap")
            request.setHeader(b"content-length", b"%d" % size)
            request.setHeader(b"content-disposition",
                              f'attachment; filename="{name}.pcap"'.encode())
            request.setHeader(b"cache-control", b"no-store")

        gone = []
        sending = self.pcaps.send(cdr, request, headers)

        def client_left(failure: Any) -> None:
            gone.append(failure)
            sending.cancel()   # the fetch stops (on the sensor too)

        request.notifyFinish().addErrback(client_left)
        try:
            yield sending
        except defer.CancelledError:
            if gone:
                return
            raise
        if not gone and not request.finished:
            request.finish()

    @defer.inlineCallbacks
    def _sip(self, cdr: dict[str, Any]) -> Any:
        data = yield self.pcaps.fetch(cdr, MAX_SIP_PCAP, sip_only=True)
        ports = tuple({cdr.get("sipcallerport") or 5060, cdr.get("sipcalledport") or 5060, 5060})
        return sip_messages(data, ports)
