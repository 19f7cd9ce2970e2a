"""A plugin handler's failures that grpcio answers badly, answered as a Go plugin's would be (gate.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from plugbay.core.protocol.handlerstatus import mark_handler_status


def answer_failure(context: grpc.ServicerContext, exc: BaseException, closed: bool = False) -> None:
    """Answer a handler's failure that grpcio would answer badly, or return (the caller re-raises ``exc``
    for grpcio: an Exception, or with ``closed`` the GeneratorExit of the caller's own generator's close,
    which is no failure: a handler's own GeneratorExit is a BaseException like the others). grpcio
    answers an Exception with UNKNOWN "Exception calling application: <repr>" (a failed nested call's
    status lost in a multi-line repr, where grpc-go passes a status error through) and lets any other
    BaseException (sys.exit(), KeyboardInterrupt, GeneratorExit) end its pool thread with the call never
    answered: the host waited forever."""
    if isinstance(exc, grpc.RpcError):
        code, details = getattr(exc, "code", None), getattr(exc, "details", None)
        if callable(code) and callable(details):
            status = code()
            if isinstance(status, grpc.StatusCode) and status is not grpc.StatusCode.OK:
                mark_handler_status(context)  # the handler's answer, not this call's timeout or transport
                context.abort(status, str(details() or ""))
        return
    if isinstance(exc, Exception) or (closed and isinstance(exc, GeneratorExit)):
        return
    logging.getLogger("plugbay.server").error("a handler raised %r; its call fails with UNKNOWN", exc,
                                              exc_info=exc)
    context.abort(grpc.StatusCode.UNKNOWN, f"the handler raised {exc!r}")


def responses(handler_responses: Iterable[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    """``yield from`` a streaming handler's responses, but a GeneratorExit its code raises while asked for
    the next one fails the call (UNKNOWN) as any BaseException does: grpcio would leave it unanswered, and
    ``yield from`` cannot tell it from a close() of the generator (its collection: grpcio never closes one),
    which closes the handler's generator as ``yield from`` does."""
    answers = iter(handler_responses)
    while True:
        try:
            answer = next(answers)
        except StopIteration:
            return
        except GeneratorExit as exc:  # the handler's own: no close() of this generator is under way
            answer_failure(context, exc)
            raise
        try:
            yield answer
        except GeneratorExit:
            close = getattr(answers, "close", None)
            if close is not None:
                close()
            raise
