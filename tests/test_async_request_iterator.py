"""An AsyncClient stream whose request iterator raises: the caller gets that error, not a CancelledError.

grpc.aio cancels such a call locally and its reads raise asyncio.CancelledError, which in a task nobody
cancelled ends that task as if it had been (a TaskGroup or asyncio.run takes it for a cancel) and hides
the caller's own error. Real streaming plugin (examples/streaming), Echo (stream-stream).
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "streaming"))

from streaming_plugin_def import HANDSHAKE, PLUGIN_NAME, StreamerPlugin  # noqa: E402
from streamingproto import streaming_pb2  # noqa: E402

from plugbay import AsyncClient, AsyncSupervisor, ClientConfig  # noqa: E402
from tests.broken_source import SourceBroke, broke  # noqa: E402
from tests.test_network_dead_replica import certs, streamers  # noqa: E402,F401 (fixtures)

GUARD = 60.0  # a hang fails the test instead of stalling the run


async def async_requests() -> AsyncIterator[streaming_pb2.Chunk]:
    yield streaming_pb2.Chunk(seq=0, data=b"first")
    raise broke()


def sync_requests() -> Iterator[streaming_pb2.Chunk]:
    yield streaming_pb2.Chunk(seq=0, data=b"first")
    raise broke()


def under(error: BaseException) -> str:
    """What the caller's error was raised from (__cause__) and during (__context__)."""
    return f"cause {error.__cause__!r}, context {error.__context__!r}"


UNDER = "cause OSError(5, 'Input/output error'), context OSError(5, 'Input/output error')"


async def iterated_to_its_error(call: Any) -> BaseException:
    """What iterating the stream ended with. Returned, never raised again: a frame holding it that it is
    raised through would hold it in a cycle with its traceback."""
    try:
        async for _ in call:
            pass
    except BaseException as exc:  # noqa: B036 (a CancelledError is what this looks for)
        return exc
    raise AssertionError("the stream ended without an error")


async def read_to_its_error(call: Any) -> BaseException:
    """What reading the stream ended with (returned, as iterated_to_its_error's)."""
    try:
        while True:
            await call.read()
    except BaseException as exc:  # noqa: B036
        return exc


def config() -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: StreamerPlugin()},
                        cmd=[sys.executable, str(REPO / "examples" / "streaming" / "plugin.py")])


@pytest.mark.parametrize("kind", [AsyncClient, AsyncSupervisor])
@pytest.mark.parametrize("source", [async_requests, sync_requests], ids=["async-iterator", "iterator"])
def test_a_request_iterator_that_raises_fails_the_stream_with_its_own_error(source: Any, kind: Any) -> None:
    async def main() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with kind(config()) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            seen["iterated"] = await iterated_to_its_error(streamer.echo(source()))
            call = streamer.echo(source())
            seen["read"] = await read_to_its_error(call)
            try:
                await call.read()
            except BaseException as exc:  # noqa: B036
                seen["read again"] = exc
            seen["cancelling"] = asyncio.current_task().cancelling()  # type: ignore[union-attr]
            seen["after"] = (await streamer.stats()).active  # the client still serves calls
        return seen

    gc.collect()  # what earlier tests left for a collection is not this one's
    gc.disable()  # what a collection would free is what this looks for
    try:
        seen = asyncio.run(asyncio.wait_for(main(), GUARD))
        said = {how: f"{type(error).__name__}: {error}" for how, error in seen.items()}
        said.update({f"{how}, under": under(seen[how]) for how in ("iterated", "read")})
        seen.clear()
        # once the caller let go of its errors, nothing holds one (a reference cycle would, until a collection:
        # an AsyncSupervisor's channel over its Client's, each keeping what the iterator raised, made one)
        held = [o for o in gc.get_objects() if isinstance(o, SourceBroke)]
    finally:
        gc.enable()
    assert not held, held
    for how in ("iterated", "read"):
        assert said[how] == "SourceBroke: the file being streamed could not be read", said
    assert said["read again"] == ("InvalidStateError: the call ended when its request iterator raised SourceBroke:"
                                  " the file being streamed could not be read (an earlier read raised it)"), said
    assert said["cancelling"] == "int: 0"
    assert said["after"].startswith("int: "), said  # the client still serves calls (their count: what it answered)
    for how in ("iterated", "read"):
        assert said[f"{how}, under"] == UNDER, said


def test_the_same_through_an_async_remote_clients_pool(streamers: list[Any], certs: Any) -> None:
    from plugbay import AsyncRemoteClient
    from tests.test_network_dead_replica import _first_config

    async def main() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            for how, source in (("iterated", async_requests), ("iterated, sync source", sync_requests)):
                seen[how] = await iterated_to_its_error(streamer.echo(source()))
            seen["read"] = await read_to_its_error(streamer.echo(async_requests()))
            seen["cancelling"] = asyncio.current_task().cancelling()  # type: ignore[union-attr]
            seen["after"] = (await streamer.stats()).active
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), GUARD))
    for how in ("iterated", "iterated, sync source", "read"):
        assert isinstance(seen[how], SourceBroke), (how, repr(seen[how]))
        assert under(seen[how]) == UNDER, (how, under(seen[how]))
    assert seen["cancelling"] == 0
    assert isinstance(seen["after"], int), seen  # the client still serves calls


