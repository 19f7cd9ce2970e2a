"""Dialing a plugin: the gRPC channel over unix or TCP, with AutoMTLS, and the health check.

With AutoMTLS, grpcio's own TLS is used when it can handshake with the
plugin's certificate (a Python plugin's P-256 cert). A Go plugin's P-521 cert
defeats grpcio's BoringSSL, so then the channel is plaintext to a private unix
socket where a TLSRelay (OpenSSL) originates the TLS connection to the plugin.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.errors import HandshakeTimeoutError
from plugbay.core.protocol.tls import HOSTNAME, CertKey, client_context, der_to_pem, grpc_can_use
from plugbay.core.transport.relay import TLSRelay, open_listener

# go-plugin lifts gRPC's message size limits to math.MaxInt32 on both sides.
_MAX_MSG = 2**31 - 1
DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", _MAX_MSG),
    ("grpc.max_receive_message_length", _MAX_MSG),
)
_relay_ids = itertools.count(1)


@dataclass
class Connection:
    """A dialed plugin: the raw channel, and the relay under it if any."""

    channel: grpc.Channel
    relay: TLSRelay | None
    mode: str  # "plaintext", "grpc-tls" or "relay-tls"

    def close(self) -> None:
        self.channel.close()
        if self.relay is not None:
            self.relay.close()


def grpc_target(network: str, address: str) -> str:
    if network == "unix":
        return "unix:" + os.path.abspath(address)
    return address


def dial(network: str, address: str, *, tls: CertKey | None = None, server_cert_der: bytes | None = None,
         relay_dir: str | None = None, options: Sequence[tuple[str, Any]] = ()) -> Connection:
    """Open a channel to a plugin at a host-dialable (network, address)."""
    opts = list(DEFAULT_OPTIONS) + list(options)
    if tls is None or server_cert_der is None:
        return Connection(grpc.insecure_channel(grpc_target(network, address), options=opts), None,
                          "plaintext")
    server_pem = der_to_pem(server_cert_der)
    if grpc_can_use(server_pem):
        creds = grpc.ssl_channel_credentials(root_certificates=server_pem, private_key=tls.key_pem,
                                             certificate_chain=tls.cert_pem)
        opts.append(("grpc.ssl_target_name_override", HOSTNAME))
        return Connection(grpc.secure_channel(grpc_target(network, address), creds, options=opts),
                          None, "grpc-tls")
    if relay_dir is None:
        raise ValueError("a TLS relay needs a private directory for its socket")
    context = client_context(tls, server_pem)  # before the listener: a failure here leaks nothing
    path = os.path.join(relay_dir, f"relay-{os.getpid()}-{next(_relay_ids)}.sock")
    listener = open_listener("unix", path)
    os.chmod(path, 0o600)
    relay = TLSRelay(listener, (network, address), context, "originate", server_hostname=HOSTNAME)
    channel = grpc.insecure_channel(grpc_target("unix", path), options=opts)
    return Connection(channel, relay, "relay-tls")


def wait_healthy(channel: grpc.Channel, timeout: float, *, service: str = "plugin",
                 exited: Callable[[], bool] = lambda: False, name: str = "plugin") -> None:
    """Block until the health service reports ``service`` SERVING (bounded by ``timeout``)."""
    stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    delay = 0.02
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HandshakeTimeoutError(
                f"plugin {name!r} printed its handshake but its health service did not report"
                f" {service!r} SERVING within {timeout:.1f}s (last: {last}). Check the plugin's logs;"
                " with AutoMTLS, check that both sides use the certificates from the handshake."
            )
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service),
                              timeout=min(remaining, 2.0), wait_for_ready=True)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                # waiting for the connection hid why it fails; one fail-fast try shows it
                try:
                    stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=0.5)
                except grpc.RpcError as probe:
                    last = f"{probe.code().name}: {probe.details()}"
        if exited():
            return  # the caller reports the exit with the plugin's own output
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.5)
