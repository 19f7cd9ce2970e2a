"""One of two replicas killed (kill -9), before the pool's health checks have caught up or while they say so.

A multiplexed endpoint's gRPC dials its TLS relay, which closes the connection when its own dial is
refused: the health detail read "Socket closed (the TLS handshake was cut short ...)", a TLS guess, and
now says the plugin cannot be reached (connection refused) and what to check. A new server-streaming
call with pick_first went to the killed replica (still first, still healthy to the pool) and failed
UNAVAILABLE, where a unary call fails over: it now goes to the live replica too, as it never left.
Real network-mode plugins (the counter and streaming examples) over mTLS on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import RemoteClient, RemoteConfig
from tests import netcerts
from tests.net_util import aio_connection_lost, connection_lost, first_check_passed
from tests.test_network_broker import COUNTER, REPO, CounterReplica, counter_config, host_tls, killable_pair

STREAMING = REPO / "examples" / "streaming"
sys.path.insert(0, str(STREAMING))
from streaming_plugin_def import HANDSHAKE as STREAM_HANDSHAKE  # noqa: E402
from streaming_plugin_def import PLUGIN_NAME as STREAMER, StreamerClient, StreamerPlugin  # noqa: E402


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


@pytest.fixture
def counters(tmp_path: Path, certs: netcerts.CertSet) -> Iterator[list[CounterReplica]]:
    yield from killable_pair(tmp_path, certs, COUNTER / "plugin.py")


@pytest.fixture
def streamers(tmp_path: Path, certs: netcerts.CertSet) -> Iterator[list[CounterReplica]]:
    yield from killable_pair(tmp_path, certs, STREAMING / "plugin.py")


def _kill(replica: CounterReplica) -> None:
    replica.proc.kill()
    replica.proc.wait(10)


def test_a_dead_multiplexed_replica_is_said_to_refuse_the_connection(counters: list[CounterReplica],
                                                                     certs: netcerts.CertSet) -> None:
    dead, _ = counters
    cfg = counter_config(counters, host_tls(certs), multiplex=True, health_interval=0.2, health_timeout=1.0)
    with RemoteClient(cfg) as client:
        _kill(dead)
        key = f"tcp:{dead.address}"
        detail = ""
        for _ in range(150):  # the health thread's checks and probe, every 0.2 s; bounded at about 30 s
            detail = client.metrics()["endpoints"][key]["health_detail"]
            if "Connection refused" in detail:
                break
            time.sleep(0.2)
        assert "Connection refused" in detail, detail
        assert f"the plugin at {key} cannot be reached" in detail and "check that it runs" in detail, detail
        assert "TLS handshake was cut short" not in detail, detail


def _checked(client: Any, replica: CounterReplica) -> None:
    """net_util.first_check_passed() of ``replica``: till then pick_first's next call could go to the live
    replica, where a stream left unread never ends (gRPC gives its status once its answers are read) and
    lasts to its deadline. Checks are 60 s apart here: to the pool the replica stays healthy after the kill."""
    first_check_passed(client, f"tcp:{replica.address}")


def _killed(client: RemoteClient, replica: CounterReplica) -> None:
    """kill -9 of ``replica`` (the first endpoint, checked healthy), seen by the connection to it: a call
    made next goes there and fails unsent."""
    _checked(client, replica)
    _kill(replica)
    connection_lost(client, f"tcp:{replica.address}")


@pytest.mark.parametrize("brokered", [False, True], ids=["plain", "multiplexed"])
def test_a_new_stream_with_pick_first_fails_over_from_a_killed_replica(
        streamers: list[CounterReplica], certs: netcerts.CertSet, brokered: bool) -> None:
    dead, live = streamers
    cfg = RemoteConfig(target=f"static:///{dead.address},{live.address}", handshake=STREAM_HANDSHAKE,
                       plugins={STREAMER: StreamerPlugin()}, tls=host_tls(certs), name="streamer",
                       policy="pick_first", brokered=brokered, health_interval=60, start_timeout=20)
    with RemoteClient(cfg) as client:
        # multiplexed, dispense() pins its stub to one endpoint (for its broker): the pool's own channel is not
        streamer = StreamerClient(client.channel) if brokered else client.dispense(STREAMER)
        assert [c.seq for c in streamer.generate(2, 8, timeout=10)] == [0, 1]  # on the first replica
        _killed(client, dead)
        # health checks 60 s apart: to the pool the killed replica is still healthy, and first
        assert streamer.stats().produced >= 0  # a unary call: it failed over before, too
        assert [c.seq for c in streamer.generate(3, 8, timeout=10)] == [0, 1, 2]
        assert [c.seq for c in streamer.generate(3, 8, timeout=10)] == [0, 1, 2]
        endpoints = client.metrics()["endpoints"]
        assert endpoints[f"tcp:{live.address}"]["picks"] >= 3, endpoints


def test_a_new_asyncio_stream_with_pick_first_fails_over_from_a_killed_replica(
        streamers: list[CounterReplica], certs: netcerts.CertSet) -> None:
    import asyncio

    from plugbay import AsyncRemoteClient

    dead, live = streamers
    cfg = RemoteConfig(target=f"static:///{dead.address},{live.address}", handshake=STREAM_HANDSHAKE,
                       plugins={STREAMER: StreamerPlugin()}, tls=host_tls(certs), name="streamer",
                       policy="pick_first", brokered=False, health_interval=60, start_timeout=20)

    async def run() -> list[list[int]]:
        async with AsyncRemoteClient(cfg) as client:
            streamer = await client.dispense(STREAMER)
            seqs = [[c.seq async for c in streamer.generate(2, 8, timeout=10)]]
            _checked(client, dead)
            _kill(dead)
            await aio_connection_lost(client, f"tcp:{dead.address}")
            await streamer.stats()  # a unary call: it failed over before, too
            seqs.append([c.seq async for c in streamer.generate(3, 8, timeout=10)])
            stream = streamer.generate(2, 8, timeout=10)  # read() rather than iterated
            seqs.append([(await stream.read()).seq, (await stream.read()).seq])
            return seqs

    assert asyncio.run(run()) == [[0, 1], [0, 1, 2], [0, 1]]


def _ended(stream: object) -> None:
    for _ in range(200):  # the killed replica refuses at once; bounded at about 10 s
        if stream.done():  # type: ignore[attr-defined]
            return
        time.sleep(0.05)
    raise AssertionError("the stream's call on the killed replica did not end")


def _first_config(streamers: list[CounterReplica], certs: netcerts.CertSet) -> RemoteConfig:
    dead, live = streamers
    return RemoteConfig(target=f"static:///{dead.address},{live.address}", handshake=STREAM_HANDSHAKE,
                        plugins={STREAMER: StreamerPlugin()}, tls=host_tls(certs), name="streamer",
                        policy="pick_first", brokered=False, health_interval=60, start_timeout=20)


def test_a_cancelled_stream_whose_call_failed_unsent_is_not_sent_again(
        streamers: list[CounterReplica], certs: netcerts.CertSet) -> None:
    import grpc

    with RemoteClient(_first_config(streamers, certs)) as client:
        streamer = client.dispense(STREAMER)
        _killed(client, streamers[0])
        live = f"tcp:{streamers[1].address}"
        picks = client.metrics()["endpoints"][live]["picks"]  # the start's may have gone there
        stream = streamer.generate(3, 8, timeout=10)
        _ended(stream)  # failed on the killed replica, unread
        stream.cancel()
        with pytest.raises(grpc.RpcError) as cut:
            next(stream)
        assert cut.value.code() == grpc.StatusCode.CANCELLED, cut.value
        assert stream.code() == grpc.StatusCode.CANCELLED, stream.code()  # not its old call's UNAVAILABLE
        assert stream.details() == cut.value.details(), stream.details()
        assert client.metrics()["endpoints"][live]["picks"] == picks


def test_a_stream_read_after_its_endpoint_came_back_is_still_sent_again(
        streamers: list[CounterReplica], certs: netcerts.CertSet, tmp_path: Path) -> None:
    """Whether the call failed unsent is judged as it ended: by its first read the killed replica may be
    back (here restarted on its port) and its channel READY again, which proves nothing of the call."""
    import grpc

    ready = grpc.ChannelConnectivity.READY.value[0]
    dead = streamers[0]
    with RemoteClient(_first_config(streamers, certs)) as client:
        streamer = client.dispense(STREAMER)
        _killed(client, dead)
        stream = streamer.generate(3, 8, timeout=30)
        _ended(stream)
        back = CounterReplica(tmp_path / "back", certs, listen=dead.address, script=STREAMING / "plugin.py")
        try:
            channel = stream._call._member.channel._channel  # grpc's own, under the pool's endpoint
            for _ in range(400):  # past gRPC's reconnect backoff (about a second at first); at most about 20 s
                if channel.check_connectivity_state(True) == ready:
                    break
                time.sleep(0.05)
            assert channel.check_connectivity_state(False) == ready
            assert [c.seq for c in stream] == [0, 1, 2]
        finally:
            back.stop()
            shutil.rmtree(back.tmp, ignore_errors=True)


def test_a_cancelled_asyncio_stream_whose_call_failed_unsent_is_not_sent_again(
        streamers: list[CounterReplica], certs: netcerts.CertSet) -> None:
    import asyncio

    from plugbay import AsyncRemoteClient

    live = f"tcp:{streamers[1].address}"

    async def run() -> tuple[bool, int]:
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            streamer = await client.dispense(STREAMER)
            await streamer.stats()  # the channel to the first replica is made
            picks = client.metrics()["endpoints"][live]["picks"]
            stream = await _stream_after_kill(client, streamer, streamers[0])
            stream.cancel()
            try:
                await stream.read()
            except asyncio.CancelledError:
                cancelled = True
            else:
                cancelled = False
            return cancelled, client.metrics()["endpoints"][live]["picks"] - picks

    assert asyncio.run(run()) == (True, 0)


async def _stream_after_kill(client: Any, streamer: Any, replica: CounterReplica) -> Any:
    """A stream made on ``replica``'s channel after a kill -9 of it, its call failed (unsent) before any read."""
    import asyncio

    _checked(client, replica)
    _kill(replica)
    await aio_connection_lost(client, f"tcp:{replica.address}")
    stream = streamer.generate(3, 8, timeout=10)
    for _ in range(200):  # bounded at about 10 s
        if stream.done():
            break
        await asyncio.sleep(0.05)
    return stream


