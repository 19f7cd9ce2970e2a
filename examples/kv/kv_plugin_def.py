"""The KV plugin definition shared by examples/kv/host.py and examples/kv/plugin.py.

Drop-in for go-plugin's examples/grpc: plugin name ``kv_grpc``, magic cookie
BASIC_PLUGIN=hello, proto package ``proto`` with service ``KV``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for kvproto

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402

from plugbay import GRPCBroker, GRPCPlugin, HandshakeConfig  # noqa: E402

HANDSHAKE = HandshakeConfig(protocol_version=1, magic_cookie_key="BASIC_PLUGIN",
                            magic_cookie_value="hello")
PLUGIN_NAME = "kv_grpc"


class KV(Protocol):
    """What a KV implementation offers (go-plugin's shared.KV interface)."""

    def get(self, key: str) -> bytes: ...

    def put(self, key: str, value: bytes) -> None: ...


class KVClient:
    """Host side: the typed stub dispense("kv_grpc") returns."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = kv_pb2_grpc.KVStub(channel)

    def get(self, key: str) -> bytes:
        return bytes(self._stub.Get(kv_pb2.GetRequest(key=key)).value)

    def put(self, key: str, value: bytes) -> None:
        self._stub.Put(kv_pb2.PutRequest(key=key, value=value))


class AsyncKVClient:
    """Host side under AsyncClient: the same calls, awaited."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = kv_pb2_grpc.KVStub(channel)

    async def get(self, key: str) -> bytes:
        return bytes((await self._stub.Get(kv_pb2.GetRequest(key=key))).value)

    async def put(self, key: str, value: bytes) -> None:
        await self._stub.Put(kv_pb2.PutRequest(key=key, value=value))


class _KVServicer(kv_pb2_grpc.KVServicer):
    def __init__(self, impl: KV) -> None:
        self._impl = impl

    def Get(self, request: kv_pb2.GetRequest, context: grpc.ServicerContext) -> kv_pb2.GetResponse:
        try:
            return kv_pb2.GetResponse(value=self._impl.get(request.key))
        except (KeyError, FileNotFoundError) as exc:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no value stored for key {request.key!r} ({exc}); put one first")
            raise  # unreachable: abort raises

    def Put(self, request: kv_pb2.PutRequest, context: grpc.ServicerContext) -> kv_pb2.Empty:
        self._impl.put(request.key, request.value)
        return kv_pb2.Empty()


class KVPlugin(GRPCPlugin):
    """The one object both sides use: the plugin passes its implementation, the host none."""

    def __init__(self, impl: KV | None = None) -> None:
        self.impl = impl

    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        if self.impl is None:
            raise ValueError("KVPlugin(impl) needs an implementation on the plugin side")
        kv_pb2_grpc.add_KVServicer_to_server(_KVServicer(self.impl), server)

    def grpc_client(self, broker: GRPCBroker, channel: grpc.Channel) -> KVClient:
        return KVClient(channel)

    def grpc_client_async(self, broker: GRPCBroker, channel: grpc.aio.Channel) -> AsyncKVClient:
        return AsyncKVClient(channel)
