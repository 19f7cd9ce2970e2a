"""Long-lived brokered gRPC servers for multiplexed broker ids: one for the process's plaintext ones.

A multiplexed broker used to start a grpcio server for every id and stop it
after the call; building and stopping one costs more CPU than the callback.
Here every such id is served by one grpcio server (one for all plaintext
brokers, one per AutoMTLS certificate pair as its TLS port is bound to it; on a socket in a folder
only this process can enter): each yamux stream routed to an id is connected
to it from a socket bound to a fresh abstract-namespace name, which grpcio
reports as the call's peer, so each call goes to the services of the id whose
stream it came on, and nothing else (no byte takes an extra hop: the stream's
bridge is the same as before):

* a call whose peer names no live id (its id was stopped) is refused with
  UNAVAILABLE and never reaches another id's services;
* ``stop()`` of an id stops routing streams to it, forgets its names and
  shuts its connections (their calls are cancelled).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import grpc

from plugbay.core.broker.lanes import new_pool
from plugbay.core.transport.secure import (
    CHANNEL_OPTIONS,
    MutualTLS,
    bind_unix,
    private_socket,
)

log = logging.getLogger("plugbay.broker")

_JOIN = 10.0
_PEER = "unix-abstract:"
_CONNECT_TIMEOUT = 2.0


class Tenant:
    """One broker id's share of the server: its services and the connections made for it."""

    def __init__(self, owner: SharedServer, handlers: list[Any]) -> None:
        self.owner = owner
        self.handlers = handlers
        self.conns: dict[socket.socket, str] = {}  # connection -> its peer name
        self.cleanup: list[Callable[[], None]] = []  # run by stop() first (the mux forgets the id)
        self.live = True

    def handler(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        for generic in self.handlers:
            found = generic.service(details)
            if found is not None:
                return found
        return None

    def connect(self) -> socket.socket:
        """A connection to the server whose calls reach this id's services only (OSError once stopped)."""
        return self.owner.connect(self)

    def stop(self) -> None:
        """No call reaches this id's services from now on; its connections are shut."""
        for func in self.cleanup:
            func()
        self.owner.stop_tenant(self)


class _Collect:
    """What a Registrar wraps for a shared-server id (duck-typed grpc.Server): it records the generic handlers."""

    def __init__(self) -> None:
        self.handlers: list[Any] = []

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[Any]) -> None:
        self.handlers.extend(generic_rpc_handlers)


