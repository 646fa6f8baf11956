"""TLS for the channel: the central's certificate, the sensor's verification, channel binding.

The central uses the certificate configured with ``tls_certificate``/``tls_private_key``, or
generates a self-signed one on first start and keeps it under ``spooldir/state``. Its
SHA-256 fingerprint is logged so sensors can pin it (``server_certificate_sha256``).
A sensor verifies the central by pin, by CA with hostname checking (``server_ca_file``, via
service-identity), or not at all, in which case the mutual password proof bound to the TLS
exporter (see handshake.py) still defeats a man in the middle. TLS 1.2 is the minimum.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import endpoints, ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from voipmon.protocols.handshake import EXPORTER_BYTES, EXPORTER_LABEL

log = Logger()

STATE_DIR = "state"
CERT_NAME = "central-cert.pem"
KEY_NAME = "central-key.pem"
SELF_SIGNED_DAYS = 3650


class CertificateError(Exception):
    """A configured certificate or key cannot be used; the message says which and why."""


def fingerprint(certificate: x509.Certificate) -> str:
    """The SHA-256 of the certificate (DER) as colon-separated upper-case hex."""
    digest = certificate.fingerprint(hashes.SHA256())
    return ":".join(f"{byte:02X}" for byte in digest)


def parse_fingerprint(text: str) -> bytes:
    """A SHA-256 fingerprint from hex with or without colons/spaces; ValueError otherwise."""
    cleaned = re.sub(r"[\s:]", "", text)
    if not re.fullmatch(r"[0-9A-Fa-f]{64}", cleaned):
        raise ValueError(f"not a SHA-256 fingerprint (64 hex digits): {text!r}")
    return bytes.fromhex(cleaned)


@dataclass(frozen=True)
class ServerCertificate:
    """The central's TLS identity."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: Any                      # a cryptography private key
    fingerprint: str
    source: str                   # the file it came from
    generated: bool               # True when created by this start

    def options(self) -> ssl.CertificateOptions:
        return ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(self.key),
            certificate=crypto.X509.from_cryptography(self.certificate),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in self.chain],
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise CertificateError(f"{what} {path}: cannot read: {exc.strerror or exc}")


def load_certificate(cert_path: str, key_path: str = "") -> ServerCertificate:
    """Load a PEM chain (leaf first) and its key (from ``key_path`` or the same file)."""
    pem = _read(cert_path, "tls_certificate")
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CertificateError(f"tls_certificate {cert_path}: no PEM certificate ({exc})")
    key_pem = _read(key_path, "tls_private_key") if key_path else pem
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        where = key_path or cert_path
        raise CertificateError(f"tls_private_key {where}: no usable unencrypted PEM private "
                               f"key ({exc})")
    leaf = certs[0]
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise CertificateError(f"tls_private_key {key_path or cert_path} does not match the "
                               f"certificate in {cert_path}")
    return ServerCertificate(leaf, tuple(certs[1:]), key, fingerprint(leaf), cert_path, False)


