"""A replica whose health goes bad is a WARNING, once per change of verdict; its return is INFO.

An operator's trial: a replica refusing connections was logged only at INFO ("health bad"), while ejections and
TLS failures are WARNINGs, so with logging's default level a down replica was silent. Now its first bad verdict
(after being good, or never good since the pool started) is a WARNING, its later failing checks add nothing, and
its return to SERVING is INFO. Real gRPC health servers on loopback, a real EndpointPool; no timed assertions
(waits are for conditions, bounded).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.network.pool import EndpointPool
from plugbay.network.targets import make_resolver, parse_target

SERVING = health_pb2.HealthCheckResponse.SERVING


class CountingHealth(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self.checks = 0
        self.lock = threading.Lock()

    def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method's name
        with self.lock:
            self.checks += 1
        return health_pb2.HealthCheckResponse(status=SERVING)


def _serve(port: int = 0) -> tuple[grpc.Server, CountingHealth, int]:
    servicer = CountingHealth()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, servicer, port


def _until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"never {what}"
        time.sleep(0.02)


def _said(caplog: pytest.LogCaptureFixture, port: int, verdict: str) -> list[int]:
    return [r.levelno for r in caplog.records
            if r.name == "plugbay.network" and f"endpoint tcp:127.0.0.1:{port} health {verdict}" in r.getMessage()]


@pytest.mark.timeout(180)
def test_a_replica_going_down_is_one_warning_and_its_return_is_info(caplog: pytest.LogCaptureFixture,
                                                                    closed_port: int,
                                                                    hold_port: Callable[[int], Any]) -> None:
    caplog.set_level(logging.INFO, logger="plugbay.network")
    steady, counter, steady_port = _serve()
    flaky, _, flaky_port = _serve()
    down_port = closed_port  # held, nothing listens there: a replica down since before the pool started
    target = parse_target(f"static:///127.0.0.1:{steady_port},127.0.0.1:{flaky_port},127.0.0.1:{down_port}")
    try:
        with EndpointPool(make_resolver(target, name="levels"), insecure=True, health_interval=0.1,
                          health_timeout=2.0, unhealthy_after=2, name="levels") as pool:
            pool.start()
            members = {m.key: m for m in pool._members.values()}
            flaky_member = members[f"tcp:127.0.0.1:{flaky_port}"]
            down_member = members[f"tcp:127.0.0.1:{down_port}"]
            _until(lambda: flaky_member.healthy is True and down_member.healthy is False, "judged both")

            flaky.stop(None).wait(30)
            held = hold_port(flaky_port)  # while it is down, no other bind takes its port
            _until(lambda: flaky_member.healthy is False, "saw the flaky replica go down")
            seen = counter.checks
            _until(lambda: counter.checks >= seen + 10, "ran ten more health rounds")  # each round checks all
            assert _said(caplog, flaky_port, "bad") == [logging.WARNING]  # one, not one per failing check
            assert _said(caplog, down_port, "bad") == [logging.WARNING]  # never good: warned once too

            held.release()
            flaky, _, _ = _serve(flaky_port)  # back on its port
            _until(lambda: flaky_member.healthy is True, "saw the flaky replica return")
            seen = counter.checks
            _until(lambda: counter.checks >= seen + 5, "ran five more health rounds")
            assert _said(caplog, flaky_port, "SERVING") == [logging.INFO, logging.INFO]  # first verdict, return
            assert _said(caplog, flaky_port, "bad") == [logging.WARNING]
            assert _said(caplog, down_port, "bad") == [logging.WARNING]
    finally:
        steady.stop(None).wait(30)
        flaky.stop(None).wait(30)


@pytest.mark.timeout(120)
def test_a_check_cut_by_the_pools_close_blames_no_replica(caplog: pytest.LogCaptureFixture) -> None:
    # a replica that takes the connection and says nothing: its first check is still out when the pool closes,
    # and the close cancels it. That is no verdict on the replica: it was logged as a WARNING "health bad
    # (CANCELLED: Channel closed!)", blaming the replica for the host's own close (found in review)
    caplog.set_level(logging.INFO, logger="plugbay.network")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # never accepted: the kernel completes the connection, nothing ever answers on it
        port = silent.getsockname()[1]
        target = parse_target(f"static:///127.0.0.1:{port}")
        with EndpointPool(make_resolver(target, name="closing"), insecure=True, health_interval=0.1,
                          health_timeout=30.0, name="closing") as pool:
            pool.start()
            member = next(iter(pool._members.values()))
            _until(lambda: member.checking, "sent the first health check")
        assert member.healthy is None, member.healthy  # never judged
    assert _said(caplog, port, "bad") == [], caplog.text
