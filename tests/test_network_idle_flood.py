"""Idle connections cannot lock hosts out of a plain-gRPC TLS listener (the gateway's default, serve()'s
multiplex=False). Its TLS was grpcio's, which capped only each handshake's time (10 s): a few hundred TCP
connections that never send a byte took every file descriptor of a process (grpcio logged "File descriptor
limit reached. Retrying.") and a host with a valid certificate got DEADLINE_EXCEEDED, for as long as the
connections were reopened. Now a TLS front holds at most MAX_HANDSHAKING of them, so the host is answered.

Each process runs with RLIMIT_NOFILE (256, 256), so the flood is a fixed count of connections. The call's
deadline is below the old handshake timeout: the old code freed no descriptor before it ran out."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.transport.relay import MAX_HANDSHAKING
from plugbay.core.transport.sockets import HANDSHAKE_TIMEOUT
from tests import netcerts
from tests.rlimited import rlimited
from tests.test_network_serve import KV_PLUGIN, NetPlugin, secure, tls_env

REPO = Path(__file__).resolve().parent.parent
FD_LIMIT = 256
IDLE = 400  # idle connections: more than the descriptors the process may open
CALL_DEADLINE = HANDSHAKE_TIMEOUT * 0.8  # before grpcio's own timeout would free a descriptor


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


def _gateway(tmp_path: Path, certs: netcerts.CertSet) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
    env["PYTHONPATH"] = str(REPO / "src")
    proc = subprocess.Popen(rlimited(
        [sys.executable, "-m", "plugbay.network.gateway", "--listen", "127.0.0.1:0", "--cert", str(certs.cert_file),
         "--key", str(certs.key_file), "--client-ca", str(certs.client_ca_file), "--cookie", "BASIC_PLUGIN=hello",
         "--", sys.executable, str(KV_PLUGIN)], RLIMIT_NOFILE=(FD_LIMIT, FD_LIMIT)),
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("listening tcp 127.0.0.1:"), line
        yield line.split()[-1]
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)


def _serve(tmp_path: Path, certs: netcerts.CertSet) -> Iterator[str]:
    plugin = NetPlugin(tmp_path, {**tls_env(certs), "PLUGBAY_NETWORK_MULTIPLEX": "0"},
                       rlimited([sys.executable, str(KV_PLUGIN)], RLIMIT_NOFILE=(FD_LIMIT, FD_LIMIT)))
    try:
        yield plugin.address
    finally:
        plugin.stop()


@pytest.mark.parametrize("listener", [_gateway, _serve], ids=["gateway", "serve-multiplex-off"])
def test_idle_connections_leave_a_host_with_a_certificate_its_call(listener: object, tmp_path: Path,
                                                                   certs: netcerts.CertSet) -> None:
    assert IDLE > FD_LIMIT > MAX_HANDSHAKING
    served = listener(tmp_path, certs)  # type: ignore[operator]
    address = next(served)
    host, _, port = address.rpartition(":")
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE):  # connected (the kernel's backlog takes what is not accepted), never a byte sent
            idle.append(socket.create_connection((host, int(port)), timeout=HANDSHAKE_TIMEOUT))
        with secure(certs, address) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                               timeout=CALL_DEADLINE)
        assert answer.status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)
    finally:
        for sock in idle:
            sock.close()
        served.close()
