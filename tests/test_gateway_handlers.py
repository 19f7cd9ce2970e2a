"""The gateway's method handlers: kept once per method the child has answered (OK or its own error), at
most Forwarder._HANDLERS_MAX of them, so names a peer makes up never take the room of the plugin's own
methods; every well-formed method outside the gateway's own services is answered whether kept or not;
own services and malformed paths never get a handler."""

from __future__ import annotations

from typing import NamedTuple

import grpc

from plugbay.core.plugin.gate import HandlerGate
from plugbay.network.gateway.forward import OWN_SERVICES, Forwarder


class _Details(NamedTuple):  # what grpcio hands a generic handler
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


def _forwarder() -> Forwarder:
    return Forwarder(lambda: (None, "not started"), HandlerGate(4))


def test_a_method_is_kept_once_the_child_answered_it() -> None:
    forwarder = _forwarder()
    first = forwarder.service(_Details("/proto.KV/Get"))
    assert first is not None and first.stream_stream is not None
    assert forwarder.service(_Details("/proto.KV/Get")) is not first  # not answered yet: made anew
    forwarder.note_answered("/proto.KV/Get", grpc.StatusCode.NOT_FOUND)  # an application error is an answer
    kept = forwarder.service(_Details("/proto.KV/Get"))
    assert kept is not None and forwarder.service(_Details("/proto.KV/Get")) is kept
    # the child's UNIMPLEMENTED, and what a made-up method's call can end with too (the caller cancelling it
    # at once, a tiny deadline, no child), keep nothing
    for code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.UNAVAILABLE):
        forwarder.note_answered("/proto.KV/Nope", code)
    assert forwarder.service(_Details("/proto.KV/Nope")) is not forwarder.service(_Details("/proto.KV/Nope"))
    for service in OWN_SERVICES:
        assert forwarder.service(_Details(f"/{service}/Check")) is None
    assert forwarder.service(_Details("proto.KV/Get")) is None


def test_made_up_names_do_not_fill_the_cache_before_the_plugins_methods() -> None:
    forwarder = _forwarder()
    for n in range(Forwarder._HANDLERS_MAX + 10):  # a peer's made-up names, each answered UNIMPLEMENTED
        method = f"/peer.Named/M{n}"
        handler = forwarder.service(_Details(method))
        assert handler is not None and handler.stream_stream is not None, n
        forwarder.note_answered(method, grpc.StatusCode.UNIMPLEMENTED)
    assert forwarder._handlers == {}
    forwarder.note_answered("/proto.KV/Get", grpc.StatusCode.OK)
    kept = forwarder.service(_Details("/proto.KV/Get"))
    assert forwarder.service(_Details("/proto.KV/Get")) is kept


def test_the_cache_is_bounded_and_methods_past_the_bound_are_answered() -> None:
    forwarder = _forwarder()
    for n in range(Forwarder._HANDLERS_MAX + 10):
        method = f"/peer.Real/M{n}"
        forwarder.note_answered(method, grpc.StatusCode.OK)
        assert forwarder.service(_Details(method)) is not None, n
    assert len(forwarder._handlers) == Forwarder._HANDLERS_MAX
    assert forwarder.service(_Details(f"/peer.Real/M{Forwarder._HANDLERS_MAX + 5}")) is not None
