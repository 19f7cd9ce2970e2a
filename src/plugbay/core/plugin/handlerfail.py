"""A plugin handler's failures that grpcio answers badly, answered as a Go plugin's would be (gate.py)."""

from __future__ import annotations

import logging

import grpc

from plugbay.core.protocol.handlerstatus import mark_handler_status


def answer_failure(context: grpc.ServicerContext, exc: BaseException) -> None:
    """Answer a handler's failure that grpcio would answer badly, or return (the caller re-raises ``exc``
    for grpcio: an Exception, or the generator's own GeneratorExit). grpcio answers an Exception with
    UNKNOWN "Exception calling application: <repr>" (a failed nested call's status lost in a multi-line
    repr, where grpc-go passes a status error through) and lets any other BaseException (sys.exit(),
    KeyboardInterrupt) end its pool thread with the call never answered: the host waited forever."""
    if isinstance(exc, grpc.RpcError):
        code, details = getattr(exc, "code", None), getattr(exc, "details", None)
        if callable(code) and callable(details):
            status = code()
            if isinstance(status, grpc.StatusCode) and status is not grpc.StatusCode.OK:
                mark_handler_status(context)  # the handler's answer, not this call's timeout or transport
                context.abort(status, str(details() or ""))
        return
    if isinstance(exc, (Exception, GeneratorExit)):
        return
    logging.getLogger("plugbay.server").error("a handler raised %r; its call fails with UNKNOWN", exc,
                                              exc_info=exc)
    context.abort(grpc.StatusCode.UNKNOWN, f"the handler raised {exc!r}")
