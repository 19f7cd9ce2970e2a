"""EndpointPool: one gRPC channel per endpoint of a remote plugin, presented as one grpc.Channel.

A resolver reports the endpoints; the pool keeps one channel per endpoint (mTLS with provided files, or
plaintext with ``insecure``), checks each endpoint's health (grpc.health.v1 Check on service "plugin" every
``health_interval``; a new endpoint gets no calls until its first check answers, see PoolHealth.welcome), ejects
outliers (plugbay.network.ejection) and picks an endpoint per call (``round_robin`` or ``pick_first``). A call
that fails before it was sent (connection refused, no connection: UNAVAILABLE before any response) is sent to
another endpoint within the same deadline. When no endpoint can take a call, the call waits (within its
deadline) for discovery or health to bring one back, then fails with NoEndpointsError. Endpoints that leave
discovery or turn terminating stop getting calls; their channel closes when the calls in flight end (at most
``drain_timeout`` later). Renewed TLS files reach every endpoint: each is dialed again with them (poolhealth).
gRPC's keepalive (``keepalive``; plugbay.core.transport.grpcping) ends the calls on a connection whose endpoint
went silent, streams without deadline too.

The pool is a ``grpc.Channel``, so a Client's ManagedChannel (default deadline, error translation, retry/circuit
hooks) sits on top unchanged. ``pinned(key)`` is a channel bound to one endpoint (brokered stubs stay where they
were dispensed). ``metrics()`` is a snapshot; changes are logged on the "plugbay.network" logger.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Self

import grpc

from plugbay.core.protocol.handlerstatus import handler_status
from plugbay.core.transport import grpcping
from plugbay.core.transport.grpcoptions import with_defaults
from plugbay.core.transport.secure import CHANNEL_OPTIONS, Redial, grpc_target
from plugbay.network.channelbase import CallChannel, Member, PinnedChannel
from plugbay.network.ejection import ENDPOINT_FAILURES, OutlierPolicy
from plugbay.network.pinkey import Pin, gone_error
from plugbay.network.figures import check_pool
from plugbay.network.poolcalls import PoolCallable, no_endpoints
from plugbay.network.resolver import Endpoint, Resolver
from plugbay.network.poolhealth import PoolHealth, reconnect_backoff
from plugbay.network.poolpick import PoolPick
from plugbay.network.poolreport import PoolReport
from plugbay.network.pooltls import status_from_server
from plugbay.network.tls import NetworkTLS
from plugbay.network.unsent import Tried

_log = logging.getLogger("plugbay.network")
POLICIES = ("round_robin", "pick_first")


class EndpointPool(PoolHealth, PoolReport, PoolPick, CallChannel):
    """See the module docstring. Its health checks and housekeeping: poolhealth.PoolHealth; its metrics and
    connectivity reports: poolreport.PoolReport; its waits for an endpoint: poolpick.PoolPick."""

    def __init__(self, resolver: Resolver, *, tls: NetworkTLS | None = None, insecure: bool = False,
                 policy: str = "round_robin", outlier: OutlierPolicy | None = None,
                 health_interval: float = 1.0, health_timeout: float = 1.0, unhealthy_after: int = 2,
                 no_deadline_wait: float = 10.0, drain_timeout: float = 5.0,
                 options: Sequence[tuple[str, Any]] = (), name: str = "plugin",
                 connector: Callable[[Endpoint], grpc.Channel] | None = None,
                 keepalive: tuple[float, ...] | None = grpcping.DEFAULT) -> None:
        health_interval, health_timeout, unhealthy_after = check_pool(
            policy, POLICIES, tls, insecure, health_interval, health_timeout, unhealthy_after)
        self.name = name
        self.policy = policy
        self.outlier = outlier or OutlierPolicy()
        self.tls = tls
        # TLS problems are told from gRPC's details, and from a TLS probe when a connection closed during setup:
        # the only sign a connector's relay (multiplexed endpoints) gives, so there the probe judges it all
        self.diagnose_tls = True
        # gRPC's keepalive on plain gRPC connections (a connector's have their own: the yamux keepalive)
        pings = grpcping.channel_options(keepalive, "keepalive") if connector is None else []
        self.health_interval, self.health_timeout = health_interval, health_timeout
        self.unhealthy_after = unhealthy_after
        self.no_deadline_wait = no_deadline_wait
        self.drain_timeout = drain_timeout
        if tls is not None:
            tls.files()  # a bad file fails here; renewed files reach every endpoint (_follow_files)
        self.reconnect = reconnect_backoff(health_interval)  # as remote.py gives its multiplexed channels
        self._options = with_defaults([*CHANNEL_OPTIONS, *self.reconnect, *(tls.options() if tls else []), *pings],
                                      options)
        self._resolver = resolver
        self._connector = connector  # builds an endpoint's channel (multiplexed mode: plugbay.network.muxconn)
        self._cond = threading.Condition()
        self._members: dict[str, Member] = {}
        self._order: list[str] = []
        self._draining: list[Member] = []
        self._rr = itertools.count()
        self._health_fails: dict[str, int] = {}
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._subscribers: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self._last_summary: tuple[int, int, int] | None = None
        self.ejections_total = 0
        self.resends = 0  # only count_resend() adds: callers on many threads would lose a bare +=
        self.token = secrets.token_hex(16)  # what a gateway's refusal echoes to this pool (poolcalls.NOT_SENT)
        self.generation = 0  # counts discovery's changes: an asyncio twin's channels follow them (aiopool)

    # --- lifecycle ------------------------------------------------------------------

    def start(self, deadline: float | None = None) -> Self:
        """Ask the resolver for the first set (by ``deadline``, if its start() takes one); check health."""
        if deadline is not None and "deadline" in inspect.signature(self._resolver.start).parameters:
            self._resolver.start(self._on_change, deadline=deadline)  # type: ignore[call-arg]
        else:
            self._resolver.start(self._on_change)
        with self._cond:
            if not (closed := self._closed):
                self._thread = threading.Thread(target=self._run, name=f"plugbay-pool-{self.name}", daemon=True)
                self._thread.start()
        if closed:  # close() came while discovery started (a kill): the resolver may have started after it
            self._resolver.close()
            raise no_endpoints(self, "the pool was closed while it started (the client was killed)", closed=True)
        return self

    def close(self) -> None:
        """Stop discovery and health checks and close every endpoint's channel. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        self._kick.set()
        try:
            self._resolver.close()
        finally:  # a resolver that fails to close must not leave the channels open
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(10.0)
            with self._cond:
                members = list(self._members.values()) + self._draining
                self._members.clear()
                self._health_fails.clear()
                self._order.clear()
                self._draining.clear()
            for member in members:
                member.retire()

    @property
    def closed(self) -> bool:
        return self._closed

    # --- discovery --------------------------------------------------------------------

    def _dial(self, endpoint: Endpoint) -> Member:
        if self._connector is not None:
            channel = self._connector(endpoint)
            return Member(endpoint, channel, getattr(channel, "redial", None))
        target = grpc_target(endpoint.network, endpoint.address)
        # the files as they are now (a stat, a read per change); renewed later: PoolHealth._follow_files
        files = self.tls.files() if self.tls is not None else None
        creds = files.credentials() if files is not None else None
        options = self._options  # the grpc.aio twin dials with them too (Redial)
        channel = grpc.secure_channel(target, creds, options) if creds else grpc.insecure_channel(target, options)
        return Member(endpoint, channel, Redial(target, creds, options), files)

    def _on_change(self, endpoints: Sequence[Endpoint]) -> None:
        wanted = {ep.key: ep for ep in endpoints}
        built: dict[str, Member] = {}
        joined: list[Member] = []
        try:
            while True:
                with self._cond:
                    if self._closed:
                        break
                    new = [ep for key, ep in wanted.items() if key not in self._members and key not in built]
                    if not new:
                        taken = dict(built)
                        self._apply(wanted, built)
                        joined = [member for key, member in taken.items() if key not in built]
                        break
                # Every new channel is built before the pool changes: when one fails, the pool keeps
                # its previous set whole and the resolver hands the same answer over again later.
                for ep in new:
                    built[ep.key] = self._dial(ep)
        finally:
            for member in built.values():  # not taken: a failure, or the pool closed meanwhile
                member.retire()
        for member in joined:  # its first health check now, not at the next tick: calls wait for it
            self._check(member)
        self._log_if_changed()

    def _apply(self, wanted: dict[str, Endpoint], built: dict[str, Member]) -> None:
        self._drain_left(wanted)
        for key, ep in wanted.items():
            member = self._members.get(key)
            if member is None:
                self._members[key] = self.welcome(built.pop(key))
                _log.info("pool %s: endpoint %s joined", self.name, key)
            elif member.endpoint != ep:
                if ep.terminating and not member.endpoint.terminating:
                    _log.info("pool %s: endpoint %s is terminating; draining it", self.name, key)
                member.endpoint = ep
        self._order = list(wanted)
        self.generation += 1
        self._cond.notify_all()

    # --- picking (used by poolcalls; the waits: poolpick) ----------------------------------

    def try_pick(self, deadline: float, exclude: Tried, pin: str | None = None) -> Member | None:
        """An endpoint for one call now, or None to wait and ask again; raises what the wait cannot
        change (the pool closed, TLS refused everywhere) and, once ``deadline`` passed, NoEndpointsError, or the
        RemoteTLSError of an endpoint that failed TLS (tls_at_deadline)."""
        with self._cond:
            if self._closed:
                raise no_endpoints(self, "the pool was closed (the client was killed or closed)", closed=True)
            now = time.monotonic()
            since = exclude.since  # the call's start: a pinned call counts what it met since (pinkey)
            if isinstance(pin, Pin) and (gone := pin.gone(self._members.get(pin), since)) is not None:
                raise gone_error(self.name, pin, gone)  # at once: waiting cannot bring it back (pinkey)
            member = self._choose(now, exclude, pin)
            if member is not None:
                member.picks += 1
                member.inflight += 1
                return member
            tls_broken = self.tls_broken(pin)
            if tls_broken is not None:
                raise tls_broken
            if now >= deadline:  # an endpoint failing TLS is named now, not sooner: the others may have come back
                raise self.tls_at_deadline(exclude, pin) or no_endpoints(self, self._why_none(exclude, pin))
            if not self._members:
                # an empty answer (a record not published yet) would otherwise stand until the
                # resolver's interval (dns_refresh, 30 s): ask again while a call waits; the
                # resolver spaces its lookups (refresh() only flags it; the lock is reentrant)
                self._look_again()
            return None

    def member(self, key: str) -> Member | None:
        """The endpoint ``key`` as the pool knows it now (None: gone)."""
        with self._cond:
            return self._members.get(key)

    def _available(self, now: float) -> list[Member]:
        """The endpoints calls may go to now, in discovery's order.

        Ejection only steers calls to the other endpoints: when it has taken out every
        one that passes its health checks (a lone replica after a burst of timeouts),
        calls go to those rather than fail for the whole ejection time (Envoy's panic
        routing). An unhealthy, draining or terminating endpoint is never one of them.
        Those that passed a health check go first; a new one waits for its first (PoolHealth.welcome).
        """
        members = [m for m in map(self._members.get, self._order) if m is not None and not m.awaiting_check(now)]
        ready = [m for m in members if m.pickable(now)]
        return [m for m in ready if m.healthy] or ready or [m for m in members if m.pickable(now, ejected_too=True)]

    def _choose(self, now: float, exclude: set[str], pin: str | None) -> Member | None:
        if pin is not None:  # a pinned stub has no other endpoint to be steered to
            member = self._members.get(pin)
            if member is None or not member.pickable(now, ejected_too=True):
                return None
            return None if isinstance(pin, Pin) and pin.awaits_redial(member) else member  # sent once it is up
        ready = [m for m in self._available(now) if m.key not in exclude]
        if not ready:
            return None
        if self.holding(now, exclude):
            return None  # the start's first health round, which takes moments, sets where calls go
        if self.policy == "pick_first":
            return ready[0]
        return ready[next(self._rr) % len(ready)]

    def release(self, member: Member) -> None:
        """A picked endpoint given back unused (the call's deadline was spent first): no outcome to count."""
        with self._cond:
            member.inflight -= 1
            self._cond.notify_all()

    def done(self, member: Member, error: BaseException | None, ok: bool = False) -> None:
        """Record a call's outcome: failures count toward ejection; successes reset the count. ``ok``: it
        ended OK (an ``error`` of None is also a try not sent, or cancelled)."""
        code = error.code() if isinstance(error, grpc.RpcError) and hasattr(error, "code") else None
        # a status its handler passed on is the plugin's answer (handlerstatus.py): trailers read once, unlocked
        passed_on = error is not None and not status_from_server(code) and handler_status(error)
        refresh = False
        with self._cond:
            member.inflight -= 1
            now = time.monotonic()
            if error is None or code not in ENDPOINT_FAILURES or passed_on:  # it answered
                member.outlier.success()
                self.tls_answered(member, code, ok or passed_on)
            else:
                member.failures += 1
                refresh = True
                failures = member.outlier.failure()
                if failures >= self.outlier.consecutive_failures and not member.outlier.ejected(now):
                    ejected = sum(1 for m in self._members.values() if m.outlier.ejected(now))
                    if self.outlier.may_eject(ejected, len(self._members)):
                        duration = member.outlier.eject(self.outlier, now)
                        self.ejections_total += 1
                        _log.warning("pool %s: ejected endpoint %s for %.1fs after %d consecutive failures"
                                     " (last: %s)", self.name, member.key, duration, failures,
                                     code.name if code else error)
            self._cond.notify_all()
        if refresh:
            self._look_again()
        self._log_if_changed()

    def count_resend(self) -> None:
        """A unary call's try was made on another endpoint than the one that refused the last (poolcalls)."""
        with self._cond:
            self.resends += 1

    def _look_again(self) -> None:
        # A failing endpoint may have left the set: resolvers that poll look again now, not at their interval.
        again = getattr(self._resolver, "refresh", None)
        if callable(again):
            again()

    # --- grpc.Channel ----------------------------------------------------------------------

    def pinned(self, key: str) -> grpc.Channel:
        """A channel whose calls always go to endpoint ``key`` (for brokered stubs); once that endpoint is
        gone (plugbay.network.pinkey), they fail PinnedEndpointGoneError at once."""
        return PinnedChannel(self, key if isinstance(key, Pin) else self.pin(key))

    def pin(self, key: str, broker: object | None = None) -> Pin:
        """``key``, remembering the endpoint there now and, multiplexed, the session ``broker`` rides (None: the
        session up now), so that a call pinned to it fails at once once they are gone (pinkey.Pin.gone)."""
        with self._cond:
            member = self._members.get(key)
        session_for = getattr(member.channel, "session_for", None) if member is not None else None
        return Pin(key, member, session_for(broker) if session_for is not None else None)

    def channel_of(self, key: str) -> grpc.Channel | None:
        """Endpoint ``key``'s own channel (None when it is not in the pool)."""
        with self._cond:
            member = self._members.get(key)
            return member.channel if member is not None else None

    def next_key(self) -> str | None:
        """An available endpoint, in round-robin order (where to pin the next brokered stub)."""
        with self._cond:
            member = self._choose(time.monotonic(), set(), None)
            return member.key if member is not None else None

    def any_key(self) -> str | None:
        with self._cond:
            now = time.monotonic()
            return next((m.key for m in self._available(now)), None)

    def _make(self, kind: str, method: str, ser: Any, de: Any) -> Any:
        return PoolCallable(self, kind, method, ser, de)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
