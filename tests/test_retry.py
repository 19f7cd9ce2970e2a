"""RetryPolicy on a real Client against the fault-switch KV plugin (tests/plugins/resilience_kv.py)."""

from __future__ import annotations

import inspect
import random
from pathlib import Path

import grpc
import pytest

from tests.resilience_util import PLUGIN_NAME, faulty_config, wait_until  # also puts examples/kv on sys.path

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402, I001

from plugbay import CallTimeoutError, Client, ConfigError, PluginDiedError, RetryPolicy, idempotent  # noqa: E402
from plugbay.core.resilience.calls import install  # noqa: E402
from plugbay.core.resilience.restart import RestartPolicy  # noqa: E402


@pytest.fixture()
def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    with Client(faulty_config(tmp_path, call_timeout=10.0)) as c:
        kv = c.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        yield c


def stub(c: Client) -> kv_pb2_grpc.KVStub:
    """The raw stub: KVClient.get() passes no timeout=."""
    return kv_pb2_grpc.KVStub(c.channel)


def calls(c: Client) -> int:
    install(c)  # the counter read itself must not be retried or counted twice
    return int(c.dispense(PLUGIN_NAME).get("__calls__"))


def test_allowlisted_method_is_retried_until_it_succeeds(client: Client) -> None:
    kv = client.dispense(PLUGIN_NAME)
    retries: list[tuple[str, int, str]] = []
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.01, methods=["/proto.KV/Get"],
                         on_retry=lambda m, n, exc, sleep: retries.append((m, n, type(exc).__name__)))
    kv.put("__fail__", b"2")
    before = calls(client)
    install(client, retry=policy)
    assert kv.get("k") == b"v"
    assert calls(client) - before == 3  # two injected failures, then the answer
    assert [(m, n) for m, n, _ in retries] == [("/proto.KV/Get", 1), ("/proto.KV/Get", 2)]


def test_method_not_on_the_allowlist_runs_once(client: Client) -> None:
    kv = client.dispense(PLUGIN_NAME)
    kv.put("__fail__", b"1")
    before = calls(client)
    install(client, retry=RetryPolicy(max_attempts=5, initial_backoff=0.01, methods=["Put"]))
    with pytest.raises(grpc.RpcError) as err:
        kv.get("k")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert calls(client) - before == 1
    assert not getattr(err.value, "__notes__", None)  # nothing was retried, nothing to say


def test_idempotent_block_marks_calls_retryable(client: Client) -> None:
    kv = client.dispense(PLUGIN_NAME)
    kv.put("__fail__", b"1")
    install(client, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01))
    with idempotent():
        assert kv.get("k") == b"v"
    kv.put("__fail__", b"1")
    with pytest.raises(grpc.RpcError):  # outside the block: not retried
        kv.get("k")


def test_gives_up_after_max_attempts_with_a_note(client: Client) -> None:
    kv = client.dispense(PLUGIN_NAME)
    kv.put("__fail__", b"10")
    before = calls(client)
    install(client, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, all_idempotent=True))
    with pytest.raises(grpc.RpcError) as err:
        kv.get("k")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "gave up after 3 of 3 attempt(s)" in "\n".join(err.value.__notes__)
    assert calls(client) - before == 3
    kv.put("__fail__", b"0")


def test_application_errors_are_not_retried(client: Client) -> None:
    kv = client.dispense(PLUGIN_NAME)
    before = calls(client)
    install(client, retry=RetryPolicy(max_attempts=5, initial_backoff=0.01, all_idempotent=True))
    with pytest.raises(grpc.RpcError) as err:
        kv.get("missing")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert calls(client) - before == 1


def test_per_attempt_deadline_lets_a_stuck_call_be_retried(client: Client) -> None:
    kv = client.dispense(PLUGIN_NAME)
    kv.put("__slow__", b"1")  # the next Get hangs for 10 s
    before = calls(client)
    # 3 s an attempt (the stuck one hangs 10 s): the second must not time out on a loaded machine
    install(client, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, per_attempt_timeout=3.0,
                                      methods=["Get"]))
    assert kv.get("k") == b"v"
    assert calls(client) - before == 2


