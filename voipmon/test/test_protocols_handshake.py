"""Tests for voipmon.protocols.handshake (pure logic, no transport)."""

from __future__ import annotations

import itertools

from twisted.trial.unittest import SynchronousTestCase

from voipmon.protocols.handshake import (
    BAD_PASSWORD,
    CENTRAL_ROLE,
    CLOCK_SKEW,
    ID_OUT_OF_RANGE,
    NONCE_BYTES,
    PERMANENT,
    SENSOR_ROLE,
    UNSUPPORTED_COMPRESSION,
    UNSUPPORTED_VERSION,
    CentralProofFailed,
    ClientHandshake,
    Hello,
    Rejection,
    ServerHandshake,
    derive_key,
    describe_skew,
    make_proof,
)
from voipmon.protocols.wire import ProtocolError

KEY = derive_key("s3cret")
BINDING = b"B" * 32
CODECS = {"zstd", "gzip", "lzo", "none"}


def counter_bytes(tag: int):
    """Deterministic distinct 'random' bytes."""
    count = itertools.count()

    def random_bytes(n: int) -> bytes:
        return bytes([tag, next(count)]) * (n // 2)

    return random_bytes


def make_client(key: bytes = KEY, now: float = 1000.0, **overrides) -> ClientHandshake:
    params = dict(id_sensor=7, name="edge-1", version="0.1.0", mode="local",
                  compression="zstd", instance="ab" * 8, seconds=lambda: now,
                  random_bytes=counter_bytes(1))
    params.update(overrides)
    return ClientHandshake(key, **params)


def make_server(key: bytes = KEY, now: float = 1000.0, max_diff: float = 2.0) -> ServerHandshake:
    return ServerHandshake(key, max_diff, lambda: now, CODECS, random_bytes=counter_bytes(2))


class KeyAndProofTests(SynchronousTestCase):
    def test_key_is_stretched_and_stable(self) -> None:
        """The key is 32 bytes, differs per password and is never the password."""
        self.assertEqual(len(KEY), 32)
        self.assertEqual(derive_key("s3cret"), KEY)
        self.assertNotEqual(derive_key("s3cret2"), KEY)
        self.assertNotIn(b"s3cret", KEY)

    def test_proof_binds_every_input(self) -> None:
        """Changing any input (role, nonce, id, binding, key) changes the proof."""
        base = dict(key=KEY, role=SENSOR_ROLE, sensor_nonce=b"a" * 32, central_nonce=b"b" * 32,
                    id_sensor=7, binding=BINDING)
        proof = make_proof(**base)
        variants = [
            {"key": derive_key("other")}, {"role": CENTRAL_ROLE},
            {"sensor_nonce": b"c" * 32}, {"central_nonce": b"c" * 32},
            {"id_sensor": 8}, {"binding": b"C" * 32}, {"binding": b""},
        ]
        seen = {proof}
        for change in variants:
            other = make_proof(**{**base, **change})
            self.assertNotIn(other, seen, change)
            seen.add(other)

    def test_proof_fields_cannot_shift(self) -> None:
        """Moving bytes between the two nonces gives a different proof (length-prefixed)."""
        one = make_proof(KEY, SENSOR_ROLE, b"ab", b"c", 1, b"")
        two = make_proof(KEY, SENSOR_ROLE, b"a", b"bc", 1, b"")
        self.assertNotEqual(one, two)


class SuccessTests(SynchronousTestCase):
    def run_handshake(self, client: ClientHandshake, server: ServerHandshake,
                      client_binding: bytes = BINDING, server_binding: bytes = BINDING):
        challenge = server.receive_hello(client.hello())
        proof = client.receive_challenge(challenge, client_binding)
        server.receive_proof(proof, server_binding)
        accept = server.accept(server_binding, central="c1")
        return client.receive_accept(accept, client_binding)

    def test_success(self) -> None:
        """Matching passwords and bindings authenticate both sides."""
        client, server = make_client(), make_server()
        accept = self.run_handshake(client, server)
        self.assertTrue(client.accepted)
        self.assertTrue(server.verified)
        self.assertEqual(accept["central"], "c1")
        self.assertEqual(server.hello.id_sensor, 7)
        self.assertEqual(server.hello.name, "edge-1")
        self.assertEqual(server.hello.instance, "ab" * 8)
        self.assertEqual(server.skew, 0.0)
        self.assertEqual(client.central_time, 1000.0)

    def test_sensor_measures_skew_with_the_delay_cancelled(self) -> None:
        """The sensor's clock is 10 s ahead; the HELLO takes 0.15 s to the central, the
        CHALLENGE 0.25 s back. The central measures 9.85 s (its view includes the one-way
        delay); the sensor, from the midpoint of its round trip, 10 s to within half of
        it (0.05 s), and the round trip, 0.4 s."""
        sensor_now = [1010.0]
        client = make_client(seconds=lambda: sensor_now[0])
        server = make_server(now=1000.15, max_diff=20.0)
        challenge = server.receive_hello(client.hello())
        self.assertAlmostEqual(-server.skew, 9.85)
        self.assertIsNone(client.skew)
        sensor_now[0] = 1010.0 + 0.4
        client.receive_challenge(challenge, BINDING)
        self.assertAlmostEqual(client.handshake_rtt, 0.4)
        self.assertAlmostEqual(client.skew, 10.05)
        self.assertLessEqual(abs(client.skew - 10.0), client.handshake_rtt / 2)

    def test_password_never_on_the_wire(self) -> None:
        """No message of the handshake contains the password or the key."""
        client, server = make_client(), make_server()
        hello = client.hello()
        challenge = server.receive_hello(hello)
        proof = client.receive_challenge(challenge, BINDING)
        server.receive_proof(proof, BINDING)
        accept = server.accept(BINDING)
        text = repr((hello, challenge, proof, accept))
        self.assertNotIn("s3cret", text)
        self.assertNotIn(KEY.hex(), text)

    def test_hello_fields(self) -> None:
        """The hello carries id, name, version, mode, compression, time, nonce, instance."""
        hello = make_client(manager="10.0.0.1:5029").hello()
        self.assertEqual(hello["protocol"], 1)
        self.assertEqual(len(bytes.fromhex(hello["nonce"])), NONCE_BYTES)
        self.assertEqual(hello["time"], 1000.0)
        self.assertEqual(hello["manager"], "10.0.0.1:5029")
        self.assertEqual(Hello.from_json(hello).to_json(), hello)

    def test_analysis_settings(self) -> None:
        """A mirroring sensor's analysis settings travel in the hello, checked."""
        settings = {"sipport": [5060, 5080], "rtptimeout": 300, "savesip": True,
                    "savertp": "header", "unknown": 1}
        hello = Hello.from_json(make_client(mode="mirror", analysis=settings).hello())
        self.assertEqual(hello.analysis, {"sipport": [5060, 5080], "rtptimeout": 300.0,
                                          "savesip": True, "savertp": "header"})
        self.assertEqual(Hello.from_json(make_client().hello()).analysis, {})

    def test_noncall_settings_reach_the_centrals_engine(self) -> None:
        """sip-register and the sip-options/-subscribe/-notify/-message switches of a
        mirroring sensor travel in the hello: the central's engine for it follows them."""
        from voipmon.analysis.settings import analysis_from_hello, analysis_to_hello
        from voipmon.config.settings import AnalysisSettings

        mine = AnalysisSettings(sip_register="nodb", sip_register_timeout=2.5,
                                sip_register_max_registers=7, sip_register_state_timeout=60.0,
                                sip_options="yes", sip_notify="nodb", sip_message="yes")
        hello = Hello.from_json(make_client(mode="mirror",
                                            analysis=analysis_to_hello(mine)).hello())
        self.assertEqual(analysis_from_hello(hello.analysis), mine)

    def test_nonces_are_fresh(self) -> None:
        """Each hello and each challenge uses a new nonce."""
        client = make_client()
        first, second = client.hello()["nonce"], client.hello()["nonce"]
        self.assertNotEqual(first, second)
        self.assertNotEqual(make_server().receive_hello(make_client().hello())["nonce"],
                            first)

    def test_skew_at_limit_accepted(self) -> None:
        """A skew exactly at the maximum is accepted."""
        server = make_server(now=1002.0)
        server.receive_hello(make_client(now=1000.0).hello())
        self.assertEqual(server.skew, 2.0)


class RejectionTests(SynchronousTestCase):
    def assertRejected(self, code: str, call, *args) -> Rejection:
        with self.assertRaises(Rejection) as caught:
            call(*args)
        self.assertEqual(caught.exception.code, code)
        return caught.exception

    def test_bad_password(self) -> None:
        """A sensor with another password is refused with 'bad password'."""
        client, server = make_client(key=derive_key("wrong")), make_server()
        proof = client.receive_challenge(server.receive_hello(client.hello()), BINDING)
        rejection = self.assertRejected(BAD_PASSWORD, server.receive_proof, proof, BINDING)
        self.assertIn("bad password", rejection.reason)
        self.assertFalse(server.verified)
        self.assertRaises(RuntimeError, server.accept, BINDING)

    def test_proof_replayed_on_another_connection(self) -> None:
        """A proof bound to one TLS connection fails on another (different exporter)."""
        client, server = make_client(), make_server()
        proof = client.receive_challenge(server.receive_hello(client.hello()), BINDING)
        self.assertRejected(BAD_PASSWORD, server.receive_proof, proof, b"X" * 32)

    def test_clock_skew_behind(self) -> None:
        """A sensor 37.5 s behind is refused, and the reason says the measured skew."""
        server = make_server(now=1037.5)
        rejection = self.assertRejected(CLOCK_SKEW, server.receive_hello,
                                        make_client(now=1000.0).hello())
        self.assertIn("37.5 s", rejection.reason)
        self.assertIn("client_server_connect_maximum_time_diff_s = 2 s", rejection.reason)
        self.assertIn("behind", rejection.reason)

    def test_clock_skew_ahead(self) -> None:
        """A sensor ahead of the central is refused too, saying so."""
        rejection = self.assertRejected(CLOCK_SKEW, make_server(now=1000.0).receive_hello,
                                        make_client(now=1003.25).hello())
        self.assertIn("3.2 s", rejection.reason)
        self.assertIn("ahead of", rejection.reason)

    def test_id_out_of_range(self) -> None:
        """id_sensor 0 and 65536 are refused with the allowed range."""
        for bad in (0, 65536, -1):
            rejection = self.assertRejected(ID_OUT_OF_RANGE, make_server().receive_hello,
                                            make_client(id_sensor=bad).hello())
            self.assertIn(f"id_sensor {bad} is outside 1..65535", rejection.reason)

    def test_unsupported_version(self) -> None:
        """A newer protocol is refused with the versions this central speaks."""
        hello = {"protocol": 2, "whatever": "a future hello"}
        rejection = self.assertRejected(UNSUPPORTED_VERSION, make_server().receive_hello, hello)
        self.assertIn("unsupported protocol version 2", rejection.reason)
        self.assertIn("speaks 1", rejection.reason)

    def test_unsupported_compression(self) -> None:
        """A codec the central lacks is refused, listing the ones it has."""
        rejection = self.assertRejected(UNSUPPORTED_COMPRESSION, make_server().receive_hello,
                                        make_client(compression="brotli").hello())
        self.assertIn("gzip, lzo, none, zstd", rejection.reason)

    def test_permanent_codes(self) -> None:
        """Retrying cannot fix a bad password or version; a busy id or skew may clear."""
        self.assertIn(BAD_PASSWORD, PERMANENT)
        self.assertIn(UNSUPPORTED_VERSION, PERMANENT)
        self.assertNotIn(CLOCK_SKEW, PERMANENT)

    def test_rejection_json(self) -> None:
        """A rejection survives the wire; a malformed REJECT is a protocol error."""
        rejection = Rejection(CLOCK_SKEW, "clock skew of 3.0 s")
        again = Rejection.from_json(rejection.to_json())
        self.assertEqual((again.code, again.reason), (CLOCK_SKEW, "clock skew of 3.0 s"))
        self.assertRaises(ProtocolError, Rejection.from_json, {"code": 1})

    def test_describe_skew(self) -> None:
        self.assertEqual(describe_skew(5.0), "the sensor's clock is 5.0 s behind the central's")
        self.assertEqual(describe_skew(-5.0),
                         "the sensor's clock is 5.0 s ahead of the central's")


class CentralProofTests(SynchronousTestCase):
    def started(self):
        client, server = make_client(), make_server()
        proof = client.receive_challenge(server.receive_hello(client.hello()), BINDING)
        server.receive_proof(proof, BINDING)
        return client, server

    def test_central_without_the_password(self) -> None:
        """A central that cannot prove the password is refused by the sensor."""
        client, _server = self.started()
        with self.assertRaises(CentralProofFailed):
            client.receive_accept({"proof": "00" * 32}, BINDING)
        self.assertFalse(client.accepted)

    def test_central_proof_missing(self) -> None:
        """An ACCEPT without a proof counts as a failed proof."""
        client, _server = self.started()
        self.assertRaises(CentralProofFailed, client.receive_accept, {}, BINDING)

    def test_central_proof_from_another_connection(self) -> None:
        """The central's proof for another binding does not convince the sensor."""
        client, server = self.started()
        accept = server.accept(b"Z" * 32)
        self.assertRaises(CentralProofFailed, client.receive_accept, accept, BINDING)

    def test_sensor_proof_echoed_back(self) -> None:
        """A peer echoing the sensor's own proof fails: the roles differ."""
        client, server = make_client(), make_server()
        proof = client.receive_challenge(server.receive_hello(client.hello()), BINDING)
        self.assertRaises(CentralProofFailed, client.receive_accept, proof, BINDING)


class MalformedTests(SynchronousTestCase):
    def test_malformed_hellos(self) -> None:
        """Missing or mistyped hello fields are protocol errors, not crashes."""
        good = make_client().hello()
        broken = [
            {}, {**good, "protocol": "1"}, {**good, "protocol": True},
            {**good, "id_sensor": "7"}, {**good, "id_sensor": True},
            {**good, "mode": "both"}, {**good, "nonce": "zz"}, {**good, "nonce": "ab"},
            {**good, "time": "now"}, {**good, "name": "x" * 500}, {**good, "name": "a\nb"},
            {**good, "instance": ""}, {**good, "probe": "yes"}, {**good, "compression": 3},
            {**good, "replay": 1}, {**good, "analysis": []},
            {**good, "analysis": {"sipport": [0]}}, {**good, "analysis": {"sipport": "5060"}},
            {**good, "analysis": {"rtptimeout": 0}}, {**good, "analysis": {"savesip": "yes"}},
            {**good, "analysis": {"savertp": "maybe"}},
            {**good, "analysis": {"sip_register": "old"}},
            {**good, "analysis": {"sip_options": True}},
            {**good, "analysis": {"sip_register_timeout": 0}},
            {**good, "analysis": {"sip_register_max_registers": 0}},
            {**good, "analysis": {"sip_register_max_registers": 2.5}},
        ]
        for body in broken:
            with self.assertRaises(ProtocolError, msg=repr(body)[:80]):
                make_server().receive_hello(body)

    def test_time_must_be_a_sane_number(self) -> None:
        """A hello's time that is NaN (it passed the skew check: NaN compares false),
        an infinity (was a clock skew), negative, after 9999, a boolean or a thousand-digit
        integer is malformed, not a skew; 1970 and 9999 themselves are times (skewed)."""
        good = make_client().hello()
        for bad in (float("nan"), float("inf"), -float("inf"), -1.0, -1e-9, 253402300800.0,
                    1e300, True, False, 10 ** 1000, None, "1000"):
            with self.assertRaises(ProtocolError, msg=repr(bad)[:40]) as caught:
                make_server().receive_hello({**good, "time": bad})
            self.assertIn("'time'", str(caught.exception))
        for edge in (0, 253402300799.0):
            with self.assertRaises(Rejection) as caught:
                make_server().receive_hello({**good, "time": edge})
            self.assertEqual(caught.exception.code, CLOCK_SKEW)

    def test_other_numbers_must_be_sane(self) -> None:
        """The hello's other numbers: NaN/infinite timeouts, a boolean or a huge protocol
        or id, and the challenge's time, are malformed on either side."""
        good = make_client().hello()
        nan, inf = float("nan"), float("inf")
        broken = [{**good, "analysis": {"rtptimeout": nan}},
                  {**good, "analysis": {"absolute_timeout": inf}},
                  {**good, "analysis": {"sipwithoutrtptimeout": -inf}},
                  {**good, "protocol": 10 ** 1000}, {**good, "protocol": -1},
                  {**good, "id_sensor": 10 ** 1000}, {**good, "id_sensor": 7.0}]
        for body in broken:
            with self.assertRaises(ProtocolError, msg=repr(body)[-80:]):
                make_server().receive_hello(body)
        for bad in (nan, inf, -1.0, True):
            client = make_client()
            client.hello()
            with self.assertRaises(ProtocolError, msg=repr(bad)):
                client.receive_challenge({"nonce": "00" * NONCE_BYTES, "time": bad}, BINDING)

    def test_out_of_order(self) -> None:
        """Messages in the wrong order are protocol errors on both sides."""
        server = make_server()
        self.assertRaises(ProtocolError, server.receive_proof, {"proof": "00" * 32}, BINDING)
        server.receive_hello(make_client().hello())
        self.assertRaises(ProtocolError, server.receive_hello, make_client().hello())
        client = make_client()
        self.assertRaises(ProtocolError, client.receive_challenge, {}, BINDING)
        self.assertRaises(ProtocolError, client.receive_accept, {}, BINDING)
        client.hello()
        self.assertRaises(ProtocolError, client.receive_challenge, {"nonce": "00"}, BINDING)

    def test_second_proof(self) -> None:
        """A second PROOF after success is a protocol error."""
        client, server = make_client(), make_server()
        proof = client.receive_challenge(server.receive_hello(client.hello()), BINDING)
        server.receive_proof(proof, BINDING)
        self.assertRaises(ProtocolError, server.receive_proof, proof, BINDING)
