"""voipmon.web.site's service: HTTPS with the central's certificate (http_tls), on a real
socket on loopback; when it is chosen; and the warning for clear text off loopback."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.testing import EventLoggingObserver, MemoryReactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, ResponseFailed, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from voipmon.config import CentralSettings, load_central_config
from voipmon.protocols import tls
from voipmon.test.fakes import FakeStore
from voipmon.web.site import make_web_service, uses_tls


def settings(spool: str, **keys: str) -> CentralSettings:
    text = f"server_bind = 127.0.0.1\nserver_password = pw\nspooldir = {spool}\n"
    text += "".join(f"{key} = {value}\n" for key, value in keys.items())
    return load_central_config("c.conf", text=text)


@implementer(IPolicyForHTTPS)
class Pinned:
    """Trust exactly the certificate with this SHA-256 (as a sensor pins the central)."""

    def __init__(self, fingerprint: str) -> None:
        self.pin = tls.parse_fingerprint(fingerprint)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return tls.PinningClientCreator(hostname.decode(), self.pin)


class ChoiceTests(SynchronousTestCase):
    def test_auto_is_https_unless_loopback(self) -> None:
        spool = self.mktemp()
        for keys, expected in (
            ({}, False),
            ({"http_bind": "::1"}, False),
            ({"http_bind": "0.0.0.0", "http_user": "u", "http_password": "p"}, True),
            ({"http_tls": "yes"}, True),
            ({"http_bind": "0.0.0.0", "http_user": "u", "http_password": "p",
              "http_tls": "no"}, False),
        ):
            self.assertEqual(uses_tls(settings(spool, **keys).http), expected, keys)

    def test_bad_value_names_what_is_allowed(self) -> None:
        with self.assertRaises(Exception) as caught:
            settings(self.mktemp(), http_tls="maybe")
        self.assertIn("http_tls", str(caught.exception))
        self.assertIn("auto", str(caught.exception))

    def test_clear_text_off_loopback_is_a_warning(self) -> None:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        config = settings(self.mktemp(), http_bind="0.0.0.0", http_user="u",
                          http_password="p", http_tls="no")
        make_web_service(config.http, config.spool.spooldir, MemoryReactor(), FakeStore(),
                         channels=None)
        lines = [formatEvent(e) for e in observer]
        self.assertTrue(any("clear text" in line for line in lines), lines)
        self.assertIn("web page and API on http://0.0.0.0:8080/", lines)

    def test_https_needs_the_certificate(self) -> None:
        config = settings(self.mktemp(), http_tls="yes")
        self.assertRaises(ValueError, make_web_service, config.http, config.spool.spooldir,
                          MemoryReactor(), FakeStore(), channels=None)


class HttpsTests(TestCase):
    """The page and the API over TLS 1.2+ with the channel's certificate, on loopback."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        spool = os.path.abspath(self.mktemp())
        os.makedirs(spool)
        self.certificate = tls.load_or_create(spool)
        store = FakeStore()
        yield store.upsert_sensor({"id_sensor": 4, "name": "edge-4"})
        config = settings(spool, http_tls="yes", http_port="8080")
        self.service = make_web_service(config.http, spool, reactor, store, channels=None, port=0,
                                        certificate=self.certificate)
        listening: defer.Deferred = defer.Deferred()
        self.service.startService()
        self.service._waitingForPort.addCallback(lambda p: (listening.callback(p), p)[1])
        self.addCleanup(self.service.stopService)
        port = yield listening
        self.port = port.getHost().port

    def get(self, url: bytes, agent: Any) -> defer.Deferred:
        return agent.request(b"GET", url, Headers({b"connection": [b"close"]}))

    @defer.inlineCallbacks
    def test_api_over_https(self) -> Any:
        agent = Agent(reactor, contextFactory=Pinned(self.certificate.fingerprint))
        response = yield self.get(b"https://127.0.0.1:%d/api/sensors" % self.port, agent)
        body = json.loads((yield readBody(response)))
        self.assertEqual(response.code, 200)
        self.assertEqual([s["name"] for s in body["sensors"]], ["edge-4"])

    @defer.inlineCallbacks
    def test_plain_http_gets_nothing(self) -> Any:
        yield self.assertFailure(
            self.get(b"http://127.0.0.1:%d/api/sensors" % self.port, Agent(reactor)),
            ResponseFailed)

    @defer.inlineCallbacks
    def test_another_certificate_is_refused(self) -> Any:
        other = tls.fingerprint(tls.generate_self_signed("elsewhere")[0])
        yield self.assertFailure(
            self.get(b"https://127.0.0.1:%d/api/sensors" % self.port,
                     Agent(reactor, contextFactory=Pinned(other))),
            ResponseFailed)
        self.flushLoggedErrors()
