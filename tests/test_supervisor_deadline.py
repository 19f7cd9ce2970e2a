"""One deadline for a brokered call through a Supervisor (sup.deadline()): each step of the counter example's put
(the broker's next_id and accept_and_serve, then the Put) waited for a restart within a call_timeout of its own,
so a put whose plugin was killed before each step took two or three times call_timeout. Inside the scope every
step takes what is left of one deadline, and the step that runs out says so (scope.ran_out_in, the message).

The Python counter plugin, killed with SIGKILL; each restart is held by the Supervisor's factory until the test
lets it go, so that a step waits for it as long as the test wants. What is asserted is which step ran out and what
its error says; the one bound on time is a hang guard of twice call_timeout."""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from plugbay import (AsyncSupervisor, BrokerTimeoutError, CallTimeoutError, ClientConfig, ClientStateError,
                     ConfigError, PluginDiedError, RestartPolicy, RetryPolicy, Supervisor)
from plugbay.core.resilience.calldeadline import CallDeadline, scope_of
from tests.test_supervisor_broker import (EXAMPLE, HANDSHAKE, PLUGIN_NAME, Adder, CounterPlugin, _helper_servicer,
                                          counter_pb2, counter_pb2_grpc, kill_current)

CALL_TIMEOUT = 10.0  # large beside a plugin's start (under 1 s, a few under load): scheduling cannot flip a step
FAST = RestartPolicy(max_restarts=3, window=120, initial_backoff=0.05, max_backoff=0.2)