def _inner(call: object, kind: type) -> Any:
    """The pool's own stream under the channel's wrappers."""
    for _ in range(5):
        if isinstance(call, kind):
            return call
        call = call._call  # type: ignore[attr-defined]
    raise AssertionError(f"no {kind.__name__} under the stream")


def test_a_stream_cancelled_while_its_resend_picks_an_endpoint_is_cancelled(
        streamers: list[CounterReplica], certs: netcerts.CertSet) -> None:
    """cancel() as the pool's pick for the read that sends the request again ended: the read raises CANCELLED,
    and no call is opened on the endpoint picked (it is given back). A cancel() during the pick's wait for an
    endpoint: test_network_stream_cancel."""
    import threading

    from plugbay.network.poolstream import PoolStream

    with RemoteClient(_first_config(streamers, certs)) as client:
        streamer = client.dispense(STREAMER)
        _killed(client, streamers[0])
        stream = streamer.generate(3, 8, timeout=10)
        _ended(stream)
        inner = _inner(stream, PoolStream)
        pool, owner = inner._pool, inner._owner
        real, picking, go_on = pool.pick_unless, threading.Event(), threading.Event()

        def held(stopped: Any, deadline: float, exclude: set[str], pin: str | None = None) -> Any:
            member = real(stopped, deadline, exclude, pin)
            if exclude:  # the resend's pick (the first one excluded nothing): held once it picked
                picking.set()
                go_on.wait(10)  # a hang guard only
            return member

        pool.pick_unless = held
        try:
            with opens_watched(owner) as opened:
                read = _read_cancelled_while_picking(stream, picking, go_on)
        finally:
            del pool.pick_unless
        assert isinstance(read, grpc.RpcError) and read.code() == grpc.StatusCode.CANCELLED, read
        assert stream.code() == grpc.StatusCode.CANCELLED, stream.code()
        assert opened == [], opened
        assert client.metrics()["endpoints"][f"tcp:{streamers[1].address}"]["inflight"] == 0


