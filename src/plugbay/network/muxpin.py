"""Where a brokered stub is pinned: the endpoint round robin chose, unless its session is lost.

A replica that was killed or stopped stays in the pool until a health check
fails (up to health_interval, and longer with a health_timeout), but its yamux
session reads the end of its connection at once. Waiting for that session to
come back held dispense() for the whole call_timeout while other replicas served
at once; so a stub goes to an endpoint whose session is up instead, and a wait
already under way moves there as soon as the lost session is seen. With no
session up anywhere the wait stays where it is (the replica may come back),
bounded by ``timeout`` as before: unless this endpoint refuses this host's TLS
(EndpointPool.tls_broken, at once), it ends BrokerError, or, when some endpoint
failed TLS, that RemoteTLSError (EndpointPool.tls_at_deadline): one failing TLS
beside a replica that is restarting must not end a wait the restart would win.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import Any, Protocol

import grpc

from plugbay.core.broker.broker import GRPCBroker
from plugbay.errors import BrokerError, UnknownPluginError
from plugbay.network.muxconn import MuxEndpoint
from plugbay.network.poolcalls import no_endpoints


class Pool(Protocol):
    """What pinning needs of plugbay.network.pool.EndpointPool."""

    def channel_of(self, key: str) -> grpc.Channel | None: ...

    def pickable_keys(self) -> list[str]: ...

    def tls_broken(self, pin: str | None = None) -> BaseException | None: ...

    def tls_at_deadline(self, exclude: Collection[str], pin: str | None = None) -> BaseException | None: ...

    def tls_remembered(self) -> str: ...

    @property
    def closed(self) -> bool: ...


def live_elsewhere(pool: Pool, key: str) -> tuple[str, MuxEndpoint] | None:
    """An endpoint other than ``key`` that calls may go to and whose session is up, the one after ``key``
    in the pool's order first (so stubs moved off a lost endpoint are still spread); None if there is none."""
    order = pool.pickable_keys()
    start = order.index(key) + 1 if key in order else 0
    for other in order[start:] + order[:start]:
        endpoint = pool.channel_of(other) if other != key else None
        if isinstance(endpoint, MuxEndpoint) and endpoint.session_up:
            return other, endpoint
    return None


def pin_broker(pool: Pool, key: str, endpoint: MuxEndpoint, call_timeout: float | None,
               start_timeout: float, deadline: float | None = None) -> tuple[str, GRPCBroker]:
    """The endpoint to pin a stub to, starting from ``key``, and its broker; waits up to the client's
    call_timeout (start_timeout when it is None; ``deadline``, time.monotonic(), when the dispense began
    its wait earlier) for a session, then BrokerError, and never for a lost session while another
    endpoint's is up."""
    timeout, limit = ((start_timeout, "start_timeout") if call_timeout is None else (call_timeout, "call_timeout"))
    deadline = time.monotonic() + timeout if deadline is None else deadline
    while True:
        if not endpoint.session_up:
            moved = live_elsewhere(pool, key)
            if moved is not None:
                key, endpoint = moved
            elif (refused := pool.tls_broken(key)) is not None:
                raise refused  # the plugin there refused this host's TLS: no session will come up to wait for

        def lost_here(key: str = key, endpoint: MuxEndpoint = endpoint) -> bool:
            # the session this wait is for was lost (or never came up) and another endpoint's is up, or the
            # pool's health check found this one refusing our TLS (asked at each of the wait's checks, every
            # 0.1 s; the loop then raises that: raised in here, broker() would read it as a failed wait)
            return not endpoint.session_up and (live_elsewhere(pool, key) is not None
                                                or pool.tls_broken(key) is not None)

        try:
            broker = endpoint.broker(timeout, limit, wait=max(deadline - time.monotonic(), 0.0), give_up=lost_here)
        except BrokerError as exc:  # "did not come up" at the deadline; not a refusal, nor a close
            if type(exc) is not BrokerError or pool.closed or time.monotonic() < deadline:
                raise
            if pool.pickable_keys():  # an endpoint is up (this one only slow to open its session): not TLS
                raise
            if (at_deadline := pool.tls_at_deadline(())) is not None:
                raise at_deadline from None
            # an endpoint down now that failed TLS before: still said (the wait's error names no endpoint's state)
            raise (BrokerError(f"{exc}; {remembered}") if (remembered := pool.tls_remembered()) else exc) from None
        if broker is not None:
            return key, broker


class PinningClient(Protocol):
    """What pin_stub() needs of its RemoteClient (plugbay.network.remote: a Protocol, so no import circle)."""

    _lock: Any  # its RLock
    _versions: dict[int, Mapping[str, Any]]
    config: Any
    remote: Any

    @property
    def negotiated_version(self) -> int: ...
    @property
    def pool(self) -> Any: ...
    def start(self) -> None: ...
    def warn_if_unlisted(self, name: str) -> None: ...


def pin_stub(client: PinningClient, name: str) -> tuple[Any, str, GRPCBroker]:
    """RemoteClient.pin(): plugin ``name``, the endpoint its next stub is pinned to (a pinkey.Pin) and that
    endpoint's broker. Waits, as a call does, for call_timeout (else start_timeout) in all: for an endpoint to
    take the stub (one restarting comes back), then for its session (pin_broker); until the client closes."""
    timeout = client.config.call_timeout if client.config.call_timeout is not None else client.remote.start_timeout
    deadline = time.monotonic() + timeout
    while True:
        with client._lock:
            client.start()  # also refuses a Client closed while this waited
            plugins = client._versions[client.negotiated_version]
            if name not in plugins:
                raise UnknownPluginError(name, list(plugins))
            client.warn_if_unlisted(name)
            pool = client.pool
            key = pool.next_key()
            endpoint = pool.channel_of(key) if key is not None else None
            if key is not None and isinstance(endpoint, MuxEndpoint):
                break
            broken = pool.tls_broken()  # a TLS refusal everywhere: say so at once
            if broken is not None:
                raise broken
            if time.monotonic() >= deadline:
                raise pool.tls_at_deadline(()) or no_endpoints(  # each endpoint's state, as a call's
                    pool, f"nowhere to pin a brokered stub to within {timeout:g}s ({pool.why_none()})")
        time.sleep(min(0.05, max(deadline - time.monotonic(), 0.0)))  # outside the lock: close() needs it
    # outside the lock: close() and kill() need it, and closing the pool ends this wait; the session's
    # wait gets what is left of the dispense's
    key, broker = pin_broker(pool, key, endpoint, client.config.call_timeout, client.remote.start_timeout, deadline)
    return plugins[name], pool.pin(key, broker), broker  # the key remembers the broker's session (pinkey)
