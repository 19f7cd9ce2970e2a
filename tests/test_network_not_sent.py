"""The pool resends a call refused with the plugbay-not-sent trailer only when the trailer echoes the token
the pool sent with it (as plugbay's gateway does). Any other server's mark (a plugin relaying an upstream
gateway's trailers, or a hostile one) made the pool run the call again on every endpoint until its deadline.

In-process gRPC servers record each call they ran; no Go plugin needed.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from plugbay.core.plugin.gate import HandlerGate
from plugbay.network.aiopool import AioEndpoints, AioPoolChannel
from plugbay.network.gateway.forward import Forwarder
from plugbay.network.pool import EndpointPool
from plugbay.network.poolcalls import NOT_SENT
from plugbay.network.resolver import Endpoint
from tests.test_network_drain import PushResolver

METHOD = "/kv.KV/Get"
Seen = list[tuple[str, dict[str, str]]]  # (server, the call's metadata), one per call a server ran


def _server(name: str, seen: Seen, answer: Callable[[dict[str, str], grpc.ServicerContext], bytes]) -> Any:
    def get(request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = {k: v for k, v in context.invocation_metadata()}
        seen.append((name, metadata))  # the call ran here: a side effect happened
        return answer(metadata, context)

    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "kv.KV", {"Get": grpc.unary_unary_rpc_method_handler(get)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def _marks(value: str | None) -> Callable[[dict[str, str], grpc.ServicerContext], bytes]:
    """UNAVAILABLE with the NOT_SENT trailer: ``value``, or (None) the token the call carries."""
    def answer(metadata: dict[str, str], context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata(((NOT_SENT, metadata.get(NOT_SENT, "") if value is None else value),))
        context.abort(grpc.StatusCode.UNAVAILABLE, "upstream unavailable")
        raise AssertionError("abort() returned")
    return answer


def _ok(metadata: dict[str, str], context: grpc.ServicerContext) -> bytes:
    return b"ok"


@contextmanager
def _pool(*answers: Callable[[dict[str, str], grpc.ServicerContext], bytes]) -> Iterator[tuple[EndpointPool, Seen]]:
    seen: Seen = []
    servers = [_server(f"s{i}", seen, answer) for i, answer in enumerate(answers)]
    pool = EndpointPool(PushResolver([Endpoint("tcp", address) for _, address in servers]), insecure=True,
                        policy="pick_first", health_interval=3600, name="marks")
    try:
        pool.start()
        yield pool, seen
    finally:
        pool.close()
        for server, _ in servers:
            server.stop(0)


def _call(pool: EndpointPool, how: str, metadata: Any = None) -> bytes:
    """One unary call through the pool: blocking, future() or on grpc.aio."""
    if how == "call":
        return bytes(pool.unary_unary(METHOD)(b"", timeout=3, metadata=metadata))
    if how == "future":
        return bytes(pool.unary_unary(METHOD).future(b"", timeout=3, metadata=metadata).result(timeout=10))

    async def main() -> bytes:
        channel = AioPoolChannel(AioEndpoints(pool))
        try:
            return bytes(await channel.unary_unary(METHOD)(b"", timeout=3, metadata=metadata))
        finally:
            await channel.close()
    return asyncio.run(main())


@pytest.mark.parametrize("how", ["call", "future", "aio"])
@pytest.mark.parametrize("mark", ["", "1", secrets.token_hex(16)], ids=["empty", "one", "another-pool"])
def test_a_mark_that_is_not_the_pools_token_ends_the_call_once(how: str, mark: str) -> None:
    with _pool(_marks(mark), _marks(mark)) as (pool, seen):
        with pytest.raises(grpc.RpcError) as failed:
            _call(pool, how)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert [name for name, _ in seen] == ["s0"], f"the call ran {len(seen)} times"
        assert pool.resends == 0


@pytest.mark.parametrize("how", ["call", "future", "aio"])
def test_a_refusal_that_echoes_the_pools_token_goes_to_the_next_endpoint(how: str) -> None:
    """Every unary call carries the pool's token beside the caller's metadata (a caller's own NOT_SENT
    pair replaced); a refusal that echoes it is resent."""
    with _pool(_marks(None), _ok) as (pool, seen):
        assert _call(pool, how, metadata=(("x-caller", "1"), (NOT_SENT, "mine"))) == b"ok"
        assert [name for name, _ in seen] == ["s0", "s1"]
        for _, metadata in seen:
            assert metadata[NOT_SENT] == pool.token and metadata["x-caller"] == "1"
        assert pool.resends == 1


def test_each_pool_has_its_own_token() -> None:
    with _pool(_ok) as (one, _), _pool(_ok) as (other, _):
        assert len(one.token) == 32 and one.token != other.token


@contextmanager
def _gateway(answering: bool) -> Iterator[tuple[grpc.Channel, Seen]]:
    """plugbay's Forwarder in front of a child that marks every call with the token it sees, or "1"."""
    seen: Seen = []
    child, child_address = _server("child", seen, _marks("1"))
    to_child = grpc.insecure_channel(child_address)
    gateway = grpc.server(futures.ThreadPoolExecutor(4))
    gateway.add_generic_rpc_handlers((Forwarder(lambda: (to_child, ""), HandlerGate(4), lambda: answering),))
    port = gateway.add_insecure_port("127.0.0.1:0")
    gateway.start()
    caller = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield caller, seen
    finally:
        caller.close()
        gateway.stop(0)
        to_child.close()
        child.stop(0)


def test_the_gateway_echoes_the_token_and_keeps_it_from_the_child() -> None:
    with _gateway(answering=True) as (caller, seen):
        with pytest.raises(grpc.RpcError) as relayed:
            caller.unary_unary(METHOD)(b"", timeout=5, metadata=((NOT_SENT, "tok"), ("x-caller", "1")))
        assert [name for name, _ in seen] == ["child"]
        assert NOT_SENT not in seen[0][1] and seen[0][1]["x-caller"] == "1", seen
        assert NOT_SENT not in dict(relayed.value.trailing_metadata() or ())
    with _gateway(answering=False) as (caller, seen):
        with pytest.raises(grpc.RpcError) as refused:
            caller.unary_unary(METHOD)(b"", timeout=5, metadata=((NOT_SENT, "tok"),))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (NOT_SENT, "tok") in tuple(refused.value.trailing_metadata() or ())
        with pytest.raises(grpc.RpcError) as unmarked:
            caller.unary_unary(METHOD)(b"", timeout=5)
        assert unmarked.value.code() == grpc.StatusCode.UNAVAILABLE
        assert NOT_SENT not in dict(unmarked.value.trailing_metadata() or ())
        assert seen == []
