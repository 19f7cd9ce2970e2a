"""A RetryPolicy under a Supervisor's deadline() scope: the scope's deadline bounds the whole call, its tries and the
backoffs between them. A try that failed fast (UNAVAILABLE) was followed by the policy's backoff whatever was left of
the scope: a backoff past the scope's end was slept through in full, and only then was the next try refused for want
of time, so the call outlived its deadline by up to a backoff (max_backoff, 2 s by default; any length a subclass
gives). As with the policy's own overall deadline, it now gives up at once with the try's error and a note saying
the scope left no time for another try.

The fault-switch KV plugin (tests/plugins/resilience_kv.py): Put("__fail__", b"1") makes the next Get abort with
UNAVAILABLE. What is asserted is which error the call ends with, its note, and whether the policy planned a retry
(on_retry): never how long anything took."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import AsyncSupervisor, Client, CallTimeoutError, RestartPolicy, RetryPolicy, Supervisor, install
from tests.resilience_util import PLUGIN_NAME, faulty_config

FAST = RestartPolicy(max_restarts=3, window=120, initial_backoff=0.05, max_backoff=0.2)
NO_TIME = "plugbay retry: gave up after 1 of 3 attempt(s): the deadline() scope leaves no time for another try"


def _policy(planned: list[float], backoff: float) -> RetryPolicy:
    # no per_attempt_timeout: each try has what is left of the scope
    return RetryPolicy(max_attempts=3, all_idempotent=True, initial_backoff=backoff, max_backoff=backoff, jitter=0,
                       on_retry=lambda method, n, exc, sleep: planned.append(sleep))


@contextmanager
def _supervised(tmp_path: Path, retry: Any, *,
                put: tuple[str, bytes] | None = None) -> Iterator[tuple[Supervisor, Any]]:
    """A Supervisor of the fault-switch KV plugin under ``retry``, and its KV stub, whose next Get fails
    (UNAVAILABLE); ``put`` is stored first."""
    with Supervisor(lambda: faulty_config(tmp_path), restart=FAST, retry=retry, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        if put is not None:
            kv.put(*put)
        kv.put("__fail__", b"1")
        yield sup, kv


def test_a_backoff_past_the_scopes_deadline_is_not_slept_the_tries_error_is_raised(tmp_path: Path) -> None:
    planned: list[float] = []
    with _supervised(tmp_path, _policy(planned, 30.0)) as (sup, kv):
        with sup.deadline(5) as scope:
            with pytest.raises(grpc.RpcError) as err:
                kv.get("k")
        # before: a 30 s backoff slept through, then a CallTimeoutError "... before try 2 of 3"
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, repr(err.value)
        assert NO_TIME in getattr(err.value, "__notes__", ()), getattr(err.value, "__notes__", ())
        assert planned == [] and scope.ran_out_in is None, (planned, scope.ran_out_in)
        assert kv.get("__calls__") == b"1"  # one try reached the plugin


def test_a_backoff_within_the_scope_is_still_retried(tmp_path: Path) -> None:
    planned: list[float] = []
    with _supervised(tmp_path, _policy(planned, 0.1), put=("k", b"v")) as (sup, kv):
        with sup.deadline(30):
            assert kv.get("k") == b"v"
        assert planned == [0.1], planned


def test_an_async_supervisors_backoff_past_the_scope_is_not_slept_either(tmp_path: Path) -> None:
    planned: list[float] = []

    async def main() -> BaseException:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), restart=FAST, retry=_policy(planned, 30.0),
                                   health_interval=None) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            await kv.put("__fail__", b"1")
            with sup.deadline(5):
                with pytest.raises(grpc.RpcError) as err:
                    await kv.get("k")
            error: BaseException = err.value
            return error

    error = asyncio.run(main())
    assert error.code() == grpc.StatusCode.UNAVAILABLE, repr(error)  # type: ignore[attr-defined]
    assert NO_TIME in getattr(error, "__notes__", ()), getattr(error, "__notes__", ())
    assert planned == [], planned


@contextmanager
def _plain_kv(tmp_path: Path) -> Iterator[Any]:
    """The KV stub of a plain Client (no Supervisor; its own RetryPolicy: 2 tries, a 2 s backoff) holding
    k=b"plain", whose next Get fails (UNAVAILABLE), for calls made from within a supervised call's retry."""
    (tmp_path / "plain").mkdir()
    with Client(faulty_config(tmp_path / "plain")) as client:
        install(client, retry=RetryPolicy(max_attempts=2, all_idempotent=True, initial_backoff=2.0, max_backoff=2.0,
                                          jitter=0))
        plain = client.dispense(PLUGIN_NAME)
        plain.put("k", b"plain")
        plain.put("__fail__", b"1")
        yield plain


def _scoped_get_fails(tmp_path: Path, retry: Any) -> None:
    """A supervised Get under ``retry`` whose first try fails, in a deadline(1.5) scope: it ends in that try's
    error (a retry would come after the scope's end: refused)."""
    (tmp_path / "sup").mkdir()
    with _supervised(tmp_path / "sup", retry) as (sup, kv):
        with sup.deadline(1.5):
            with pytest.raises(grpc.RpcError):
                kv.get("k")


