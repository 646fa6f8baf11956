"""Hostile paths on the central's web port: control characters and odd percent-encodings in
every route (static files and the API) get a 4xx answer, never a 500, and nothing outside
the page's files is ever served. Raw HTTP/1.1 on a real socket, so the bytes are exactly
the ones written here (a client library would refuse or re-encode most of them)."""

from __future__ import annotations

import itertools
import re

from twisted.internet import defer, endpoints, protocol, reactor

from voipmon.test.test_web_api import WebBase

# Every byte a path may not carry raw: C0 controls and DEL, percent-encoded, in both cases.
CONTROLS = [f"%{c:02x}" for c in [*range(32), 127]] + ["%0A", "%0D", "%1B", "%7F"]
# Other encodings a server trips on: bad UTF-8, an overlong '.', encoded separators and
# dot segments, a bare '%', a '%' that encodes nothing, a Unicode escape IIS knew.
ODD = ["%ff", "%c0%ae", "%e2%80%ae", "%2e%2e", "%2e%2e%2f%2e%2e%2f", "%2f", "%5c", "%25",
       "%", "%zz", "%u0000", "..%00", "%00%2f..%2f..%2fetc%2fpasswd"]
# Control bytes sent raw in the request line: the HTTP parser itself must refuse them.
RAW = [b"\x00", b"\x01", b"\x7f", b"\x1b[31m"]


class Answer(protocol.Protocol):
    """Sends one raw request and keeps the whole answer until the server closes."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = bytearray()
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.done.callback(bytes(self.data))


class HostilePathTests(WebBase):
    timeout = 120

    def raw(self, target: bytes, method: bytes = b"GET", body: bytes = b"") -> defer.Deferred:
        """``method target`` over a new connection; (status, body) of the answer."""
        port = int(self.base.rsplit(":", 1)[1])
        request = (method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Connection: close\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body) + body)
        answer = Answer(request)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        d = endpoints.connectProtocol(endpoint, answer)
        d.addCallback(lambda _: answer.done)

        def status(data: bytes) -> tuple[int, bytes]:
            match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
            self.assertIsNotNone(match, (target, data[:200]))
            return int(match[1]), data.partition(b"\r\n\r\n")[2]

        return d.addCallback(status)

    def targets(self) -> list[tuple[bytes, bool]]:
        """(target, whether it carries a control character) for every route and injection."""
        cdr = self.ids[self.local.callid]
        routes = ["/", "/index.html", "/app.js", "/style.css", "/api", "/api/sensors",
                  "/api/sensors/1", "/api/cdrs", f"/api/cdrs/{cdr}", f"/api/cdrs/{cdr}/pcap",
                  f"/api/cdrs/{cdr}/sip", "/api/nothing", "/no-such-file.js"]
        out = []
        for route, injection in itertools.product(routes, CONTROLS + ODD):
            control = injection in CONTROLS or "%00" in injection
            head, _, last = route.rpartition("/")
            out.append(((route + injection).encode(), control))                 # at the end
            out.append((f"{head}/{injection}{last}".encode(), control))         # at the start
            out.append(((route.rstrip("/") + "/" + injection).encode(), control))  # a segment
            if last:                                                            # in the middle
                middle = len(last) // 2
                out.append((f"{head}/{last[:middle]}{injection}{last[middle:]}".encode(),
                            control))
        for name, injection in itertools.product(
                ["limit", "offset", "caller", "called", "callid", "id_sensor", "from", "to",
                 "mos_below", "x%00"], CONTROLS[:3] + ["%7f", "%ff", "%c0%ae", "a%00b"]):
            out.append((f"/api/cdrs?{name}={injection}".encode(), False))
        out.append((b"/index.html%00.js", True))  # the report's own example
        return out

    @defer.inlineCallbacks
    def test_no_path_gets_a_500(self):
        """Every route with control characters (percent-encoded) answers 400 or 404, every
        odd encoding a 4xx or a page, and none a 500; no answer leaks a file from outside."""
        semaphore = defer.DeferredSemaphore(8)
        targets = self.targets()
        self.assertGreater(len(targets), 1000)
        answers = yield defer.gatherResults(
            [semaphore.run(self.raw, target) for target, _ in targets], consumeErrors=True)
        for (target, control), (status, body) in zip(targets, answers, strict=True):
            self.assertNotEqual(status, 500, target)
            self.assertLess(status, 500, target)
            if control:
                self.assertIn(status, (400, 404), target)
            self.assertNotIn(b"root:", body, target)

    @defer.inlineCallbacks
    def test_the_reported_path(self):
        """``GET /index.html%00.js`` (a 500 before) is a 400 saying why, in JSON."""
        status, body = yield self.raw(b"/index.html%00.js")
        self.assertEqual(status, 400)
        self.assertIn(b"control character", body)

    @defer.inlineCallbacks
    def test_raw_control_bytes_and_other_methods(self):
        """Control bytes sent raw, and PATCH/POST to hostile API paths: 4xx, never 500."""
        for raw, path in itertools.product(RAW, [b"/", b"/api/cdrs", b"/api/sensors/1"]):
            status, _ = yield self.raw(path + raw)
            self.assertIn(status, (400, 404), (path, raw))
        for method, target in itertools.product(
                [b"PATCH", b"POST", b"DELETE"],
                [b"/api/sensors/1%00", b"/api/sensors/%00", b"/api%00/sensors/1"]):
            status, _ = yield self.raw(target, method, b'{"name": "x"}')
            self.assertIn(status, (400, 404, 405), (method, target))

    @defer.inlineCallbacks
    def test_good_paths_still_served(self):
        """The checks do not refuse the page, an encoded ordinary character or the API."""
        for target, want in ((b"/", 200), (b"/index%2ehtml", 200), (b"/app.js", 200),
                             (b"/api/sensors", 200), (b"/api/cdrs?callid=%2a", 200)):
            status, _ = yield self.raw(target)
            self.assertEqual(status, want, target)

    @defer.inlineCallbacks
    def test_hostile_json_bodies(self):
        """The API reads JSON with the channel's decoder: deep nesting, NaN, bad UTF-8 are
        a 400 naming the problem (deep nesting was a RecursionError and a 500)."""
        for body, word in ((b"[" * 30000 + b"]" * 30000, b"nested"),
                           (b'{"name": ' + b"[" * 5000 + b"]" * 5000 + b"}", b"nested"),
                           (b'{"name": NaN}', b"NaN"), (b'{"name": "\xff"}', b"utf-8")):
            status, answer = yield self.raw(b"/api/sensors/2", b"PATCH", body)
            self.assertEqual(status, 400, body[:40])
            self.assertIn(word, answer, body[:40])