def test_overall_deadline_bounds_all_attempts(client: Client) -> None:
    kv = client.dispense(PLUGIN_NAME)
    kv.put("__slow__", b"100")
    seen: list[int] = []
    install(client, retry=RetryPolicy(max_attempts=50, initial_backoff=0.01, per_attempt_timeout=0.3,
                                      overall_timeout=1.5, all_idempotent=True,
                                      on_retry=lambda m, n, e, s: seen.append(n)))
    with pytest.raises(CallTimeoutError) as err:
        kv.get("k")
    assert "exceeded its deadline" in str(err.value)
    assert 1 <= len(seen) < 49  # the deadline, not max_attempts, ended it
    kv.put("__slow__", b"0")


def test_without_an_overall_deadline_a_timeout_says_each_try_had_its_own(tmp_path: Path) -> None:
    # the default deadline bounds each try, not the call (documented): the message must say so, not
    # advise the one try's larger timeout= as if the call had waited 0.3 s
    with Client(faulty_config(tmp_path, call_timeout=0.3)) as c:
        kv = c.dispense(PLUGIN_NAME)
        kv.put("__slow__", b"2")
        install(c, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01, methods=["Get"]))
        with pytest.raises(CallTimeoutError) as err:
            kv.get("k")
        said = str(err.value)
        assert "exceeded its deadline" in said and "on try 2 of 2" in said, said
        assert "each try was bounded by 0.3s (the default deadline, ClientConfig.call_timeout)" in said, said
        assert "s in all" in said and "RetryPolicy(overall_timeout=...)" in said, said
        assert "Pass a larger timeout=" not in said, said
        assert err.value.args == (said,) and said in repr(err.value)  # not only .message: logs show repr/args


@pytest.mark.parametrize("overall", ["policy", "call"])
def test_per_attempt_timeouts_within_an_overall_deadline_say_what_bounded_the_tries(client: Client,
                                                                                    overall: str) -> None:
    # 2 tries of 0.3 s each, well within the 30 s overall deadline: the one try's advice (a larger
    # timeout=, a larger ClientConfig.call_timeout) changes nothing, per_attempt_timeout does
    kv = client.dispense(PLUGIN_NAME)
    kv.put("__slow__", b"2")
    install(client, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01, per_attempt_timeout=0.3,
                                      overall_timeout=30 if overall == "policy" else None, methods=["Get"]))
    with pytest.raises(CallTimeoutError) as err:
        stub(client).Get(kv_pb2.GetRequest(key="k"), timeout=30 if overall == "call" else None)
    said = str(err.value)
    source = "RetryPolicy.overall_timeout" if overall == "policy" else "the call's timeout="
    assert "on try 2 of 2" in said and "each try was bounded by 0.3s (RetryPolicy.per_attempt_timeout)" in said, said
    assert f"overall deadline of 30s ({source})" in said and "raise RetryPolicy.per_attempt_timeout" in said, said
    assert "Pass a larger timeout=" not in said and "call_timeout" not in said, said
    # the rewording is the error's, not only its .message: repr() and args (logs, tracebacks) agree
    assert err.value.args == (said,) and said in repr(err.value)
    kv.put("__slow__", b"0")


@pytest.mark.parametrize("overall", ["policy", "call"])
def test_an_overall_deadline_that_ran_out_names_itself_not_call_timeout(client: Client, overall: str) -> None:
    # one try used up the whole 0.6 s deadline (no per_attempt_timeout: the try gets all of it, not the
    # Client's call_timeout of 10 s), so raising ClientConfig.call_timeout would change nothing
    kv = client.dispense(PLUGIN_NAME)
    kv.put("__slow__", b"1")
    install(client, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, methods=["Get"],
                                      overall_timeout=0.6 if overall == "policy" else None))
    with pytest.raises(CallTimeoutError) as err:
        stub(client).Get(kv_pb2.GetRequest(key="k"), timeout=0.6 if overall == "call" else None)
    said = str(err.value)
    if overall == "policy":
        assert "overall deadline of 0.6s (RetryPolicy.overall_timeout) ran out" in said, said
        assert "raise RetryPolicy.overall_timeout" in said, said
    else:
        assert "overall deadline of 0.6s (the call's timeout=) ran out" in said, said
        assert "pass a larger timeout= to the call" in said, said
    assert "call_timeout" not in said and err.value.args == (said,), said
    kv.put("__slow__", b"0")


