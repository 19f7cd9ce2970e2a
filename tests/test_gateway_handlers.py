"""The gateway's method handlers: made once per method and kept, at most Forwarder._HANDLERS_MAX of them
(any peer may name any method), and every well-formed method outside the gateway's own services is still
answered past that bound; own services and malformed paths never get one."""

from __future__ import annotations

from typing import NamedTuple

from plugbay.core.plugin.gate import HandlerGate
from plugbay.network.gateway.forward import OWN_SERVICES, Forwarder


class _Details(NamedTuple):  # what grpcio hands a generic handler
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


def test_handlers_are_kept_per_method_within_a_bound() -> None:
    forwarder = Forwarder(lambda: (None, "not started"), HandlerGate(4))
    first = forwarder.service(_Details("/proto.KV/Get"))
    assert first is not None and first.stream_stream is not None
    assert forwarder.service(_Details("/proto.KV/Get")) is first
    assert forwarder.service(_Details("/proto.KV/Put")) is not first
    for service in OWN_SERVICES:
        assert forwarder.service(_Details(f"/{service}/Check")) is None
    assert forwarder.service(_Details("proto.KV/Get")) is None
    for n in range(Forwarder._HANDLERS_MAX + 10):
        handler = forwarder.service(_Details(f"/peer.Named/M{n}"))
        assert handler is not None and handler.stream_stream is not None, n
    assert len(forwarder._handlers) == Forwarder._HANDLERS_MAX
    # a method first named past the bound is answered each time all the same
    assert forwarder.service(_Details(f"/peer.Named/M{Forwarder._HANDLERS_MAX + 5}")) is not None