class _Dispatch(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The shared server's one handler: a call goes to the services of the id whose front it came in on."""

    def __init__(self, owner: SharedServer) -> None:
        self._owner = owner

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        shape = self._owner.shape(details)
        if shape is None:
            return None
        return _wrap(self._owner, details, shape.request_streaming, shape.response_streaming)


def _wrap(owner: SharedServer, details: grpc.HandlerCallDetails, req_stream: bool,
          resp_stream: bool) -> grpc.RpcMethodHandler:
    method = details.method

    def find(context: grpc.ServicerContext) -> grpc.RpcMethodHandler:
        tenant = owner.tenant_of(context.peer())
        if tenant is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{method}: the broker id this connection was made for"
                          " is no longer served (stop_serving or close); dial the new id")
            raise AssertionError("unreachable: abort raises")
        handler = tenant.handler(details)
        if handler is None or (handler.request_streaming, handler.response_streaming) != (req_stream, resp_stream):
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served on this broker id")
        return handler

    def decode(handler: grpc.RpcMethodHandler, raw: Any) -> Any:
        return handler.request_deserializer(raw) if handler.request_deserializer else raw

    def encode(handler: grpc.RpcMethodHandler, reply: Any) -> Any:
        return handler.response_serializer(reply) if handler.response_serializer else reply

    if not req_stream and not resp_stream:
        def uu(raw: bytes, context: grpc.ServicerContext) -> Any:
            h = find(context)
            return encode(h, h.unary_unary(decode(h, raw), context))
        return grpc.unary_unary_rpc_method_handler(uu)
    if not req_stream:
        def us(raw: bytes, context: grpc.ServicerContext) -> Iterator[Any]:
            h = find(context)
            for reply in h.unary_stream(decode(h, raw), context):
                yield encode(h, reply)
        return grpc.unary_stream_rpc_method_handler(us)
    if not resp_stream:
        def su(raws: Iterator[bytes], context: grpc.ServicerContext) -> Any:
            h = find(context)
            return encode(h, h.stream_unary((decode(h, r) for r in raws), context))
        return grpc.stream_unary_rpc_method_handler(su)

    def ss(raws: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
        h = find(context)
        for reply in h.stream_stream((decode(h, r) for r in raws), context):
            yield encode(h, reply)
    return grpc.stream_stream_rpc_method_handler(ss)


class SharedServer:
    """A multiplexed brokered server shared by ids; brokers hold it between :func:`join_shared` and ``leave()``."""

    def __init__(self, tls: MutualTLS | None = None, key: _Key = None) -> None:
        self._key = key
        self._lock = threading.Lock()
        self._tenants: set[Tenant] = set()
        self._peers: dict[str, Tenant] = {}
        self._users = 0
        self._dir = tempfile.mkdtemp(prefix="plugbay-shared-")
        self._path = private_socket(self._dir, "grpc")
        self._pool = _take_pool()
        try:
            self._server = grpc.server(self._pool, handlers=(_Dispatch(self),), options=CHANNEL_OPTIONS)
        except BaseException:
            _give_pool()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        try:
            bind_unix(self._server, self._path, tls.server_credentials() if tls is not None else None)
            self._server.start()
        except BaseException:
            self._finish()
            raise

    # -- routing (grpcio's threads)

    def shape(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        with self._lock:
            tenants = list(self._tenants)
        for tenant in tenants:
            found = tenant.handler(details)
            if found is not None:
                return found
        return None

    def tenant_of(self, peer: str) -> Tenant | None:
        with self._lock:
            return self._peers.get(peer)

    # -- ids

    def open(self, register: Callable[[grpc.Server], None]) -> Tenant:
        """A tenant serving what ``register`` adds (through a Registrar: services only)."""
        from plugbay.core.broker.registrar import Registrar

        collect = _Collect()
        register(Registrar(cast(grpc.Server, collect)))
        tenant = Tenant(self, collect.handlers)
        with self._lock:
            self._tenants.add(tenant)
        return tenant

    def connect(self, tenant: Tenant) -> socket.socket:
        name = f"plugbay-brk-{os.getpid()}-{os.urandom(8).hex()}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + name)
            sock.settimeout(_CONNECT_TIMEOUT)
            sock.connect(self._path)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        with self._lock:
            live = tenant.live
            if live:
                for old in [c for c in tenant.conns if c.fileno() == -1]:  # closed by their bridges
                    self._peers.pop(_PEER + tenant.conns.pop(old), None)
                self._peers[_PEER + name] = tenant
                tenant.conns[sock] = name
        if not live:
            sock.close()
            raise OSError("this broker id is no longer served")
        return sock

    def stop_tenant(self, tenant: Tenant) -> None:
        with self._lock:
            if not tenant.live:
                return
            tenant.live = False
            self._tenants.discard(tenant)
            conns, tenant.conns = tenant.conns, {}
            for name in conns.values():
                self._peers.pop(_PEER + name, None)
        _shut_all(conns)  # after the names are gone: a call still on its way is refused, not misrouted

    # -- users

    def leave(self) -> None:
        """One broker less; the last stops the server and removes its socket folder."""
        with _SHARED_LOCK:
            self._users -= 1
            if self._users > 0:
                return
            if _SHARED.get(self._key) is self:
                del _SHARED[self._key]
        with self._lock:
            tenants = list(self._tenants)
        for tenant in tenants:
            tenant.stop()
        self._finish()

    def _finish(self) -> None:
        self._server.stop(None).wait(_JOIN)
        _give_pool()
        shutil.rmtree(self._dir, ignore_errors=True)


def _shut_all(conns: Iterable[socket.socket]) -> None:
    """Shut stopped connections: their bridges see both ends close, grpcio cancels their calls."""
    for conn in conns:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:  # closed already
            pass


# One worker pool for every shared server: a server per AutoMTLS certificate pair adds its grpcio
# thread only. Its threads start as concurrent calls need them; the cap is far above what the
# per-id servers' 16 each gave a few live ids, as all ids of all brokers share it.
_SHARED_WORKERS = 256
_POOL: ThreadPoolExecutor | None = None
_POOL_USERS = 0
_POOL_LOCK = threading.Lock()


def _take_pool() -> ThreadPoolExecutor:
    global _POOL, _POOL_USERS
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = new_pool(_SHARED_WORKERS)
        _POOL_USERS += 1
        return _POOL


def _give_pool() -> None:
    """A stopped server gives the pool back; the last joins its workers."""
    global _POOL, _POOL_USERS
    with _POOL_LOCK:
        _POOL_USERS -= 1
        pool = _POOL if _POOL_USERS <= 0 else None
        if pool is not None:
            _POOL = None
    if pool is not None:
        pool.shutdown(wait=True)


_Key = tuple[bytes, bytes] | None  # (own certificate, peer certificate); None: plaintext
_SHARED: dict[_Key, SharedServer] = {}
_SHARED_LOCK = threading.Lock()


def join_shared(tls: MutualTLS | None = None) -> SharedServer:
    """The shared brokered server for ``tls`` (one for all plaintext brokers; one per AutoMTLS
    certificate pair, which its TLS port is bound to), for one more broker (which calls ``leave()``)."""
    key = None if tls is None else (tls.own.cert_pem, tls.peer_pem)
    with _SHARED_LOCK:
        server = _SHARED.get(key)
        if server is None:
            server = _SHARED[key] = SharedServer(tls, key)
        server._users += 1
        return server


def _forget_in_child() -> None:
    global _SHARED, _SHARED_LOCK, _POOL, _POOL_USERS, _POOL_LOCK
    _SHARED, _SHARED_LOCK = {}, threading.Lock()
    _POOL, _POOL_USERS, _POOL_LOCK = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
