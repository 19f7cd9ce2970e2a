"""The host's NetworkTLS files renewed on disk (cert-manager, a Secret's ``..data`` swap): each new connection
presents the files as they are then, and a half-done renewal keeps the last good set.

Real files, real TLS servers on loopback that note the client certificate each connection presented: grpcio
servers (the endpoint pool's channels) and an OpenSSL one (a brokered session's TLS relay)."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from plugbay import NetworkTLS, RemoteClient, RemoteConfig, TLSConfigError
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.transport import sockets
from plugbay.network import tlsfiles
from plugbay.network.pool import EndpointPool
from plugbay.network.resolver import Endpoint, OnChange
from tests import netcerts
from tests.net_util import HANDSHAKE, PLUGINS
from tests.resilience_util import wait_until


class _Health(health_pb2_grpc.HealthServicer):
    """Answers SERVING and notes the common name of the client certificate each check came with."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 (gRPC's name)
        names = context.auth_context().get("x509_common_name") or [b"?"]
        self.seen.append(names[0].decode())
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class _Replica:
    def __init__(self, certs: netcerts.CertSet) -> None:
        self.health = _Health()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)  # type: ignore[no-untyped-call]
        creds = grpc.ssl_server_credentials([(certs.key_file.read_bytes(), certs.cert_file.read_bytes())],
                                            root_certificates=certs.client_ca_file.read_bytes(),
                                            require_client_auth=True)
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("tcp", f"127.0.0.1:{self.port}")


class _Steered:
    """A resolver whose endpoint set the test sets (as discovery would when a replica appears)."""

    def __init__(self, first: list[Endpoint]) -> None:
        self.first = first
        self.report: OnChange | None = None

    def start(self, on_change: OnChange) -> None:
        self.report = on_change
        on_change(self.first)

    def close(self) -> None:
        pass


def _host_files(folder: Path, who: netcerts.Issued, ca: netcerts.Issued) -> tuple[str, str, str]:
    """The host's files laid out as a Secret mount: tls.crt -> ..data/tls.crt, ..data -> a dated folder."""
    folder.mkdir(parents=True, exist_ok=True)
    _swap(folder, who, "..v1")
    (folder / "ca.crt").write_bytes(ca.cert_pem)
    for name in ("tls.crt", "tls.key"):
        os.symlink(os.path.join("..data", name), folder / name)
    return str(folder / "tls.crt"), str(folder / "tls.key"), str(folder / "ca.crt")


def _swap(folder: Path, who: netcerts.Issued, version: str) -> None:
    """Kubernetes' atomic update of a mounted Secret: a new folder, then ``..data`` renamed onto it."""
    (folder / version).mkdir()
    (folder / version / "tls.crt").write_bytes(who.cert_pem)
    (folder / version / "tls.key").write_bytes(who.key_pem)
    os.symlink(version, folder / "..data_tmp")
    os.replace(folder / "..data_tmp", folder / "..data")


@pytest.fixture()
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "server")


@pytest.fixture()
def replicas(certs: netcerts.CertSet) -> Iterator[list[_Replica]]:
    made = [_Replica(certs) for _ in range(3)]
    try:
        yield made
    finally:
        for replica in made:
            replica.server.stop(None).wait(10)


