"""The resilience layers' limits: infinite and huge settings, the timeouts of their waits, callbacks
that raise, a restart loop that fails, and what an unanswered health check says. Real plugins
(the fault-switch KV plugin, tests/plugins/resilience_kv.py)."""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.resilience_util import PLUGIN_NAME, faulty_config, wait_until  # also puts examples/kv on sys.path

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402, I001

from plugbay import (CallTimeoutError, CircuitBreaker, Client, ConfigError, HealthWatcher,  # noqa: E402
                     RestartBudgetExhaustedError, RestartPolicy, RetryPolicy, Supervisor)
from plugbay.core.resilience.calls import install  # noqa: E402
from plugbay.core.resilience.healthwatch import SERVING, UNREACHABLE  # noqa: E402
from plugbay.core.resilience.supervisor import FAILED, RUNNING  # noqa: E402


@pytest.fixture()
def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    with Client(faulty_config(tmp_path, call_timeout=1.0)) as c:
        c.dispense(PLUGIN_NAME).put("k", b"v")
        yield c


# --- RetryPolicy: math.inf timeouts are None ---------------------------------------------------


@pytest.mark.parametrize("field", ["per_attempt_timeout", "overall_timeout"])
def test_an_infinite_retry_timeout_leaves_each_try_the_clients_call_timeout(client: Client, field: str) -> None:
    policy = RetryPolicy(max_attempts=1, **{field: math.inf})  # type: ignore[arg-type]
    assert getattr(policy, field) is None and policy == RetryPolicy(max_attempts=1)
    kv = client.dispense(PLUGIN_NAME)
    kv.put("__slow__", b"1")  # the next Get sleeps 10 s: past the Client's call_timeout of 1 s
    install(client, retry=policy)
    with pytest.raises(CallTimeoutError):  # not a try with a deadline of 1e9 s that waits it out
        kv.get("k")


def test_a_calls_own_infinite_timeout_is_still_no_deadline(client: Client) -> None:
    install(client, retry=RetryPolicy(max_attempts=1, overall_timeout=math.inf))
    stub = kv_pb2_grpc.KVStub(client.channel)
    # __sleep__ answers after 1.5 s, past the Client's call_timeout of 1 s
    assert stub.Get(kv_pb2.GetRequest(key="__sleep__"), timeout=math.inf).value == b"slept"


# --- backoffs: finite and at most a year; a restart loop that fails says so ------------------------


@pytest.mark.parametrize("kind", [RetryPolicy, RestartPolicy])
@pytest.mark.parametrize("field", ["initial_backoff", "max_backoff"])
@pytest.mark.parametrize("value", [math.inf, 1e12])
def test_a_backoff_past_a_year_is_refused(kind: Any, field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"{field} must be at most 3.1536e\\+07 s"):
        kind(**{field: value})


class _EndlessBackoff(RestartPolicy):
    """A policy of the user's own whose backoff no wait takes (threading refuses math.inf)."""

    def backoff(self, consecutive: int) -> float:
        return math.inf


def test_a_restart_loop_that_fails_gives_up_and_says_why(tmp_path: Path) -> None:
    events: list[tuple[str, str]] = []
    sup = Supervisor(lambda: faulty_config(tmp_path, call_timeout=5.0), restart=_EndlessBackoff(),
                     health_interval=None, on_event=lambda e: events.append((e.kind, e.detail)))
    with sup:
        client = sup.current_client
        assert client is not None
        os.kill(client.runner.pid, signal.SIGKILL)
        assert wait_until(lambda: sup.state == FAILED, 30)  # not "restarting" for ever
        gave_up = [detail for kind, detail in events if kind == "gave_up"]
        assert len(gave_up) == 1 and "restart loop failed: ConfigError: _EndlessBackoff.backoff(1)" in gave_up[0]
        with pytest.raises(RestartBudgetExhaustedError, match="restart loop failed"):
            sup.wait_running(5)
        with pytest.raises(RestartBudgetExhaustedError, match="restart loop failed"):
            sup.dispense(PLUGIN_NAME).get("k")
        assert sup.current_client is None and client.runner.wait(0) is not None


class _BackoffThatFailsLater(RestartPolicy):
    """Backs off twice, then fails as _EndlessBackoff does; its window is short, so those two restarts
    have left it when the loop fails."""

    def backoff(self, consecutive: int) -> float:
        self.asked = getattr(self, "asked", 0) + 1
        return 0.0 if self.asked <= 2 else math.inf


