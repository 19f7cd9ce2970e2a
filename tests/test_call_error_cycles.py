"""A failed call's error is not its own cause, so it goes, with the call, when the caller drops it.

plugbay raises a typed error for a failed call "from" the gRPC error it replaces; an error
it leaves as it was (NOT_FOUND from the plugin, an error already typed below) was raised
from itself: its own __cause__, a reference cycle that held the error, the failed call,
its frames and its channel until a full garbage collection. For an AsyncClient that is
also grpcio's process-wide asyncio poller (a thread and a socket pair), which grpcio ends
only once its last grpc.aio channel object is gone. Garbage collection is off while each
call runs here, so only a cycle could keep the error.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import AsyncClient, Client, ClientConfig  # noqa: E402

KV_PLUGIN = [sys.executable, str(REPO / "examples" / "kv" / "plugin.py")]


def kv_config() -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=KV_PLUGIN)


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_an_async_calls_error_from_the_plugin_goes_once_dropped(no_gc: None) -> None:
    async def main() -> weakref.ref[BaseException]:
        async with AsyncClient(kv_config()) as client:
            kv = await client.dispense(PLUGIN_NAME)
            try:
                await kv.get("never-stored")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND
                assert err.__cause__ is not err
                return weakref.ref(err)
        raise AssertionError("the call did not fail")

    gone = asyncio.run(main())
    assert gone() is None, "the failed call's error outlived its caller: held by a reference cycle"


def test_a_calls_error_from_the_plugin_goes_once_dropped(no_gc: None) -> None:
    def call() -> weakref.ref[BaseException]:
        with Client(kv_config()) as client:
            kv = client.dispense(PLUGIN_NAME)
            try:
                kv.get("never-stored")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND
                assert err.__cause__ is not err
                return weakref.ref(err)
        raise AssertionError("the call did not fail")

    gone = call()
    assert gone() is None, "the failed call's error outlived its caller: held by a reference cycle"
