"""The key a stub is pinned to, and what it was pinned to: once plugbay knows that is gone, the stub's calls
fail at once.

A stub pinned to one endpoint (a brokered dispense(): its callbacks need that endpoint's broker, so it is never
moved; or pool.pinned(key)) waited for its endpoint until its deadline even when the pool knew nothing would
answer it there: discovery had dropped the endpoint, or nothing listened at its address any more. A call then
ends PinnedEndpointGoneError at once. Only what plugbay knows for sure counts: discovery no longer lists the
endpoint (or listed it again since: a new connection, not the stub's), or the session the stub's broker rode
ended AND the dial made again to that address, since the call began, was refused or reset (one refused before,
while a replica restarted on its address, says nothing of it now: the address is dialed again at once for the
call, MuxEndpoint.check_dial). A session only lost (a cut connection, a replica restarted and listening again)
is dialed again by the call itself, within its deadline: gRPC redials only when something calls, so failing on
a missing session would fail calls a live replica would serve. Once the session is back the call goes on there;
a brokered stub's plain calls are then served by the replica's new session (a new plugin instance), and a
callback id it was handed on the old session names a broker that ended with it. An endpoint still listed that
is only slow, unhealthy, stopped, ejected, draining or terminating keeps the call waiting within its deadline,
as before.
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

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        # pickled (or copied) as the plain key it is: its weak references name this process's objects only
        return str, (str(self),)

    def gone(self, current: _Member | None, since: float) -> str | None:
        """What plugbay knows keeps this pin's stub from its endpoint now, given the pool's endpoint under this key
        (``current``) and when the call asking began (``since``, time.monotonic()); None while a call may reach it
        (the call dials it and waits, within its deadline). Where only a refusal from before the call is known,
        this has the address dialed again (MuxEndpoint.check_dial) and says None: the call's next look judges."""
        if self._member is None:
            return None  # pinned ahead of the endpoint (pool.pinned(key) before it joined): wait for it
        if current is None:
            return "discovery no longer lists it"
        if self._session is None:
            return None  # plain gRPC: nothing but the endpoint itself ties the stub there
        session = self._session()
        if session is not None and not session.closed:
            return None
        channel = current.channel
        if current is not self._member():
            return "discovery dropped it (listed again since, on a new connection)"
        refused_at = getattr(channel, "redial_refused_at", None)
        if refused_at is None:
            return None  # only lost, or not dialed again yet: the call dials it (gRPC redials when called)
        if refused_at < since:
            # a refusal from before the call is stale (a replica restarting on its address refused a dial while it
            # was down, and may be back): the address is dialed again now, not at gRPC's next reconnect backoff,
            # and the call's next look judges by that dial (refused: gone; connected: the call goes on)
            check = getattr(channel, "check_dial", None)
            if check is not None:
                check(since)
            return None
        reason = getattr(session, "close_reason", "") or "closed"
        return (f"the multiplexed connection its broker rode ended ({reason}) and dialing its address again was"
                " refused or reset: nothing listens there now")

    def awaits_redial(self, current: _Member) -> bool:
        """Whether a call of this pin's stub waits for ``current``'s session to be made again (and has it dialed):
        the stub's session ended and none is up yet. The call is sent once it is; if the dial is refused, gone()
        says so."""
        session = self._session() if self._session is not None else None
        if self._session is None or (session is not None and not session.closed):
            return False
        channel = current.channel
        if getattr(channel, "session_up", True):
            return False
        redial = getattr(channel, "redial_soon", None)
        if redial is not None:
            redial()
        return True


def gone_error(pool_name: str, key: str, reason: str) -> PinnedGone:
    """The error of a call on a stub pinned to ``key`` (a grpc.RpcError UNAVAILABLE) that plugbay knows cannot
    reach it now (``reason``, Pin.gone's)."""
    why = f"the replica this stub is pinned to ({key}) cannot be reached: {reason}"
    return PinnedGone(f"remote plugin {pool_name!r}: {why}. A pinned stub is never moved to another replica (a"
                      " brokered dispense()'s callbacks need its replica's broker), so it fails now rather than wait"
                      " out its deadline: dispense() again for a stub on a live replica (a channel of"
                      " pool.pinned(key): make it again)",
                      grpc.StatusCode.UNAVAILABLE, why)
