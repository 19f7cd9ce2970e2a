"""The context an ``async def`` handler gets: grpcio's sync one, with grpc.aio's awaitable methods.

plugbay runs asyncio servicers on its sync gRPC servers (plugbay.core.transport.aiohandlers), so the
context is grpcio's ``ServicerContext``. Code written for grpc.aio awaits the methods that are
coroutines there; ``abort()`` raises at once, so awaiting it works as is, but ``send_initial_metadata()``
returns None on the sync context, and ``await``-ing that failed the call with UNKNOWN ("object NoneType
can't be used in 'await' expression"). Here it sends at once and returns something that may be
awaited or not, as grpc.aio code and sync code each call it. grpc.aio's ``add_done_callback(cb)``,
``done()`` and ``cancelled()`` are the sync context's ``add_callback`` (``cb`` gets this context, as
grpc.aio's gets its own) and ``not is_active()`` (inside its handler a call is done only once it was
cancelled or its deadline passed). grpc.aio's read() and write() have no sync counterpart: they fail
the call saying what to write instead (the sync context said only that it has no such attribute).
It is a ``grpc.ServicerContext`` (registered), as the context it wraps was.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import grpc

from plugbay.errors import ConfigError


class _Sent:
    """What a method that already did its work returns: awaiting it gives None at once."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator: `await` takes it as an awaitable that finishes at once


_SENT = _Sent()


class AioContext:
    """grpcio's ``ServicerContext`` for a coroutine handler, with grpc.aio's methods: send_initial_metadata
    (awaitable), add_done_callback, done and cancelled are its own; read and write raise ConfigError (the
    sync context has no stream to read or write); the rest is the sync context's (abort raises at once,
    awaited or not). Unlike grpc.aio's, cancelled() is True once the call is over however it ended (a
    cancel, the deadline, or done well): is_active(), all the sync context tells, does not tell them apart."""

    __slots__ = ("_context",)

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context

    def send_initial_metadata(self, initial_metadata: Any) -> _Sent:
        self._context.send_initial_metadata(initial_metadata)
        return _SENT

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if not self._context.add_callback(lambda: callback(self)):  # the call had ended: now, as grpc.aio does
            callback(self)

    def done(self) -> bool:
        return not self._context.is_active()

    def cancelled(self) -> bool:
        return not self._context.is_active()

    def read(self) -> Any:
        raise ConfigError("context.read() is grpc.aio's own server's; plugbay runs this handler on a grpcio server,"
                          " whose request stream is the handler's first argument: read it with `async for`")

    def write(self, message: Any) -> Any:
        raise ConfigError("context.write() is grpc.aio's own server's; plugbay runs this handler on a grpcio"
                          " server: write a server stream as an async generator, yielding each response")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


grpc.ServicerContext.register(AioContext)  # isinstance() as for the context it wraps: handlers check it
