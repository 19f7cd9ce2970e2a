"""CircuitBreaker: its state machine (with a hand-driven clock) and on a real Client's calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.resilience_util import PLUGIN_NAME, faulty_config, wait_until

from plugbay import CircuitBreaker, CircuitOpenError, Client, ConfigError, RetryPolicy  # noqa: E402
from plugbay.core.resilience.circuit import (CLOSED, DEFAULT_FAILURE_CODES, HALF_OPEN, OPEN,  # noqa: E402
                                            CircuitOpen)
from plugbay.core.resilience.calls import install  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **kw: object) -> tuple[CircuitBreaker, list[tuple[str, str]]]:
    changes: list[tuple[str, str]] = []
    b = CircuitBreaker(failure_threshold=3, window=10.0, open_for=5.0, name="kv", clock=clock,
                       on_change=lambda old, new, why: changes.append((old, new)), **kw)  # type: ignore[arg-type]
    return b, changes


def test_opens_after_threshold_within_window_only() -> None:
    clock = Clock()
    b, changes = breaker(clock)
    b.record_failure("a")
    b.record_failure("b")
    clock.now += 11  # both fall out of the window
    b.record_failure("c")
    b.record_failure("d")
    assert b.state == CLOSED
    b.record_failure("e")
    assert b.state == OPEN
    assert changes == [(CLOSED, OPEN)]
    assert not b.allow()
    assert b.rejected_count == 1 and b.opened_count == 1


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = Clock()
    b, changes = breaker(clock)
    b.trip("health watcher: NOT_SERVING")
    clock.now += 5
    assert b.state == HALF_OPEN
    results: list[bool] = []
    lock = threading.Lock()

    def take() -> None:
        ok = b.allow()
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=take, name=f"plugbay-test-probe-{i}") for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(results) == [False] * 7 + [True]
    b.record_success()
    assert b.state == CLOSED
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_failed_probe_opens_again_for_a_full_interval() -> None:
    clock = Clock()
    b, changes = breaker(clock)
    for i in range(3):
        b.record_failure(str(i))
    clock.now += 5
    assert b.allow()
    b.record_failure("probe failed")
    assert b.state == OPEN
    clock.now += 4.9
    assert b.state == OPEN
    err = b.open_error()
    assert err.retry_in == pytest.approx(0.1, abs=0.01)
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]


def test_open_error_says_when_and_what_to_check() -> None:
    clock = Clock()
    b, _ = breaker(clock)
    b.trip("UNAVAILABLE: connection refused")
    clock.now += 2
    err = b.open_error()
    assert isinstance(err, CircuitOpenError)
    text = str(err)
    assert "circuit of plugin 'kv' is open" in text
    assert "a probe call is let through in 3.0s" in text
    assert "UNAVAILABLE: connection refused" in text
    assert "Check that the plugin is running and reachable" in text
    clock.now += 3
    assert b.allow()  # the probe
    assert "a probe call is already in flight" in str(b.open_error())


def test_reading_the_state_or_the_open_error_reports_the_move_to_half_open() -> None:
    for read in (lambda b: b.state, lambda b: b.open_error()):
        clock = Clock()
        b, changes = breaker(clock)
        b.trip("health watcher: NOT_SERVING")
        clock.now += 5
        read(b)  # what Supervisor.metrics() does: the move it makes is told to on_change at once
        assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


@pytest.mark.parametrize("kw, message", [
    ({"failure_threshold": 0}, "failure_threshold must be >= 1 (got 0)"),
    ({"window": 0}, "window must be > 0 (got 0)"),
    ({"open_for": -1}, "open_for must be > 0 (got -1)"),
])
def test_bad_settings_are_refused(kw: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        CircuitBreaker(**kw)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_on_real_calls_opens_fails_fast_and_closes_after_a_probe(tmp_path: Path) -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, window=60, open_for=5, name="kv", clock=clock)
    with Client(faulty_config(tmp_path)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        kv.put("__fail__", b"3")
        install(client, breaker=b)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as err:
                kv.get("k")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert b.state == OPEN
        with pytest.raises(CircuitOpen) as fast:
            kv.get("k")
        assert "injected failure" in fast.value.last_failure
        install(client)
        assert kv.get("__calls__") == b"3"  # the refused call never reached the plugin
        install(client, breaker=b)
        clock.now += 5
        assert kv.get("k") == b"v"  # the probe
        assert b.state == CLOSED


def test_application_errors_do_not_open_it(tmp_path: Path) -> None:
    b = CircuitBreaker(failure_threshold=1, window=60, open_for=60, name="kv")
    with Client(faulty_config(tmp_path)) as client:
        install(client, breaker=b)
        kv = client.dispense(PLUGIN_NAME)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as err:
                kv.get("missing")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert b.state == CLOSED


def test_a_handler_exception_does_not_open_the_default_breaker(tmp_path: Path) -> None:
    """UNKNOWN is what a handler's exception gives (and a go-plugin Go plugin's plain Go error): an answer
    from a plugin that works, which opened the default breaker as if the plugin were down. A breaker
    told to count it still does."""
    default = CircuitBreaker(failure_threshold=2, window=60, open_for=60, name="kv")
    counting = CircuitBreaker(failure_threshold=2, window=60, open_for=60, name="kv",
                              failure_codes=DEFAULT_FAILURE_CODES | {grpc.StatusCode.UNKNOWN})
    with Client(faulty_config(tmp_path)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        install(client, breaker=default)
        for _ in range(default.failure_threshold + 1):
            with pytest.raises(grpc.RpcError) as err:
                kv.get("__raise__")
            assert not isinstance(err.value, CircuitOpen), err.value
            assert err.value.code() == grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
            assert "the handler failed" in (err.value.details() or "")  # type: ignore[attr-defined]
        assert default.state == CLOSED and default.opened_count == 0
        assert kv.get("k") == b"v"

        install(client, breaker=counting)
        for _ in range(counting.failure_threshold):
            with pytest.raises(grpc.RpcError) as err:
                kv.get("__raise__")
            assert err.value.code() == grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
        assert counting.state == OPEN
        with pytest.raises(CircuitOpen) as refused:
            kv.get("__raise__")
        assert "the handler failed" in refused.value.last_failure
        install(client)
        assert kv.get("__calls__") == b"6"  # 3 + 2 raising Gets and Get("k"): the refused one was never sent


def test_open_circuit_stops_retries_at_once(tmp_path: Path) -> None:
    b = CircuitBreaker(failure_threshold=2, window=60, open_for=60, name="kv")
    retried: list[int] = []
    with Client(faulty_config(tmp_path)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        kv.put("__fail__", b"100")
        install(client, breaker=b, retry=RetryPolicy(max_attempts=10, initial_backoff=0.01,
                                                     all_idempotent=True,
                                                     on_retry=lambda m, n, e, s: retried.append(n)))
        with pytest.raises(CircuitOpen) as err:
            kv.get("k")
        assert retried == [1, 2]  # two failures opened it; the third try was refused
        # a call failure like any other: a grpc.RpcError, UNAVAILABLE (not sent)
        assert isinstance(err.value, grpc.RpcError) and err.value.code() == grpc.StatusCode.UNAVAILABLE
        install(client)
        assert kv.get("__calls__") == b"2"
        kv.put("__fail__", b"0")


def test_a_default_named_breaker_takes_the_clients_name(tmp_path: Path) -> None:
    b = CircuitBreaker(failure_threshold=1, window=60, open_for=60)
    with Client(faulty_config(tmp_path, name="kv-faulty")) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        kv.put("__fail__", b"1")
        install(client, breaker=b)
        with pytest.raises(grpc.RpcError):
            kv.get("k")
        with pytest.raises(CircuitOpen) as err:
            kv.get("k")
    assert "circuit of plugin 'kv-faulty' is open" in str(err.value)
    named = CircuitBreaker(name="mine")
    with Client(faulty_config(tmp_path, name="kv-faulty")) as client:
        install(client, breaker=named)
    assert named.name == "mine"  # a name given is kept


def test_a_default_named_breaker_of_a_supervisor_takes_the_plugins_name(tmp_path: Path) -> None:
    # install() named it; Supervisor(breaker=) left "circuit of plugin 'plugin'" beside errors naming the plugin
    from plugbay import AsyncSupervisor, Supervisor

    b = CircuitBreaker(failure_threshold=1, window=60, open_for=60)
    with Supervisor(lambda: faulty_config(tmp_path, name="kv-faulty"), breaker=b, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        b.trip("by hand")
        with pytest.raises(CircuitOpen) as err:
            kv.get("k")
    assert "circuit of plugin 'kv-faulty' is open" in str(err.value), str(err.value)
    named = CircuitBreaker(name="mine")

    async def main() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path, name="kv-faulty"), breaker=named,
                                   health_interval=None):
            pass

    asyncio.run(main())
    assert named.name == "mine"  # a name given is kept
    unnamed = CircuitBreaker()

    async def main_unnamed() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path, name="kv-faulty"), breaker=unnamed,
                                   health_interval=None):
            pass

    asyncio.run(main_unnamed())
    assert unnamed.name == "kv-faulty"


class Held:
    """run_async attempts that wait until released, then answer their name (or fail UNAVAILABLE)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._gates: dict[str, asyncio.Event] = {}

    def attempt(self, name: str, fail: bool = False) -> Callable[[float | None], Awaitable[str]]:
        gate = self._gates.setdefault(name, asyncio.Event())

        async def run(timeout: float | None) -> str:
            self.started.append(name)
            await gate.wait()
            if fail:
                error = grpc.RpcError()
                error.code = lambda: grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
                raise error
            return name
        return run

    def release(self, name: str) -> None:
        self._gates.setdefault(name, asyncio.Event()).set()