def test_a_new_channel_presents_the_renewed_certificate_and_a_half_done_renewal_keeps_the_old(
        tmp_path: Path, certs: netcerts.CertSet, replicas: list[_Replica], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key, ca = _host_files(tmp_path / "host", netcerts.issue(certs.client_ca, "host v1", server=False),
                                certs.server_ca)
    reads: list[str] = []
    real_load = tlsfiles.load

    def counted(*paths: Any) -> tlsfiles.ClientSet:
        reads.append(paths[0])
        return real_load(*paths)

    monkeypatch.setattr(tlsfiles, "load", counted)
    caplog.set_level(logging.INFO, logger="plugbay.network.tls")
    first, second, third = replicas
    resolver = _Steered([first.endpoint])
    pool = EndpointPool(resolver, tls=NetworkTLS(cert, key, ca, server_name="localhost"), health_interval=0.1,
                        health_timeout=2.0)
    try:
        pool.start()
        assert wait_until(lambda: len(first.health.seen) >= 2, 10), first.health.seen
        assert set(first.health.seen) == {"host v1"}
        assert len(reads) == 1  # the files are not read again per channel or per call while unchanged

        # a renewal half done: the new key is in place, its certificate not yet (written in place, as a
        # non-atomic writer would): new channels keep the last good pair, said once
        renewed = netcerts.issue(certs.client_ca, "host v2", server=False)
        (tmp_path / "host" / "..v1" / "tls.key").write_bytes(renewed.key_pem)
        assert resolver.report is not None
        resolver.report([first.endpoint, second.endpoint])
        assert wait_until(lambda: len(second.health.seen) >= 2, 10), second.health.seen
        assert set(second.health.seen) == {"host v1"}
        warned = [r for r in caplog.records if "not usable yet" in r.getMessage()]
        assert len(warned) == 1 and "cannot be used together" in warned[0].getMessage()
        pool.tls.credentials()  # type: ignore[union-attr]  # asked again, nothing changed: not read again
        assert len(reads) == 2

        # the renewal done, atomically (a Secret's ..data swap): the next channel presents it
        _swap(tmp_path / "host", renewed, "..v2")
        resolver.report([first.endpoint, second.endpoint, third.endpoint])
        assert wait_until(lambda: len(third.health.seen) >= 2, 10), third.health.seen
        assert set(third.health.seen) == {"host v2"}
        assert any("reloaded" in r.getMessage() for r in caplog.records)
        # the endpoints dialed before are dialed again with it (tests/test_network_tls_renewal_live.py)
        assert wait_until(lambda: first.health.seen[-1] == second.health.seen[-1] == "host v2", 10)
        assert len([r for r in caplog.records if "not usable yet" in r.getMessage()]) == 1
    finally:
        pool.close()


def _plain_files(tmp_path: Path, host: netcerts.Issued, certs: netcerts.CertSet, key_pem: bytes) -> NetworkTLS:
    """NetworkTLS over plain files (no Secret mount) in ``tmp_path``: ``host``'s certificate, ``key_pem``
    as its key, the server CA."""
    (tmp_path / "tls.crt").write_bytes(host.cert_pem)
    (tmp_path / "tls.key").write_bytes(key_pem)
    (tmp_path / "ca.crt").write_bytes(certs.server_ca.cert_pem)
    return NetworkTLS(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"), str(tmp_path / "ca.crt"))


def test_no_good_pair_at_all_is_a_typed_error(tmp_path: Path, certs: netcerts.CertSet) -> None:
    host = netcerts.issue(certs.client_ca, "host", server=False)
    other = netcerts.issue(certs.client_ca, "other", server=False)
    tls = _plain_files(tmp_path, host, certs, other.key_pem)
    with pytest.raises(TLSConfigError, match="cannot be used together"):
        tls.credentials()
    with pytest.raises(TLSConfigError, match="cannot be used together"):
        EndpointPool(_Steered([]), tls=tls)
    # once the files are right, the same NetworkTLS works without being made anew
    (tmp_path / "tls.key").write_bytes(host.key_pem)
    assert tls.files().cert_pem == host.cert_pem


def _client_names(listener: socket.socket, certs: netcerts.CertSet, seen: list[str], stop: threading.Event) -> None:
    """An OpenSSL mTLS server: notes each client certificate's common name, holds the connection until closed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(certs.client_ca_file))
    ctx.load_cert_chain(str(certs.cert_file), str(certs.key_file))
    while not stop.is_set():
        try:
            raw, _ = listener.accept()
        except OSError:
            continue
        try:
            with ctx.wrap_socket(raw, server_side=True) as conn:
                der = conn.getpeercert(binary_form=True)
                assert der is not None
                name = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                seen.append(str(name[0].value))
                conn.settimeout(1.0)
                while not stop.is_set():
                    try:
                        if not conn.recv(65536):  # the host's yamux frames; EOF when it closes
                            break
                    except TimeoutError:
                        continue
        except (OSError, ssl.SSLError):
            continue


def test_a_brokered_session_to_a_new_endpoint_presents_the_renewed_certificate(
        tmp_path: Path, certs: netcerts.CertSet) -> None:
    cert, key, ca = _host_files(tmp_path / "host", netcerts.issue(certs.client_ca, "host v1", server=False),
                                certs.server_ca)
    server = sockets.open_listener("tcp", "127.0.0.1:0")
    server.settimeout(0.5)
    seen: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(target=_client_names, args=(server, certs, seen, stop), daemon=True)
    thread.start()
    endpoint = Endpoint("tcp", "127.0.0.1:%d" % server.getsockname()[1])
    client = RemoteClient(RemoteConfig(target=f"static:///{endpoint.address}", handshake=HANDSHAKE,
                                       plugins=PLUGINS, tls=NetworkTLS(cert, key, ca, server_name="localhost")))
    try:
        # as the pool makes an endpoint's channel when the plugin multiplexes: one TLS connection (OpenSSL,
        # in a TLSRelay) carrying a yamux session
        first = client._connect_mux(endpoint)
        try:
            assert wait_until(lambda: seen, 10)
        finally:
            first.close()
        _swap(tmp_path / "host", netcerts.issue(certs.client_ca, "host v2", server=False), "..v2")
        second = client._connect_mux(endpoint)
        try:
            assert wait_until(lambda: "host v2" in seen, 10), seen
        finally:
            second.close()
        assert seen[0] == "host v1"
    finally:
        client.kill()
        stop.set()
        thread.join(10)
        server.close()


def test_a_key_of_a_type_cryptography_does_not_know_is_a_tls_config_error(
        tmp_path: Path, certs: netcerts.CertSet, caplog: pytest.LogCaptureFixture) -> None:
    host = netcerts.issue(certs.client_ca, "host", server=False)
    tls = _plain_files(tmp_path, host, certs, netcerts.unknown_type_key_pem())
    with pytest.raises(TLSConfigError, match="key type not supported; pass an RSA, EC or Ed25519 key"):
        tls.files()
    with pytest.raises(TLSConfigError, match="key type not supported"):
        EndpointPool(_Steered([]), tls=tls)
    # a renewal to such a key: the last good set stays in use, said once
    (tmp_path / "tls.key").write_bytes(host.key_pem)
    good = tls.files()
    (tmp_path / "tls.key").write_bytes(netcerts.unknown_type_key_pem())
    os.utime(tmp_path / "tls.key", ns=(1, 1))
    with caplog.at_level(logging.WARNING, logger="plugbay.network.tls"):
        assert tls.files() is good
        assert tls.files() is good
    assert len([r for r in caplog.records if "key type not supported" in r.getMessage()]) == 1


def _closer() -> tuple[socket.socket, threading.Event, threading.Thread]:
    """A TLS-terminating proxy whose backend is down: it closes every connection at once."""
    listener = sockets.open_listener("tcp", "127.0.0.1:0")
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, stop, thread


def test_the_pool_health_thread_lives_on_through_a_renewal_to_an_unknown_key_type(
        tmp_path: Path, certs: netcerts.CertSet, monkeypatch: pytest.MonkeyPatch) -> None:
    died: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(f"{args.exc_type}: {args.exc_value}"))
    host = netcerts.issue(certs.client_ca, "host", server=False)
    tls = _plain_files(tmp_path, host, certs, host.key_pem)
    listener, stop, thread = _closer()
    endpoint = Endpoint("tcp", "127.0.0.1:%d" % listener.getsockname()[1])
    resolver = _Steered([endpoint])
    pool = EndpointPool(resolver, tls=tls, health_interval=0.1, health_timeout=0.5)
    try:
        pool.start()
        # the endpoint is a TLS suspect: the health thread probes it, with the host's files, on each tick
        assert wait_until(lambda: pool._members[endpoint.key].probed_at is not None, 10)
        (tmp_path / "tls.key").write_bytes(netcerts.unknown_type_key_pem())
        probed = pool._members[endpoint.key].probed_at
        assert wait_until(lambda: pool._members[endpoint.key].probed_at != probed, 10)
        time.sleep(1.5)  # more ticks and probes after the renewal
        assert pool._thread is not None and pool._thread.is_alive(), died
        assert died == []
        # a new endpoint is still dialed, with the last good set
        assert resolver.report is not None
        resolver.report([endpoint, Endpoint("tcp", "127.0.0.1:1")])
        assert len(pool.metrics()["endpoints"]) == 2
    finally:
        pool.close()
        stop.set()
        thread.join(10)
        listener.close()


def test_a_failing_health_step_does_not_end_the_health_thread(
        tmp_path: Path, certs: netcerts.CertSet, replicas: list[_Replica], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    host = netcerts.issue(certs.client_ca, "host", server=False)
    cert, key, ca = _host_files(tmp_path / "host", host, certs.server_ca)
    pool = EndpointPool(_Steered([replicas[0].endpoint]), tls=NetworkTLS(cert, key, ca, server_name="localhost"),
                        health_interval=0.1, health_timeout=2.0)
    failures = []
    real = pool._follow_files

    def broken() -> Any:
        if len(failures) < 3:
            failures.append(1)
            raise RuntimeError("a step that failed")
        return real()

    monkeypatch.setattr(pool, "_follow_files", broken)
    try:
        with caplog.at_level(logging.ERROR, logger="plugbay.network"):
            pool.start()
            assert wait_until(lambda: len(replicas[0].health.seen) >= 2, 10)  # checks go on after the failures
        assert len(failures) == 3
        assert pool._thread is not None and pool._thread.is_alive()
        assert len([r for r in caplog.records if "health step failed" in r.getMessage()]) == 1
    finally:
        pool.close()


def test_the_tls_probe_without_a_client_context_proves_nothing(
        tmp_path: Path, certs: netcerts.CertSet, monkeypatch: pytest.MonkeyPatch) -> None:
    from plugbay.network import tlsprobe

    def fails(tls: Any) -> Any:
        raise RuntimeError("a context that could not be made")

    listener, stop, thread = _closer()
    monkeypatch.setattr(tlsprobe, "_context", fails)
    try:
        endpoint = Endpoint("tcp", "127.0.0.1:%d" % listener.getsockname()[1])
        assert tlsprobe.probe_taken(endpoint, None, 0.5) is None
    finally:
        stop.set()
        thread.join(10)
        listener.close()


def test_a_certificate_whose_key_type_is_unknown_is_a_tls_config_error(
        tmp_path: Path, certs: netcerts.CertSet, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.exceptions import UnsupportedAlgorithm

    host = netcerts.issue(certs.client_ca, "host", server=False)

    def unknown(cert: Any, key: Any) -> bool:  # what cert.public_key() raises for an SM2 certificate
        raise UnsupportedAlgorithm("Unknown key type: 1.2.156.10197.1.301")

    monkeypatch.setattr(tlsfiles, "key_fits", unknown)
    tls = _plain_files(tmp_path, host, certs, host.key_pem)
    with pytest.raises(TLSConfigError, match="cert_file .* key type not supported"):
        tls.files()