def test_a_single_try_bounded_by_per_attempt_timeout_says_so(client: Client) -> None:
    kv = client.dispense(PLUGIN_NAME)
    kv.put("__slow__", b"1")
    install(client, retry=RetryPolicy(max_attempts=3, per_attempt_timeout=0.3, methods=["Put"]))  # Get: one try
    with pytest.raises(CallTimeoutError) as err:
        kv.get("k")
    said = str(err.value)
    assert "the try was bounded by 0.3s (RetryPolicy.per_attempt_timeout)" in said, said
    assert "Pass a larger timeout=" not in said and "call_timeout" not in said, said
    kv.put("__slow__", b"0")


def test_with_call_goes_through_the_policy(client: Client) -> None:
    stub = kv_pb2_grpc.KVStub(client.channel)
    client.dispense(PLUGIN_NAME).put("__fail__", b"1")
    install(client, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01, methods=["Get"]))
    response, call = stub.Get.with_call(kv_pb2.GetRequest(key="k"))
    assert response.value == b"v"
    assert call.code() == grpc.StatusCode.OK


def test_backoff_grows_caps_and_jitters() -> None:
    policy = RetryPolicy(initial_backoff=0.1, multiplier=2.0, max_backoff=0.5, jitter=0.5,
                         rng=random.Random(7))
    for retry, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        values = [policy.backoff(retry) for _ in range(50)]
        assert all(base * 0.5 <= v <= base for v in values)
        assert len(set(values)) > 1  # jittered
    assert RetryPolicy(jitter=0.0).backoff(2) == pytest.approx(0.2)


def test_the_jitter_source_is_a_public_option_and_reproducible() -> None:
    # it was a private dataclass field (_rng) that showed in the signature and that callers had to pass
    params = inspect.signature(RetryPolicy).parameters
    assert "rng" in params and not any(name.startswith("_") for name in params)
    first, second = (RetryPolicy(jitter=1.0, rng=random.Random(7)) for _ in range(2))
    assert [first.backoff(n) for n in range(1, 6)] == [second.backoff(n) for n in range(1, 6)]
    assert RetryPolicy() == RetryPolicy()  # each one's own generator made equal policies unequal
    with pytest.raises(ConfigError, match=r"rng must be a random\.Random.*got 7"):
        RetryPolicy(rng=7)  # type: ignore[arg-type]