async def start_then_trip(b: CircuitBreaker, clock: Clock, attempt: Any) -> asyncio.Future[Any]:
    """Start a call, then trip the circuit and let its open interval pass (the next call is a probe)."""
    call = asyncio.ensure_future(b.run_async("/m", attempt, None))
    await asyncio.sleep(0)
    b.trip("test")
    clock.now += 5
    return call


def test_a_cancelled_call_that_is_not_the_probe_leaves_the_probe_slot_taken() -> None:
    # A call let through while closed, cancelled while half-open, freed the slot of the probe that
    # another call held, so a second probe ran beside it.
    clock = Clock()
    b = CircuitBreaker(failure_threshold=5, window=60, open_for=5, clock=clock)

    async def main() -> None:
        held = Held()
        older = await start_then_trip(b, clock, held.attempt("older"))  # let through while closed
        probe = asyncio.ensure_future(b.run_async("/m", held.attempt("probe"), None))
        await asyncio.sleep(0)
        assert held.started == ["older", "probe"] and b.state == HALF_OPEN
        older.cancel()
        await asyncio.gather(older, return_exceptions=True)
        with pytest.raises(CircuitOpen, match="a probe call is already in flight"):
            await asyncio.wait_for(b.run_async("/m", held.attempt("third"), None), 5)  # admitted: it would wait
        held.release("probe")
        assert await asyncio.wait_for(probe, 10) == "probe"
        assert b.state == CLOSED

    asyncio.run(main())


