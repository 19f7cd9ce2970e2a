"""One health check per endpoint in flight, however many triggers come at once: the discovery thread's check of
a joining endpoint and the health thread's tick (and any other caller) may ask together, and each used to read
Member.checking before either set it, so two (or more) checks went out and the later answer overwrote the
earlier one's verdict.

A real gRPC health server counts the checks that reach it while it holds them (held, so none can end and
let the next one go legitimately); many threads trigger the check at once. The GIL switches threads only at
calls and loops, never between that read and its set, so the endpoint's ``checking`` flag is read through a
property that, for a reader not holding the pool's lock, waits until every trigger has read it: the window
a switch (or a free-threaded interpreter) opens, made certain. Read under the lock, it waits for nothing.
No timing assertions: each wait is for a condition, bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.network.channelbase import Member
from plugbay.network.pool import EndpointPool
from plugbay.network.targets import make_resolver, parse_target

SERVING = health_pb2.HealthCheckResponse.SERVING
TRIGGERS = 32  # threads
ROUNDS = 200  # triggers per thread


class CountingHealth(health_pb2_grpc.HealthServicer):
    """Answers SERVING; while ``hold`` is set, a check of service "plugin" is counted and held until ``release``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held = 0
        self.hold = threading.Event()
        self.release = threading.Event()

    def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method's name
        if request.service == "plugin" and self.hold.is_set():
            with self.lock:
                self.held += 1
            self.release.wait(60)  # bounded: the test releases it at its end
        return health_pb2.HealthCheckResponse(status=SERVING)


@pytest.fixture()
def health() -> Iterator[tuple[CountingHealth, int]]:
    servicer = CountingHealth()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=TRIGGERS * 2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        servicer.release.set()
        server.stop(None).wait(30)


def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"never {what}"
        time.sleep(0.01)


def racing(member: Member, pool: EndpointPool, triggers: int) -> threading.Barrier:
    """Make ``member`` a RacingMember: each trigger thread's first read of ``checking`` without the pool's
    lock waits (at the returned barrier) until every trigger has read it, so none sets it before all read."""
    gate = threading.Barrier(triggers, timeout=30)
    waited: set[str] = set()

    class RacingMember(Member):
        @property
        def checking(self) -> bool:
            value: bool = self.__dict__["checking"]
            me = threading.current_thread().name
            if me.startswith("trigger-") and me not in waited and not pool._cond._is_owned():  # type: ignore[attr-defined]
                waited.add(me)
                gate.wait()
            return value

        @checking.setter
        def checking(self, value: bool) -> None:
            self.__dict__["checking"] = value

    member.__class__ = RacingMember
    return gate


@pytest.mark.timeout(120)
def test_many_concurrent_triggers_send_one_health_check(health: tuple[CountingHealth, int]) -> None:
    servicer, port = health
    target = parse_target(f"static:///127.0.0.1:{port}")
    # no tick during the test but the thread's first: every other check is one the test triggers
    with EndpointPool(make_resolver(target, name="once"), insecure=True, health_interval=3600.0,
                      health_timeout=60.0, name="once") as pool:
        pool.start()
        member = next(iter(pool._members.values()))
        until(lambda: member.healthy is True and not member.checking, "passed its first check")
        servicer.hold.set()
        racing(member, pool, TRIGGERS)
        start = threading.Barrier(TRIGGERS, timeout=30)

        def trigger() -> None:
            start.wait()
            for _ in range(ROUNDS):
                pool._check(member)

        threads = [threading.Thread(target=trigger, name=f"trigger-{n}") for n in range(TRIGGERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
        until(lambda: servicer.held >= 1, "received a held check")
        # every check sent so far is ahead of this one on the endpoint's connection: once it is answered,
        # the server has seen them all
        flush = health_pb2_grpc.HealthStub(member.channel)  # type: ignore[no-untyped-call]
        assert flush.Check(health_pb2.HealthCheckRequest(service="flush"), timeout=30).status == SERVING
        with servicer.lock:
            held = servicer.held
        assert held == 1, f"{held} health checks of one endpoint were in flight at once"
        assert member.checking
        servicer.release.set()
        until(lambda: not member.checking, "ended the held check")
        assert member.healthy is True
