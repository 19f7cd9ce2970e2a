"""Which failed tries provably never reached the plugin (the pool sends those to another endpoint), and
which of those were a busy endpoint's refusal: the rules of plugbay.network.poolcalls, kept apart."""

from __future__ import annotations

import time
from typing import Any

import grpc

from plugbay.core.protocol.notsent import echoed

# How gRPC's load-balancing picker words a call it failed before giving it a stream (no connection).
# The wording alone proves nothing (a plugin may relay such a status from its own backend), so the
# endpoint's channel must also be in TRANSIENT_FAILURE: a status from the plugin needs a READY connection.
_SETUP_FAILURES = ("failed to connect to all addresses", "connections to all backends failing",
                   "dns resolution failed", "empty address list")
_TRANSIENT_FAILURE = grpc.ChannelConnectivity.TRANSIENT_FAILURE.value[0]

STOPPED = object()  # PoolCallable.open_unless(): the caller's cancel() came first, so nothing was opened


def channel_failing(channel: Any) -> bool:
    """Whether the endpoint's gRPC channel is in TRANSIENT_FAILURE now (False when that cannot be told)."""
    for _ in range(4):  # grpc.Channel -> cygrpc.Channel, possibly behind a delegating channel (muxconn)
        check = getattr(channel, "check_connectivity_state", None)
        if callable(check):
            try:
                return bool(check(False) == _TRANSIENT_FAILURE)
            except Exception:  # closed meanwhile: nothing proves the call stayed here
                return False
        channel = getattr(channel, "_channel", None)
        if channel is None:
            return False
    return False


def not_sent(exc: grpc.RpcError, channel: Any, token: str, failing: bool | None = None) -> bool:
    """True only when the call provably never reached the plugin: it failed while connecting, or a
    server refused it with the NOT_SENT trailer echoing ``token`` (the pool's own, see with_token):
    UNAVAILABLE (a gateway whose plugin is down), or RESOURCE_EXHAUSTED (a full gate: busy()).
    ``failing``: whether the channel was failing when the call ended (a stream's, noted by its done
    callback: its first read may come much later); None asks the channel now."""
    code = exc.code()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return echoed(exc, token)
    if code != grpc.StatusCode.UNAVAILABLE:
        return False
    if echoed(exc, token):
        return True
    details = str(exc.details() or "").lower()
    if not details.startswith(_SETUP_FAILURES):
        return False
    return channel_failing(channel) if failing is None else failing


def busy(exc: grpc.RpcError) -> bool:
    """Of a refusal not_sent() believed: the endpoint is saturated (its gate is full), not failing."""
    return bool(exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)


class Tried(set[str]):
    """The endpoints a unary call was refused by since it last waited, the last of those refusals that
    was busy() (once every endpoint refused, that one ends the call), and the endpoint that refused the
    last try (``refused_by``: the next try sent elsewhere is a resend)."""

    busy_refusal: grpc.RpcError | None = None
    refused_by: str | None = None

    def __init__(self) -> None:
        super().__init__()
        # when the call began (made with it): a pinned call counts only what it met since (pinkey.Pin.gone)
        self.since = time.monotonic()

    def clear(self) -> None:
        super().clear()
        self.busy_refusal = None

    def refused_unsent(self, key: str, pickable: list[str]) -> bool:
        """A stream's first read found endpoint ``key`` never took it: noted as this try's refusal; whether
        another of the ``pickable`` endpoints is left to send it to."""
        self.add(key)
        self.refused_by = key
        return not all(other in self for other in pickable)