def test_the_scopes_end_is_the_supervisors_policys_only_not_a_call_made_in_its_on_retry(tmp_path: Path) -> None:
    # A plain Client's call made in the Supervisor's on_retry (metrics, a fallback) is no call of the scope: its
    # own RetryPolicy sleeps its 2 s backoff and retries, though the scope (1.5 s) ends before that. Before, the
    # scope's end was left for every policy the hook ran: the plain call gave up at once, told of a deadline()
    # scope that was not its own.
    seen: list[object] = []
    with _plain_kv(tmp_path) as plain:
        def on_retry(method: str, n: int, exc: BaseException, sleep: float) -> None:
            try:
                seen.append(plain.get("k"))
            except grpc.RpcError as failed:
                seen.append(failed)

        policy = RetryPolicy(max_attempts=2, all_idempotent=True, initial_backoff=0.1, max_backoff=0.1, jitter=0,
                             on_retry=on_retry)
        _scoped_get_fails(tmp_path, policy)
        assert seen == [b"plain"], seen
        assert plain.get("__calls__") == b"2"  # the plain call's failed try and its retry


def _timed_out_in_scope(tmp_path: Path, policy: RetryPolicy, scope: float, fail_first: bool = False) -> str:
    """The message of a Get whose tries hang (the plugin's __slow__; the first fails UNAVAILABLE at once with
    ``fail_first``), under ``policy`` in a deadline(scope)."""
    with Supervisor(lambda: faulty_config(tmp_path), restart=FAST, retry=policy, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        if fail_first:
            kv.put("__fail__", b"1")
        kv.put("__slow__", b"2")
        with sup.deadline(scope):
            with pytest.raises(CallTimeoutError) as err:
                kv.get("k")
    return str(err.value)


def test_a_timed_out_try_given_up_for_the_scope_says_the_scope_not_overall_timeout(tmp_path: Path) -> None:
    # Try 1 times out at 0.3 s, its 0.5 s backoff fits the 3 s scope; try 2 times out too, and its 2 s backoff
    # does not: the call gives up, and its message names the scope (a larger deadline()), not a RetryPolicy
    # overall_timeout, which would not bound this call more than the scope does.
    text = _timed_out_in_scope(tmp_path, RetryPolicy(max_attempts=3, all_idempotent=True, per_attempt_timeout=0.3,
                                                     initial_backoff=0.5, multiplier=4, max_backoff=5, jitter=0), 3)
    assert "deadline() scope left no time for another try" in text, text
    # each try was cut by per_attempt_timeout: a larger deadline() alone gives more short tries, not longer ones
    assert "raise RetryPolicy.per_attempt_timeout for longer tries" in text, text
    assert "overall_timeout" not in text, text


def test_a_scoped_call_out_of_tries_says_the_scope_bounded_it_not_overall_timeout(tmp_path: Path) -> None:
    # two tries of 0.3 s with a short backoff, in a 30 s scope: out of tries, not of time; the scope bounded the
    # call, so the advice is not to set an overall_timeout (found in review)
    text = _timed_out_in_scope(tmp_path, RetryPolicy(max_attempts=2, all_idempotent=True, per_attempt_timeout=0.3,
                                                     initial_backoff=0.05, max_backoff=0.05, jitter=0), 30)
    assert "deadline() scope, and no tries were left" in text, text
    assert "overall_timeout" not in text, text


def test_a_scoped_call_whose_timeout_is_not_retried_says_so_not_that_no_tries_were_left(tmp_path: Path) -> None:
    # try 1 fails UNAVAILABLE (retried), try 2 times out, which this policy does not retry: one try was left, so
    # "no tries were left" was untrue (found in review)
    text = _timed_out_in_scope(tmp_path, RetryPolicy(max_attempts=3, all_idempotent=True, per_attempt_timeout=0.3,
                                                     initial_backoff=0.05, max_backoff=0.05, jitter=0,
                                                     retry_on=[grpc.StatusCode.UNAVAILABLE]), 30, fail_first=True)
    assert "deadline() scope, and this policy does not retry its error" in text, text
    assert "no tries were left" not in text and "overall_timeout" not in text, text


class _OwnLayer:
    """A retry= layer of the user's own: one try, then a fallback call on another Client."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback
        self.seen: list[object] = []

    def run(self, method: str, attempt: Any, timeout: float | None) -> Any:
        try:
            return attempt(timeout)
        except grpc.RpcError:
            try:
                self.seen.append(self.fallback())
            except grpc.RpcError as failed:
                self.seen.append(failed)
            raise


def test_a_retry_layer_of_the_users_own_leaves_the_scope_to_no_call_it_makes(tmp_path: Path) -> None:
    # the scope's end is set only for a RetryPolicy, which takes it: a layer of the user's own never would, and
    # every RetryPolicy call it made gave up at once on a scope not its own (found in review)
    with _plain_kv(tmp_path) as plain:
        layer = _OwnLayer(lambda: plain.get("k"))
        _scoped_get_fails(tmp_path, layer)
        assert layer.seen == [b"plain"], layer.seen
