"""PoolHealth, a base of EndpointPool: the pool's thread, which checks each endpoint's health
(grpc.health.v1 Check on service "plugin"), returns ejected endpoints, closes drained ones (those that
left discovery, drained from _drain_left), and probes endpoints whose connection closed during setup
(plugbay.network.tlsprobe; the verdicts: its base, pooltls.PoolTLS) to tell a refused TLS certificate,
which fails calls at once, from a connection merely cut short, which calls retry.

It also carries renewed NetworkTLS files to every endpoint. grpcio reconnects a channel with the
credentials it was made with, so a replica restarting at the same address (a static target, a
Service's ClusterIP) would be reached with the old certificate for ever, and not at all once that
expired. On each tick the files are stat'ed (read only when they changed); an endpoint whose channel
presents an older set gets a new channel, and the old one closes once its calls end, however long
they last (a renewal is no reason to cut a stream; the old TLS connection stays valid).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import grpc

from plugbay._proto.grpc.health.v1 import health_pb2
from plugbay.network.channelbase import Member
from plugbay.network.ejection import OutlierPolicy
from plugbay.network.pooltls import PoolTLS, status_from_server
from plugbay.network.resolver import Endpoint, Resolver
from plugbay.network.tls import NetworkTLS, cut_short, relay_named, tls_failure

_log = logging.getLogger("plugbay.network")
_HEALTH_REQ = health_pb2.HealthCheckRequest(service="plugin")
_FIRST_CHECK_GRACE = 0.5  # past health_timeout: room for the health thread to send a new endpoint's check
# once one endpoint found by the start passed its first check, how much longer calls wait for the others'
# answers (healthy replicas answer moments apart): the first calls spread over all that pass, and a stalled
# replica's check (up to health_timeout) holds no call that a passing one can take
_SPREAD = 0.1
# gRPC's own reconnect backoff (1 s, x1.6, up to 120 s) grows through an outage: a replica back after a few
# minutes went unused for up to two more, its health checks failing at once ("failed to connect to all
# addresses") with no connection tried. The pool caps it at two health intervals, at least _MIN_BACKOFF
# (so a short interval does not dial a dead address ten times a second), at most gRPC's own cap. gRPC
# jitters each wait by +-20% (capped ones too), so hosts that lost a replica together do not redial in step.
_MIN_BACKOFF, _MAX_BACKOFF = 0.5, 120.0


def reconnect_backoff(health_interval: float) -> list[tuple[str, int]]:
    """The channel options that bound an endpoint's reconnect backoff by ``health_interval`` (a caller's
    grpc_options name their own). grpc.min_reconnect_backoff_ms is left alone: it is the time a connection
    attempt is given (20 s), not a wait."""
    cap = min(max(2 * health_interval, _MIN_BACKOFF), _MAX_BACKOFF)
    return [("grpc.initial_reconnect_backoff_ms", round(min(cap, 1.0) * 1000)),
            ("grpc.max_reconnect_backoff_ms", round(cap * 1000))]


class PoolHealth(PoolTLS):
    """Health and housekeeping; EndpointPool sets the attributes."""

    name: str
    outlier: OutlierPolicy
    tls: NetworkTLS | None
    diagnose_tls: bool
    health_interval: float
    health_timeout: float
    unhealthy_after: int
    drain_timeout: float
    _cond: threading.Condition
    _stop: threading.Event
    _kick: threading.Event  # set when an endpoint turned suspect, so that it is probed now
    _members: dict[str, Member]
    _draining: list[Member]
    _health_fails: dict[str, int]
    _connector: Any
    _resolver: Resolver
    _closed: bool
    _thread: threading.Thread | None
    _step_failure: str | None = None  # the last step's failure, logged once
    _first_pass: float | None = None  # when an endpoint first passed a health check (see holding)
    generation: int

    if TYPE_CHECKING:  # EndpointPool's
        def _log_if_changed(self) -> None: ...

        def _dial(self, endpoint: Endpoint) -> Member: ...

        def _look_again(self) -> None: ...

    def _run(self) -> None:
        while not self._stop.is_set():
            self._step(self._tick)
            end = time.monotonic() + self.health_interval
            while not self._stop.is_set() and self._kick.wait(max(end - time.monotonic(), 0)):
                self._kick.clear()
                self._step(self._probe_suspects)

    def _step(self, work: Callable[[], None]) -> None:
        """One step of the thread: a failure is logged and the thread goes on (it alone checks health,
        returns ejected endpoints and closes drained ones); the same failure again is not logged again."""
        try:
            work()
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            if failure != self._step_failure:
                _log.exception("pool %s: a health step failed; going on at the next tick", self.name)
            self._step_failure = failure
        else:
            self._step_failure = None

    def _tick(self) -> None:
        """One health tick: ejections ended, drained channels closed, renewed files followed, every
        endpoint checked, suspects probed."""
        now = time.monotonic()
        drained: list[Member] = []
        with self._cond:
            members = list(self._members.values())
            for member in members:
                if member.outlier.tick(self.outlier, now):
                    _log.info("pool %s: endpoint %s returns from ejection", self.name, member.key)
                    self._cond.notify_all()
            for member in list(self._draining):
                if member.inflight <= 0 or (not member.renewed
                                            and now - (member.draining_since or now) >= self.drain_timeout):
                    self._draining.remove(member)
                    member.drained = True  # before its channel closes: the calls it cuts see it
                    drained.append(member)
        for member in drained:  # not under the lock: a brokered endpoint's close waits for its relay,
            member.retire()  # and an AsyncRemoteClient picks under that lock on its event loop
        renewed = self._follow_files()
        members = members if renewed is None else renewed
        for member in members:
            self._check(member)
        self._log_if_changed()
        self._probe_suspects()

    def _follow_files(self) -> list[Member] | None:
        """Dial again, with the current NetworkTLS files, each endpoint whose channel has older ones; the
        endpoints as they are then (None: none was). A multiplexed endpoint's relay asks for the files per
        TLS connection it makes (``_connector``): it needs none of this."""
        if self.tls is None or self._connector is not None:
            return None
        try:
            current = self.tls.files()
        except Exception:  # a good set was read at start: this is not a file's content
            _log.exception("pool %s: checking the NetworkTLS files failed; keeping the current ones", self.name)
            return None
        with self._cond:
            stale = [m for m in self._members.values() if m.tls_set is not current]
        if not stale:
            return None
        fresh: dict[str, Member] = {}
        try:
            for old in stale:
                fresh[old.key] = self._dial(old.endpoint)
        except Exception:  # tried again on the next tick
            _log.exception("pool %s: dialing an endpoint with renewed NetworkTLS files failed", self.name)
            for member in fresh.values():
                member.retire()
            return None
        unused = []
        with self._cond:
            now = time.monotonic()
            for old in stale:
                new = fresh[old.key]
                if self._closed or self._members.get(old.key) is not old:  # left (or closed) meanwhile
                    unused.append(new)
                    continue
                new.carry_over(old)
                self._members[old.key] = new
                old.renewed, old.draining_since = True, now
                self._draining.append(old)
            self.generation += 1  # an AsyncRemoteClient's grpc.aio channels follow (aiopool)
            members = list(self._members.values())
            self._cond.notify_all()
        for member in unused:
            member.retire()
        if len(unused) < len(stale):
            _log.info("pool %s: NetworkTLS files renewed; %d endpoint(s) dialed again with them, their previous"
                      " connections closing once their calls end", self.name, len(stale) - len(unused))
        return members

    def refused_since(self) -> tuple[float, list[str]] | None:
        """Since when (time.monotonic()) every endpoint discovery lists has failed its health checks with a
        refused connection (nothing listens there, yet), and their addresses; None when one has not. A start
        that runs out of start_timeout so says why (describe)."""
        with self._cond:
            members = list(self._members.values())
            since = [m.refused_since if m.healthy is False else None for m in members]
        if not since or None in since:
            return None
        return max(s for s in since if s is not None), [m.endpoint.address for m in members]

    def why_none(self) -> str:
        """Each endpoint's state, for an error raised outside the pool (a brokered dispense() that found none).
        Under the lock: discovery changes the endpoints under it, and a dict changing while read is an error."""
        with self._cond:
            return self._why_none((), None)

    def _why_none(self, exclude: Collection[str], pin: str | None, skip: Collection[str] = ()) -> str:
        """Each endpoint's state (but ``skip``'s), for a NoEndpointsError (EndpointPool.try_pick)."""
        if pin is not None:
            member = self._members.get(pin)
            detail = f" ({member.health_detail})" if member is not None and member.health_detail else ""
            return f"endpoint {pin} (this stub is pinned to it) is gone, unhealthy, draining or terminating{detail}"
        if not self._members:
            note = getattr(self._resolver, "empty_note", "")  # e.g. the EndpointSlices' other ports
            return f"discovery reports no endpoints ({note})" if note else "discovery reports no endpoints"
        if all(key in skip for key in self._members):
            return ""
        now = time.monotonic()
        parts = []
        for key, m in self._members.items():
            if key in skip:
                continue
            state = ("tried" if key in exclude else "awaiting its first health check" if m.awaiting_check(now)
                     else "ejected" if m.outlier.ejected(now)
                     else "unhealthy" if m.healthy is False else "not ready" if not m.endpoint.ready
                     else "terminating" if m.endpoint.terminating else "available")
            parts.append(f"{key} {state}" + (f" ({m.health_detail})" if m.health_detail and state != "available"
                                             else ""))
        return "; ".join(parts)

    def _drain_left(self, wanted: Collection[str]) -> None:
        """Under the lock: the endpoints discovery no longer reports (not in ``wanted``) get no more calls;
        each channel closes once its calls end, at most drain_timeout from now. A channel replaced for
        renewed files (_follow_files) waited for its calls however long: once its endpoint left, it too."""
        now = time.monotonic()
        for key in [key for key in self._members if key not in wanted]:
            member = self._members.pop(key)
            _log.info("pool %s: endpoint %s left discovery; closing it once its %d call(s) end", self.name, key,
                      member.inflight)
            member.draining_since = now
            self._draining.append(member)
            self._health_fails.pop(key, None)  # keyed by address: a pool under churn would keep them all
        for old in self._draining:
            if old.renewed and old.key not in wanted:
                old.renewed, old.draining_since = False, now

    def welcome(self, member: Member) -> Member:
        """A new endpoint, under the lock. It gets no calls until its first health check (sent as it joins)
        answers, nor after that failed: a replica that accepts connections and never answers would hold
        a call, or a brokered stub pinned to it, for the whole timeout while another answers at once.
        Those found by the start's discovery (``first_round``) hold every call until each answered, so
        that the first calls spread over all that pass; one found later only stays out meanwhile. At
        most health_timeout + _FIRST_CHECK_GRACE: then, the health thread held up, it is used if need be."""
        member.first_check_by = time.monotonic() + self.health_timeout + _FIRST_CHECK_GRACE
        member.first_round = self._thread is None
        return member

    def holding(self, now: float, exclude: set[str]) -> bool:
        """Under the lock: whether calls wait for the start's first health round (welcome): while an endpoint
        the start found awaits its first check and none has passed one yet, and for _SPREAD after the first
        passed; a stalled one's check then holds no call another endpoint can take."""
        if not any(m.holds_calls(now) and m.key not in exclude for m in self._members.values()):
            return False
        return self._first_pass is None or now < self._first_pass + _SPREAD

    def _check(self, member: Member) -> None:
        # read and set in one step: the discovery thread (a joining endpoint) and the health tick may both
        # ask, and two checks in flight would each set the verdict, the older answer last
        with self._cond:
            if member.checking or member.draining_since is not None:
                return
            member.checking = True
        try:  # not under the lock: an AsyncRemoteClient picks under it on its event loop
            future = member.health_stub.Check.future(_HEALTH_REQ, timeout=self.health_timeout)
        except ValueError:  # the channel was closed meanwhile
            with self._cond:
                member.checking = False
            return
        future.add_done_callback(lambda f: self._checked(member, f))

    def _checked(self, member: Member, future: Any) -> None:
        with self._cond:
            member.checking = False
        try:
            status = future.result().status
            ok, detail = status == health_pb2.HealthCheckResponse.SERVING, \
                health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            answered = True  # any status (NOT_SERVING too) came over TLS that works
        except grpc.RpcError as exc:
            ok = exc.code() == grpc.StatusCode.UNIMPLEMENTED  # no health service: calls tell
            detail = relay_named(f"{exc.code().name}: {exc.details()}", member.key)
            answered = status_from_server(exc.code())
        except Exception as exc:  # cancelled on close
            ok, detail, answered = False, type(exc).__name__, False
        suspect = not ok and self.diagnose_tls and cut_short(detail)
        refused = not ok and "connection refused" in detail.lower()
        with self._cond:
            if self._closed or self._members.get(member.key) is not member:
                # the pool closed, or the replica left discovery, while its check was out (cancelled by that): no
                # verdict on the replica, and no WARNING blaming it for the host's own close
                self._cond.notify_all()
                return
            member.refused_since = (member.refused_since or time.monotonic()) if refused else None
            fails = 0 if ok else self._health_fails.get(member.key, 0) + 1
            self._health_fails[member.key] = fails
            before = member.healthy
            member.tls_suspect = suspect
            if not suspect:  # a suspect keeps its last probe's verdict until the next probe
                self._tls_verdict_is(member, None if ok or not self.diagnose_tls else tls_failure(
                    detail, tls=self.tls is not None), answered)
            if ok:
                if self._first_pass is None:
                    self._first_pass = time.monotonic()
                member.healthy, member.health_detail, member.check_error = True, "", ""
                member.tls_proven, member.closing_since = True, None  # it took this host's certificate
                member.unreached = None
                member.tls_warned = None  # a TLS failure after this is news again
            elif fails >= self.unhealthy_after or before is None:
                member.healthy, member.check_error = False, detail
                member.health_detail = self._failure_detail(member, detail, suspect)
                # a close during setup not judged yet is logged without a cause: a TLS failure's is the probe's
                # WARNING, moments later (whatever the mode: no certificate, plain or multiplexed), and the
                # health detail follows the verdict
                detail = member.health_detail if not suspect or member.tls_failure is not None else \
                    f"{detail} (the connection closed during setup: a WARNING follows if a TLS probe finds a TLS" \
                    " failure; otherwise a proxy whose backend is down, or a plugin restarting)"
            went_bad = before is not False and member.healthy is False
            if before != member.healthy:  # once per change of verdict, not per check
                # a replica going down (or found down) is a WARNING, as an ejection is: with logging's default
                # level it was silent; its return is INFO
                _log.log(logging.INFO if member.healthy else logging.WARNING, "pool %s: endpoint %s health %s (%s)",
                         self.name, member.key, "SERVING" if member.healthy else "bad", detail)
                self._cond.notify_all()
        if suspect:
            self._kick.set()
        if went_bad:  # no call may fail toward it now, so failures alone would not ask discovery again
            self._look_again()
        self._log_if_changed()
