"""An asyncio call refused before anything was sent (a closed AsyncClient, a timeout= that left no time,
a Supervisor restarting the plugin), standing where a grpc.aio call would.

Code written for grpc.aio may ask any call its status (code(), details(), its metadata, done()) or hang a
callback on it; a refused call answers all of it as a grpc.aio call that ended with its error does (checked
against a real timed-out one, tests/test_call_timeout_zero.py): done, not cancelled, empty metadata, its
status from the error, a done-callback run at once. Its error is made when first asked for (a closed
Client's is judged off the loop) and is the same object after.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import grpc
import grpc.aio

from plugbay.core.host.aiocall import DoneCallback


class RefusedCall:
    """A call refused before anything was sent: awaiting, iterating, reading or writing it raises
    ``error``'s result; ``time_left`` is what time_remaining() answers (0.0: no time was left)."""

    def __init__(self, error: Callable[[], Awaitable[BaseException]], time_left: float | None = None) -> None:
        self._error = error
        self._made: BaseException | None = None
        self._time_left = time_left

    async def _the_error(self) -> BaseException:
        if self._made is None:
            self._made = await self._error()
        return self._made

    def __await__(self) -> Generator[Any, None, Any]:
        return self._raise().__await__()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _raise(self) -> Any:
        raise await self._the_error()

    async def _iterate(self) -> AsyncIterator[Any]:
        raise await self._the_error()
        yield  # an async generator

    async def __aenter__(self) -> RefusedCall:
        return self  # its first read raises the error, as the first step of an `async for` over it does

    async def __aexit__(self, *exc_info: object) -> None:
        return None  # nothing was sent: nothing to cancel

    async def read(self) -> Any:
        return await self._raise()

    async def write(self, request: Any) -> None:
        await self._raise()

    async def done_writing(self) -> None:
        await self._raise()

    async def wait_for_connection(self) -> None:
        await self._raise()  # as grpc.aio's, for a call that ended failed

    # --- grpc.aio.Call: the answers of a call that ended with the error --------------------------

    async def code(self) -> grpc.StatusCode:
        error = await self._the_error()
        code = error.code() if isinstance(error, grpc.RpcError) and hasattr(error, "code") else None
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN

    async def details(self) -> str:
        error = await self._the_error()
        if isinstance(error, grpc.RpcError) and hasattr(error, "details"):
            return str(error.details())
        return str(error)

    async def debug_error_string(self) -> str:
        return f"{(await self.code()).name}:{await self.details()}"  # grpc.aio's form: "CODE:details"

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    def time_remaining(self) -> float | None:
        return self._time_left

    def add_done_callback(self, callback: DoneCallback) -> None:
        callback(self)  # already done

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True


def refused_now(error: BaseException) -> RefusedCall:
    """A call refused, unsent, with ``error`` (a timeout= that left no time)."""
    async def made() -> BaseException:
        return error
    return RefusedCall(made, time_left=0.0)
