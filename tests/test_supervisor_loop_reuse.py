"""A restarting Supervisor keeps one shared loop: restarts neither make loops nor leave closed ones alive.

Each restart used to give the shared loop's last hold back (the old Client's end), so every restart made a
new loop and plugbay-io thread, and a GRPCStdio call cancelled right after it opened completed after its
channel, or its loop, was closed: grpc.aio's callbacks then kept the closed loops alive.

The last release of a Client's grpc.aio channel lets those calls settle (AIO_SETTLE) only while the loop
lives on; the loop's last user ends it at once, closing the channel then (nothing keeps plugbay-io alive).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time

import grpc
import grpc.aio
import pytest

from tests.gobuild import build_go
from tests.resilience_util import wait_until
from tests.thread_util import plugbay_threads, wait_for

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402, I001

from plugbay import (Client, ClientConfig, RestartBudgetExhaustedError, RestartPolicy, Supervisor,  # noqa: E402
                     cleanup_clients)

# go-plugin's KV plugin stores each key in a kv_<key> file where it runs: each test's own folder
pytestmark = pytest.mark.usefixtures("in_tmp")

RESTARTS = 60
BOUND = 90.0  # seconds: a slow machine does fewer restarts, never hangs


def _closed_loops() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_closed())


def _aio_channels() -> list[grpc.aio.Channel]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, grpc.aio.Channel)]


def _open(channels: list[grpc.aio.Channel]) -> list[grpc.aio.Channel]:
    return [c for c in channels if c.get_state() != grpc.ChannelConnectivity.SHUTDOWN]


def _config() -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=[str(build_go("kv_plugin"))],
                        name="loopreuse")


def test_restarts_by_sigkill_right_after_the_first_call_reuse_one_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    made = [0]
    new_event_loop = asyncio.new_event_loop

    def counted() -> asyncio.AbstractEventLoop:
        made[0] += 1
        return new_event_loop()

    policy = RestartPolicy(max_restarts=10**6, window=1.0, initial_backoff=0.0, max_backoff=0.01, stable_after=0.01)
    closed_before = _closed_loops()
    with Supervisor(_config(), restart=policy, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        kv.put("x", b"0")
        monkeypatch.setattr(asyncio, "new_event_loop", counted)  # from here on: restarts only
        begun = time.monotonic()
        done = 0
        while done < RESTARTS and time.monotonic() - begun < BOUND:
            before = sup.restarts
            os.kill(sup.reattach_config().runner["pid"], signal.SIGKILL)  # a few ms after GRPCStdio opened
            assert wait_until(lambda: sup.restarts > before, 30)
            assert sup.wait_running(30)
            kv.put("x", b"%d" % done)  # the first call of the new plugin; the next kill follows at once
            done += 1
        assert done > 0
        assert made[0] == 0, f"{made[0]} shared loops made over {done} restarts"
        assert _closed_loops() <= closed_before
        channels = _aio_channels()
    assert "plugbay-io" not in plugbay_threads()  # the Supervisor's stop ended the loop
    assert _open(channels) == []  # the last Client's channel too, closed as the loop ended


def test_a_kill_ends_the_shared_loop_at_once_and_its_aio_channel_with_it() -> None:
    """No settling close outlives the loop's last user: kill() ends plugbay-io and closes the channel."""
    assert "plugbay-io" not in plugbay_threads()
    earlier = {id(c) for c in _aio_channels()}
    client = Client(_config())
    try:
        client.start()
        client.dispense(PLUGIN_NAME).put("x", b"1")  # the broker stream and GRPCStdio share one channel
        wait_for(lambda: any(id(c) not in earlier for c in _aio_channels()), "the plugin's grpc.aio channel")
        mine = [c for c in _aio_channels() if id(c) not in earlier]
    finally:
        client.kill()
    assert "plugbay-io" not in plugbay_threads()  # at once: no settling close holds the loop
    assert mine and _open(mine) == []  # closed as the loop ended, not left to the garbage collector


def test_a_supervisor_that_gives_up_gives_the_shared_loop_back() -> None:
    sup = Supervisor(_config(), restart=RestartPolicy(max_restarts=0, window=60), health_interval=None)
    try:
        sup.start()
        kv = sup.dispense(PLUGIN_NAME)
        os.kill(sup.reattach_config().runner["pid"], signal.SIGKILL)
        assert wait_until(lambda: sup.state == "failed", 30)
        with pytest.raises(RestartBudgetExhaustedError):
            kv.put("x", b"1")
        wait_for(lambda: "plugbay-io" not in plugbay_threads(), "the shared loop to end once it gave up")
    finally:
        sup.stop()
    assert "plugbay-io" not in plugbay_threads()


def test_cleanup_clients_ends_the_shared_loop_a_supervisor_held() -> None:
    """CleanupClients (and the interpreter's exit) halts a Supervisor and kills its plugin: the loop goes too."""
    sup = Supervisor(_config(), restart=RestartPolicy(max_restarts=5, window=60), health_interval=None)
    try:
        sup.start()
        sup.dispense(PLUGIN_NAME).put("x", b"1")
        cleanup_clients()
        assert "plugbay-io" not in plugbay_threads()  # the halted Supervisor holds it no more
    finally:
        sup.stop()


def test_clients_that_come_and_go_leave_their_ended_loops_to_grpcio_alone() -> None:
    """A regression guard for the docs' account: while the test holds a grpc.aio channel of its own, each shared
    loop a Client's kill ended stays alive, closed, in grpcio's poller table (PollerCompletionQueue's loops, which
    grpcio 1.85 never prunes until grpc.aio is set up again): nothing of plugbay's refers to any of them."""
    own_loop = asyncio.new_event_loop()

    async def dial() -> grpc.aio.Channel:
        return grpc.aio.insecure_channel("127.0.0.1:9")  # never used: it keeps grpc.aio set up

    own = own_loop.run_until_complete(dial())
    try:
        before = {id(loop) for loop in _closed_loop_objects()}
        for n in range(3):
            client = Client(_config())
            try:
                client.start()
                client.dispense(PLUGIN_NAME).put("x", b"%d" % n)
            finally:
                client.kill()
        del client  # the last one would hold its lease's loop
        ended = [loop for loop in _closed_loop_objects() if id(loop) not in before]
        holders = {_holder(referrer) for loop in ended for referrer in gc.get_referrers(loop)
                   if referrer is not ended}
        del ended
    finally:
        own_loop.run_until_complete(own.close())
        own_loop.close()
    assert holders <= {"grpc._cython.cygrpc._BoundEventLoop", "grpc._cython.cygrpc.PollerCompletionQueue"}, holders


def _closed_loop_objects() -> list[asyncio.AbstractEventLoop]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_closed()]


def _holder(referrer: object) -> str:
    """Who holds ``referrer`` (a dict: the object whose table it is)."""
    if isinstance(referrer, dict):
        owners = [o for o in gc.get_referrers(referrer) if not isinstance(o, (list, dict))]
        return ",".join(sorted(f"{type(o).__module__}.{type(o).__qualname__}" for o in owners)) or "a dict"
    return f"{type(referrer).__module__}.{type(referrer).__qualname__}"