def test_only_the_current_probe_moves_or_frees_a_half_open_circuit() -> None:
    # A probe of an earlier half-open phase, cancelled, freed the current probe's slot; and a call
    # let through while closed that failed while half-open reopened the circuit under the probe
    clock = Clock()
    b = CircuitBreaker(failure_threshold=5, window=60, open_for=5, clock=clock)

    async def main() -> None:
        held = Held()
        older = await start_then_trip(b, clock, held.attempt("older", fail=True))  # while closed
        p = await start_then_trip(b, clock, held.attempt("p"))  # the first half-open phase's probe
        q = asyncio.ensure_future(b.run_async("/m", held.attempt("q"), None))  # the current probe
        await asyncio.sleep(0)
        assert b.state == HALF_OPEN
        p.cancel()
        await asyncio.gather(p, return_exceptions=True)
        with pytest.raises(CircuitOpen, match="a probe call is already in flight"):
            await asyncio.wait_for(b.run_async("/m", held.attempt("r"), None), 5)
        held.release("older")  # a failure from before the probe...
        await asyncio.gather(older, return_exceptions=True)
        assert b.state == HALF_OPEN  # ...does not reopen the circuit under the probe
        held.release("q")
        assert await asyncio.wait_for(q, 10) == "q"
        assert b.state == CLOSED

    asyncio.run(main())


def test_a_call_from_before_the_probe_does_not_decide_for_it() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=5, window=60, open_for=5, clock=clock)

    async def main() -> None:
        held = Held()
        first = await start_then_trip(b, clock, held.attempt("older", fail=True))  # while closed
        second = asyncio.ensure_future(b.run_async("/m", held.attempt("probe"), None))
        await asyncio.sleep(0)
        held.release("older")
        await asyncio.gather(first, return_exceptions=True)
        assert b.state == HALF_OPEN and "UNAVAILABLE" in b.last_failure  # noted, but the probe decides
        held.release("probe")
        assert await asyncio.wait_for(second, 10) == "probe"
        assert b.state == CLOSED

    asyncio.run(main())


