"""A future()'s wait for an endpoint (plugbay.network.poolfuture): it waits on the pool's condition, which every
change that may give it an endpoint notifies (as a blocking call's pick and a sync stream's resend do), and its
cancel() notifies that condition too, only while the future is picking; it does not ask the pool again and
again on a timer of its own. Cancelled there, it ends cancelled and nothing is sent.
A pool on 127.0.0.1 whose lone endpoint refuses every connection (no endpoint can take a call).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from plugbay import RemoteClient
from plugbay.network.pool import EndpointPool
from plugbay.network.resolver import Endpoint
from tests.net_util import PLUGIN_NAME, Replica, first_check_passed
from tests.race_util import Starting
from tests.resilience_util import wait_until
from tests.test_network_drain import PushResolver
from tests.test_network_pool import FAST_RECONNECT, remote

from kvproto import kv_pb2  # noqa: E402, I001

class _WatchedCondition:
    """The pool's condition, unchanged but watched: how often each thread waited on it, and which threads
    notified it (in order)."""

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self.waits: Counter[str] = Counter()
        self.notifiers: list[str] = []

    def __enter__(self) -> bool:
        return self._cond.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._cond.__exit__(*exc)

    def wait(self, timeout: float | None = None) -> bool:
        self.waits[threading.current_thread().name] += 1
        return self._cond.wait(timeout)

    def notify_all(self) -> None:
        self.notifiers.append(threading.current_thread().name)
        self._cond.notify_all()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cond, name)


def test_a_future_waits_for_an_endpoint_on_the_pools_condition_and_its_cancel_wakes_that_wait(
        closed_port: int) -> None:
    """The future's first try (on a thread of its own, as a hooked future's is) finds no endpoint round after
    round: each such round waits on the pool's condition (it polled every 0.05 s before, never waiting there,
    so the pool's changes did not wake it and it asked the pool twenty times a second). cancel() notifies that
    condition while the pick is under way (a future not picking does not): the future ends cancelled, no try
    was picked after it, none is in flight."""
    nobody = closed_port  # refuses every connection: its health checks fail, calls wait for an endpoint
    key = f"tcp:127.0.0.1:{nobody}"
    pool = EndpointPool(PushResolver([Endpoint("tcp", f"127.0.0.1:{nobody}")]), insecure=True,
                        health_interval=0.2, options=FAST_RECONNECT, name="kv-future-pick")
    watched = _WatchedCondition(pool._cond)
    pool._cond = watched  # type: ignore[assignment]
    rounds: Counter[str] = Counter()  # per thread: the pool's answers "no endpoint now"
    real = pool.try_pick

    def counted(deadline: float, exclude: set[str], pin: str | None = None) -> Any:
        member = real(deadline, exclude, pin)
        if member is None:
            rounds[threading.current_thread().name] += 1
        return member

    pool.try_pick = counted  # type: ignore[method-assign]
    me = threading.current_thread().name
    try:
        pool.start()
        assert wait_until(lambda: pool.metrics()["endpoints"][key]["healthy"] is False, 10)
        idle = pool.unary_unary("/proto.KV/Get").unstarted_future(b"", timeout=30)
        before = len(watched.notifiers)
        assert idle.cancel() and idle.cancelled()
        assert me not in watched.notifiers[before:], "a cancel() with no pick under way woke the pool's picks"

        future = pool.unary_unary("/proto.KV/Get").unstarted_future(b"", timeout=30)
        starting = Starting(lambda: future.start(cancellable=True))  # its pick waits up to the future's 30 s
        assert wait_until(lambda: rounds["plugbay-test-start"] >= 3, 10), rounds
        picks = sum(e["picks"] for e in pool.metrics()["endpoints"].values())
        before = len(watched.notifiers)
        assert future.cancel() and future.cancelled()
        assert me in watched.notifiers[before:], "cancel() did not wake the pick under way"
        assert starting.outcome() is None  # (30 s: a hang guard only)
        # every round that found no endpoint then waited on the pool's condition: none on a timer of its own
        assert watched.waits["plugbay-test-start"] == rounds["plugbay-test-start"], (watched.waits, rounds)
        assert sum(e["picks"] for e in pool.metrics()["endpoints"].values()) == picks  # nothing picked after
        assert pool.metrics()["endpoints"][key]["inflight"] == 0
    finally:
        del pool.try_pick
        pool.close()


def test_a_cancel_that_comes_as_the_try_is_opened_sends_nothing() -> None:
    """cancel() as the future's try is about to be opened (its endpoint picked, its deadline worked out): the
    check for a cancel and the open are one step, so the try is either not opened or opened and then cancelled
    by that cancel(), never opened after cancel() returned True. Here the cancel() comes first, held in that
    gap: the replica never stores the Put (it did, 4 times in 5, when the open came after the check)."""
    replica = Replica("127.0.0.1:0")
    try:
        with RemoteClient(remote(f"static:///{replica.address}")) as client:
            kv = client.dispense(PLUGIN_NAME)
            first_check_passed(client, f"tcp:{replica.address}")
            put = client.pool.unary_unary("/proto.KV/Put", request_serializer=kv_pb2.PutRequest.SerializeToString,
                                          response_deserializer=kv_pb2.Empty.FromString)
            real, in_gap, go_on = put.remaining, threading.Event(), threading.Event()

            def remaining(*args: Any, **kwargs: Any) -> Any:
                left = real(*args, **kwargs)  # the endpoint is picked, the deadline worked out: the open is next
                in_gap.set()
                go_on.wait(30)
                return left

            put.remaining = remaining
            real_on, cancel_returned, opened_after = put._on, threading.Event(), []

            class Watched:  # a try opened on the endpoint: never once cancel() said True
                def __init__(self, target: Any) -> None:
                    self.target = target

                def future(self, *args: Any, **kwargs: Any) -> Any:
                    opened_after.append(cancel_returned.is_set())
                    return self.target.future(*args, **kwargs)

            put._on = lambda member: Watched(real_on(member))
            future = put.unstarted_future(kv_pb2.PutRequest(key="gap", value=b"sent"), timeout=10)
            starting = Starting(lambda: future.start(cancellable=True))
            assert in_gap.wait(30)
            assert future.cancel() and future.cancelled()
            cancel_returned.set()
            go_on.set()
            starting.outcome()  # (30 s: a hang guard only)
            assert True not in opened_after, "a try was opened after cancel() returned True"
            assert client.pool.metrics()["endpoints"][f"tcp:{replica.address}"]["inflight"] == 0
            kv.put("after", b"1")  # a call made after it is served: the replica took calls all along
            assert kv.get("after") == b"1"
            try:
                got: bytes | None = kv.get("gap")
            except Exception:  # net_kv's Get of a key it never stored fails
                got = None
            assert got is None, "the cancelled future's Put reached the replica"
    finally:
        replica.stop()
