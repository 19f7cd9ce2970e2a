"""The pool resends a call refused with the plugbay-not-sent trailer only when the trailer echoes the token
the pool sent with it (as plugbay's gateway does). Any other server's mark (a plugin relaying an upstream
gateway's trailers, or a hostile one) made the pool run the call again on every endpoint until its deadline.

In-process gRPC servers record each call they ran; no Go plugin needed.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
import threading
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
from tests.resilience_util import wait_until
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


def _call(pool: EndpointPool, how: str, metadata: Any = None, timeout: float = 3) -> bytes:
    """One unary call through the pool: blocking, future() or on grpc.aio."""
    if how == "call":
        return bytes(pool.unary_unary(METHOD)(b"", timeout=timeout, metadata=metadata))
    if how == "future":
        return bytes(pool.unary_unary(METHOD).future(b"", timeout=timeout, metadata=metadata).result(timeout=10))

    async def main() -> bytes:
        channel = AioPoolChannel(AioEndpoints(pool))
        try:
            return bytes(await channel.unary_unary(METHOD)(b"", timeout=timeout, metadata=metadata))
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


@pytest.mark.parametrize("how", ["call", "future", "aio"])
def test_resends_count_only_tries_sent_to_another_endpoint(how: str) -> None:
    """metrics()["resends"] counted every refused try, a lone endpoint's try again on the same one too (a
    pinned stub's likewise): a gateway whose plugin was down showed 35 resends for about 8 calls, with
    nowhere else to send them. It counts the failovers the docs describe: a try sent to another endpoint
    than the one that refused the last try."""
    with _pool(_marks(None)) as (pool, seen):
        with pytest.raises(grpc.RpcError):  # refused each time until its deadline
            _call(pool, how, timeout=1)
        assert len(seen) >= 2 and pool.resends == 0, (seen, pool.resends)
    with _pool(_marks(None), _marks(None)) as (pool, seen):
        # both take calls: a first check answered past the call's 1 s left the second out of it
        assert wait_until(lambda: pool.metrics()["healthy"] == 2, 10)
        with pytest.raises(grpc.RpcError):
            _call(pool, how, timeout=1)
        moves = sum(1 for (was, _), (now, _) in zip(seen, seen[1:]) if was != now)
        assert moves >= 1 and pool.resends == moves, ([name for name, _ in seen], pool.resends)


@pytest.mark.parametrize("how", ["call", "future"])
def test_a_resend_is_counted_only_once_its_try_was_made(how: str) -> None:
    """The resend was counted as the next endpoint was picked, before its try: one its closed channel
    refused (grpcio's ValueError: nothing sent) counted as a resend too."""
    with _pool(_marks(None), _ok) as (pool, seen):
        assert wait_until(lambda: pool.metrics()["healthy"] == 2, 10)  # both take calls
        second = pool.member(list(pool.metrics()["endpoints"])[1])  # discovery's order: s1
        assert second is not None
        second.retire()  # still in the pool, its channel closed: a try there is refused before it is sent
        with pytest.raises(grpc.RpcError):
            _call(pool, how, timeout=1)
        assert [name for name, _ in seen] == ["s0"] and pool.resends == 0, (seen, pool.resends)


def test_an_async_resend_is_counted_only_once_its_try_was_made() -> None:
    """The same on grpc.aio: the next endpoint's grpc.aio channel closed, its try is refused before it is
    sent (grpc.aio's UsageError); counted as the try was started, it would be a resend."""
    async def main(pool: EndpointPool) -> None:
        endpoints = AioEndpoints(pool)
        channel = AioPoolChannel(endpoints)
        try:
            second = pool.member(list(pool.metrics()["endpoints"])[1])  # discovery's order: s1
            assert second is not None
            closed = endpoints.channel(second)
            await closed.close()  # still its channel, closed: a try there is never sent
            def built(method: str, *args: Any, **kwargs: Any) -> None:  # grpc.aio would register the method
                raise AssertionError(f"a call object for {method} was built on a closed grpc.aio channel")

            setattr(closed, "unary_unary", built)  # on the destroyed C channel: that aborted a host once
            with pytest.raises(grpc.RpcError):
                await channel.unary_unary(METHOD)(b"", timeout=1)
        finally:
            await channel.close()

    with _pool(_marks(None), _ok) as (pool, seen):
        assert wait_until(lambda: pool.metrics()["healthy"] == 2, 10)  # both take calls
        asyncio.run(main(pool))
        assert [name for name, _ in seen] == ["s0"] and pool.resends == 0, (seen, pool.resends)


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


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: bytes, value: bytes) -> bytes:  # HPACK: a literal header, not indexed, new name
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


