"""A handler's failures that grpcio answers badly, answered as a Go plugin's would be: the plugin's own
(core/plugin/gate.py) and a brokered server's, on either side (core/broker/registrar.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from plugbay.core.protocol.handlerstatus import mark_handler_status


SERVER_LOG = logging.getLogger("plugbay.server")  # the plugin's own handlers' (core/plugin/gate.py)


def answer_failure(context: grpc.ServicerContext, exc: BaseException, closed: bool = False,
                   log: logging.Logger = SERVER_LOG) -> None:
    """Answer a handler's failure that grpcio would answer badly, or return (the caller re-raises ``exc``
    for grpcio: an Exception, or with ``closed`` the GeneratorExit of the caller's own generator's close,
    which is no failure: a handler's own GeneratorExit is a BaseException like the others). grpcio
    answers an Exception with UNKNOWN "Exception calling application: <repr>" (a failed nested call's
    status lost in a multi-line repr, where grpc-go passes a status error through) and lets any other
    BaseException (sys.exit(), KeyboardInterrupt, GeneratorExit) end its pool thread with the call never
    answered: the host waited forever. ``log`` gets the record of a failure answered here."""
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
    log.error("a handler raised %r; its call fails with UNKNOWN", exc, exc_info=exc)
    context.abort(grpc.StatusCode.UNKNOWN, f"the handler raised {exc!r}")


def called(behavior: Any, request: Any, context: grpc.ServicerContext, log: logging.Logger = SERVER_LOG) -> Any:
    """``behavior(request, context)`` for a streaming handler's wrapper generator: a GeneratorExit it raises
    (a plain function's, not a generator's) is its own, answered (UNKNOWN) as any BaseException: no close()
    of the wrapper can be under way while the wrapper runs it, and the wrapper's handler would let it pass."""
    try:
        return behavior(request, context)
    except GeneratorExit as exc:
        answer_failure(context, exc, log=log)
        raise


def responses(handler_responses: Iterable[Any], context: grpc.ServicerContext,
              log: logging.Logger = SERVER_LOG) -> Iterator[Any]:
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
            answer_failure(context, exc, log=log)
            raise
        try:
            yield answer
        except GeneratorExit:
            close = getattr(answers, "close", None)
            if close is not None:
                close()
            raise


def answered(handler: Any, log: logging.Logger) -> Any:
    """``handler`` (a grpc.RpcMethodHandler) with its failures answered as a plugin's gated handlers'
    are: for a brokered server's, which no gate wraps (a callback raising SystemExit left the other
    side's nested call waiting for its deadline, or for ever). ``log``: the caller's (a brokered server
    runs on either side)."""
    def unary(behavior: Any) -> Any:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behavior(request, context)
            except BaseException as exc:
                answer_failure(context, exc, log=log)
                raise
        return run

    def streaming(behavior: Any) -> Any:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from responses(called(behavior, request, context, log), context, log)
            except BaseException as exc:
                answer_failure(context, exc, closed=True, log=log)
                raise
        return run

    wire = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), *wire)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), *wire)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), *wire)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), *wire)
    return handler
