"""mTLS with provided files: the right certificates connect; every wrong setup is a RemoteTLSError naming it."""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests import netcerts
from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, SERVER_NAME, Replica, make_pki

from plugbay import ConfigError, HandshakeTimeoutError, NetworkTLS, RemoteClient, RemoteConfig, RemoteTLSError


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture()
def tls_replica(pki: dict[str, str]) -> Iterator[Replica]:
    replica = Replica("127.0.0.1:0", env={"NET_KV_CERT": pki["server"], "NET_KV_KEY": pki["server_key"],
                                          "NET_KV_CA": pki["ca"]})
    try:
        yield replica
    finally:
        replica.stop()


def config(target: str, **kw: object) -> RemoteConfig:
    kw.setdefault("start_timeout", 10.0)
    return RemoteConfig(target=target, handshake=HANDSHAKE, plugins=PLUGINS, name="kv-tls",
                        **kw)  # type: ignore[arg-type]


def test_mtls_with_the_provided_files_works(tls_replica: Replica, pki: dict[str, str]) -> None:
    tls = NetworkTLS(pki["client"], pki["client_key"], pki["ca"], server_name=SERVER_NAME)
    with RemoteClient(config(f"static:///{tls_replica.address}", tls=tls)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"
        assert client.connection_mode == "network-tls"


@pytest.mark.parametrize("case, expected", [
    ("no client cert", "refused"),
    ("client cert from another CA", "refused"),
    ("server not signed by the CA given", "not signed by the CA given"),
    ("plaintext to a TLS server", "may want TLS"),
    ("server_name the certificate does not carry", "does not name 'other.test', the server_name given"),
])
def test_wrong_tls_setups_fail_with_a_typed_error(tls_replica: Replica, pki: dict[str, str], case: str,
                                                  expected: str) -> None:
    target = f"static:///{tls_replica.address}"
    if case == "no client cert":
        cfg = config(target, tls=NetworkTLS(None, None, pki["ca"], server_name=SERVER_NAME))
    elif case == "client cert from another CA":
        cfg = config(target, tls=NetworkTLS(pki["rogue_client"], pki["rogue_client_key"], pki["ca"],
                                            server_name=SERVER_NAME))
    elif case == "server not signed by the CA given":
        cfg = config(target, tls=NetworkTLS(pki["client"], pki["client_key"], pki["rogue_ca"],
                                            server_name=SERVER_NAME))
    elif case == "server_name the certificate does not carry":
        cfg = config(target, tls=NetworkTLS(pki["client"], pki["client_key"], pki["ca"], server_name="other.test"))
    else:
        cfg = config(target, insecure=True)
    started = time.monotonic()
    with pytest.raises(RemoteTLSError) as err:
        with RemoteClient(cfg):
            pass
    assert f"TLS with remote plugin 'kv-tls' at tcp:{tls_replica.address} failed" in str(err.value)
    assert expected in str(err.value)
    assert time.monotonic() - started < 8, "a TLS failure waited out start_timeout (10 s) instead of failing at once"


def test_a_certificate_without_the_dialed_name_is_named_when_no_server_name_was_given(
        tls_replica: Replica, pki: dict[str, str]) -> None:
    # a first try without server_name, dialing a name the certificate lacks, was told the certificate "does not
    # name server_name", which it had not passed; the name checked is the host dialed
    port = tls_replica.address.rpartition(":")[2]
    cfg = config(f"static:///localhost:{port}", tls=NetworkTLS(pki["client"], pki["client_key"], pki["ca"]))
    with pytest.raises(RemoteTLSError) as err:
        with RemoteClient(cfg):
            pass
    assert ("the plugin's certificate does not name 'localhost', the address dialed (no server_name given): pass"
            " server_name, the name its subjectAltName carries, or serve the plugin with a certificate naming"
            " 'localhost'") in str(err.value), str(err.value)


def test_tls_to_a_plaintext_plugin_is_a_typed_error(pki: dict[str, str]) -> None:
    plain = Replica("127.0.0.1:0")
    try:
        tls = NetworkTLS(pki["client"], pki["client_key"], pki["ca"], server_name=SERVER_NAME)
        with pytest.raises(RemoteTLSError) as err:
            with RemoteClient(config(f"static:///{plain.address}", tls=tls)):
                pass
        assert "failed" in str(err.value)
    finally:
        plain.stop()


def test_unreadable_or_non_pem_files_are_config_errors(tmp_path: Path, pki: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        NetworkTLS(pki["client"], pki["client_key"], str(tmp_path / "missing.crt")).credentials()
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="holds no PEM block"):
        NetworkTLS(pki["client"], pki["client_key"], str(junk)).credentials()
    with pytest.raises(ConfigError, match="cert_file and key_file together"):
        NetworkTLS(pki["client"], None, pki["ca"])
    # a NUL byte in a path: open() and stat() raised a bare ValueError
    for paths in [(pki["client"], pki["client_key"], pki["ca"] + "\0x"), (pki["client"] + "\0", pki["client_key"],
                                                                          pki["ca"])]:
        with pytest.raises(ConfigError, match="holds a NUL byte"):
            NetworkTLS(*paths).files()


def test_a_ca_file_with_text_of_another_encoding_around_its_pem_works_everywhere(
        tmp_path: Path, pki: dict[str, str]) -> None:
    """A byte that is no UTF-8 outside the PEM block (a Latin-1 comment): the files loaded and gRPC took
    them, but the relay's OpenSSL context failed with a bare UnicodeDecodeError."""
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"friendlyName: Zo\xe9\n" + Path(pki["ca"]).read_bytes() + b"# fin \xff\n")
    tls = NetworkTLS(pki["client"], pki["client_key"], str(ca))
    assert tls.credentials() is not None
    assert [c["subject"] for c in tls.ssl_context().get_ca_certs()] == [
        c["subject"] for c in _context_of(pki["ca"]).get_ca_certs()]


