"""Shared parts of the network-mode host tests: KV replicas served on TCP, a test PKI, and a plugin's health
and Discovery answered in this process."""

from __future__ import annotations

import datetime
import ipaddress
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay._proto.plugbay import discovery_pb2_grpc
from tests.resilience_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, wait_until

REPO = Path(__file__).resolve().parent.parent
NET_KV = str(REPO / "tests" / "plugins" / "net_kv.py")
SERVER_NAME = "kv.plugbay.test"

__all__ = ["HANDSHAKE", "PLUGIN_NAME", "PLUGINS", "Replica", "make_pki", "SERVER_NAME", "serving_discovery",
           "connection_lost", "aio_connection_lost", "first_check_passed"]


class Replica:
    """One net_kv process serving on ``listen`` (optionally through ``prefix``, e.g. ip netns exec)."""

    def __init__(self, listen: str, *, prefix: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, timeout: float = 20.0) -> None:
        full_env = {**os.environ, "NET_KV_LISTEN": listen, **(env or {})}
        self.proc = subprocess.Popen([*prefix, sys.executable, NET_KV], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=full_env, cwd=cwd, text=True)
        self.address = self._wait_listening(timeout)

    def _wait_listening(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if sel.select(0.2):
                    line = self.proc.stdout.readline()
                    if line.startswith("LISTENING "):
                        return line.split()[1]
                    if not line:
                        break
        finally:
            sel.close()
        self.stop()
        err = self.proc.stderr.read() if self.proc.stderr else ""
        raise RuntimeError(f"net_kv replica did not start: {err[-2000:]}")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def running_replica() -> Iterator[Replica]:
    """A net_kv replica on a free 127.0.0.1 port, stopped on the way out."""
    rep = Replica("127.0.0.1:0")
    try:
        yield rep
    finally:
        rep.stop()


@pytest.fixture()
def loopback_replica() -> Iterator[Replica]:
    """A net_kv replica on a free 127.0.0.1 port for one test (import this fixture to use it)."""
    with running_replica() as rep:
        yield rep


def _ready(channel: Any) -> bool:
    """Whether gRPC holds ``channel``'s connection READY (its own channel, under the pool's and the relay's
    wrappers; a grpc.aio channel's too)."""
    while not hasattr(channel, "check_connectivity_state"):
        channel = channel._channel
    return bool(channel.check_connectivity_state(False) == grpc.ChannelConnectivity.READY.value[0])


def first_check_passed(client: Any, *keys: str) -> None:
    """Until the pool's first health check of each endpoint ``keys`` passed (``client``: anything with the
    pool's metrics(): a RemoteClient, an AsyncRemoteClient, an EndpointPool).

    The start waits for one endpoint's check only, and calls then go to those that passed: a test that
    spreads calls over every replica, or kills one and expects the next call to meet it, waits here first
    (else its calls may all go to another, or the kill come before that replica ever took a call)."""
    def passed() -> bool:
        endpoints = client.metrics()["endpoints"]
        return all(endpoints.get(key, {}).get("healthy") for key in keys)

    if not wait_until(passed, 10.0):  # a hang guard only
        raise AssertionError(f"not all of {keys} passed a first health check: {client.metrics()['endpoints']}")


def connection_lost(client: Any, key: str) -> None:
    """Until a RemoteClient's connection to the endpoint ``key`` (a replica just killed) is seen closed.

    The kill closes the socket at once, but gRPC notices on its own thread: a call made before that is
    written on the old connection and breaks in flight ("Stream removed"), which may have reached the
    plugin and is rightly not sent again. A test that wants the refused, never-sent call waits here. A
    multiplexed endpoint's yamux session reads the end on a thread of its own too: till then dispense()
    pins stubs to it, its session still up to the pool."""
    channel = client.pool.member(key).channel

    def seen() -> bool:
        return not _ready(channel) and not getattr(channel, "session_up", False)

    if not wait_until(seen, 10.0):  # a hang guard only
        raise AssertionError(f"the connection (or yamux session) to the killed {key} still looks up")


async def aio_connection_lost(client: Any, key: str) -> None:
    """connection_lost() of an AsyncRemoteClient, whose grpc.aio channels hold connections of their own
    (none yet to ``key``: nothing to wait for)."""
    import asyncio

    held = client._endpoints._channels.get(key)
    for _ in range(200):  # a hang guard only: about 10 s
        if held is None or not _ready(held[1]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the grpc.aio connection to the killed {key} still looks READY")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _cert(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey,
          *, ca: bool, sans: Sequence[x509.GeneralName] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_pki(folder: Path) -> dict[str, str]:
    """ca, server (SAN kv.plugbay.test and 127.0.0.1), client; rogue_ca and rogue_client (another CA)."""
    out: dict[str, str] = {}
    for ca_name, prefix in (("plugbay test CA", ""), ("rogue CA", "rogue_")):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _cert(ca_name, ca_name, ca_key, ca_key, ca=True)
        _write(folder / f"{prefix}ca", ca_key, ca_cert)
        out[f"{prefix}ca"] = str(folder / f"{prefix}ca.crt")
        leaves = [("client", [x509.DNSName("host.plugbay.test")])]
        if not prefix:
            leaves.append(("server", [x509.DNSName(SERVER_NAME),
                                      x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
        for leaf, sans in leaves:
            key = ec.generate_private_key(ec.SECP256R1())
            _write(folder / f"{prefix}{leaf}", key, _cert(leaf, ca_name, key, ca_key, ca=False, sans=sans))
            out[f"{prefix}{leaf}"] = str(folder / f"{prefix}{leaf}.crt")
            out[f"{prefix}{leaf}_key"] = str(folder / f"{prefix}{leaf}.key")
    return out


class _Healthy(health_pb2_grpc.HealthServicer):
    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> object:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@contextmanager
def serving_discovery(discovery: discovery_pb2_grpc.DiscoveryServicer) -> Iterator[str]:
    """A plaintext gRPC server on 127.0.0.1 (its address yielded) whose health checks say SERVING and whose
    Discovery is ``discovery``: the plugin's side of a network client's start(), answered as a test sets."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    health_pb2_grpc.add_HealthServicer_to_server(_Healthy(), server)  # type: ignore[no-untyped-call]
    discovery_pb2_grpc.add_DiscoveryServicer_to_server(discovery, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait(10)
