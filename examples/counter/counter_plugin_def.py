"""The counter plugin definition shared by examples/counter/host.py and plugin.py.

Drop-in for go-plugin's examples/bidirectional: plugin name ``counter``, magic
cookie BASIC_PLUGIN=hello, proto package ``proto`` with services ``Counter``
and ``AddHelper``. The host serves its AddHelper through the GRPCBroker for
the length of one Put call and passes the broker id as ``add_server``; the
plugin dials that id to add numbers, a call back into its host.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from pathlib import Path
from typing import Any, Protocol

import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for counterproto

from counterproto import counter_pb2, counter_pb2_grpc  # noqa: E402

from plugbay import GRPCBroker, GRPCPlugin, HandshakeConfig  # noqa: E402

HANDSHAKE = HandshakeConfig(protocol_version=1, magic_cookie_key="BASIC_PLUGIN",
                            magic_cookie_value="hello")
PLUGIN_NAME = "counter"


class AddHelper(Protocol):
    """What the host offers the plugin (go-plugin's shared.AddHelper)."""

    def sum(self, a: int, b: int) -> int: ...


class AsyncAddHelper(Protocol):
    """The same, written for asyncio: served as an asyncio servicer (see _helper_servicer)."""

    async def sum(self, a: int, b: int) -> int: ...


class Counter(Protocol):
    """What a counter implementation offers (go-plugin's shared.Counter)."""

    def get(self, key: str) -> int:
        """The stored value; KeyError when none is stored, ValueError or OSError when it cannot be read."""
        ...

    def put(self, key: str, value: int, helper: AddHelper) -> None: ...


# --- host side --------------------------------------------------------------


class _AddHelperServicer(counter_pb2_grpc.AddHelperServicer):
    def __init__(self, impl: AddHelper) -> None:
        self._impl = impl

    def Sum(self, request: counter_pb2.SumRequest, context: grpc.ServicerContext) -> counter_pb2.SumResponse:
        return counter_pb2.SumResponse(r=self._impl.sum(request.a, request.b))


class _AsyncAddHelperServicer(counter_pb2_grpc.AddHelperServicer):
    def __init__(self, impl: AsyncAddHelper) -> None:
        self._impl = impl

    async def Sum(self, request: counter_pb2.SumRequest, context: Any) -> counter_pb2.SumResponse:
        return counter_pb2.SumResponse(r=await self._impl.sum(request.a, request.b))


def _helper_servicer(helper: AddHelper | AsyncAddHelper) -> counter_pb2_grpc.AddHelperServicer:
    # an `async def sum` is served as an asyncio servicer: plugbay runs it on an event loop (the
    # AsyncClient's own when put() passes its loop to accept_and_serve, else plugbay's)
    if inspect.iscoroutinefunction(helper.sum):
        return _AsyncAddHelperServicer(helper)  # type: ignore[arg-type]
    return _AddHelperServicer(helper)  # type: ignore[arg-type]


class CounterClient:
    """Host side: what dispense("counter") returns."""

    def __init__(self, broker: GRPCBroker, channel: grpc.Channel) -> None:
        self._broker = broker
        self._stub = counter_pb2_grpc.CounterStub(channel)

    def get(self, key: str) -> int:
        return int(self._stub.Get(counter_pb2.GetRequest(key=key)).value)

    def put(self, key: str, value: int, helper: AddHelper | AsyncAddHelper) -> None:
        # serve the helper on a brokered connection for the length of this call
        sid = self._broker.next_id()
        servicer = _helper_servicer(helper)
        self._broker.accept_and_serve(
            sid, lambda server: counter_pb2_grpc.add_AddHelperServicer_to_server(servicer, server))
        try:
            self._stub.Put(counter_pb2.PutRequest(add_server=sid, key=key, value=value))
        finally:
            self._broker.stop_serving(sid)


# --- plugin side ------------------------------------------------------------


class AsyncCounterClient:
    """Host side under AsyncClient: the same calls, awaited. The helper is served as in CounterClient
    (a brokered gRPC server on its own threads); an ``async def sum`` runs on the event loop that
    awaits put(). The broker's blocking steps run off the event loop."""

    def __init__(self, broker: GRPCBroker, channel: grpc.aio.Channel) -> None:
        self._broker = broker
        self._stub = counter_pb2_grpc.CounterStub(channel)

    async def get(self, key: str) -> int:
        return int((await self._stub.Get(counter_pb2.GetRequest(key=key))).value)

    async def put(self, key: str, value: int, helper: AddHelper | AsyncAddHelper) -> None:
        sid = self._broker.next_id()
        servicer = _helper_servicer(helper)
        loop = asyncio.get_running_loop()
        # A task of its own, awaited through a shield: a put cancelled while the helper's server
        # starts (its thread goes on) still stops that server once it listens.
        serving = loop.create_task(asyncio.to_thread(
            self._broker.accept_and_serve, sid,
            lambda server: counter_pb2_grpc.add_AddHelperServicer_to_server(servicer, server), loop=loop))
        try:
            await asyncio.shield(serving)
            await self._stub.Put(counter_pb2.PutRequest(add_server=sid, key=key, value=value))
        finally:
            if serving.done():
                await asyncio.to_thread(self._broker.stop_serving, sid)
            else:
                serving.add_done_callback(lambda _: loop.run_in_executor(None, self._broker.stop_serving, sid))


class _AddHelperClient:
    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = counter_pb2_grpc.AddHelperStub(channel)

    def sum(self, a: int, b: int) -> int:
        return int(self._stub.Sum(counter_pb2.SumRequest(a=a, b=b), timeout=30).r)


class _CounterServicer(counter_pb2_grpc.CounterServicer):
    def __init__(self, impl: Counter, broker: GRPCBroker) -> None:
        self._impl = impl
        self._broker = broker

    def Get(self, request: counter_pb2.GetRequest, context: grpc.ServicerContext) -> counter_pb2.GetResponse:
        try:
            return counter_pb2.GetResponse(value=self._impl.get(request.key))
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no value stored for key {request.key!r}; put one first")
            raise  # unreachable: abort raises
        except (ValueError, OSError) as exc:
            # UNKNOWN is what a host sees from the Go plugin's returned error; aborting keeps an
            # unreadable store from being logged as a crash with a traceback
            context.abort(grpc.StatusCode.UNKNOWN, str(exc))
            raise  # unreachable: abort raises

    def Put(self, request: counter_pb2.PutRequest, context: grpc.ServicerContext) -> counter_pb2.Empty:
        channel = self._broker.dial(request.add_server)
        try:
            self._impl.put(request.key, request.value, _AddHelperClient(channel))
        finally:
            channel.close()
        return counter_pb2.Empty()


class CounterPlugin(GRPCPlugin):
    """The one object both sides use: the plugin passes its implementation, the host none."""

    def __init__(self, impl: Counter | None = None) -> None:
        self.impl = impl

    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        if self.impl is None:
            raise ValueError("CounterPlugin(impl) needs an implementation on the plugin side")
        counter_pb2_grpc.add_CounterServicer_to_server(_CounterServicer(self.impl, broker), server)

    def grpc_client(self, broker: GRPCBroker, channel: grpc.Channel) -> CounterClient:
        return CounterClient(broker, channel)

    def grpc_client_async(self, broker: GRPCBroker, channel: grpc.aio.Channel) -> AsyncCounterClient:
        return AsyncCounterClient(broker, channel)
