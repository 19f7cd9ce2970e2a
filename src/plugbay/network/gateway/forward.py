"""Forwarding every gRPC call of the plugin's own services to the child, as raw bytes.

A proxy that has no descriptors for the plugin's services cannot know which
methods are unary and which stream, so every forwarded method is served as
stream-stream: on the wire a unary call is a stream with one request and one
response, so the child (which does know) answers it correctly. Requests and
responses are never decoded (identity (de)serializers). Forwarded: the
caller's metadata (without transport headers), the deadline (what is left of
it), cancellation (either way), the child's initial and trailing metadata
(with its rich error details, grpc-status-details-bin), its status code and
details. Forwarded calls pass a HandlerGate, so they can never take the
threads the gateway's own services (health, Discovery) answer on.

While the child does not answer its health checks (plugbay.network.gateway.probe) a new call is
refused at once, UNAVAILABLE with the NOT_SENT trailer (core/protocol/notsent.py), so that a pool
sends it to another endpoint: sent to a wedged child it would only wait out its deadline. Calls
already forwarded keep going (a child that is only slow answers them). A call that finds no child
(it is being restarted) is refused with the same trailer, and so is one the gateway's gate refuses
(--max-calls, --max-peer-calls: RESOURCE_EXHAUSTED, which a pool tries on its other endpoints
without waiting). Its value echoes the call's own NOT_SENT metadata (the token of the pool that
sent it, which believes no other value; no trailer when the call carried none), and that key is
dropped both ways between the caller and the child: the child never sees the token, and no mark it
sends (its own, or one relayed from an upstream gateway) reaches the caller.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

import grpc

from plugbay.core.plugin.gate import HandlerGate, refuse_unsent
from plugbay.core.protocol.handlerstatus import handler_status
from plugbay.core.protocol.notsent import NOT_SENT

log = logging.getLogger("plugbay.gateway")

# Services the gateway answers itself; everything else goes to the child.
OWN_SERVICES = frozenset((
    "grpc.health.v1.Health",
    "plugin.GRPCController",
    "plugin.GRPCBroker",
    "plugin.GRPCStdio",
    "plugbay.network.v1.Discovery",
))
_NO_DEADLINE = 10 * 365 * 24 * 3600.0  # grpcio reports "no deadline" as a far-future one

# (channel to the child, or None and why not)
ChannelSource = Callable[[], "tuple[grpc.Channel | None, str]"]
# how the child behind a channel ended ("exited with code 2"), waiting up to the seconds given; None: it runs
ExitSource = Callable[[grpc.Channel, float], "str | None"]
# the most a failed call waits for its child's exit to show: a local process's is known at once, though a
# loaded machine may take a moment to reap it (the runner's exit_notice_time bounds the wait further)
_EXIT_WAIT = 1.0
# grpcio's words for a hop to the child that broke under the call (its connection, not the child's answer): only
# then is the child's exit waited for; a status the child sent itself goes back at once, whatever it says
_BROKEN_HOP = ("Socket closed", "Stream removed", "Connection reset", "Broken pipe", "GOAWAY", "Connection closed",
               "End of TCP stream", "Transport closed")

WEDGED_REFUSAL = (
    "the plugin behind the gateway has missed its health checks (it runs but does not answer: stopped or"
    " wedged?), so the gateway did not send it this call; the gateway's health is NOT_SERVING until it"
    " answers again. Retry on another endpoint or later; if it stays so, look at the plugin's process"
    " and restart the gateway")


# The one grpc- trailer that is the application's: rich error details (a google.rpc.Status, as Go's
# status.WithDetails sends them), which grpcio passes on when a servicer sets it as trailing metadata.
STATUS_DETAILS = "grpc-status-details-bin"


def split_method(path: str) -> tuple[str, str] | None:
    """(service, method) of a well-formed method path, "/service/method"; None for any other.

    The child must never see a path the gateway did not check as it will be read: grpc-go drops one
    leading '/' if there is one and splits the rest at its last '/', so "plugin.GRPCController/Shutdown"
    (no leading '/') or "plugin.GRPCBroker/StartStream" would reach the child's own services. Only the
    one form every client sends is forwarded; its service is compared exactly, as grpc-go does.
    """
    if not path.startswith("/"):
        return None
    service, _, method = path[1:].partition("/")
    if not service or not method or "/" in method:
        return None
    return service, method


def _forwardable(key: str) -> bool:
    return not (key.startswith((":", "grpc-")) or key in ("user-agent", "content-type", "te", NOT_SENT))


def _forwardable_trailer(key: str) -> bool:
    return key == STATUS_DETAILS or _forwardable(key)


def _refuse_unsent(context: grpc.ServicerContext, why: str) -> NoReturn:
    """UNAVAILABLE for a call no byte of which reached the child, marked so that the pool that sent it
    resends it: the mark echoes the token the call carries (a pool believes only its own)."""
    refuse_unsent(context, why, grpc.StatusCode.UNAVAILABLE)


class _CancelChild:
    """Cancels the forwarded call once the caller's has ended, however it ended (a grpcio server callback).

    Registered before the forwarded call is made: grpcio's thread that sends the call's requests starts
    with it and takes the caller's call's lock at once, so adding the callback after the call contended
    with it (one more thread switch per call, a few percent of a forwarded unary call's time).
    """

    __slots__ = ("_lock", "_call", "_ended")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._call: grpc.Future | None = None
        self._ended = False

    def __call__(self) -> None:
        with self._lock:
            self._ended = True
            call = self._call
        if call is not None:
            call.cancel()

    def made(self, call: grpc.Future) -> None:
        with self._lock:
            self._call = call
            ended = self._ended
        if ended:  # the caller's call ended while this one was being made
            call.cancel()


# codes a call of a made-up method can end with too: the child's UNIMPLEMENTED, and what the caller, the
# transport or grpcio itself says (a peer cancelling its calls at once, or giving them tiny deadlines,
# would otherwise have its made-up names kept)
_NO_PROOF = frozenset((
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
))


class Forwarder(grpc.GenericRpcHandler):  # type: ignore[misc]
    """grpc generic handler: a well-formed method outside OWN_SERVICES is forwarded to the child's channel.

    Any other path gets no handler, so grpcio answers UNIMPLEMENTED without the child seeing it.
    """

    # method handlers kept (a bounded cache: any peer may name any method, though only answered ones are kept)
    _HANDLERS_MAX = 1024

    def __init__(self, source: ChannelSource, gate: HandlerGate, answering: Callable[[], bool] = lambda: True,
                 exit_of: ExitSource | None = None) -> None:
        self._source = source
        self._exit_of = exit_of
        self._gate = gate
        self._answering = answering
        # a method's gated handler, kept once the child has answered it: grpcio asks for one on every call,
        # and making it (the gate's wrapper included) took a few percent of the server thread's time per
        # call. Only methods the child implements are kept, so names a peer makes up cannot fill the cache
        # before the plugin's own methods are in it
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._answered: set[str] = set()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(handler_call_details.method)
        handler = self._handlers.get(method)
        if handler is not None:
            return handler
        parts = split_method(method)
        if parts is None or parts[0] in OWN_SERVICES:
            return None
        handler = self._gate.gated(method, grpc.stream_stream_rpc_method_handler(
            lambda requests, context: self._forward(method, requests, context)))
        if method in self._answered and len(self._handlers) < self._HANDLERS_MAX:
            self._handlers[method] = handler
        return handler

    def note_answered(self, method: str, code: grpc.StatusCode) -> None:
        """A forwarded call of ``method`` ended with ``code``: one that only the child's own method can
        give (OK, an application's error) lets the method's handler be kept."""
        if code not in _NO_PROOF and len(self._answered) < self._HANDLERS_MAX:
            self._answered.add(method)

    def _forward(self, method: str, requests: Iterator[bytes],
                 context: grpc.ServicerContext) -> Iterator[bytes]:
        if not self._answering():
            _refuse_unsent(context, WEDGED_REFUSAL)
        channel, why = self._source()
        if channel is None:
            _refuse_unsent(context, f"the plugin behind the gateway is not running ({why}); retry shortly")
        remaining = context.time_remaining()
        timeout = None if remaining is None or remaining > _NO_DEADLINE else remaining
        if timeout is not None and timeout <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the gateway forwarded")
            return
        metadata = tuple((k, v) for k, v in context.invocation_metadata() if _forwardable(k))
        cancel = _CancelChild()
        if not context.add_callback(cancel):  # the caller's call has ended already: nothing to forward
            return
        try:
            call = channel.stream_stream(method)(requests, timeout=timeout, metadata=metadata)
        except ValueError:  # the child's channel was closed under us: the child is gone
            _refuse_unsent(context, "the plugin behind the gateway stopped; retry shortly")
        cancel.made(call)
        try:
            initial = call.initial_metadata()
            if initial:
                context.send_initial_metadata(tuple((k, v) for k, v in initial if _forwardable(k)))
            for response in call:
                yield response
        except grpc.RpcError:
            pass  # the status below says what happened
        trailing = call.trailing_metadata()
        if trailing:
            context.set_trailing_metadata(tuple((k, v) for k, v in trailing if _forwardable_trailer(k)))
        code = call.code()
        self.note_answered(method, code)
        if code == grpc.StatusCode.OK:
            return
        details = call.details() or ""
        ended = self._ended(channel, call, code, details, context)
        if ended is not None:
            # grpcio's words for the broken hop ("Stream removed (Socket closed)") read as the gateway's own
            # connection failing, and the gateway's health is SERVING again once the child is restarted
            code = grpc.StatusCode.UNAVAILABLE
            details = (f"the plugin behind the gateway {ended} during the call, which got no answer and may have"
                       f" run in part or whole ({details}); the gateway restarts it within its restart budget (its"
                       " log has the plugin's log records and stderr lines, not what a plugin serving GRPCStdio"
                       " printed while serving): retry the call if it is safe to repeat")
        elif code == grpc.StatusCode.CANCELLED and context.is_active():
            # the caller did not cancel: the child's connection went away under the call
            code = grpc.StatusCode.UNAVAILABLE
            details = (f"the plugin behind the gateway stopped during the call ({details}), which may have run:"
                       " retry it if it is safe to repeat")
        context.set_code(code)
        context.set_details(details)

    def _ended(self, channel: grpc.Channel, call: grpc.Call, code: grpc.StatusCode, details: str,
               context: grpc.ServicerContext) -> str | None:
        """How the child ended under a call that failed as a broken connection does (None: it runs, or the
        failure was the caller's cancel or the child's own answer). Only the child's exit tells: grpcio's
        status for a broken connection and one a plugin sent look the same."""
        broke = code == grpc.StatusCode.UNAVAILABLE or (code == grpc.StatusCode.CANCELLED and context.is_active())
        if not broke or self._exit_of is None or handler_status(call):
            return None
        if code == grpc.StatusCode.UNAVAILABLE and not any(words in details for words in _BROKEN_HOP):
            # the child's own answer (its backend is down, it is overloaded): an exit that already shows is told,
            # but none is waited for, and no health check is sent (it delayed the child's answer, past a short
            # deadline to DEADLINE_EXCEEDED, and held the call's slot meanwhile)
            return self._exit_of(channel, 0.0)
        left = context.time_remaining()
        # half of what is left at most: the status must reach the caller before its deadline does
        wait = _EXIT_WAIT if left is None else max(0.0, min(_EXIT_WAIT, left / 2))
        return self._exit_of(channel, wait)
