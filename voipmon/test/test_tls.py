"""Tests for voipmon.protocols.tls, including real TLS connections on loopback."""

from __future__ import annotations

import datetime
import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from voipmon.protocols import tls
from voipmon.protocols.handshake import EXPORTER_BYTES


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca_and_leaf(hostname: str):
    """A small CA and a leaf for ``hostname`` signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return ca, leaf, key


class FingerprintTests(SynchronousTestCase):
    def test_format(self) -> None:
        """A fingerprint is 32 colon-separated upper-case hex bytes of the DER's SHA-256."""
        cert, _key = tls.generate_self_signed("central.example")
        text = tls.fingerprint(cert)
        self.assertRegex(text, r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")
        self.assertEqual(bytes.fromhex(text.replace(":", "")),
                         cert.fingerprint(hashes.SHA256()))

    def test_parse(self) -> None:
        """Pins are accepted with or without colons, in either case; others are refused."""
        raw = bytes(range(32))
        for text in (raw.hex(), raw.hex().upper(), ":".join(f"{b:02x}" for b in raw),
                     " " + raw.hex() + "\n"):
            self.assertEqual(tls.parse_fingerprint(text), raw)
        for bad in ("", "abc", raw.hex()[:-2], raw.hex() + "00", "zz" * 32):
            self.assertRaises(ValueError, tls.parse_fingerprint, bad)


class CertificateFileTests(SynchronousTestCase):
    def test_self_signed_created_once(self) -> None:
        """The first start creates a key (mode 0600) and certificate; later starts reuse them."""
        spool = self.mktemp()
        first = tls.load_or_create(spool, hostname="central.example")
        self.assertTrue(first.generated)
        key_file = os.path.join(spool, "state", "central-key.pem")
        self.assertEqual(stat.S_IMODE(os.stat(key_file).st_mode), 0o600)
        second = tls.load_or_create(spool, hostname="central.example")
        self.assertFalse(second.generated)
        self.assertEqual(second.fingerprint, first.fingerprint)
        self.assertEqual(second.source, os.path.join(spool, "state", "central-cert.pem"))
        names = first.certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        self.assertIn("central.example", names.get_values_for_type(x509.DNSName))
        self.assertIn("localhost", names.get_values_for_type(x509.DNSName))

    def test_configured_certificate(self) -> None:
        """A configured chain and key are used, with the rest of the chain kept."""
        ca, leaf, key = make_ca_and_leaf("central.example")
        base = self.mktemp()
        os.makedirs(base)
        cert_path, key_path = os.path.join(base, "c.pem"), os.path.join(base, "k.pem")
        with open(cert_path, "wb") as f:
            f.write(pem_cert(leaf) + pem_cert(ca))
        with open(key_path, "wb") as f:
            f.write(pem_key(key))
        loaded = tls.load_or_create(base, cert_path, key_path)
        self.assertFalse(loaded.generated)
        self.assertEqual(loaded.fingerprint, tls.fingerprint(leaf))
        self.assertEqual(loaded.chain, (ca,))
        self.assertFalse(os.path.exists(os.path.join(base, "state")))
        combined = os.path.join(base, "both.pem")
        with open(combined, "wb") as f:
            f.write(pem_cert(leaf) + pem_key(key))
        self.assertEqual(tls.load_certificate(combined).fingerprint, tls.fingerprint(leaf))

    def test_mismatched_key(self) -> None:
        """A key that does not belong to the certificate is refused, naming both files."""
        _ca, leaf, _key = make_ca_and_leaf("x")
        other = ec.generate_private_key(ec.SECP256R1())
        base = self.mktemp()
        os.makedirs(base)
        cert_path, key_path = os.path.join(base, "c.pem"), os.path.join(base, "k.pem")
        with open(cert_path, "wb") as f:
            f.write(pem_cert(leaf))
        with open(key_path, "wb") as f:
            f.write(pem_key(other))
        with self.assertRaises(tls.CertificateError) as caught:
            tls.load_certificate(cert_path, key_path)
        self.assertIn("does not match", str(caught.exception))
        self.assertIn(key_path, str(caught.exception))

    def test_unreadable_and_garbage(self) -> None:
        """Missing files and non-PEM content give errors naming the key and file."""
        with self.assertRaises(tls.CertificateError) as caught:
            tls.load_certificate("/nonexistent/cert.pem")
        self.assertIn("tls_certificate /nonexistent/cert.pem", str(caught.exception))
        garbage = self.mktemp()
        with open(garbage, "wb") as f:
            f.write(b"not a certificate")
        self.assertRaises(tls.CertificateError, tls.load_certificate, garbage)
        self.assertRaises(tls.CertificateError, tls.load_ca, garbage)

    def test_client_creator_kinds(self) -> None:
        """A pin gives a pinning client, a CA file a verifying one, neither an unverified one."""
        pinned = tls.client_creator("h", pin="00" * 32)
        self.assertEqual(pinned.pin, b"\0" * 32)
        self.assertIsNone(tls.client_creator("h").pin)
        ca, _leaf, _key = make_ca_and_leaf("h")
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(pem_cert(ca))
        verifying = tls.client_creator("h", ca_file=path)
        self.assertTrue(IOpenSSLClientConnectionCreator.providedBy(verifying))
        self.assertNotIsInstance(verifying, tls.PinningClientCreator)

    def test_exporter_needs_tls(self) -> None:
        """Channel binding refuses a transport that is not TLS."""
        self.assertRaises(ValueError, tls.exporter_binding, object())


class _Echo(protocol.Protocol):
    """Server side: answers the first data with this connection's exporter value."""

    def connectionMade(self) -> None:
        self.lost: defer.Deferred = defer.Deferred()
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(tls.exporter_binding(self.transport))

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


class _Client(protocol.Protocol):
    def __init__(self) -> None:
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"hi")

        self.result = None

    def dataReceived(self, data: bytes) -> None:
        mine = tls.exporter_binding(self.transport)
        version = self.transport.getHandle().get_protocol_version_name()
        self.result = (data, mine, version)
        self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        # Fire only once the socket is closed, so no test leaves a connection behind.
        if self.result is not None:
            self.done.callback(self.result)
        else:
            self.done.errback(reason)


