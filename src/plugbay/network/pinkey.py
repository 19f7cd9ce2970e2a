"""The key a stub is pinned to, and what it was pinned to: once that is gone, the stub's calls fail at once.

A stub pinned to one endpoint (a brokered dispense(): its callbacks need that endpoint's broker, so it is
never moved; or pool.pinned(key)) waited for its endpoint until its deadline, however sure the pool was
that nothing of that stub's would be served there again: discovery had dropped the endpoint, or the
session its broker rides had ended (the replica killed, stopped or restarting, the connection lost; a
session made again is a new plugin instance with a new broker). A call then ends PinnedEndpointGoneError
at once. An endpoint still listed whose session is up (only slow, unhealthy, ejected, draining or
terminating) keeps the call waiting within its deadline, as before; so does one whose session was made
again before the call came: its plain calls are served there, as before.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

import grpc

from plugbay.errors import PinnedEndpointGoneError
from plugbay.network.poolcalls import NoEndpoints


class _Member(Protocol):
    channel: grpc.Channel


class PinnedGone(NoEndpoints, PinnedEndpointGoneError):
    """A pinned call's endpoint is gone (a grpc.RpcError UNAVAILABLE too, as every NoEndpointsError a call raises)."""


class Pin(str):
    """An endpoint's key (a str: the pool's maps and messages take it as the key) that remembers the pool's
    endpoint it was made on and the yamux session of the stub's broker, both weakly (a stub held for long
    keeps no closed connection alive)."""

    _member: weakref.ref[Any] | None
    _session: weakref.ref[Any] | None

    def __new__(cls, key: str, member: object | None = None, session: object | None = None) -> Pin:
        pin = super().__new__(cls, key)
        pin._member = weakref.ref(member) if member is not None else None
        pin._session = weakref.ref(session) if session is not None else None
        return pin

    def gone(self, current: _Member | None) -> str | None:
        """Why no call of this pin's stub can reach its endpoint again, given the pool's endpoint under this key
        now (``current``); None while one may (the call waits for it, within its deadline)."""
        if self._member is None:
            return None  # pinned ahead of the endpoint (pool.pinned(key) before it joined): wait for it
        if current is None:
            return "discovery no longer lists it"
        if self._session is None:
            return None  # plain gRPC: nothing but the endpoint itself ties the stub there
        session = self._session()
        if session is not None and not session.closed:
            return None
        if getattr(current.channel, "session_up", False) and current is self._member():
            return None  # made again before this call: it serves the stub's plain calls
        reason = getattr(session, "close_reason", "") or "closed"
        return f"the multiplexed connection its broker rode ended ({reason})"


def gone_error(pool_name: str, key: str, reason: str) -> PinnedGone:
    why = f"the replica this stub is pinned to ({key}) is gone: {reason}"
    return PinnedGone(f"remote plugin {pool_name!r}: {why}. A pinned stub is never moved to another replica (a"
                      " brokered dispense()'s callbacks need its replica's broker), so none of its calls can be"
                      " served again: dispense() again for a stub on a live replica", grpc.StatusCode.UNAVAILABLE,
                      why)
