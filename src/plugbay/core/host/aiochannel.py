"""The asyncio twin of ManagedChannel: grpc.aio calls with the same deadlines and typed failures.

Only the I/O is here. What a failure means (the plugin died, the Client was
killed, a deadline passed) and the state it is judged by stay in the sync
:class:`~plugbay.core.host.channel.ManagedChannel` the Client owns, so a
call fails the same way on either side. The grpc.aio channel is a second
connection to the plugin, dialed like the first (``Redial``), bound to the
event loop that made it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from typing import Any

import grpc
import grpc.aio

from plugbay.core.host.channel import ManagedChannel

# Failures whose meaning may need the plugin's exit status, which can take the exit probe a
# moment to see (a socket closes a few milliseconds before the exit is visible): judged on a
# worker thread, never on the caller's event loop.
_MAY_MEAN_EXIT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


class AioManagedChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A grpc.aio.Channel proxy: the Client's default deadline and typed failures on every call."""

    def __init__(self, inner: grpc.aio.Channel, managed: ManagedChannel,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._inner = inner
        self._managed = managed
        self._loop = loop
        self._closing: asyncio.Task[None] | None = None
        managed.on_close_current.append(self._close_soon)

    # --- owner's controls ---------------------------------------------------------

    def _close_soon(self) -> None:
        """The plugin died (any thread): fail calls in flight now, as the sync channel does."""
        try:
            self._loop.call_soon_threadsafe(self._start_close)
        except RuntimeError:  # the loop is closed: its channel went with it
            pass

    def _start_close(self) -> asyncio.Task[None]:
        if self._closing is None:
            self._closing = self._loop.create_task(self._inner.close())
        return self._closing

    async def aclose(self) -> None:
        """Close the connection (AsyncClient.kill/close); later calls fail typed."""
        if self._close_soon in self._managed.on_close_current:
            self._managed.on_close_current.remove(self._close_soon)
        await self._start_close()

    async def translate(self, exc: grpc.RpcError, past_deadline: bool) -> BaseException:
        code = exc.code() if hasattr(exc, "code") else None
        if code in _MAY_MEAN_EXIT:
            return await asyncio.get_running_loop().run_in_executor(
                None, self._managed.translate, exc, past_deadline)
        return self._managed.translate(exc, past_deadline)

    def refused(self) -> BaseException | None:
        """The typed error for a call on a closed connection, or None while it is open."""
        try:
            self._managed.check_open()
        except BaseException as exc:  # the typed error to raise
            return exc
        if self._closing is not None:
            return self._managed.translate_closed()
        return None

    # --- grpc.aio.Channel ------------------------------------------------------------

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> Any:
        return _AioCallable(self, self._inner.unary_unary, method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _AioCallable(self, self._inner.unary_stream, method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _AioCallable(self, self._inner.stream_unary, method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return _AioCallable(self, self._inner.stream_stream, method, request_serializer, response_deserializer)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._inner.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._inner.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._inner.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        """User stubs do not own the connection; the AsyncClient closes it in kill()."""

    async def __aenter__(self) -> AioManagedChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _AioCallable:
    """One method: each call gets the default deadline, and its failures are translated."""

    def __init__(self, owner: AioManagedChannel, factory: Any, method: str, ser: Any, de: Any) -> None:
        self._owner = owner
        self._target = factory(method, request_serializer=ser, response_deserializer=de,
                               _registered_method=True)

    def __call__(self, request: Any = None, *, timeout: float | None = None, **kwargs: Any) -> _AioCall:
        owner = self._owner
        refused = owner.refused()
        if refused is not None:
            raise refused
        if timeout is None:
            timeout = owner._managed.call_timeout
        try:
            call = self._target(request, timeout=timeout, **kwargs)
        except grpc.aio.UsageError as exc:  # closed under us between the check and the call
            raise owner._managed.translate_closed() from exc
        return _AioCall(call, owner, timeout)


class _AioCall:
    """A grpc.aio call whose results raise translated errors; the rest (metadata, cancel) delegates."""

    def __init__(self, call: Any, owner: AioManagedChannel, timeout: float | None) -> None:
        self._call = call
        self._owner = owner
        self._timeout = timeout
        self._started = owner._loop.time()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._result().__await__()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _result(self) -> Any:
        try:
            return await self._call
        except grpc.RpcError as exc:
            raise await self._translated(exc) from exc
        except asyncio.CancelledError:
            raise await self._cancelled() from None
        finally:
            managed = self._owner._managed
            if managed.after_call is not None:
                managed.run_after_call()  # the held streams begin, as after the sync side's first call

    async def _iterate(self) -> AsyncIterator[Any]:
        try:
            async for item in self._call:
                yield item
        except grpc.RpcError as exc:
            raise await self._translated(exc) from exc
        except asyncio.CancelledError:
            raise await self._cancelled() from None

    async def read(self) -> Any:
        try:
            return await self._call.read()
        except grpc.RpcError as exc:
            raise await self._translated(exc) from exc
        except asyncio.CancelledError:
            raise await self._cancelled() from None

    async def write(self, request: Any) -> None:
        try:
            await self._call.write(request)
        except grpc.RpcError as exc:
            raise await self._translated(exc) from exc
        except asyncio.CancelledError:
            raise await self._cancelled() from None

    async def done_writing(self) -> None:
        try:
            await self._call.done_writing()
        except grpc.RpcError as exc:
            raise await self._translated(exc) from exc
        except asyncio.CancelledError:
            raise await self._cancelled() from None

    async def _cancelled(self) -> BaseException:
        """grpc.aio cancels the calls of a channel closed under them: that is the plugin's exit or
        the Client's end, typed as on the sync side; a cancel of the caller's own task stays one."""
        task = asyncio.current_task()
        if self._owner._closing is None or (task is not None and task.cancelling()):
            return asyncio.CancelledError()
        closed = grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                      details="the connection was closed under the call")
        return await self._owner.translate(closed, False)

    async def _translated(self, exc: grpc.RpcError) -> BaseException:
        past = self._timeout is not None and self._owner._loop.time() - self._started >= self._timeout * 0.98
        return await self._owner.translate(exc, past)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)