@implementer(IOpenSSLClientConnectionCreator)
class _OldTlsClient:
    """A client that speaks at most TLS 1.1, to see the central refuse it."""

    def clientConnectionForTLS(self, tlsProtocol):
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        context.set_min_proto_version(SSL.TLS1_VERSION)
        context.set_max_proto_version(SSL.TLS1_1_VERSION)
        context.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        connection = SSL.Connection(context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        return connection


class LoopbackTests(TestCase):
    """Real TLS over 127.0.0.1 with the real reactor."""

    def listen(self, server_cert: tls.ServerCertificate):
        factory = protocol.Factory.forProtocol(_Echo)
        factory.connections = []

        def all_closed():
            return defer.DeferredList([c.lost for c in factory.connections])

        self.addCleanup(all_closed)
        endpoint = endpoints.SSL4ServerEndpoint(reactor, 0, server_cert.options(),
                                                interface="127.0.0.1")
        d = endpoint.listen(factory)

        def listening(port):
            self.addCleanup(port.stopListening)
            return port.getHost().port

        return d.addCallback(listening)

    @defer.inlineCallbacks
    def exchange(self, port: int, creator):
        client = _Client()
        endpoint = endpoints.wrapClientTLS(
            creator, endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        yield endpoints.connectProtocol(endpoint, client)
        result = yield client.done
        return result

    @defer.inlineCallbacks
    def test_pinned_and_bound(self) -> None:
        """A correct pin connects over TLS 1.2+, and both ends export the same binding."""
        cert = tls.load_or_create(self.mktemp(), hostname="localhost")
        port = yield self.listen(cert)
        creator = tls.client_creator("localhost", pin=cert.fingerprint)
        theirs, mine, version = yield self.exchange(port, creator)
        self.assertEqual(theirs, mine)
        self.assertEqual(len(mine), EXPORTER_BYTES)
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(creator.seen_fingerprint, cert.fingerprint)

    @defer.inlineCallbacks
    def test_bindings_differ_per_connection(self) -> None:
        """Two connections to the same central have different exporter values."""
        cert = tls.load_or_create(self.mktemp(), hostname="localhost")
        port = yield self.listen(cert)
        _t1, first, _v = yield self.exchange(port, tls.client_creator("localhost"))
        _t2, second, _v = yield self.exchange(port, tls.client_creator("localhost"))
        self.assertNotEqual(first, second)

    @defer.inlineCallbacks
    def test_wrong_pin_refused(self) -> None:
        """A central whose certificate does not match the pin is refused during TLS."""
        cert = tls.load_or_create(self.mktemp(), hostname="localhost")
        port = yield self.listen(cert)
        creator = tls.client_creator("localhost", pin="AB" * 32)
        yield self.assertFailure(self.exchange(port, creator), SSL.Error)
        self.assertIn(cert.fingerprint, creator.mismatch)
        self.assertIn("not the pinned server_certificate_sha256", creator.mismatch)

    @defer.inlineCallbacks
    def test_unverified_remembers_fingerprint(self) -> None:
        """Without pin or CA the client connects and knows the fingerprint to pin."""
        cert = tls.load_or_create(self.mktemp(), hostname="localhost")
        port = yield self.listen(cert)
        creator = tls.client_creator("localhost")
        yield self.exchange(port, creator)
        self.assertEqual(creator.seen_fingerprint, cert.fingerprint)

    @defer.inlineCallbacks
    def test_ca_with_hostname(self) -> None:
        """CA verification accepts the right hostname and refuses another one."""
        ca, leaf, key = make_ca_and_leaf("localhost")
        base = self.mktemp()
        os.makedirs(base)
        paths = {name: os.path.join(base, name) for name in ("ca", "cert", "key")}
        for name, data in (("ca", pem_cert(ca)), ("cert", pem_cert(leaf)), ("key", pem_key(key))):
            with open(paths[name], "wb") as f:
                f.write(data)
        cert = tls.load_certificate(paths["cert"], paths["key"])
        port = yield self.listen(cert)
        yield self.exchange(port, tls.client_creator("localhost", ca_file=paths["ca"]))
        yield self.assertFailure(
            self.exchange(port, tls.client_creator("central.example", ca_file=paths["ca"])),
            VerificationError)
        other_ca, _leaf, _key = make_ca_and_leaf("localhost")
        with open(paths["ca"], "wb") as f:
            f.write(pem_cert(other_ca))
        yield self.assertFailure(
            self.exchange(port, tls.client_creator("localhost", ca_file=paths["ca"])),
            SSL.Error)

    @defer.inlineCallbacks
    def test_old_tls_refused(self) -> None:
        """A client limited to TLS 1.1 cannot connect."""
        cert = tls.load_or_create(self.mktemp(), hostname="localhost")
        port = yield self.listen(cert)
        yield self.assertFailure(self.exchange(port, _OldTlsClient()), SSL.Error)