def generate_self_signed(hostname: str, now: datetime.datetime | None = None,
                         ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new P-256 key and a self-signed certificate for ``hostname`` and loopback."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "voipmon"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "voipmon central")])
    alt: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                   x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                   x509.IPAddress(ipaddress.ip_address("::1"))]
    if hostname and hostname != "localhost":
        try:
            alt.insert(0, x509.IPAddress(ipaddress.ip_address(hostname)))
        except ValueError:
            alt.insert(0, x509.DNSName(hostname))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _write_private(path: str, data: bytes, mode: int) -> None:
    """Write a file atomically (temp, fsync, rename) with ``mode`` from the start."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create(spooldir: str, cert_path: str = "", key_path: str = "",
                   hostname: str | None = None) -> ServerCertificate:
    """The configured certificate, else the one in ``spooldir/state``, else a new one."""
    if cert_path:
        return load_certificate(cert_path, key_path)
    state = os.path.join(spooldir, STATE_DIR)
    cert_file = os.path.join(state, CERT_NAME)
    key_file = os.path.join(state, KEY_NAME)
    if os.path.exists(cert_file) and os.path.exists(key_file):
        return load_certificate(cert_file, key_file)
    os.makedirs(state, mode=0o700, exist_ok=True)
    cert, key = generate_self_signed(hostname or socket.getfqdn())
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_private(key_file, key_pem, 0o600)
    _write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    dirfd = os.open(state, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    return ServerCertificate(cert, (), key, fingerprint(cert), cert_file, True)


# -- the sensor's side ---------------------------------------------------------------


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@implementer(IOpenSSLClientConnectionCreator)
class PinningClientCreator:
    """TLS 1.2+ client that accepts exactly the certificate whose SHA-256 is pinned.

    Without a pin it accepts any certificate (encryption only) and remembers its
    fingerprint, so the sensor can log what to pin.
    """

    def __init__(self, hostname: str, pin: bytes | None = None) -> None:
        self.hostname = hostname
        self.pin = pin
        self.seen_fingerprint: str | None = None
        self.mismatch: str | None = None
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION)
        context.set_verify(SSL.VERIFY_PEER, self._verify)
        self._context = context

    def _verify(self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int,
                preverify_ok: int) -> bool:
        if depth != 0:
            return True  # only the leaf matters for a pin; the chain may be self-made
        der = cert.to_cryptography().public_bytes(serialization.Encoding.DER)
        digest = hashlib.sha256(der).digest()
        self.seen_fingerprint = ":".join(f"{b:02X}" for b in digest)
        if self.pin is None or hmac.compare_digest(digest, self.pin):
            return True
        self.mismatch = (
            f"the certificate of {self.hostname} has SHA-256 {self.seen_fingerprint}, not the "
            f"pinned server_certificate_sha256 {':'.join(f'{b:02X}' for b in self.pin)}")
        log.error("TLS: {problem}", problem=self.mismatch)
        return False

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self.hostname and not _is_ip(self.hostname):
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        connection.set_connect_state()
        return connection


def load_ca(path: str) -> Any:
    """A trust root with every certificate of a PEM CA file."""
    try:
        certs = x509.load_pem_x509_certificates(_read(path, "server_ca_file"))
    except ValueError as exc:
        raise CertificateError(f"server_ca_file {path}: no PEM certificate ({exc})")
    return ssl.trustRootFromCertificates(
        [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in certs])


def client_creator(hostname: str, pin: str = "", ca_file: str = "") -> Any:
    """The sensor's TLS client for one central: pinned, CA-verified, or unverified."""
    if pin:
        return PinningClientCreator(hostname, parse_fingerprint(pin))
    if ca_file:
        return ssl.optionsForClientTLS(
            hostname, trustRoot=load_ca(ca_file),
            extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})
    return PinningClientCreator(hostname, None)


LISTEN_BACKLOG = 511   # connections the kernel completes while we are busy (nginx's)


def server_endpoint(reactor: Any, port: int, host: str, backlog: int = LISTEN_BACKLOG) -> Any:
    """The TCP endpoint a TLS listener listens on. TLS goes in the listening factory,
    under the admission gate (voipmon.protocols.gated.gated), not in the endpoint."""
    kind = endpoints.TCP6ServerEndpoint if ":" in host else endpoints.TCP4ServerEndpoint
    return kind(reactor, port, backlog=backlog, interface=host)


def peer_fingerprint(transport: Any) -> str | None:
    """The SHA-256 fingerprint of the certificate the peer of a TLS transport presented."""
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle is not None else None
    if not isinstance(handle, SSL.Connection):
        return None
    cert = handle.get_peer_certificate(as_cryptography=True)
    return fingerprint(cert) if cert is not None else None


def exporter_binding(transport: Any) -> bytes:
    """This TLS connection's exporter value (RFC 5705): both ends compute the same bytes."""
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle is not None else None
    if not isinstance(handle, SSL.Connection):
        raise ValueError("the channel runs over TLS only")
    return handle.export_keying_material(EXPORTER_LABEL, EXPORTER_BYTES)