def test_futures_pass_the_breaker_an_open_circuit_refuses_them_unsent(tmp_path: Path) -> None:
    from kvproto import kv_pb2, kv_pb2_grpc

    b = CircuitBreaker(failure_threshold=2, window=60, open_for=60, name="kv")
    with Client(faulty_config(tmp_path)) as client:
        kv = client.dispense(PLUGIN_NAME)
        stub = kv_pb2_grpc.KVStub(client.channel)
        kv.put("k", b"v")
        kv.put("__fail__", b"2")
        install(client, breaker=b)
        for _ in range(2):  # a future's failures count as a blocking call's do
            with pytest.raises(grpc.RpcError) as err:
                stub.Get.future(kv_pb2.GetRequest(key="k")).result(timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert b.state == OPEN
        future = stub.Get.future(kv_pb2.GetRequest(key="k"))
        with pytest.raises(CircuitOpenError) as refused:
            future.result(timeout=30)
        assert isinstance(future.exception(), CircuitOpen) and future.code() == grpc.StatusCode.UNAVAILABLE
        assert "circuit of plugin 'kv' is open, so the call was not sent" in str(refused.value)
        assert b.rejected_count == 1
        install(client)
        assert kv.get("__calls__") == b"2"  # the refused future never reached the plugin


def test_a_cancelled_future_frees_the_probe_slot_it_held(tmp_path: Path) -> None:
    from kvproto import kv_pb2, kv_pb2_grpc

    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, window=60, open_for=5, name="kv", clock=clock)
    with Client(faulty_config(tmp_path)) as client:
        kv = client.dispense(PLUGIN_NAME)
        stub = kv_pb2_grpc.KVStub(client.channel)
        kv.put("k", b"v")
        kv.put("__slow__", b"1")  # the probe hangs
        install(client, breaker=b)
        b.trip("test")
        clock.now += 5
        probe = stub.Get.future(kv_pb2.GetRequest(key="k"), timeout=30)
        install(client)
        assert wait_until(lambda: kv.get("__calls__") == b"1", 10), "the probe never reached the plugin"
        assert b.state == HALF_OPEN and not b.allow()  # the future holds the one probe slot
        assert probe.cancel() and probe.cancelled()
        with pytest.raises(grpc.FutureCancelledError):
            probe.result(timeout=1)
        assert wait_until(b.allow, 10), "the cancelled probe kept the slot"
        assert b.state == HALF_OPEN  # an interrupted probe decides nothing


def test_a_probe_that_never_returns_frees_its_slot_after_open_for() -> None:
    # with no deadline, a hung probe held the only slot for good: every other call was refused
    # ("a probe call is already in flight") and the circuit stayed half-open
    clock = Clock()
    b = CircuitBreaker(failure_threshold=5, window=60, open_for=5, clock=clock)

    async def main() -> None:
        held = Held()
        hung = await start_then_trip(b, clock, held.attempt("hung", fail=True))  # let through while closed
        probe = asyncio.ensure_future(b.run_async("/m", held.attempt("probe", fail=True), None))
        await asyncio.sleep(0)
        assert b.state == HALF_OPEN
        clock.now += 4.9
        with pytest.raises(CircuitOpen, match=r"already in flight; retry when it completes \(at the latest in 0.1s\)"):
            await asyncio.wait_for(b.run_async("/m", held.attempt("refused"), None), 5)
        clock.now += 0.2
        nxt = asyncio.ensure_future(b.run_async("/m", held.attempt("next"), None))
        await asyncio.sleep(0)
        assert held.started[-1] == "next"  # let through as the new probe
        held.release("probe")  # the stale probe's failure is older news: it does not reopen the circuit
        await asyncio.gather(probe, return_exceptions=True)
        assert b.state == HALF_OPEN
        held.release("next")
        assert await asyncio.wait_for(nxt, 10) == "next"
        assert b.state == CLOSED
        held.release("hung")
        await asyncio.gather(hung, return_exceptions=True)

    asyncio.run(main())


def test_a_probe_given_by_allow_never_expires() -> None:
    # record_success()/record_failure() carry no ticket: a second probe's report could not be told
    # from the first's, so whichever reported first decided the circuit
    clock = Clock()
    b, _ = breaker(clock)
    b.trip("down")
    clock.now += 5
    assert b.allow() and b.state == HALF_OPEN  # probe A
    clock.now += 60
    assert not b.allow()  # no probe B beside it
    assert "already in flight; retry when it completes." in str(b.open_error())
    b.record_success()
    assert b.state == CLOSED