@contextlib.contextmanager
def opens_watched(owner: Any) -> Iterator[list[str]]:
    """The endpoints a pool stream's calls are opened on (``owner``: its PoolCallable), while held: each open,
    done or failed, of a call on an endpoint's channel."""
    real_on, opened = owner._on, []

    def on(member: Any) -> Any:
        target = real_on(member)

        def opening(*args: Any, **kwargs: Any) -> Any:
            opened.append(member.key)
            return target(*args, **kwargs)
        return opening

    owner._on = on
    try:
        yield opened
    finally:
        del owner._on


@contextlib.contextmanager
def held_resend_pick(stream: Any) -> Iterator[tuple[Any, Any, Any]]:
    """Holds an asyncio stream's resend's pick (the one that excludes the endpoint tried) until ``go_on`` is
    set: yields (picking, go_on, ended), asyncio Events: set once the pick is held, to let it go on, and when
    the held pick was cancelled."""
    import asyncio

    from plugbay.network.aiopoolstream import StreamCall

    callable = _inner(stream, StreamCall)._callable
    real, picking, go_on, ended = callable.pick, asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def held(pick_until: float, tried: set[str]) -> Any:
        if tried:  # the resend's pick
            picking.set()
            try:
                await asyncio.wait_for(go_on.wait(), 10)  # a hang guard only
            except asyncio.CancelledError:
                ended.set()
                raise
        return await real(pick_until, tried)

    callable.pick = held
    try:
        yield picking, go_on, ended
    finally:
        go_on.set()
        del callable.pick


