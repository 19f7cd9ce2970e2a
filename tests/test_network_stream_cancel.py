"""cancel() of a sync server-streaming call through the pool (plugbay.network.poolstream) while the read that
sends it again, its call on a killed replica having failed unsent, waits for the pool to have an endpoint
ready: the cancel() ends that wait at once, as a grpc.aio stream's does (test_network_aio_stream_cancel), not
when the pick returns. The read raises CANCELLED, code() says so, and no call is opened on any endpoint. A
cancel() as the resend opens its call (the cancel not seen yet) waits for that open and cancels the call: none is
opened after cancel() returned.
Real network-mode streaming plugins over mTLS on 127.0.0.1, the first killed (kill -9).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from plugbay import RemoteClient
from plugbay.network.poolstream import PoolStream
from tests.resilience_util import wait_until
from tests.test_network_dead_replica import (STREAMER, _ended, _first_config, _inner, _killed, _read_all, certs,
                                             opens_watched, streamers)

__all__ = ["certs", "streamers"]  # the fixtures this module's tests take


class _ResendPicks:
    """Watches the pool's tries of a resend's pick (those excluding the endpoint tried) without changing what
    they answer: ``waiting`` is set once one found no endpoint (the pick then waits), ``outcomes`` says how each
    ended (None: no endpoint yet; else the endpoint picked, or the error raised at the pick's deadline)."""

    def __init__(self, pool: Any) -> None:
        self._pool, self._real = pool, pool.try_pick
        self.waiting = threading.Event()
        self.outcomes: list[object] = []

    def __call__(self, deadline: float, exclude: set[str], pin: str | None = None) -> Any:
        if not exclude:  # not the resend's
            return self._real(deadline, exclude, pin)
        try:
            member = self._real(deadline, exclude, pin)
        except Exception as exc:
            self.outcomes.append(exc)
            raise
        self.outcomes.append(member and member.key)
        if member is None:
            self.waiting.set()
        return member


@contextmanager
def _failed_unread(streamers: list[Any], certs: Any) -> Iterator[tuple[RemoteClient, Any, PoolStream]]:
    """A client, and its stream that failed unsent on the first replica (killed), not read yet: its first
    read sends it again (its PoolStream too)."""
    with RemoteClient(_first_config(streamers, certs)) as client:
        streamer = client.dispense(STREAMER)
        _killed(client, streamers[0])
        stream = streamer.generate(3, 8, timeout=10)
        _ended(stream)
        yield client, stream, _inner(stream, PoolStream)


@pytest.fixture
def awaiting_check() -> Iterator[list[Any]]:
    """Endpoints put back as awaiting their first health check (as a replica that just joined is, see
    PoolHealth.welcome): a pick waits for them; restored afterwards."""
    held: list[Any] = []
    yield held
    for member, state in held:
        member.healthy, member.first_check_by = state


def test_a_cancel_ends_the_resends_wait_for_an_endpoint_at_once(
        streamers: list[Any], certs: Any, awaiting_check: list[Any]) -> None:
    """The live replica awaits its first health check (one joining now would): the resend's pick waits for
    it, up to the stream's 10 s. A cancel() from another thread ends that wait: the read ends while the pick
    had neither an endpoint nor its deadline, raising CANCELLED; no call was opened."""
    live = f"tcp:{streamers[1].address}"
    with _failed_unread(streamers, certs) as (client, stream, inner):
        pool, owner = inner._pool, inner._owner
        member = pool.member(live)
        awaiting_check.append((member, (member.healthy, member.first_check_by)))
        with pool._cond:  # as PoolHealth.welcome sets a joining endpoint: calls wait for its first check
            member.healthy, member.first_check_by = None, time.monotonic() + 60
        picks = _ResendPicks(pool)
        pool.try_pick = picks
        read: list[Any] = []
        seen_at_end: list[list[object]] = []

        def reading() -> None:
            read.append(_read_all(stream))
            seen_at_end.append(list(picks.outcomes))  # what the pick had found when the read ended

        reader = threading.Thread(target=reading)
        try:
            with opens_watched(owner) as opened:
                reader.start()
                assert picks.waiting.wait(10), f"the read's resend did not wait for an endpoint: {picks.outcomes}"
                asked = stream.cancel()
                reader.join(30)  # a hang guard only: the pick itself waits at most the stream's 10 s
                assert not reader.is_alive()
        finally:
            del pool.try_pick
        ended = [outcome for outcome in seen_at_end[0] if outcome is not None]  # an endpoint, or its deadline
        assert not ended, f"the read ended only as the pick did: {ended}"  # it was still waiting when the read ended
        assert isinstance(read[0], grpc.RpcError) and read[0].code() == grpc.StatusCode.CANCELLED, read[0]
        assert stream.code() == grpc.StatusCode.CANCELLED, stream.code()
        # under way again (being sent again): cancelled by it, as grpc.aio's stream says in the same place
        assert asked and stream.cancelled(), (asked, stream.cancelled())
        assert stream.cancel() is False  # a second cancel() cancels nothing, as gRPC's says
        assert opened == [], opened
        assert client.metrics()["endpoints"][live]["inflight"] == 0



class _WatchedLock:
    """A stream's lock, unchanged but for ``waited``: set when the thread ``waiter`` finds it held."""

    def __init__(self, lock: Any, waiter: str) -> None:
        self._lock, self._waiter = lock, waiter
        self.waited = threading.Event()

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            if threading.current_thread().name == self._waiter:
                self.waited.set()
            self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_no_call_is_opened_after_a_cancel_returned(streamers: list[Any], certs: Any) -> None:
    """cancel() from another thread as the resend, its endpoint picked and the cancel not seen, goes on to open
    the new call: the cancel() waits for that open and cancels the call opened, so none is opened after
    cancel() returned (none is left running either). The read raises CANCELLED."""
    live = f"tcp:{streamers[1].address}"
    with _failed_unread(streamers, certs) as (client, stream, inner):
        owner, real_on = inner._owner, inner._owner._on
        inner._lock = lock = _WatchedLock(inner._lock, "canceller")
        returned = threading.Event()
        canceller = threading.Thread(target=lambda: (stream.cancel(), returned.set()), name="canceller")
        opened: list[tuple[str, bool]] = []

        def on(member: Any) -> Any:
            target = real_on(member)

            def opening(*args: Any, **kwargs: Any) -> Any:  # the resend's open: the cancel was checked
                canceller.start()
                for _ in range(200):  # until cancel() returned or waits for the stream; a hang guard of about 10 s
                    if returned.wait(0.05) or lock.waited.is_set():
                        break
                opened.append((member.key, returned.is_set()))
                return target(*args, **kwargs)
            return opening

        owner._on = on
        try:
            read = _read_all(stream)
            canceller.join(10)
            assert not canceller.is_alive()
        finally:
            del owner._on
        assert opened == [(live, False)], opened  # opened before cancel() returned, never after
        assert isinstance(read, grpc.RpcError) and read.code() == grpc.StatusCode.CANCELLED, read
        assert stream.code() == grpc.StatusCode.CANCELLED, stream.code()
        assert inner._call.cancelled(), inner._call.code()  # the call opened was cancelled
        assert wait_until(lambda: client.metrics()["endpoints"][live]["inflight"] == 0, 10.0)  # a hang guard only


def test_a_pool_subscriber_cancelling_the_stream_as_its_resend_fails_to_open_ends_the_read(
        streamers: list[Any], certs: Any) -> None:
    """The resend's open fails (its endpoint's channel closed under it), and the pool's bookkeeping of that
    failure tells the pool's subscribers, on the reading thread: a subscriber that has the stream cancelled
    (here by a thread it waits for) waited for the stream's lock, which that reading thread held. The
    cancel() returns, and the read raises CANCELLED."""
    live = f"tcp:{streamers[1].address}"
    with _failed_unread(streamers, certs) as (client, stream, inner):
        pool, reader_name = inner._pool, "stream-reader"
        cancelled_on: list[str] = []
        returned: list[bool] = []

        def on_change(*_: object) -> None:
            if not cancelled_on:
                cancelled_on.append(threading.current_thread().name)
                canceller = threading.Thread(target=stream.cancel, name="canceller")
                canceller.start()
                canceller.join(10)  # a hang guard only: the cancel() waits for the stream's lock
                returned.append(not canceller.is_alive())

        member = pool.member(live)
        assert member is not None
        member.retire()  # still in the pool, its channel closed: the resend's open fails (not sent)
        pool.subscribe(on_change)
        read: list[Any] = []
        reader = threading.Thread(target=lambda: read.append(_read_all(stream)), name=reader_name)
        try:
            reader.start()
            reader.join(30)  # a hang guard only
            assert not reader.is_alive()
        finally:
            pool.unsubscribe(on_change)
        assert cancelled_on == [reader_name], cancelled_on  # told on the reading thread, during the resend
        assert returned == [True], "the subscriber's cancel() waited for the lock the reading thread held"
        assert isinstance(read[0], grpc.RpcError) and read[0].code() == grpc.StatusCode.CANCELLED, read[0]
