"""Whether a gRPC method handler is written for asyncio: a check cheap enough for every server.

The servers that take handlers (the plugin's gate, a brokered server's registrar) ask it
before they load plugbay.core.transport.aiohandlers, which only an asyncio servicer needs.
"""

from __future__ import annotations

import inspect  # loaded by grpcio already
from typing import Any

KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def behavior_of(handler: Any) -> tuple[str, Any]:
    """(kind, behavior) of a grpc.RpcMethodHandler; ("", None) when it has none."""
    for kind in KINDS:
        behavior = getattr(handler, kind, None)
        if behavior is not None:
            return kind, behavior
    return "", None


def is_async(handler: Any) -> bool:
    """An ``async def`` behavior: a coroutine function or an async generator function."""
    behavior = behavior_of(handler)[1]
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)