def test_backoff_after_thousands_of_failures_is_the_cap() -> None:
    for n in (1025, 5000, 10**9):
        assert RetryPolicy(max_attempts=10**9 + 1, jitter=0.0, max_backoff=2.0).backoff(n) == 2.0
        assert RestartPolicy(jitter=0.0, max_backoff=10.0, multiplier=10).backoff(n) == 10.0
    assert RestartPolicy(jitter=0.0, initial_backoff=0.0).backoff(5000) == 0.0
    assert RestartPolicy(jitter=0.0, multiplier=1.0).backoff(5000) == pytest.approx(0.2)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_attempts": 0}, "max_attempts must be >= 1 (got 0)"),
    ({"jitter": 2.0}, "jitter must be >= 0 and <= 1 (got 2.0)"),
    ({"per_attempt_timeout": 0.0}, "per_attempt_timeout (or None) must be > 0 (got 0.0)"),
    ({"multiplier": 0.5}, "multiplier must be >= 1 (got 0.5)"),
])
def test_bad_policy_is_refused_with_the_reason(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_install_needs_a_client_or_managed_channel() -> None:
    with pytest.raises(ConfigError, match="needs a started Client or AsyncClient, or a ManagedChannel, got object"):
        install(object(), retry=RetryPolicy())


def test_a_calls_own_timeout_is_its_overall_deadline(client: Client) -> None:
    kv = client.dispense(PLUGIN_NAME)
    kv.put("__slow__", b"100")
    install(client, retry=RetryPolicy(max_attempts=5, initial_backoff=0.01, overall_timeout=60,
                                      all_idempotent=True))
    stub = kv_pb2_grpc.KVStub(client.channel)
    with pytest.raises(CallTimeoutError) as err:
        stub.Get(kv_pb2.GetRequest(key="k"), timeout=0.5)
    assert "the overall deadline leaves no time for another try" in "\n".join(err.value.__notes__)
    install(client)
    kv.put("__slow__", b"0")


def test_a_call_refused_because_the_plugin_is_gone_is_not_retried(tmp_path: Path) -> None:
    import os
    import signal

    retried: list[int] = []
    with Client(faulty_config(tmp_path)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        install(client, retry=RetryPolicy(max_attempts=5, initial_backoff=0.2, all_idempotent=True,
                                          on_retry=lambda m, n, e, s: retried.append(n)))
        os.kill(client.runner.pid, signal.SIGKILL)
        assert client.runner.wait(10) is not None
        # the exit watch closes the channel just after it marks the Client exited: a call made
        # in between fails in flight (sent, so retried); wait for the close itself
        assert wait_until(lambda: client.channel._closed, 10)
        with pytest.raises(PluginDiedError) as err:
            kv.get("k")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert retried == [], "a plugin that is gone was asked again"


def test_a_hooked_futures_status_and_deadline_are_the_calls_not_a_tries(client: Client) -> None:
    # grpc.Call's code() and details() wait for the call's end; a retried try's UNAVAILABLE is not
    # the call's status, and time_remaining() is the call's (it said None while no try was in flight)
    stub = kv_pb2_grpc.KVStub(client.channel)
    kv = client.dispense(PLUGIN_NAME)
    kv.put("__fail__", b"1")
    install(client, retry=RetryPolicy(max_attempts=3, initial_backoff=0.3, max_backoff=0.3, methods=["Get"]))
    future = stub.Get.future(kv_pb2.GetRequest(key="k"), timeout=30)
    remaining = future.time_remaining()
    assert remaining is not None and 0 < remaining <= 30
    assert future.code() == grpc.StatusCode.OK
    assert future.result(timeout=0).value == b"v"
    cancelled = stub.Get.future(kv_pb2.GetRequest(key="k"), timeout=30)
    cancelled.cancel()
    assert cancelled.code() == grpc.StatusCode.CANCELLED and cancelled.cancelled()


def test_a_future_goes_through_the_policy_as_a_blocking_call_does(client: Client) -> None:
    import threading

    stub = kv_pb2_grpc.KVStub(client.channel)
    kv = client.dispense(PLUGIN_NAME)
    kv.put("__fail__", b"2")
    before = calls(client)
    install(client, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, methods=["Get"]))
    ended = threading.Event()
    future = stub.Get.future(kv_pb2.GetRequest(key="k"))
    future.add_done_callback(lambda f: ended.set())
    assert future.result(timeout=30).value == b"v"  # two injected UNAVAILABLEs, resent
    assert ended.wait(10) and future.code() == grpc.StatusCode.OK
    assert calls(client) - before == 3
    # the last try's failure is the future's, with the policy's note, as a blocking call's is
    kv.put("__fail__", b"5")
    install(client, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, methods=["Get"]))
    with pytest.raises(grpc.RpcError) as err:
        stub.Get.future(kv_pb2.GetRequest(key="k")).result(timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "gave up after 3 of 3 attempt(s)" in "\n".join(err.value.__notes__)
    kv.put("__fail__", b"0")
    # without layers a future is gRPC's own: no thread of plugbay's runs it
    install(client)
    plain = stub.Get.future(kv_pb2.GetRequest(key="k"))
    assert not [t.name for t in threading.enumerate() if t.name.startswith("plugbay-call-")]
    assert plain.result(timeout=30).value == b"v"


def test_a_future_made_inside_idempotent_is_retried(client: Client) -> None:
    # the layers run on a thread of the future's own: the mark must reach it as it reaches a blocking call
    stub = kv_pb2_grpc.KVStub(client.channel)
    kv = client.dispense(PLUGIN_NAME)
    kv.put("__fail__", b"1")
    before = calls(client)
    install(client, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01))
    with idempotent():
        future = stub.Get.future(kv_pb2.GetRequest(key="k"))
    assert future.result(timeout=30).value == b"v"
    assert calls(client) - before == 2
    kv.put("__fail__", b"1")
    install(client, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01))
    with pytest.raises(grpc.RpcError) as err:  # made outside the block: one try
        stub.Get.future(kv_pb2.GetRequest(key="k")).result(timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_tls_failure_is_not_retried() -> None:
    # a RemoteTLSError carries UNAVAILABLE (the retryable code) but waiting cannot help: the certificate
    # is refused each time; the policy retried it max_attempts times, with backoff between
    from plugbay.network.poolcalls import RemoteTLSFailure

    attempts: list[float | None] = []

    def attempt(timeout: float | None) -> None:
        attempts.append(timeout)
        raise RemoteTLSFailure("the plugin refused this host's certificate", grpc.StatusCode.UNAVAILABLE, "tls")

    with pytest.raises(RemoteTLSFailure):
        RetryPolicy(max_attempts=4, initial_backoff=0.01, all_idempotent=True).run("/proto.KV/Get", attempt, 5.0)
    assert len(attempts) == 1
