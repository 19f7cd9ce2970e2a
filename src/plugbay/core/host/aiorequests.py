"""A grpc.aio stream's request iterator, watched for the error it raises, so the caller gets that error.

grpc.aio reads a call's request iterator on a task of its own; an error there is logged at debug level
and the call is cancelled locally, so every read of the call raises asyncio.CancelledError: in a task
that nobody cancelled, a TaskGroup or asyncio.run takes that for a cancel, and the caller's own error
is lost. The AsyncClient's calls (plugbay.core.host.aiochannel) raise the iterator's error instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any


class RequestSource:
    """A stream's request iterator, handed to grpc.aio as an async generator that keeps what it raised."""

    def __init__(self, source: Any) -> None:
        self._source: Any = source
        self._error: BaseException | None = None
        self.failed: str | None = None  # what it raised, once that was handed to a read

    def watched(self) -> Watched:
        """What grpc.aio is given to read the requests from."""
        return Watched(self._watch())

    async def _watch(self) -> AsyncIterator[Any]:
        source, self._source = self._source, None  # one use: the generator owns it now
        try:
            if isinstance(source, AsyncIterable):
                async for request in source:
                    yield request
            else:  # iterated on the loop, as grpc.aio iterates a plain iterator
                for request in source:
                    yield request
        except Exception as exc:  # a GeneratorExit or cancel (the call ended first) is not the caller's error
            self._error = exc
            del self  # the error's traceback holds this frame: no cycle back to the error through it
            raise

    def raised(self) -> bool:
        """Whether the iterator raised (take_error() has an error to give)."""
        return self._error is not None or self.failed is not None

    def take_error(self) -> BaseException | None:
        """What the iterator raised, for the first read that fails; later ones get an InvalidStateError
        naming it. Handed over, not kept: raised through the call's frames, it would hold them (and the
        call) in a cycle until a full garbage collection."""
        error, self._error = self._error, None
        if error is not None:
            self.failed = f"{type(error).__name__}: {error}"
            return error
        if self.failed is not None:
            return asyncio.InvalidStateError(f"the call ended when its request iterator raised {self.failed}"
                                             " (an earlier read raised it)")
        return None


class Watched:
    """A request stream already watched: a channel under another one (an AsyncSupervisor's, an
    AsyncRemoteClient's pinned one) passes it on as it is, so the outer call, which the caller reads,
    is the one that raises the iterator's error (each watching it would leave the outer one's copy
    held in a cycle). Holds the generator only, not its RequestSource (see RequestSource._watch)."""

    __slots__ = ("_requests",)

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self._requests = requests

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._requests
