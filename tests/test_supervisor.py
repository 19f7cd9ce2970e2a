"""Supervisor against real plugin processes: restarts, surviving stubs, budget, reattach, failover."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import grpc
import pytest

from tests.procs import gone
from tests.resilience_util import (HANDSHAKE, PLUGIN_NAME, PLUGINS, PY, faulty_config, run_resilience_doc_example,
                                   wait_until)

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402, I001

from plugbay import (  # noqa: E402
    CallTimeoutError,
    CircuitBreaker,
    Client,
    ClientConfig,
    ClientStateError,
    ConfigError,
    PluginDiedError,
    ProcessRunner,
    RestartBudgetExhaustedError,
    RestartPolicy,
    RetryPolicy,
    Supervisor,
    SupervisorEvent,
    UnknownPluginError,
    idempotent,
)
from plugbay.core.resilience.supervisor import FAILED, RUNNING  # noqa: E402

FAST = RestartPolicy(max_restarts=3, window=120, initial_backoff=0.05, max_backoff=0.2)


def kinds(sup: Supervisor) -> list[str]:
    return [e.kind for e in sup.events]


def kill_plugin(kv: object) -> int:
    """SIGKILL the plugin behind ``kv`` and wait until it is dead (a zombie counts)."""
    pid = int(kv.get("__pid__"))  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: gone(pid), 10)
    return pid


def test_sigkilled_plugin_is_restarted_and_the_stub_keeps_working(tmp_path: Path) -> None:
    seen: list[SupervisorEvent] = []
    with Supervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=0.3,
                    on_event=seen.append) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        assert sup.dispense(PLUGIN_NAME) is kv
        first = kill_plugin(kv)
        # the next call waits for the restart instead of failing
        second = int(kv.get("__pid__"))
        assert second != first
        kv.put("k", b"v")
        assert kv.get("k") == b"v"
        assert sup.restarts == 1 and sup.failures == 1
        assert "exited with code -9" in (sup.last_failure or "")
        assert kinds(sup) == ["started", "failure", "restarting", "restarted"]
        assert sup.metrics()["state"] == RUNNING
    assert [e.kind for e in seen][-1] == "stopped"


def test_restart_budget_exhausted_raises_a_typed_error(tmp_path: Path) -> None:
    policy = RestartPolicy(max_restarts=1, window=300, initial_backoff=0.05)
    with Supervisor(lambda: faulty_config(tmp_path), restart=policy, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        kill_plugin(kv)
        kill_plugin(kv)  # waits for restart 1, then kills it too
        assert wait_until(lambda: sup.state == FAILED, 20)
        with pytest.raises(RestartBudgetExhaustedError) as err:
            kv.get("k")
        text = str(err.value)
        assert "failed again after 1 restart(s) within 300s" in text
        assert "exited with code -9" in text and "raise RestartPolicy.max_restarts" in text
        with pytest.raises(RestartBudgetExhaustedError):
            sup.wait_running(1)
        with pytest.raises(RestartBudgetExhaustedError):
            sup.dispense("other")
        assert kinds(sup)[-1] == "gave_up"


def _depth(exc: BaseException) -> int:
    tb, depth = exc.__traceback__, 0
    while tb is not None:
        tb, depth = tb.tb_next, depth + 1
    return depth


def test_after_the_budget_is_spent_each_call_gets_an_error_of_its_own(tmp_path: Path) -> None:
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.05, methods=["Get"])
    with Supervisor(lambda: faulty_config(tmp_path), restart=RestartPolicy(max_restarts=0), retry=retry,
                    health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        kill_plugin(kv)
        assert wait_until(lambda: sup.state == FAILED, 20)
        errors: list[RestartBudgetExhaustedError] = []
        for _ in range(20):
            with pytest.raises(RestartBudgetExhaustedError) as err:
                kv.get("k")
            errors.append(err.value)
        # one shared object would gather every call's traceback frames and retry notes
        assert len({id(e) for e in errors}) == len(errors)
        assert all(len(getattr(e, "__notes__", [])) <= 1 for e in errors)
        assert _depth(errors[-1]) == _depth(errors[0])
        assert str(errors[-1]) == str(errors[0])
        # no restart was allowed: nothing failed "again after 0 restart(s)"
        assert "allows no restart (max_restarts=0)" in str(errors[0]) and "again" not in str(errors[0]), errors[0]


def test_a_call_in_flight_when_the_plugin_dies_fails_unless_retry_allows_it(tmp_path: Path) -> None:
    with Supervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        with pytest.raises(PluginDiedError):
            kv.get("__die__")  # not marked idempotent: the caller must decide
        assert kv.get("__tag__") == b""  # the next call runs on the restarted plugin
        assert sup.restarts == 1
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.05, methods=["Get"])
    with Supervisor(lambda: faulty_config(tmp_path), restart=FAST, retry=retry, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        assert kv.get("__die_once__") == b"survived"  # died, restarted, retried
        assert sup.restarts == 1


def test_health_failure_longer_than_the_grace_restarts_it(tmp_path: Path) -> None:
    with Supervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=0.2,
                    unhealthy_grace=0.5) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        before = int(kv.get("__pid__"))
        kv.put("__health__", b"NOT_SERVING")
        assert wait_until(lambda: sup.restarts == 1 and sup.state == RUNNING, 20), kinds(sup)
        assert int(kv.get("__pid__")) != before
        assert "health NOT_SERVING" in (sup.last_failure or "")


def test_a_call_in_flight_during_a_health_restart_fails_as_the_plugins_death_unless_retry_allows_it(
        tmp_path: Path) -> None:
    # The Supervisor kills the frozen plugin to restart it: its calls in flight are no kill of the
    # user's (who must not start a new Client); they fail as calls to a plugin that died do. The kill
    # continues the plugin after its SIGTERM: slowed, its calls outlast its graceful stop.
    import threading

    outcome: dict[str, object] = {}
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.05)  # marked calls only (idempotent())
    with Supervisor(lambda: faulty_config(tmp_path), restart=FAST, retry=retry, health_interval=0.2,
                    health_timeout=0.3, unhealthy_grace=0.5) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        pid = int(kv.get("__pid__"))
        kv.put("__slow__", b"2")
        stub = kv_pb2_grpc.KVStub(sup.channel)

        def call(name: str, marked: bool) -> None:
            try:
                if marked:
                    with idempotent():
                        outcome[name] = stub.Get(kv_pb2.GetRequest(key=name), timeout=60)
                else:
                    outcome[name] = stub.Get(kv_pb2.GetRequest(key=name), timeout=60)
            except Exception as exc:
                outcome[name] = exc

        os.kill(pid, signal.SIGSTOP)
        try:
            threads = [threading.Thread(target=call, args=("plain", False)),
                       threading.Thread(target=call, args=("marked", True))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(90)
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        restarts = sup.restarts
        successor_calls = kv.get("__calls__")
    plain = outcome["plain"]
    assert isinstance(plain, PluginDiedError) and not isinstance(plain, ClientStateError), repr(plain)
    assert isinstance(plain, grpc.RpcError) and plain.code() == grpc.StatusCode.UNAVAILABLE
    assert "the Supervisor restarted plugin" in str(plain) and "unhealthy" in str(plain), str(plain)
    assert "start a new Client" not in str(plain)
    # safe to repeat: resent to the successor, which answered it (it holds no such key)
    marked = outcome["marked"]
    assert isinstance(marked, grpc.RpcError) and not isinstance(marked, PluginDiedError), repr(marked)
    assert marked.code() == grpc.StatusCode.NOT_FOUND and successor_calls == b"1"
    assert restarts == 1


def test_a_call_a_restart_cancels_under_a_live_plugin_is_still_resent_when_safe_to_repeat(tmp_path: Path) -> None:
    # A teardown that closes the connection before the plugin is gone ends the call CANCELLED: as a
    # restart's casualty it is still a plugin death (UNAVAILABLE), which the RetryPolicy resends when safe.
    from plugbay.core.resilience.readygate import mark_restarting

    with Client(faulty_config(tmp_path, call_timeout=30.0)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        before = int(kv.get("__calls__"))
        kv.put("__slow__", b"1")
        future = kv_pb2_grpc.KVStub(client.channel).Get.future(kv_pb2.GetRequest(key="k"), timeout=30)
        assert wait_until(lambda: int(kv.get("__calls__")) > before, 10)  # in flight in the plugin
        mark_restarting(client, "kv", "health NOT_SERVING for 0.5s ()")
        channel = client.channel
        channel.begin_close()  # type: ignore[attr-defined]
        channel.close_current()  # type: ignore[attr-defined]
        err = future.exception(timeout=30)
    assert isinstance(err, PluginDiedError) and err.original.code() == grpc.StatusCode.CANCELLED, repr(err)
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "the Supervisor restarted plugin 'kv'" in str(err)
    assert RetryPolicy(methods=["Get"]).retryable(err)


def test_short_health_dip_recovers_without_restart(tmp_path: Path) -> None:
    with Supervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=0.2,
                    unhealthy_grace=60) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        kv.put("__health__", b"NOT_SERVING")
        assert wait_until(lambda: sup.health == "NOT_SERVING", 10)
        kv.put("__health__", b"SERVING")
        assert wait_until(lambda: "recovered" in kinds(sup), 10), kinds(sup)
        assert sup.restarts == 0


def test_failover_factory_and_failed_restarts(tmp_path: Path) -> None:
    """The factory picks the next config each time: a broken one is skipped by the next restart."""
    tags = itertools.cycle(["primary", "broken", "secondary"])

    def factory() -> ClientConfig:
        tag = next(tags)
        if tag == "broken":
            return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=10,
                                runner=ProcessRunner([PY, "-c", "import sys; sys.exit(3)"]))
        return faulty_config(tmp_path, env={"RESILIENCE_TAG": tag})

    with Supervisor(factory, restart=FAST, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        assert kv.get("__tag__") == b"primary"
        kill_plugin(kv)
        assert kv.get("__tag__") == b"secondary"
        assert kinds(sup) == ["started", "failure", "restarting", "restart_failed", "restarting", "restarted"]
        failed = [e for e in sup.events if e.kind == "restart_failed"][0]
        assert "PluginExitedError" in failed.detail and "exit" in failed.detail
        assert sup.restarts == 2


def test_reattach_first_then_fresh_start(tmp_path: Path) -> None:
    owner = Client(faulty_config(tmp_path))
    owner.start()
    try:
        reattach = owner.reattach_config()
        pid = int(owner.dispense(PLUGIN_NAME).get("__pid__"))
        with Supervisor(lambda: faulty_config(tmp_path), reattach=reattach, health_interval=None) as sup:
            assert kinds(sup) == ["reattached"]
            assert int(sup.dispense(PLUGIN_NAME).get("__pid__")) == pid
    finally:
        owner.kill()
    # The plugin is gone now: reattaching fails and the Supervisor starts a fresh one.
    with Supervisor(lambda: faulty_config(tmp_path), reattach=reattach, health_interval=None) as sup:
        assert kinds(sup)[:2] == ["reattach_failed", "started"]
        assert int(sup.dispense(PLUGIN_NAME).get("__pid__")) != pid


def test_breaker_is_reset_by_a_restart(tmp_path: Path) -> None:
    breaker = CircuitBreaker(failure_threshold=1, window=60, open_for=600, name="kv")
    with Supervisor(lambda: faulty_config(tmp_path), restart=FAST, breaker=breaker,
                    health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        with pytest.raises(PluginDiedError):
            kv.get("__die__")
        assert wait_until(lambda: sup.restarts == 1 and sup.state == RUNNING, 20)
        assert breaker.state == "closed"
        assert kv.get("__tag__") == b""


def test_install_refuses_a_supervisor_and_its_calls_still_wait_for_a_restart(tmp_path: Path) -> None:
    from plugbay import install

    refused = "does not take a Supervisor.*pass retry= and breaker= to the Supervisor"
    with pytest.raises(ConfigError, match=refused):
        install(Supervisor(lambda: faulty_config(tmp_path)), breaker=CircuitBreaker())  # not started yet
    with Supervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None) as sup:
        for target in (sup, sup.channel):
            with pytest.raises(ConfigError, match=refused):
                install(target, retry=RetryPolicy(methods=["Get"]), breaker=CircuitBreaker())
        kv = sup.dispense(PLUGIN_NAME)
        first = kill_plugin(kv)
        assert int(kv.get("__pid__")) != first  # the ready gate is still there: the call waited for the restart


def test_a_probe_that_meets_a_supervisor_that_gave_up_or_stopped_does_not_close_the_circuit(tmp_path: Path) -> None:
    now = [1000.0]
    breaker = CircuitBreaker(failure_threshold=1, window=60, open_for=5, name="kv", clock=lambda: now[0])

    def probe_twice(kv: object, error: type[Exception]) -> None:
        breaker.trip("UNAVAILABLE: the plugin is gone")
        now[0] += 5
        for _ in range(2):  # the probe: no plugin answered, so it neither closes nor keeps its slot
            with pytest.raises(error):
                kv.get("k")  # type: ignore[attr-defined]
            assert breaker.state == "half_open"

    with Supervisor(lambda: faulty_config(tmp_path), restart=RestartPolicy(max_restarts=0), breaker=breaker,
                    health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        kill_plugin(kv)
        assert wait_until(lambda: sup.state == FAILED, 20)
        probe_twice(kv, RestartBudgetExhaustedError)
    with Supervisor(lambda: faulty_config(tmp_path), breaker=breaker, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
    probe_twice(kv, ClientStateError)  # stopped


def test_bad_configurations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="runs its plugin only once.*pass a factory"):
        Supervisor(faulty_config(tmp_path))
    with Client(faulty_config(tmp_path)) as client:
        cfg = ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=client.reattach_config())
        with pytest.raises(ConfigError, match="as Supervisor\\(reattach=...\\)"):
            Supervisor(cfg)
    with pytest.raises(ConfigError, match="max_restarts must be >= 0"):
        RestartPolicy(max_restarts=-1)
    with pytest.raises(ConfigError, match=r"unhealthy_grace must be >= 0 \(got -1\)"):
        Supervisor(lambda: faulty_config(tmp_path), unhealthy_grace=-1)
    idle = Supervisor(lambda: faulty_config(tmp_path), name="idle")
    with pytest.raises(ClientStateError, match="Supervisor of 'idle' is not running; call start\\(\\) first"):
        idle.client
    with pytest.raises(ClientStateError, match="Supervisor of 'idle' is not started; call start\\(\\) first"):
        idle.channel
    sup = Supervisor(lambda: "not a config")  # type: ignore[arg-type, return-value]
    with pytest.raises(ConfigError, match="factory returned str, not a ClientConfig"):
        sup.start()
    sup.stop()


def test_calls_wait_for_a_restart_only_within_their_deadline(tmp_path: Path) -> None:
    configs = iter(["good", "slow"])

    def factory() -> ClientConfig:
        if next(configs, "slow") == "good":
            return faulty_config(tmp_path)
        # never prints a handshake: the restart takes start_timeout, then fails
        return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=4,
                            runner=ProcessRunner([PY, "-c", "import time; time.sleep(30)"]))

    policy = RestartPolicy(max_restarts=1, window=300, initial_backoff=0.05)
    with Supervisor(factory, restart=policy, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        stub = kv_pb2_grpc.KVStub(sup.channel)
        kill_plugin(kv)
        with pytest.raises(CallTimeoutError) as err:
            stub.Get(kv_pb2.GetRequest(key="k"), timeout=1.0)
        assert "waited 1.0s for the Supervisor to restart the plugin" in str(err.value)
        assert wait_until(lambda: sup.state == FAILED, 30), kinds(sup)
        assert "HandshakeTimeoutError" in (sup.last_failure or "")


def test_after_stop_calls_and_dispense_say_so(tmp_path: Path) -> None:
    sup = Supervisor(lambda: faulty_config(tmp_path), health_interval=None)
    with sup:
        kv = sup.dispense(PLUGIN_NAME)
        with pytest.raises(UnknownPluginError):
            sup.dispense("nosuch")
    with pytest.raises(ClientStateError, match="Supervisor of plugin 'resilience_kv' was stopped"):
        kv.get("k")
    sup.stop()  # idempotent
    assert kinds(sup).count("stopped") == 1


def test_stop_during_a_restart_ends_the_plugin_being_started(tmp_path: Path) -> None:
    configs = iter(["good"])

    def factory() -> ClientConfig:
        if next(configs, "slow") == "good":
            return faulty_config(tmp_path)
        return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=120,
                            runner=ProcessRunner([PY, "-c", "import time; time.sleep(120)"]))

    sup = Supervisor(factory, restart=FAST, health_interval=None)
    with sup:
        kill_plugin(sup.dispense(PLUGIN_NAME))
        assert wait_until(lambda: "restarting" in kinds(sup), 20)
    # leaving the with block did not wait out the 120 s start_timeout
    assert kinds(sup)[-1] == "stopped" and "restarted" not in kinds(sup)
    assert "restart_failed" not in kinds(sup), sup.events  # the stop ended it: not the plugin's failure
    assert sup.current_client is None
    with pytest.raises(ClientStateError, match="was stopped; make a new one"):
        sup.start()


def test_the_docs_example_runs_as_written(tmp_path: Path) -> None:
    done = run_resilience_doc_example(tmp_path, "### Supervised plugins")
    # Line by line: the example's on_event writes each line whole, and its main thread prints once the
    # restart was told, so no two threads' lines interleave (print() writes its text and newline apart)
    lines = done.stdout.splitlines()
    assert [line.split(" ")[:2] for line in lines[:4]] == [["supervisor:", kind] for kind in (
        "started", "failure", "restarting", "restarted")], done.stdout
    assert lines[4] == "b'1'", done.stdout
    assert lines[5].startswith("{'state': 'running', 'restarts': 1, 'failures': 1"), done.stdout
    assert lines[6:] == ["supervisor: stopped "], done.stdout


def test_a_future_made_during_a_restart_waits_for_it_as_a_blocking_call_does(tmp_path: Path) -> None:
    slow = RestartPolicy(max_restarts=3, window=120, initial_backoff=1.5, max_backoff=1.5, jitter=0)
    with Supervisor(lambda: faulty_config(tmp_path), restart=slow, health_interval=0.3) as sup:
        stub = kv_pb2_grpc.KVStub(sup.channel)
        first = kill_plugin(sup.dispense(PLUGIN_NAME))
        assert wait_until(lambda: sup.state == "restarting", 10), kinds(sup)
        future = stub.Get.future(kv_pb2.GetRequest(key="__pid__"), timeout=30)
        second = int(future.result(timeout=60).value)  # sent to the plugin's successor
        assert second != first and sup.restarts == 1
        assert future.done() and future.code() == grpc.StatusCode.OK
