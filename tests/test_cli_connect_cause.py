"""The probes (health, info, call) wait up to --timeout for a target coming up; one that never connected
says why after that deadline, not only DEADLINE_EXCEEDED. A connected target that is slow, or a peer that
took the connection and says nothing, is not said to have failed to connect."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2_grpc
from tests.cli_util import KV_PROTO, plugbay, serving

REFUSED = "static:///127.0.0.1:1"  # nothing listens on port 1


@pytest.mark.parametrize("args", [["health"], ["info"], ["call", "/proto.KV/Get", "{}", "--proto", str(KV_PROTO)],
                                  ["call", "/proto.KV/Get", "{}"]], ids=["health", "info", "call", "call-reflection"])
def test_a_refused_target_is_said_to_refuse_the_connection(args: list[str]) -> None:
    said = plugbay(args[0], REFUSED, *args[1:], "--insecure", "--timeout", "1")
    assert said.returncode == 3 and "Connection refused" in said.stdout + said.stderr, said


class _WarmingUp(health_pb2_grpc.HealthServicer):
    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 (gRPC's name)
        context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")


@pytest.fixture
def slow_server() -> Iterator[str]:
    """A connected target whose KV.Get outlives the call's deadline and whose health service answers
    UNAVAILABLE itself."""
    released = threading.Event()

    def get(request: bytes, context: grpc.ServicerContext) -> bytes:
        released.wait(5)
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(4))
    health_pb2_grpc.add_HealthServicer_to_server(_WarmingUp(), server)  # type: ignore[no-untyped-call]
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("proto.KV", {
        "Get": grpc.unary_unary_rpc_method_handler(get)}),))
    with serving(server) as target:
        try:
            yield target
        finally:
            released.set()


def test_a_slow_connected_target_is_not_said_to_fail_its_connection(slow_server: str) -> None:
    said = plugbay("call", slow_server, "/proto.KV/Get", "{}", "--proto", str(KV_PROTO), "--insecure",
                   "--timeout", "1")
    assert said.returncode == 3 and "DEADLINE_EXCEEDED" in said.stderr, said
    assert "the connection:" not in said.stderr and "warming up" not in said.stderr, said.stderr


def test_a_peer_that_takes_the_connection_and_says_nothing_is_not_said_to_refuse_it() -> None:
    # a guard against naming a cause where there is none (a channel still connecting); that it also costs
    # no wait past --timeout is a matter of time, which no test here asserts
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(0.2)
        held: list[socket.socket] = []
        stop = threading.Event()

        def take() -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    held.append(silent.accept()[0])
                except OSError:
                    continue

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        try:
            said = plugbay("health", f"static:///127.0.0.1:{silent.getsockname()[1]}", "--insecure",
                           "--timeout", "1")
        finally:
            stop.set()
            taker.join(5)
            for conn in held:
                conn.close()
    assert said.returncode == 3 and said.stdout.startswith("UNREACHABLE"), said
    assert "the connection:" not in said.stdout, said.stdout
