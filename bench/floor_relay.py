"""The floor for AutoMTLS with a Go peer from Python: the least relay a bare grpcio program can use.

grpcio's TLS cannot verify go-plugin's P-521 certificate, so any Python host
of a Go plugin with AutoMTLS needs a TLS hop outside grpcio. ``BareRelay`` is
the plainest one: a unix listener for the grpcio channel and, per accepted
connection, its own thread that dials the plugin, wraps that socket in the
standard library's TLS (the host's certificate, the plugin's as the only
trusted one) and copies bytes both ways with ``select``. No shared loop, no
backpressure bounds, no deadlines: what plugbay's relay adds to this is what
its row shows over this one. The host certificate is made with cryptography
in go-plugin's client profile (P-256 here, which go-plugin accepts); the
bare plugin's is made ahead of its starts (see made_ahead).

``BareTerminator`` is the same on the plugin side (bench/floor_kv_plugin.py
under a go-plugin host with AutoMTLS): per connection a thread runs the TLS
server handshake (the plugin's certificate, the host's as the only trusted
one) and copies bytes to the plaintext gRPC server's unix socket.
"""

from __future__ import annotations

import base64
import datetime
import os
import select
import socket
import ssl
import threading

CERT_DIR_ENV = "FLOOR_CERT_DIR"  # a folder with a certificate made ahead (cert.pem, key.pem): see made_ahead()


def host_certificate() -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): a self-signed CA certificate as go-plugin's host makes one."""
    # imported here: a floor plugin given a certificate made ahead never loads cryptography
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HashiCorp"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(seconds=30)).not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def made_ahead(folder: str) -> tuple[bytes, bytes]:
    """The certificate and key in ``folder`` (cert.pem, key.pem), made there once if missing.

    The bare plugin's AutoMTLS start reads these rather than making its own: building one with
    cryptography costs ~50 ms (mostly its import), against ~6 ms for plugbay's plugin, which
    would make the floor slower than what it is the floor of. Reading one made ahead costs
    next to nothing, so the floor is a lower bound (a start with no key generation at all).
    """
    cert_file, key_file = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    if not os.path.exists(key_file):
        cert_pem, key_pem = host_certificate()
        with open(cert_file, "wb") as f:
            f.write(cert_pem)
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(key_pem)
    with open(cert_file, "rb") as c, open(key_file, "rb") as k:
        return c.read(), k.read()


def plugin_certificate_pem(field: str) -> str:
    """The handshake line's sixth field (base64 DER, go-plugin leaves off the padding) as PEM."""
    return ssl.DER_cert_to_PEM_cert(base64.b64decode(field + "=" * (-len(field) % 4)))


class BareRelay:
    """A unix listener at ``path``; each connection is relayed over TLS to ``target`` on its own thread."""

    def __init__(self, target: str, peer_pem: str, cert_pem: bytes, key_pem: bytes, folder: str) -> None:
        cert_file, key_file = os.path.join(folder, "own.crt"), os.path.join(folder, "own.key")
        with open(cert_file, "wb") as f:
            f.write(cert_pem)
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(key_pem)
        self.context = self._context()
        self.context.load_verify_locations(cadata=peer_pem)  # the peer's certificate is the only one trusted
        self.context.load_cert_chain(cert_file, key_file)
        self.context.set_alpn_protocols(["h2"])
        self.target = target
        self.path = os.path.join(folder, "relay.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(16)
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, name="bare-relay-accept", daemon=True)]
        self._threads[0].start()

    def _context(self) -> ssl.SSLContext:
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

    def _accept(self) -> None:
        while True:
            try:
                plain, _ = self._listener.accept()
            except OSError:
                return  # close() shut the listener
            thread = threading.Thread(target=self._pump, args=(plain,), name="bare-relay", daemon=True)
            with self._lock:
                self._open.append(plain)
                self._threads.append(thread)
            thread.start()

    def _pump(self, plain: socket.socket) -> None:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(10)  # the dial and the handshake only
        try:
            raw.connect(self.target)
            tls = self.context.wrap_socket(raw, server_hostname="localhost")
            tls.settimeout(None)
        except OSError:
            raw.close()
            plain.close()
            return
        _copy(tls, plain)

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._threads[0].join(5)  # no connection is taken after this
        self._listener.close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            threads = list(self._threads)
        for thread in threads[1:]:
            thread.join(5)


class BareTerminator(BareRelay):
    """A unix listener at ``path``; each connection's TLS is ended on its own thread, then copied to ``target``."""

    def _context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _pump(self, accepted: socket.socket) -> None:
        accepted.settimeout(10)  # the handshake and the dial only
        plain = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tls: socket.socket = accepted
        try:
            tls = self.context.wrap_socket(accepted, server_side=True)  # takes over accepted's descriptor
            tls.settimeout(None)
            plain.connect(self.target)
        except OSError:
            plain.close()
            tls.close()
            return
        assert isinstance(tls, ssl.SSLSocket)
        _copy(tls, plain)


def _copy(tls: ssl.SSLSocket, plain: socket.socket) -> None:
    """Both ways until either side ends (select; the TLS side's decrypted leftovers first)."""
    with tls, plain:
        try:
            while True:
                ready = [tls] if tls.pending() else select.select([plain, tls], [], [])[0]
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (tls if sock is plain else plain).sendall(data)
        except OSError:
            return