def test_a_call_dropped_with_its_iterators_error_never_read_leaves_no_cycle() -> None:
    async def main() -> None:
        async with AsyncClient(config()) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            call = streamer.echo(async_requests())
            while not call.done():  # grpc.aio reads the requests on its own: the iterator raises, unread
                await asyncio.sleep(0.01)
            del call
            await asyncio.sleep(0)  # what grpc.aio's own tasks end with

    gc.collect()
    gc.disable()  # what a collection would free is what this looks for
    try:
        asyncio.run(asyncio.wait_for(main(), GUARD))
        # held in a cycle: the error's traceback holds the frame that iterated the requests; that frame
        # must not hold the RequestSource, which holds the error
        held = [o for o in gc.get_objects() if isinstance(o, SourceBroke)]
    finally:
        gc.enable()
    assert not held, held


def upstream_failures() -> list[Any]:
    import grpc
    import grpc.aio
    return [grpc.RpcError(),  # grpcio's server iterator's, when the upstream caller cancelled: no code()
            grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                 details="the upstream call failed")]


@pytest.mark.parametrize("index", [0, 1], ids=["bare-RpcError", "AioRpcError-UNAVAILABLE"])
def test_a_request_iterator_raising_an_upstream_calls_error_leaves_the_call_its_own(index: int) -> None:
    # as on the sync side: an iterator's grpc.RpcError (a grpc.aio call passed on failed) is not this call's
    # error; the call fails with its own UNKNOWN "Exception iterating requests!", the iterator's as its cause
    upstream = upstream_failures()[index]

    async def requests() -> AsyncIterator[streaming_pb2.Chunk]:
        yield streaming_pb2.Chunk(seq=0, data=b"first")
        raise upstream

    async def main() -> list[str]:
        said = []
        async with AsyncClient(config()) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            read = streamer.echo(requests())
            for error in (await iterated_to_its_error(streamer.echo(requests())), await read_to_its_error(read)):
                causes, cause = [], error.__cause__
                while cause is not None:
                    causes.append(cause is upstream)
                    cause = cause.__cause__
                said.append(f"{type(error).__name__} {error.code().name} {error.details()!r};"  # type: ignore[attr-defined]
                            f" upstream is a cause: {any(causes)}")
            later = await read_to_its_error(read)  # names what the earlier read raised: the call's own UNKNOWN
            said.append(f"{type(later).__name__}: {later}")
        return said

    said = asyncio.run(asyncio.wait_for(main(), GUARD))
    for one in said[:2]:
        assert one.split(" ", 1)[1] == "UNKNOWN 'Exception iterating requests!'; upstream is a cause: True", said
    named = ["RpcError", "AioRpcError: StatusCode.UNAVAILABLE 'the upstream call failed'"][index]
    assert said[2] == (f"InvalidStateError: the call ended when its request iterator raised {named} (an earlier"
                       " read raised the call's own UNKNOWN 'Exception iterating requests!', caused by it)"), said


def causes(error: BaseException) -> list[str]:
    """The types along ``error``'s __cause__ chain."""
    found, cause = [], error.__cause__
    while cause is not None:
        found.append(type(cause).__name__)
        cause = cause.__cause__
    return found


def test_a_request_iterator_ended_by_an_upstream_calls_cancel_fails_the_call_not_the_callers_task() -> None:
    # the iterator passes on a grpc.aio call of its own (a host's server forwarding its incoming stream), which
    # its own caller cancels: reading it raises asyncio.CancelledError in a task nobody cancelled. Raised as
    # it is, a TaskGroup took the call's task for cancelled and ended quietly, the failure lost; the call
    # fails with its own UNKNOWN instead, that CancelledError its cause, as for any upstream call's error
    async def main() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with AsyncClient(config()) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            held = asyncio.Event()

            async def upstream_requests() -> AsyncIterator[streaming_pb2.Chunk]:
                yield streaming_pb2.Chunk(seq=0, data=b"first")
                await held.wait()  # the upstream stays open until its caller cancels it

            upstream = streamer.echo(upstream_requests())

            async def forwarded() -> AsyncIterator[streaming_pb2.Chunk]:
                async for chunk in upstream:
                    yield chunk
                    upstream.cancel()  # the upstream's caller went away

            async def drain(call: Any) -> None:
                async for _ in call:
                    pass

            async def grouped(call: Any) -> None:  # its own task: Python 3.11's TaskGroup leaves a failed
                try:                                # group's parent task marked as cancelling
                    async with asyncio.TaskGroup() as group:
                        child = group.create_task(drain(call))
                except BaseExceptionGroup as failed:
                    seen["group"] = [f"{type(e).__name__} {e.code().name} {e.details()!r};"  # type: ignore[attr-defined]
                                     f" causes {causes(e)}" for e in failed.exceptions]
                seen["child cancelled"] = child.cancelled()

            call = streamer.echo(forwarded())
            await asyncio.create_task(grouped(call))
            later = await read_to_its_error(call)
            seen["later"] = f"{type(later).__name__}: {later}"
            seen["cancelling"] = asyncio.current_task().cancelling()  # type: ignore[union-attr]
            seen["after"] = (await streamer.stats()).active
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), GUARD))
    assert seen.get("group") == ["AioRpcError UNKNOWN 'Exception iterating requests!'; causes ['CancelledError']"], seen
    assert seen["child cancelled"] is False, seen
    assert seen["later"] == ("InvalidStateError: the call ended when its request iterator raised CancelledError (an"
                             " earlier read raised the call's own UNKNOWN 'Exception iterating requests!', caused"
                             " by it)"), seen
    assert seen["cancelling"] == 0 and isinstance(seen["after"], int), seen
