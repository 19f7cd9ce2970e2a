"""Dialing a plugin: the gRPC channel over unix or TCP, with AutoMTLS, and the health check.

How the channel is secured (grpcio TLS, or the OpenSSL relay for a Go
plugin's P-521 certificate) is decided in plugbay.core.transport.secure.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.protocol.handshake import BROKER_QUEUES_METADATA
from plugbay.core.protocol.tls import CertKey, der_to_pem
from plugbay.core.transport.secure import NOT_HTTP2_WORDS, NOT_TLS_WORDS, MutualTLS, SecureChannel
from plugbay.core.transport.secure import dial as secure_dial
from plugbay.core.transport.handlenames import named_handles
from plugbay.errors import HandshakeTimeoutError, ProtocolMismatchError, RunnerError

EXIT_GRACE = 1.0  # how long a start that cannot reach its plugin waits to learn it exited
# How long after the handshake an announced unix socket may take to appear. go-plugin listens before it
# prints the line (so the file is there); a plugin that prints first gets this long, not the start_timeout
# that grpcio's dials to nothing would take.
SOCKET_GRACE = 0.3
# The health check's first try: a healthy plugin's answer comes within it, on the calling thread (the cheapest
# call grpcio makes); later ones wait up to _TRY each, looking every _EXIT_LOOK s whether the plugin exited.
_FIRST_TRY = 0.1
_TRY = 2.0
_EXIT_LOOK = 0.05
# gRPC's words for a peer that answers as no plugin does, which no wait changes (a plugin not up yet refuses
# the connection instead): first bytes that are no HTTP/2 frame (an HTTP/1 server, any other service that
# answers in more than a few bytes), and, with AutoMTLS through grpcio's own TLS, an answer to the TLS
# handshake that is no TLS (a plaintext service). Not matched: a TLS server's alert to a plaintext dial (7
# bytes, which gRPC reports as 'Socket closed'), nor a refusal through the TLS relay (P-521 certificates,
# go-plugin's), which closes without writing: gRPC sees a reset, as from a plugin not up yet
_NOT_PLUGIN = {NOT_HTTP2_WORDS: "speaks no HTTP/2", NOT_TLS_WORDS: "answered the AutoMTLS handshake with no TLS"}


def dial(network: str, address: str, *, tls: CertKey | None = None, server_cert_der: bytes | None = None,
         relay_dir: str | None = None, options: Sequence[tuple[str, Any]] = ()) -> SecureChannel:
    """Open a channel to a plugin at a host-dialable (network, address)."""
    mutual = (MutualTLS(tls, der_to_pem(server_cert_der))
              if tls is not None and server_cert_der is not None else None)
    return secure_dial(network, address, mutual, relay_dir, options)


def announced_file(path: str, since: float, exited: Callable[[], bool]) -> int | None:
    """The mode (st_mode) of the file at ``path``, the unix socket a handshake announced, once it is there;
    None when no file is there by ``since`` (time.monotonic() of the handshake) plus SOCKET_GRACE; 0 once
    ``exited()`` (the caller reports the exit) or when its folder cannot be looked in (the dial says why).
    Not a dial: a plugin may take one connection only."""
    deadline = since + SOCKET_GRACE
    while True:
        try:
            return os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError:
            return 0
        if exited():
            return 0
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def start_connecting(channel: grpc.Channel) -> None:
    """Have grpcio connect now, on its own threads, while this thread does other work.

    A channel connects at its first call otherwise; the host's first call is the health check,
    and the Python work before it (the stream objects) can overlap the connection's setup.
    Through grpcio's Cython channel (no public call does it without a polling thread): where
    that is missing, the first call connects as before.
    """
    try:
        channel._channel.check_connectivity_state(True)
    except Exception:  # pragma: no cover - another grpcio layout: nothing lost
        pass


def wait_healthy(channel: grpc.Channel, timeout: float, *, service: str = "plugin",
                 exited: Callable[[], bool] = lambda: False, name: str = "plugin",
                 detail: Callable[[], str] = lambda: "") -> bool:
    """Block until the health service reports ``service`` SERVING (bounded by ``timeout``).

    True when the answer said the plugin queues broker messages (BROKER_QUEUES_METADATA: plugbay's
    serve()); False for any other plugin, or when it exited meanwhile. ``detail()``: what the runner
    knows of why the connection fails (a port-forward's refusal): once it says, a failed attempt
    raises RunnerError with it at once.

    Kept on the start path though go-plugin's host (and bench/floor.py) make no such check:
    start() promises a plugin that serves, and the answer tells a plugbay plugin apart. It
    costs one round trip (about 1 ms of a start in the bench's floor with and without it); the
    connection it waits for, the first call would wait for anyway. A plugin that exits while the
    connection is awaited is seen as soon as ``exited()`` says so (grpcio would retry its refused socket
    for the whole try).
    """
    stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    request = health_pb2.HealthCheckRequest(service=service)
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    delay = 0.02
    first = True
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            known = detail()
            raise HandshakeTimeoutError(
                f"plugin {name!r} printed its handshake but its health service did not report"
                f" {service!r} SERVING within {timeout:.1f}s (last: {last}{'; ' + known if known else ''})."
                " Check the plugin's logs;"
                " with AutoMTLS, check that both sides use the certificates from the handshake."
            )
        short = first  # the first try, on this thread and brief: a healthy plugin answers it in a few ms
        try:
            if first:
                first = False
                resp, call = stub.Check.with_call(request, timeout=min(remaining, _FIRST_TRY), wait_for_ready=True)
            else:  # waiting for the connection: grpcio retries a refused socket all along, so watch for the exit
                answer = _check_watching(stub.Check, request, min(remaining, _TRY), exited)
                if answer is None:
                    return False  # the caller reports the exit with the plugin's own output
                resp, call = answer
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                return tuple(BROKER_QUEUES_METADATA) in {tuple(m) for m in call.trailing_metadata() or ()}
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {named_handles(str(exc.details()))}"
            if known := detail():  # the runner heard why (a port-forward the pod refused): no use waiting,
                if _exits_soon(exited, EXIT_GRACE):  # unless it is ending (a crashed pod refuses too)
                    return False  # the caller reports the exit with the plugin's own output
                raise RunnerError(f"plugin {name!r} printed its handshake, but the host cannot reach it: {known}."
                                  " Check that the plugin listens on that port, on 0.0.0.0 or 127.0.0.1"
                                  " (plugbay's serve() honours PLUGBAY_LISTEN), and did not stop (its logs)") from None
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                if exited():
                    return False
                if short:
                    continue  # the connection goes on being made: wait for it, watching for the exit
                # waiting for the connection hid why it fails; one fail-fast try shows it
                try:
                    stub.Check(request, timeout=0.5)
                except grpc.RpcError as probe:
                    last = f"{probe.code().name}: {named_handles(str(probe.details()))}"
            said = next((said for sign, said in _NOT_PLUGIN.items() if sign in last), None)
            if said is not None and not _exits_soon(exited, _EXIT_LOOK):  # an exit: the caller reports it
                raise ProtocolMismatchError(
                    f"plugin {name!r} printed its handshake, but what answers at the address it announced {said}"
                    f" (last: {last}): another service listens there (an HTTP server, a server that wants TLS or"
                    " serves none), not the plugin's gRPC server. Check that the plugin prints the address its"
                    " gRPC server listens on; waiting longer would not change this answer") from None
        if exited():
            return False  # the caller reports the exit with the plugin's own output
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.5)


def _check_watching(check: Any, request: health_pb2.HealthCheckRequest, timeout: float,
                    exited: Callable[[], bool]) -> tuple[Any, Any] | None:
    """One health Check waiting for the connection (``timeout``), given up (None) once ``exited()``."""
    future = check.future(request, timeout=timeout, wait_for_ready=True)
    while True:
        try:
            return future.result(timeout=_EXIT_LOOK), future
        except grpc.FutureTimeoutError:
            if exited():
                future.cancel()
                return None


def _exits_soon(exited: Callable[[], bool], within: float) -> bool:
    """Whether ``exited()`` holds within ``within`` seconds: a runner may hear of an exit a moment after
    the connection failed (a pod's status comes from its watch)."""
    deadline = time.monotonic() + within
    while not exited():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