class _HeldRestarts:
    """The Supervisor's factory: the first config at once, each restart's once the test lets it (let_go)."""

    def __init__(self, call_timeout: float = CALL_TIMEOUT) -> None:
        self.call_timeout = call_timeout
        self.calls = 0
        self._allowed = [threading.Event() for _ in range(FAST.max_restarts + 1)]
        self._timers: list[threading.Timer] = []

    def __call__(self) -> ClientConfig:
        n, self.calls = self.calls, self.calls + 1
        if n:
            self._allowed[n].wait(60)
        return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, name="counter",
                            cmd=[sys.executable, str(EXAMPLE / "plugin.py")], call_timeout=self.call_timeout)

    def let_go(self, restart: int, after: float) -> None:
        timer = threading.Timer(after, self._allowed[restart].set)
        self._timers.append(timer)
        timer.start()

    def end(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for allowed in self._allowed:
            allowed.set()


@pytest.fixture
def held(in_tmp: Path) -> Iterator[_HeldRestarts]:
    factory = _HeldRestarts()
    yield factory
    factory.end()


def _register(server: object) -> None:
    counter_pb2_grpc.add_AddHelperServicer_to_server(_helper_servicer(Adder()), server)


def test_a_brokered_calls_steps_share_one_deadline_and_the_one_that_runs_out_says_so(held: _HeldRestarts) -> None:
    with Supervisor(held, restart=FAST, health_interval=None) as sup:
        try:
            began = time.monotonic()
            with sup.deadline() as scope:  # the config's call_timeout, for all the steps
                kill_current(sup)
                held.let_go(1, CALL_TIMEOUT / 2)  # next_id waits for this restart: half the deadline and a start
                sid = sup.broker.next_id()
                kill_current(sup)  # accept_and_serve waits for the next restart, which is not let go
                with pytest.raises(BrokerTimeoutError) as err:
                    sup.broker.accept_and_serve(sid, _register)
            took = time.monotonic() - began
        finally:
            held.end()  # before the stop, which waits for the restart under way
    assert scope.ran_out_in == f"serve broker id {sid}", scope.ran_out_in
    assert [step for step, _ in scope.steps] == ["hand out a broker id"], scope.steps
    said = str(err.value)
    assert f"the deadline of {CALL_TIMEOUT:g}s shared by this call's steps (Supervisor.deadline())" in said, said
    assert f"ran out during the step 'serve broker id {sid}'" in said and "hand out a broker id" in said, said
    assert "Pass a larger Supervisor.deadline(seconds)" in said and "why it was restarting" in said, said
    assert took < 2 * CALL_TIMEOUT, took  # a hang guard only


def test_an_async_brokered_calls_steps_share_one_deadline_through_to_thread_and_the_call(
        held: _HeldRestarts) -> None:
    async def put(sup: AsyncSupervisor) -> tuple[CallDeadline, BaseException, int, float]:
        counter = counter_pb2_grpc.CounterStub(sup.channel)
        broker = sup.sync_supervisor.broker
        began = time.monotonic()
        with sup.deadline() as scope:  # a plain with, in the coroutine: to_thread carries it
            sid = broker.next_id()  # on the loop: the plugin runs, nothing waits
            await asyncio.to_thread(kill_current, sup.sync_supervisor)
            held.let_go(1, CALL_TIMEOUT / 2)  # accept_and_serve (off the loop) waits for this restart
            await asyncio.to_thread(broker.accept_and_serve, sid, _register)
            await asyncio.to_thread(kill_current, sup.sync_supervisor)  # the Put waits for one not let go
            try:
                await counter.Put(counter_pb2.PutRequest(add_server=sid, key="n", value=1))
            except BaseException as exc:  # noqa: BLE001 (what the call ended with is the point)
                return scope, exc, sid, time.monotonic() - began
        raise AssertionError("the Put ran with no plugin to run it")

    async def main() -> tuple[CallDeadline, BaseException, int, float]:
        async with AsyncSupervisor(held, restart=FAST, health_interval=None) as sup:
            try:
                return await put(sup)
            finally:
                held.end()  # before the stop, which waits for the restart under way

    scope, error, sid, took = asyncio.run(main())
    assert isinstance(error, CallTimeoutError) and getattr(error, "sent", None) is False, repr(error)
    assert scope.ran_out_in == "call /proto.Counter/Put", scope.ran_out_in
    assert [step for step, _ in scope.steps] == ["hand out a broker id", f"serve broker id {sid}"], scope.steps
    said = str(error)
    assert "shared by this call's steps (AsyncSupervisor.deadline())" in said, said
    assert "ran out during the step 'call /proto.Counter/Put'" in said and "; the call was not sent" in said, said
    assert took < 2 * CALL_TIMEOUT, took  # a hang guard only


def test_outside_a_deadline_each_step_keeps_its_own_a_thread_gets_it_by_run_and_a_bad_one_is_refused(
        held: _HeldRestarts) -> None:
    with Supervisor(held, restart=FAST, health_interval=None) as sup:
        with pytest.raises(ConfigError, match=r"Supervisor.deadline\(\): seconds must be > 0"):
            sup.deadline(0)
        with pytest.raises(ConfigError, match="timeout must be a number of seconds"):
            sup.deadline("10")  # type: ignore[arg-type]
        with sup.deadline(CALL_TIMEOUT) as scope:
            sid = sup.broker.next_id()
        sup.broker.accept_and_serve(sid, _register)  # outside: not one of the scope's steps
        sup.broker.stop_serving(sid)
        with ThreadPoolExecutor(1) as pool:  # an executor's thread starts without it; scope.run() carries it
            pool.submit(sup.broker.next_id).result()
            pool.submit(scope.run, sup.broker.next_id).result()
        assert [step for step, _ in scope.steps] == ["hand out a broker id"] * 2 and scope.ran_out_in is None


SHORT = 2.0  # the call_timeout a deadline longer than it replaces; the restart is held past it


@pytest.fixture
def held_long(in_tmp: Path) -> Iterator[_HeldRestarts]:
    factory = _HeldRestarts(SHORT)
    yield factory
    factory.end()


def test_a_call_given_no_timeout_takes_a_longer_deadline_not_call_timeout(held_long: _HeldRestarts) -> None:
    # The call waits for a restart held past call_timeout: the deadline's 60 s, not call_timeout, bounds it,
    # as they bound the broker steps (a call of its own timeout= keeps that)
    with Supervisor(held_long, restart=FAST, health_interval=None) as sup:
        counter = sup.dispense(PLUGIN_NAME)
        counter.put("n", 3, Adder())  # kept in a file of the working directory: the restarted plugin reads it
        try:
            with sup.deadline(60) as scope:
                kill_current(sup)
                held_long.let_go(1, 2.5 * SHORT)
                with pytest.raises(CallTimeoutError) as own:  # its own timeout=, sooner than the deadline, holds
                    counter_pb2_grpc.CounterStub(sup.channel).Get(counter_pb2.GetRequest(key="n"), timeout=SHORT)
                got = counter.get("n")
        finally:
            held_long.end()
    assert got == 3, got
    assert "Pass a larger timeout=" in str(own.value) and "shared by this call's steps" not in str(own.value), own
    assert [step for step, _ in scope.steps] == ["call /proto.Counter/Get"] * 2 and scope.ran_out_in is None, \
        scope.steps


def test_an_async_call_given_no_timeout_takes_a_longer_deadline_not_call_timeout(held_long: _HeldRestarts) -> None:
    async def main() -> tuple[int, CallDeadline]:
        async with AsyncSupervisor(held_long, restart=FAST, health_interval=None) as sup:
            counter = await sup.dispense(PLUGIN_NAME)
            await counter.put("n", 3, Adder())
            try:
                with sup.deadline(60) as scope:
                    await asyncio.to_thread(kill_current, sup.sync_supervisor)
                    held_long.let_go(1, 2.5 * SHORT)
                    got = await counter.get("n")
            finally:
                held_long.end()
        return got, scope

    value, scope = asyncio.run(main())
    assert value == 3, value
    assert [step for step, _ in scope.steps] == ["call /proto.Counter/Get"] and scope.ran_out_in is None, scope.steps


def test_a_deadline_is_not_entered_again_and_run_refuses_a_coroutine(held: _HeldRestarts) -> None:
    async def serve() -> int:
        return 1

    with Supervisor(held, restart=FAST, health_interval=None) as sup:
        with sup.deadline(CALL_TIMEOUT) as scope:
            sup.broker.next_id()
        with pytest.raises(ClientStateError, match=r"make a new Supervisor.deadline\(\) for each with"):
            with scope:
                pass  # would start with the clock the first with ran
        for func in (serve, lambda: serve()):  # its work would run after run() reset the scope
            with pytest.raises(ConfigError, match="Create the task .* inside the `with` instead"):
                scope.run(func)
        assert scope.run(lambda: 2) == 2

        async def carried() -> bool:
            return scope_of(sup) is scope

        async def in_a_task() -> bool:  # a Task made by run() copied the context, the deadline with it
            return await scope.run(asyncio.get_running_loop().create_task, carried())

        assert asyncio.run(in_a_task()) is True


class _SlowAdder(Adder):
    """The host's AddHelper, which takes ``seconds`` (or kills the plugin calling it, ``kill``) before answering."""

    def __init__(self, seconds: float, kill: Supervisor | None = None) -> None:
        super().__init__()
        self.seconds, self.kill = seconds, kill

    def sum(self, a: int, b: int) -> int:
        if self.kill is not None:
            kill_current(self.kill)
        time.sleep(self.seconds)
        return super().sum(a, b)


def test_under_a_deadline_of_none_a_call_given_no_timeout_has_none_not_call_timeout(in_tmp: Path) -> None:
    factory = _HeldRestarts(call_timeout=1.0)
    with Supervisor(factory, restart=FAST, health_interval=None) as sup:
        counter = sup.dispense(PLUGIN_NAME)
        adder = _SlowAdder(3.0)  # the Put waits for it past call_timeout
        with sup.deadline(math.inf) as scope:
            counter.put("n", 2, adder)
        assert counter.get("n") == 2 and adder.calls == [(0, 2)]
    assert scope.ran_out_in is None, scope.ran_out_in


def test_a_call_the_deadline_ends_with_no_restart_blames_no_restart_nor_gives_the_calls_own_advice(
        in_tmp: Path) -> None:
    # inside the scope a timeout= only shortens the shared deadline and the scope replaces call_timeout: the
    # call's own advice (a larger timeout=, call_timeout) would not help, nor did any restart hold it up
    factory = _HeldRestarts()
    with Supervisor(factory, restart=FAST, health_interval=None) as sup:
        counter = sup.dispense(PLUGIN_NAME)
        with sup.deadline(1.0) as scope:
            with pytest.raises(CallTimeoutError) as err:
                counter.put("n", 1, _SlowAdder(3.0))
        restarts = sup.restarts
    said = str(err.value)
    assert restarts == 0 and scope.ran_out_in == "call /proto.Counter/Put", (restarts, scope.ran_out_in)
    assert "shared by this call's steps" in said and "exceeded its deadline" in said, said  # the call's account
    assert "Pass a larger Supervisor.deadline(seconds)" in said, said
    assert "restart" not in said and "larger timeout=" not in said and "call_timeout" not in said, said


RETRY = RetryPolicy(max_attempts=4, all_idempotent=True, initial_backoff=0.3, jitter=0)


def test_a_retry_policy_does_not_retry_a_try_the_deadline_ended_and_says_the_first_was_sent(
        held: _HeldRestarts) -> None:
    with Supervisor(held, restart=FAST, retry=RETRY, health_interval=None) as sup:
        counter = sup.dispense(PLUGIN_NAME)
        adder = _SlowAdder(4.0)  # the Put hangs past the deadline
        with sup.deadline(2) as scope:
            with pytest.raises(CallTimeoutError) as err:
                counter.put("n", 1, adder)
    said = str(err.value)
    assert getattr(err.value, "sent", None) is True, repr(err.value)
    assert said.count("shared by this call's steps") == 1, said
    assert "plugbay retry: gave up after 1 of 4 attempt(s)" in getattr(err.value, "__notes__", []), err.value
    assert scope.ran_out_in == "call /proto.Counter/Put", scope.ran_out_in


def test_a_retry_the_deadline_leaves_unsent_after_a_sent_try_says_sent(held: _HeldRestarts) -> None:
    with Supervisor(held, restart=FAST, retry=RETRY, health_interval=None) as sup:
        counter = sup.dispense(PLUGIN_NAME)
        try:
            with sup.deadline(3):  # try 1 meets the plugin's death; try 2 waits for a restart held past it
                with pytest.raises(CallTimeoutError) as err:
                    counter.put("n", 1, _SlowAdder(0.0, kill=sup))
        finally:
            held.end()
    said = str(err.value)
    assert getattr(err.value, "sent", None) is True, repr(err.value)
    assert isinstance(err.value.__cause__, PluginDiedError), repr(err.value.__cause__)
    assert "before try 2 of 4" in said and "an earlier one was sent" in said, said
    assert "larger deadline(seconds)" in said and "larger timeout=" not in said, said  # a timeout= only shortens it
    assert any(n.startswith("plugbay retry: gave up after 2 of 4") for n in getattr(err.value, "__notes__", ())), said
    assert said.count("shared by this call's steps") == 1, said