def _context_of(ca_file: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=ca_file)
    return ctx


def _expired_server_cert(pki: dict[str, str], folder: Path) -> tuple[str, str]:
    """A server certificate from the test CA, naming SERVER_NAME, that expired yesterday."""
    server = netcerts.issue(netcerts.load_ca(pki["ca"]), "expired server", server=True, days=(-30, -1),
                            sans=[x509.DNSName(SERVER_NAME)])
    (folder / "expired.crt").write_bytes(server.cert_pem)
    (folder / "expired.key").write_bytes(server.key_pem)
    return str(folder / "expired.crt"), str(folder / "expired.key")


def test_an_expired_plugin_certificate_is_named_as_expired(pki: dict[str, str], tmp_path: Path) -> None:
    cert, key = _expired_server_cert(pki, tmp_path)
    replica = Replica("127.0.0.1:0", env={"NET_KV_CERT": cert, "NET_KV_KEY": key, "NET_KV_CA": pki["ca"]})
    try:
        tls = NetworkTLS(pki["client"], pki["client_key"], pki["ca"], server_name=SERVER_NAME)
        with pytest.raises(RemoteTLSError) as err:
            with RemoteClient(config(f"static:///{replica.address}", tls=tls)):
                pass
        assert "certificate has expired" in str(err.value)
        assert "not signed by the CA given" not in str(err.value)
    finally:
        replica.stop()


