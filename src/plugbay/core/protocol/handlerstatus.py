"""The mark of a status a plugin's handler passed through from a call of its own (core/transport/handlerfail.py).

grpc-go passes a handler's status error through, and so does plugbay's plugin: a handler whose nested call
failed DEADLINE_EXCEEDED or UNAVAILABLE answers that code. Read as the host's own call's failure, it misled:
a timeout of this call ("Pass a larger timeout="), a plugin that may have exited (the host waited to see an
exit), a failing endpoint (a network pool's outlier ejection). The plugin marks such an answer with a
trailer; a plugbay host passes it on as the plugin's answer, and a pool counts it as one (the endpoint
answered). A Go plugin sends no mark: its answers read as before.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

HANDLER_STATUS = "plugbay-handler-status"


if TYPE_CHECKING:  # types only: a Protocol class costs every plugin's start its creation
    from typing import Protocol

    class _Context(Protocol):
        def set_trailing_metadata(self, trailing_metadata: Any) -> None: ...


def mark_handler_status(context: _Context) -> None:
    """Mark the call's status as the handler's own (call it just before context.abort), keeping the
    trailers the handler set when grpcio lets them be read."""
    read = getattr(context, "trailing_metadata", None)
    try:
        kept = tuple(read() or ()) if callable(read) else ()
    except Exception:  # an older grpcio: none to keep
        kept = ()
    context.set_trailing_metadata((*((k, v) for k, v in kept if k != HANDLER_STATUS), (HANDLER_STATUS, "1")))


def handler_status(error: BaseException) -> bool:
    """Whether a failed call's ``error`` carries the mark (a grpc.RpcError that is a call, sync or asyncio)."""
    trailers = getattr(error, "trailing_metadata", None)
    try:
        pairs: Any = trailers() if callable(trailers) else None
        if inspect.iscoroutine(pairs):  # an asyncio call's, not an error's: not awaited here
            pairs.close()
            return False
        return any(key == HANDLER_STATUS and value == "1" for key, value in pairs or ())
    except Exception:  # an error that is no call (a typed one of plugbay's own), or a coroutine's method
        return False