class _RawMarker:
    """A bare HTTP/2 server answering every call trailers-only: UNAVAILABLE with NOT_SENT set to raw
    ``value`` bytes. grpcio servers refuse to send a non-ASCII value; a Go server or a proxy does not."""

    def __init__(self, value: bytes) -> None:
        self._value = value
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, name="raw-h2-accept")]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # close()
            self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), name="raw-h2-conn")
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buffered = b""

        def take(n: int) -> bytes:
            nonlocal buffered
            while len(buffered) < n:
                data = conn.recv(65536)
                if not data:
                    raise EOFError
                buffered += data
            out, buffered = buffered[:n], buffered[n:]
            return out

        try:
            take(24)  # the client's preface
            conn.sendall(_frame(4, 0, 0))  # our SETTINGS
            while True:
                head = take(9)
                kind, flags = head[3], head[4]
                stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                payload = take(int.from_bytes(head[:3], "big"))
                if kind == 4 and not flags & 1:
                    conn.sendall(_frame(4, 1, 0))  # SETTINGS ack
                elif kind == 1 and b"/grpc.health.v1.Health/Check" in payload:  # the pool's first health check
                    # (later ones name the path by an HPACK index): no health service, taken as healthy, so that
                    # the calls come here (an endpoint that fails its check gets none)
                    block = b"".join(_literal(k, v) for k, v in (
                        (b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"12")))
                    conn.sendall(_frame(1, 0x5, stream, block))
                elif kind == 1:  # HEADERS: the call; answered trailers-only
                    block = b"".join(_literal(k, v) for k, v in (
                        (b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"14"),
                        (b"grpc-message", b"refused"), (NOT_SENT.encode(), self._value)))
                    conn.sendall(_frame(1, 0x5, stream, block))  # END_STREAM | END_HEADERS
        except (EOFError, OSError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone would not, on Linux)
        self._listener.close()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(10)


@pytest.mark.parametrize("how", ["call", "future", "aio"])
@pytest.mark.parametrize("value", ["\u00e9".encode(), b"\xff"], ids=["utf8", "latin1"])
def test_a_non_ascii_mark_ends_the_call_with_its_error(how: str, value: bytes) -> None:
    """The comparison with the token raised TypeError for a non-ASCII str: the blocking and grpc.aio calls
    failed with it, and future()'s failure was lost in grpc's callback, so the future never finished."""
    server = _RawMarker(value)
    pool = EndpointPool(PushResolver([Endpoint("tcp", server.address)]), insecure=True,
                        health_interval=3600, name="raw-marks")
    try:
        pool.start()
        with pytest.raises(grpc.RpcError) as failed:
            _call(pool, how)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
        assert pool.resends == 0
    finally:
        pool.close()
        server.close()


def test_a_refused_async_call_goes_to_the_next_endpoint_while_the_loops_default_executor_is_held() -> None:
    """The verdict on a refused call (which may wait for a TLS probe) runs on the pool's own threads: the
    user's work on the loop's default executor held it, and the call, past its deadline."""
    release = threading.Event()

    async def main(pool: EndpointPool) -> tuple[bytes, bool]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(futures.ThreadPoolExecutor(1))
        busy = loop.run_in_executor(None, release.wait, 20)  # the user's own blocking work
        channel = AioPoolChannel(AioEndpoints(pool))
        try:
            got = await asyncio.wait_for(channel.unary_unary(METHOD)(b"", timeout=3), 60)
            return bytes(got), busy.done()
        finally:
            release.set()
            await busy
            await channel.close()

    with _pool(_marks(None), _ok) as (pool, seen):
        got, held = asyncio.run(main(pool))
        assert got == b"ok" and not held  # answered while the user's work still held the executor
        assert [name for name, _ in seen] == ["s0", "s1"]