class ClosingProxy:
    """A TCP proxy (a sidecar, an L4 balancer) whose backend is down until ``open_at``: until then it
    accepts each connection and closes it at once, as such proxies do, then forwards to ``backend``.
    With ``terminate`` (a server SSLContext) it ends TLS itself first (stunnel, haproxy with ssl)."""

    def __init__(self, backend: str, open_at: float, terminate: ssl.SSLContext | None = None) -> None:
        self.backend, self.open_at, self.terminate = backend, open_at, terminate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.stopped = threading.Event()
        self.socks: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, name="tls-test-proxy")]
        self.threads[0].start()

    def _accept(self) -> None:
        for _ in range(100000):  # bounded: each turn waits up to 0.1 s
            if self.stopped.is_set():
                return
            try:
                client, _ = self.listener.accept()
                if self.terminate is not None:
                    client.settimeout(5)
                    client = self.terminate.wrap_socket(client, server_side=True)
                    client.settimeout(None)
            except OSError:
                continue
            if time.monotonic() < self.open_at:
                client.close()
                continue
            host, _, port = self.backend.rpartition(":")
            server = socket.create_connection((host, int(port)), timeout=5)
            server.settimeout(None)  # the dial's bound only: an idle proxied connection must not time out
            self.socks += [client, server]
            pipes = [(self._pipe_tls, (client, server))] if isinstance(client, ssl.SSLSocket) else \
                [(self._pipe, (client, server)), (self._pipe, (server, client))]
            for target, args in pipes:
                thread = threading.Thread(target=target, args=args, name="tls-test-pipe")
                self.threads.append(thread)
                thread.start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @staticmethod
    def _pipe_tls(tls_sock: ssl.SSLSocket, plain: socket.socket) -> None:
        """Both directions on one thread: an SSLSocket read on one thread and written on another uses one
        OpenSSL SSL object from two threads at once, which OpenSSL does not allow (a record can go out
        corrupted)."""
        try:
            for _ in range(1_000_000):  # bounded: each turn waits up to 0.1 s
                ready = [tls_sock] if tls_sock.pending() else select.select([tls_sock, plain], [], [], 0.1)[0]
                if tls_sock in ready:
                    data = tls_sock.recv(65536)
                    if not data:
                        return
                    plain.sendall(data)
                if plain in ready:
                    data = plain.recv(65536)
                    if not data:
                        return
                    tls_sock.sendall(data)
        except OSError:
            pass
        finally:
            for s in (tls_sock, plain):
                try:
                    socket.socket.shutdown(s, socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopped.set()
        for s in self.socks:
            try:  # the raw socket's: SSLSocket.shutdown drops its TLS state under the pipe thread
                socket.socket.shutdown(s, socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self.threads:
            thread.join(5)
        for s in [self.listener, *self.socks]:
            s.close()


def _round_trip_through(proxy: ClosingProxy, tls: NetworkTLS) -> None:
    """A Put and a Get through ``proxy``, whose backend comes back within the 15 s start_timeout."""
    with RemoteClient(config(f"static:///{proxy.address}", tls=tls, start_timeout=15.0)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"


def test_a_connection_cut_short_during_the_tls_handshake_is_retried_within_the_deadline(
        tls_replica: Replica, pki: dict[str, str]) -> None:
    tls = NetworkTLS(pki["client"], pki["client_key"], pki["ca"], server_name=SERVER_NAME)
    # the proxy's backend is back after 1.5 s: a closed socket is no proof of a TLS failure
    proxy = ClosingProxy(tls_replica.address, time.monotonic() + 1.5)
    try:
        _round_trip_through(proxy, tls)
    finally:
        proxy.stop()
    # a backend that never comes back: the deadline ends it, and the error says the handshake was cut short
    proxy = ClosingProxy(tls_replica.address, time.monotonic() + 3600)
    try:
        with pytest.raises(HandshakeTimeoutError) as err:
            with RemoteClient(config(f"static:///{proxy.address}", tls=tls, start_timeout=3.0)):
                pass
        assert "the TLS handshake was cut short" in str(err.value)
    finally:
        proxy.stop()


def test_a_tls_terminating_proxy_without_its_backend_is_retried_not_taken_for_a_refusal(
        pki: dict[str, str]) -> None:
    # The proxy takes the host's certificate, finishes the handshake and closes (its backend is down),
    # as gRPC's TLS 1.3 server closes when it refuses a certificate: that close alone is no refusal.
    backend = Replica("127.0.0.1:0")  # plaintext behind the proxy
    terminate = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    terminate.load_cert_chain(pki["server"], pki["server_key"])
    terminate.load_verify_locations(pki["ca"])
    terminate.verify_mode = ssl.CERT_REQUIRED
    terminate.set_alpn_protocols(["h2"])
    proxy = ClosingProxy(backend.address, time.monotonic() + 1.5, terminate=terminate)
    tls = NetworkTLS(pki["client"], pki["client_key"], pki["ca"], server_name=SERVER_NAME)
    try:
        _round_trip_through(proxy, tls)
    finally:
        proxy.stop()
        backend.stop()


def test_a_tls_server_that_closes_an_idle_connection_is_no_refusal(pki: dict[str, str]) -> None:
    # plugbay's brokering TLS front drops a connection that says nothing for 5 s: a probe that waited
    # longer read that idle close as a refused certificate.
    from plugbay.network.resolver import Endpoint
    from plugbay.network.tlsprobe import TOOK_IT, probe_taken

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki["server"], pki["server_key"])
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve_one() -> None:
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                time.sleep(1.0)  # idle: then it hangs up, as an idle timeout does
                tls_conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=serve_one, name="test-idle-tls")
    thread.start()
    try:
        tls = NetworkTLS(pki["client"], pki["client_key"], pki["ca"], server_name=SERVER_NAME)
        endpoint = Endpoint("tcp", f"127.0.0.1:{listener.getsockname()[1]}")
        started = time.monotonic()
        assert probe_taken(endpoint, tls, 3.0) == TOOK_IT  # it kept the connection: no refusal
        assert time.monotonic() - started < 2.0  # it does not wait out the timeout either
    finally:
        thread.join(10)
        listener.close()


def test_a_refused_certificate_is_named_even_when_the_deadline_comes_first(tls_replica: Replica,
                                                                            pki: dict[str, str]) -> None:
    # Before a close after each handshake counts as a refusal (3 s), a short start_timeout ran out
    # with "the TLS handshake was cut short ... a proxy whose backend is down": the probe had seen
    # more than that, and the message never named the certificate.
    tls = NetworkTLS(pki["rogue_client"], pki["rogue_client_key"], pki["ca"], server_name=SERVER_NAME)
    with pytest.raises((HandshakeTimeoutError, RemoteTLSError)) as err:
        with RemoteClient(config(f"static:///{tls_replica.address}", tls=tls, start_timeout=2.0)):
            pass
    assert "most likely refused it" in str(err.value)