def _read_cancelled_while_picking(stream: Any, picking: Any, go_on: Any) -> Any:
    """Reads a sync ``stream`` on a thread, cancel()s it once its resend's pick is held (``picking``), then
    lets the pick go on (``go_on``): what the read returned or raised."""
    import threading

    read: list[Any] = []
    reader = threading.Thread(target=lambda: read.append(_read_all(stream)))
    reader.start()
    try:
        assert picking.wait(10), "the read did not send the request again"
        stream.cancel()
    finally:
        go_on.set()
        reader.join(20)
    assert not reader.is_alive()
    return read[0]


def _read_all(stream: Any) -> Any:
    try:
        return [c.seq for c in stream]
    except grpc.RpcError as exc:
        return exc


def test_an_asyncio_stream_cancelled_while_its_resend_picks_an_endpoint_is_cancelled(
        streamers: list[CounterReplica], certs: netcerts.CertSet) -> None:
    import asyncio

    from plugbay import AsyncRemoteClient

    async def run() -> object:
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            streamer = await client.dispense(STREAMER)
            await streamer.stats()  # the channel to the first replica is made
            stream = await _stream_after_kill(client, streamer, streamers[0])
            with held_resend_pick(stream) as (picking, go_on, _):
                reading = asyncio.ensure_future(stream.read())
                await asyncio.wait_for(picking.wait(), 10)
                stream.cancel()
                go_on.set()
                try:
                    return (await asyncio.wait_for(reading, 20)).seq
                except asyncio.CancelledError:
                    return "cancelled"

    assert asyncio.run(run()) == "cancelled"


def test_a_stream_cancelled_while_its_resend_picks_past_its_deadline_is_cancelled(
        streamers: list[CounterReplica], certs: netcerts.CertSet) -> None:
    """cancel() while the resend's pick is held until the stream's deadline is spent (no try is sent): the
    read raises CANCELLED, as code() says, not the first call's UNAVAILABLE."""
    import threading

    from plugbay.network.poolstream import PoolStream

    with RemoteClient(_first_config(streamers, certs)) as client:
        streamer = client.dispense(STREAMER)
        _killed(client, streamers[0])
        stream = streamer.generate(3, 8, timeout=3)
        _ended(stream)
        inner = _inner(stream, PoolStream)
        pool = inner._pool
        real, picking, go_on = pool.pick_unless, threading.Event(), threading.Event()

        def held(stopped: Any, deadline: float, exclude: set[str], pin: str | None = None) -> Any:
            if exclude:  # the resend's pick
                picking.set()
                go_on.wait(10)  # a hang guard only
                while time.monotonic() <= inner._deadline:  # past the stream's 3 s: bounded by them
                    time.sleep(0.05)
                return real(lambda: False, deadline, exclude, pin)  # the pick itself runs past its deadline
            return real(stopped, deadline, exclude, pin)

        pool.pick_unless = held
        try:
            read = _read_cancelled_while_picking(stream, picking, go_on)
        finally:
            del pool.pick_unless
        assert isinstance(read, grpc.RpcError) and read.code() == grpc.StatusCode.CANCELLED, read
        assert stream.code() == grpc.StatusCode.CANCELLED, stream.code()
        assert client.metrics()["endpoints"][f"tcp:{streamers[1].address}"]["inflight"] == 0


def test_a_cancel_after_a_read_raised_the_failure_leaves_the_status(
        streamers: list[CounterReplica], certs: netcerts.CertSet) -> None:
    """Both replicas killed: the read (sent again to the second) raises UNAVAILABLE, as code() says; a cancel()
    after that finds the call ended (False) and changes nothing, as a finished gRPC call's status stands: a
    next read raises the same failure."""
    with RemoteClient(_first_config(streamers, certs)) as client:
        streamer = client.dispense(STREAMER)
        for replica in streamers:
            _kill(replica)
        stream = streamer.generate(3, 8, timeout=10)
        read = _read_all(stream)
        assert isinstance(read, grpc.RpcError) and read.code() == grpc.StatusCode.UNAVAILABLE, read
        status = (stream.code(), stream.details())
        assert status[0] == grpc.StatusCode.UNAVAILABLE, status
        assert stream.cancel() is False
        again = _read_all(stream)  # the same failure, as a finished gRPC call's read raises it
        assert isinstance(again, grpc.RpcError) and again.code() == grpc.StatusCode.UNAVAILABLE, again
        assert (stream.code(), stream.details()) == status, stream.code()