def test_a_failed_restart_loop_counts_every_restart_it_made(tmp_path: Path) -> None:
    sup = Supervisor(lambda: faulty_config(tmp_path, call_timeout=5.0),
                     restart=_BackoffThatFailsLater(max_restarts=5, window=0.05), health_interval=None)
    with sup:
        for restarts in (1, 2):
            client = sup.current_client
            assert client is not None
            os.kill(client.runner.pid, signal.SIGKILL)
            assert wait_until(lambda: sup.restarts == restarts and sup.state == RUNNING, 30)
        client = sup.current_client
        assert client is not None
        os.kill(client.runner.pid, signal.SIGKILL)
        assert wait_until(lambda: sup.state == FAILED, 30)
        with pytest.raises(RestartBudgetExhaustedError, match=r"after 2 restart\(s\)"):
            sup.wait_running(5)


# --- on_retry that raises -------------------------------------------------------------------------


def test_an_on_retry_that_raises_does_not_end_the_retries(client: Client) -> None:
    def broken(method: str, attempt: int, error: BaseException, sleep: float) -> None:
        raise KeyError("metrics label missing")

    kv = client.dispense(PLUGIN_NAME)
    kv.put("__fail__", b"1")  # the next Get fails with UNAVAILABLE; the retry gets the answer
    install(client, retry=RetryPolicy(methods=["Get"], initial_backoff=0.01, on_retry=broken))
    assert kv.get("k") == b"v"


# --- CircuitBreaker: open_for and window finite and at most a year -----------------------------------


@pytest.mark.parametrize("field", ["open_for", "window"])
@pytest.mark.parametrize("value", [math.inf, 1e12])
def test_a_breaker_interval_past_a_year_is_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"{field} must be at most 3.1536e\\+07 s"):
        CircuitBreaker(**{field: value})  # type: ignore[arg-type]


# --- the timeouts of the waits ------------------------------------------------------------------


def _outcome(wait: Callable[[], Any]) -> Any:
    """What ``wait()`` returned or raised, run on a thread of its own: a wait that never ends (as
    with nan before) fails the test instead of hanging it."""
    got: list[Any] = []

    def run() -> None:
        try:
            got.append(wait())
        except Exception as exc:
            got.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the wait did not end"
    return got[0]


BAD_TIMEOUTS = [math.nan, None, "5"]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
def test_a_health_wait_refuses_a_timeout_that_is_no_number(timeout: Any) -> None:
    w = HealthWatcher(grpc.insecure_channel("unix:/nonexistent"), interval=0.2, timeout=0.2)
    got = _outcome(lambda: w.wait_for(SERVING, timeout))
    assert isinstance(got, ConfigError) and "math.inf to wait without a bound" in str(got)


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
@pytest.mark.parametrize("wait", ["wait_running", "changed_since"])
def test_a_supervisor_wait_refuses_a_timeout_that_is_no_number(tmp_path: Path, wait: str, timeout: Any) -> None:
    sup = Supervisor(lambda: faulty_config(tmp_path))  # not started: the check comes first
    args = (timeout,) if wait == "wait_running" else (sup.channel_generation(), timeout)
    got = _outcome(lambda: getattr(sup, wait)(*args))
    assert isinstance(got, ConfigError) and f"Supervisor.{wait}()" in str(got)


def test_infinite_and_negative_wait_timeouts_are_taken(tmp_path: Path) -> None:
    w = HealthWatcher(grpc.insecure_channel("unix:/nonexistent"), interval=0.2, timeout=0.2)
    assert w.wait_for(SERVING, -1) is False  # past: looks once
    w.stop()
    assert w.wait_for(SERVING, math.inf) is False  # stopped: nothing will change
    sup = Supervisor(lambda: faulty_config(tmp_path))
    assert sup.wait_running(-1) is False
    sup.stop()
    assert sup.wait_running(math.inf) is False


# --- an unanswered health check ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["watch", "check"])
def test_an_unanswered_health_check_advises_the_health_timeout(tmp_path: Path, mode: str) -> None:
    with Client(faulty_config(tmp_path)) as client:
        pid = int(client.dispense(PLUGIN_NAME).get("__pid__"))
        with HealthWatcher(client.channel, interval=0.2, timeout=0.3, mode=mode) as w:
            assert w.wait_for(SERVING, 10)
            os.kill(pid, signal.SIGSTOP)  # it answers nothing: each health call runs out its deadline
            try:
                assert w.wait_for(UNREACHABLE, 20)
                assert "no health answer within" in w.detail and "health_timeout=" in w.detail
                assert "call_timeout" not in w.detail  # the advice of a call, not of the watcher
            finally:
                os.kill(pid, signal.SIGCONT)
