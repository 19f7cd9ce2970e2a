"""PoolTLS, a base of PoolHealth: what the pool learns about each endpoint's TLS and the errors it makes of it.

A health check's gRPC words may name a TLS failure; a connection closed during setup says nothing, so a TLS
probe (plugbay.network.tlsprobe) tells a refused certificate from a connection merely cut short. The
verdicts end the wait of calls (and of a multiplexed dispense()) at once when waiting cannot help
(tls_broken), or name the TLS failure at the wait's deadline (tls_at_deadline).

Both act on the LATEST verdict only (Member.tls_failure): a RemoteTLSError is never retried by a
RetryPolicy, and an endpoint whose latest failure is a refused connection (restarting, perhaps fixed) is
worth waiting or retrying for. What it failed on before is remembered (Member.tls_learned) and named in its
health detail, so a NoEndpointsError at the deadline still says so, until the endpoint answers over TLS: a
health check answered with any status, a call answered, or a probe whose handshake it took.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import grpc

from plugbay.network.channelbase import Member
from plugbay.network.ejection import ENDPOINT_FAILURES
from plugbay.network.poolcalls import tls_error
from plugbay.network.tls import CHECK_TLS, HOST_CERT_REFUSALS, NOT_HTTP2, NetworkTLS, cut_short_note, name_checked
from plugbay.network.tlsprobe import CLOSED_AFTER_HANDSHAKE, REFUSED_CERT, TOOK_IT, Unreached, probe_taken

_log = logging.getLogger("plugbay.network")
_PROBE_GAP = 1.0  # one TLS probe per endpoint per this many seconds: its verdict stands meanwhile
# a new endpoint closing right after each TLS handshake for this long refused the certificate, most likely
# (a TLS proxy's backend that is down only briefly is back by then)
_CLOSES_PROVE = 3.0
_LEARNED = "last TLS failure found:"  # an endpoint's that is down since (Member.tls_learned)
_NOT_FROM_THE_SERVER = (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)
_PROBE_SEES_GONE = HOST_CERT_REFUSALS | {REFUSED_CERT}  # what a plain probe's handshake taken proves over


def status_from_server(code: grpc.StatusCode | None) -> bool:
    """Whether a failed call's (or health check's) status came from the server, over a connection whose
    handshake worked. Not the statuses gRPC makes when it gets no connection (nor a cancel, which may come
    before one, nor UNKNOWN, which a request iterator that raises makes with no connection); a server's own
    UNAVAILABLE or UNKNOWN is taken for that too, which only keeps a TLS failure named."""
    return code is not None and code not in ENDPOINT_FAILURES and code not in _NOT_FROM_THE_SERVER


class PoolTLS:
    """The TLS verdicts; EndpointPool sets the attributes."""

    name: str
    tls: NetworkTLS | None
    health_timeout: float
    _cond: threading.Condition
    _stop: threading.Event
    _members: dict[str, Member]
    _connector: Any
    tls_warned_before: frozenset[str] = frozenset()  # set by RemoteClient: see tls_warnings

    if TYPE_CHECKING:  # PoolHealth's
        def _why_none(self, exclude: Collection[str], pin: str | None, skip: Collection[str] = ()) -> str: ...

    def tls_broken(self, pin: str | None = None) -> BaseException | None:
        """A RemoteTLSError now, when waiting cannot help: the pinned endpoint (``pin``), or every one, failed
        its health check (or TLS probe) on TLS. One failing TLS beside others that are down or still booting
        is no reason: a call waits for those (tls_at_deadline then names it)."""
        with self._cond:
            members = [self._members[pin]] if pin in self._members else [] if pin else list(self._members.values())
            if not members or any(m.tls_failure is None for m in members):
                return None
            # name a definite failure over a close after each handshake (perhaps a proxy without its backend)
            first = min(members, key=lambda m: m.tls_failure == CLOSED_AFTER_HANDSHAKE)
            return tls_error(self, first, first.tls_failure or "", first.check_error or first.health_detail)

    def tls_at_deadline(self, exclude: Collection[str], pin: str | None = None) -> BaseException | None:
        """At the deadline of a call's (or a dispense()'s) wait for an endpoint: the RemoteTLSError of the
        endpoints that failed TLS, saying why the others could not take it, rather than a NoEndpointsError
        that buries that failure among gRPC's words. A close after each handshake (CLOSED_AFTER_HANDSHAKE)
        alone does not count: it may be a TLS proxy whose backend is down (its health detail says both).

        The error is a RemoteProtocolError only when every such endpoint answered plaintext with no HTTP/2
        (NOT_HTTP2); when any failed on TLS it is that endpoint's RemoteTLSError (a TLS setting to fix), and
        each other endpoint is worded by its own failure."""
        if pin is not None:  # a pinned endpoint that failed TLS ended the wait at once (tls_broken)
            return None
        with self._cond:
            broken = [m for m in self._members.values() if m.tls_failure not in (None, CLOSED_AFTER_HANDSHAKE)]
            if not broken:
                return None
            first = min(broken, key=lambda m: m.tls_failure == NOT_HTTP2)  # stable: member order otherwise
            others = [_also(m, first) for m in broken if m is not first]
            rest = self._why_none(exclude, None, skip={m.key for m in broken})
            error = tls_error(self, first, first.tls_failure or "", first.check_error or first.health_detail,
                              "; ".join(others + ([rest] if rest else [])))
            error.at_deadline = True
            return error

    def tls_remembered(self) -> str:
        """The endpoints whose latest failure is no TLS one but whose last TLS handshake failed, and how."""
        with self._cond:
            found = [f"endpoint {m.key}: {_LEARNED} {m.tls_learned}" for m in self._members.values()
                     if m.tls_learned is not None and m.tls_failure is None]
        return f"{'; '.join(found)}; {CHECK_TLS}" if found else ""

    def _probe_suspects(self) -> None:
        with self._cond:
            suspects = [m for m in self._members.values() if m.tls_suspect]
        for member in suspects:
            if self._stop.is_set():
                return
            self.tls_verdict(member, self.health_timeout)

    def tls_verdict(self, member: Member, timeout: float) -> str | None:
        """A TLS probe's verdict on ``member`` (None: nothing definite), probing at most every _PROBE_GAP."""
        with self._cond:
            now = time.monotonic()
            if member.probed_at is not None and now - member.probed_at < _PROBE_GAP:
                return member.tls_failure
            member.probed_at = now
        verify = self._connector is not None
        verdict = probe_taken(member.endpoint, self.tls, timeout, verify=verify)
        unreached = verdict if isinstance(verdict, Unreached) else None  # no TLS verdict: why it closed
        took = verdict == TOOK_IT
        verdict = None if took or unreached is not None else verdict
        with self._cond:
            member.unreached = unreached
            if verdict == CLOSED_AFTER_HANDSHAKE:
                verdict = self._weigh_close(member)
            else:
                member.closing_since = None
            # Without verify (plain gRPC's endpoints) the probe does not check the plugin's certificate: its
            # handshake proves only that the plugin takes the host's certificate now. Any other failure (gRPC's
            # generic "handshake failed" too, which a plugin certificate from another CA makes) waits for an
            # answered health check or call.
            self._tls_verdict_is(member, verdict, took and (verify or member.tls_learned in _PROBE_SEES_GONE))
            if member.tls_suspect and member.healthy is False:  # its health detail says so now, not next tick
                member.health_detail = self._failure_detail(member, member.check_error, True)
            if verdict is not None:
                self._cond.notify_all()  # calls waiting in pick() fail at once (EndpointPool.tls_broken)
        return verdict

    def _tls_verdict_is(self, member: Member, verdict: str | None, answered: bool) -> None:
        """Under the lock: the latest ``verdict`` on its TLS (None: nothing found). A TLS failure found is logged
        as a warning once, not at each health check; a definite one is remembered until the endpoint
        ``answered`` over TLS, a failure that says nothing about TLS (a refused connection) leaving it."""
        if verdict is not None and member.tls_warned is None and member.key in self.tls_warned_before:
            member.tls_warned = verdict  # the pool this one follows warned of it (see tls_warnings)
            self.tls_warned_before = self.tls_warned_before - {member.key}
        if verdict is not None and verdict != member.tls_warned:
            member.tls_warned = verdict
            if verdict == NOT_HTTP2:  # plaintext: no TLS to check
                _log.warning("pool %s: endpoint %s answers no gRPC: %s", self.name, member.key, verdict)
            else:
                _log.warning("pool %s: endpoint %s %s TLS: %s; %s", self.name, member.key,
                             "may fail" if verdict == CLOSED_AFTER_HANDSHAKE else "fails",
                             name_checked(verdict, self.tls, member.key), CHECK_TLS)
        member.tls_failure = verdict
        if verdict is not None and verdict != CLOSED_AFTER_HANDSHAKE:
            member.tls_learned = verdict
        elif answered:
            member.tls_learned = None

    def tls_answered(self, member: Member, code: grpc.StatusCode | None, answered: bool) -> None:
        """Under the lock: a call on ``member`` ended with status ``code`` (None: no status, or an error that
        is no call), as EndpointPool.done() read it; ``answered``: it ended OK, or with a status the plugin's
        handler passed on. One the plugin answered ended over TLS that works, so the TLS failure remembered
        of it is over."""
        if answered or status_from_server(code):
            member.tls_learned = None

    def tls_warnings(self) -> frozenset[str]:
        """The endpoints whose TLS failure was logged as a warning: a pool that follows this one (a
        multiplexed client's, after the start's plain one) warns of them once they pass a check only."""
        with self._cond:
            return frozenset(m.key for m in self._members.values() if m.tls_warned is not None)

    def _weigh_close(self, member: Member) -> str | None:
        """A close right after the handshake: a refused certificate, or a TLS proxy without its backend.
        An endpoint that took this host's certificate before, or one that has not kept doing it for
        _CLOSES_PROVE, is retried; a new one that keeps doing it refused the certificate, most likely."""
        now = time.monotonic()
        if member.closing_since is None:
            member.closing_since = now  # also on a proven one: its calls' final errors name the refusal
        if member.tls_proven:
            return None
        return CLOSED_AFTER_HANDSHAKE if now - member.closing_since >= _CLOSES_PROVE else None

    def cut_short_detail(self, member: Member) -> str:
        """Why a connection closed during setup, for an error: a close after each handshake names the
        likely refused certificate (a call still waits out its deadline while that is not definite)."""
        with self._cond:
            closing, unreached = member.closing_since is not None, member.unreached
        if unreached is not None:  # the probe's own dial was refused: no TLS question at all
            return unreached.advice(member.key)
        return CLOSED_AFTER_HANDSHAKE if closing else cut_short_note(self.tls is not None)

    def _failure_detail(self, member: Member, detail: str, suspect: bool) -> str:
        """Under the lock: a failed health check's ``detail`` with what it means. A TLS failure (gRPC's words,
        or the probe's verdict on a close during setup) says so and what to fix: the detail shows in
        metrics() and in a NoEndpointsError; a multiplexed endpoint's gRPC sees only its relay's close."""
        if member.tls_failure == CLOSED_AFTER_HANDSHAKE:  # a possibility only: it may be a proxy's backend down
            return f"{detail} (perhaps a TLS failure: {member.tls_failure}; {CHECK_TLS})"
        if member.tls_failure == NOT_HTTP2:
            return f"{detail} ({member.tls_failure})"
        if member.tls_failure is not None:
            return f"{detail} (TLS failure: {name_checked(member.tls_failure, self.tls, member.key)}; {CHECK_TLS})"
        if suspect and member.unreached is not None:  # what happened first, gRPC's words (its relay's close) after
            detail = f"{member.unreached.advice(member.key)} (gRPC said: {detail})"
        elif suspect:
            detail = f"{detail} ({self.cut_short_detail(member)})"
        if member.tls_learned is not None:  # down since, say: a NoEndpointsError still names it
            # flat (no brackets of its own): a NoEndpointsError puts this detail in brackets, the meaning has some
            detail = f"{detail}; {_LEARNED} {name_checked(member.tls_learned, self.tls, member.key)}; {CHECK_TLS}"
        return detail


def _also(member: Member, first: Member) -> str:
    """How ``member``, beside ``first`` (the endpoint the error is of), failed: by its own kind of failure."""
    same = (member.tls_failure == NOT_HTTP2) == (first.tls_failure == NOT_HTTP2)
    if member.tls_failure == NOT_HTTP2:
        return f"{member.key} is no gRPC plugin{' either' if same else ''} ({member.tls_failure})"
    return f"{member.key} failed TLS{' too' if same else ''} ({member.tls_failure})"
