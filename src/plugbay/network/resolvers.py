"""The DNS resolver of dns:/// and dns+srv:/// targets (see plugbay.network.targets for the syntax).

DNS uses dnspython rather than grpcio's built-in resolver: grpcio resolves
inside one channel and balances there, so plugbay would never see the
individual endpoints it must health-check, eject and count; and dnspython
takes a nameserver with a port (``dns_server="127.0.0.1:5353"``), reads
resolv.conf by default, and does SRV. A :class:`DNSResolver` re-resolves every
``refresh`` seconds and soon after :meth:`DNSResolver.refresh` (the pool calls
it when calls fail, and while calls wait on an empty set; such lookups are spaced
0.2 s apart, and further, up to 2 s, while they find nothing new); a lookup
that errs keeps the last set, while an empty answer (NXDOMAIN, no records)
empties it (and ``empty_note`` says which, for the error of calls that wait on
it). A lookup where some queries failed and others found records uses
those records. close() ends a lookup under way after the query in flight, and a
lookup in the background ends (as a failure) once its time budget is spent.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Any

import dns.exception
import dns.message
import dns.resolver

from plugbay.errors import ConfigError, DiscoveryError, DiscoveryRefusedError, DiscoveryUnavailableError
from plugbay.network.dns_failures import answered_codes, failure_text, unanswered
from plugbay.network.dns_missing import aliased, empty_text
from plugbay.network.resolver import (MAX_ENDPOINTS, Endpoint, OnChange, all_refused, parse_dns_server, refusal,
                                      refused_as_loopback)

_log = logging.getLogger("plugbay.network")
__all__ = ["MAX_ENDPOINTS", "DNSResolver", "parse_dns_server"]
_MIN_GAP = 0.2  # refresh() on failures: at most this often
# ...and, while such lookups find nothing new (calls waiting on an empty answer ask at every wait),
# ever less often, up to this: a record that appears is still found within it, and a host that
# waits asks its DNS server about once every 2 s, not 5 times a second
_MAX_GAP = 2.0
# At most MAX_ENDPOINTS endpoints: A/AAAA keep the first ones by address; SRV the first in priority
# order, and its further targets are not even looked up (two queries each: a thousand targets would
# spend start()'s time, and every refresh's budget, before the cap applied).
# A lookup in the background ends after this many query timeouts (or the refresh interval, when
# longer): an SRV answer with many unanswering targets (two queries each) must not keep the thread
# from the next period for minutes.
_LOOKUP_QUERIES = 5
_RESOLV_CONF = "/etc/resolv.conf"


def _refusal(host: str, *, allow_loopback: bool) -> str | None:
    try:
        return refusal(ipaddress.ip_address(host), allow_loopback=allow_loopback)
    except ValueError:
        return "cannot be a replica (not an IP address)"


class DNSResolver:
    """A/AAAA (``name`` + ``port``) or SRV (``srv=True``) records, re-resolved periodically."""

    def __init__(self, host: str, port: int = 0, *, srv: bool = False, dns_server: str | None = None,
                 refresh: float = 30.0, timeout: float = 2.0, name: str = "plugin",
                 max_endpoints: int = MAX_ENDPOINTS, allow_loopback: bool = False) -> None:
        if refresh <= 0:
            raise ConfigError(f"the DNS refresh interval must be > 0 seconds (got {refresh})")
        self.host, self.port, self.srv, self.refresh_every = host, port, srv, refresh
        self.allow_loopback = allow_loopback  # see plugbay.network.resolver.refusal
        self.dns_server = dns_server
        # The system's configuration brings its search list (and ndots), which a pod's short name
        # ("kv-plugin" for kv-plugin.NAMESPACE.svc.cluster.local) needs, as gRPC's and Go's resolvers
        # apply it; a DNS server named here brings none, and the name is taken as it is written.
        # A name ending in "." is absolute either way.
        self._search = dns_server is None
        if dns_server is None:
            try:
                self._resolver = dns.resolver.Resolver(filename=_RESOLV_CONF, configure=True)
            except dns.resolver.NoResolverConfiguration as exc:
                raise ConfigError("no DNS server is configured in /etc/resolv.conf; pass"
                                  f" dns_server='IP:PORT' ({exc})") from exc
        else:
            ip, dns_port = parse_dns_server(dns_server)
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = [ip]
            self._resolver.port = dns_port
        self._resolver.lifetime = timeout
        self.timeout = timeout
        self._deadline: float | None = None  # when the lookup under way must end (start(): start_timeout's)
        self._budget = ""  # what that deadline is, for its error
        self._resolver.cache = None
        self._name = name
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: list[Endpoint] | None = None
        self.max_endpoints = max_endpoints
        self._capped_at: tuple[int, ...] | None = None  # the answer size last warned about
        self._skipped: set[str] = set()  # addresses a warning already named (no replica: see refusal)
        self._refused: list[str] = []  # the lookup's addresses that may not be replicas
        self._advised: set[str] = set()  # the lookup's failures whose text says what to do (failure_text)
        self._unanswered: set[str] = set()  # the lookup's failures that no DNS server answered (unanswered)
        self._codes: dict[str, None] = {}  # what the error codes the servers answered mean (answered_codes)
        # Why the last lookup found nothing, for the pool's "discovery reports no endpoints (...)": a
        # misspelt name (NXDOMAIN) and a record not published yet look the same to a waiting call.
        self.empty_note = ""
        # name -> ["NXDOMAIN"], ["."] (an SRV answer of no service), or the kinds it has no records of
        self._missing: dict[str, list[str]] = {}
        # how the name's own SRV query found none: "NXDOMAIN", "none" (no SRV records), "" (found some, or failed)
        self._srv_none = ""
        self.lookups = 0

    def _server_text(self) -> str:
        return self.dns_server or ",".join(str(s) for s in self._resolver.nameservers)

    def resolve(self) -> list[Endpoint]:
        """One lookup; see _resolve. A failed one is empty_note too (the pool keeps its set: when that
        is empty, the failure is why)."""
        try:
            return self._resolve()
        except DiscoveryError as exc:
            if not self._stop.is_set():  # a close() under way is no news for a waiting call
                self.empty_note = f"the last DNS lookup failed: {exc}"
            raise

    def _resolve(self) -> list[Endpoint]:
        """One lookup. DiscoveryError when nothing came back but failures, or only addresses that may not
        be replicas (plugbay.network.resolver.refusal: loopback ones unless ``allow_loopback``); [] when
        the name has no records.

        Like gRPC's and Go's resolvers, the answers that came back are used when another query failed
        (an AAAA a filtering resolver refuses, one SRV target's address): only a lookup that found
        nothing and met a failure is an error, since its empty set may be the failure's doing.
        """
        self.lookups += 1
        self._refused = []
        self._missing = {}
        self._srv_none = ""
        self._advised = set()
        self._unanswered = set()
        self._codes = {}
        out: list[Endpoint] = []
        failed: list[str] = []
        kinds = ("SRV",) if self.srv else ("A", "AAAA")
        srv: tuple[int, int] | None = None
        for kind in kinds:
            answer = self._ask(self.host, kind, failed, search=self._search)
            if kind == "SRV":
                if not answer and self._missing:  # the only query so far: what it left is the name's own
                    nx = any(said == ["NXDOMAIN"] for said in self._missing.values())
                    self._srv_none = "NXDOMAIN" if nx else "none"
                found, srv = self._srv_endpoints(answer, failed)
                out.extend(found)
                continue
            for rr in answer:
                host = rr.to_text()
                if self._dialable(host):
                    addr = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
                    out.append(Endpoint("tcp", addr, name=self.host))
        if not out and self._loopback_refused():
            raise DiscoveryRefusedError(all_refused(f"the DNS answer for {self.host!r} at {self._server_text()}"
                                             + (f" ({'; '.join(failed)} failed)" if failed else ""), self._refused))
        if failed and not out:
            # the server the target or dns_server named is the one to check; only the system's leave a choice
            advice = "the DNS server is reachable and serves that name" if self.dns_server else \
                "the DNS servers of /etc/resolv.conf are reachable and serve that name, or pass dns_server='IP:PORT'"
            # servers that answered (truncated) are reachable: their failures' own texts say what to do
            check = "" if all(f in self._advised for f in failed) else f" Check that {advice}"
            if self._codes:  # a server answered with an error code: it is reachable, and the code says why
                check = f" {'; '.join(self._codes)}.{check}"
            # no server answered at all: the discovery source is unreachable (the command line's exit 3, as for a
            # cluster's API server), not a plugin that failed
            error = DiscoveryUnavailableError if all(f in self._unanswered for f in failed) else DiscoveryError
            raise error(f"DNS lookup of {self.host!r} ({'/'.join(kinds)}) at {self._server_text()} failed:"
                        f" {'; '.join(f.rstrip('. ') for f in failed)}.{check}")
        if failed:
            _log.warning("DNS lookup of %r at %s: %s; using the %d endpoint(s) the other queries found",
                         self.host, self._server_text(), "; ".join(failed), len(out))
        self.empty_note = "" if out else empty_text(self._server_text(), self.host, self._refused, self._missing,
                                                   self._srv_none)
        if "SRV" in kinds:  # priority order is the meaning (pick_first): only duplicates go
            return self._capped(out, srv)
        return self._capped(sorted(set(out), key=lambda e: e.key))

    def _ask(self, name: str, kind: str, failed: list[str], *, search: bool = False) -> list[Any]:
        """One query's records ([] for none); a failure is noted in ``failed`` and answers [] too.
        ``search``: try the configured search list too (an SRV record's target is a full name: never)."""
        lifetime = self._lifetime()  # start()'s deadline gone: the whole lookup ends here
        try:
            return list(self._resolver.resolve(name, kind, search=search, lifetime=lifetime))
        except dns.resolver.NXDOMAIN as exc:
            responses = exc.responses()  # type: ignore[no-untyped-call]
            qnames = exc.qnames()  # type: ignore[no-untyped-call]
            names = ", ".join(aliased(n, responses.get(n)) for n in qnames) or name
            self._missing.setdefault(names.rstrip("."), ["NXDOMAIN"])
            return []
        except dns.resolver.NoAnswer as exc:
            # under a search list, the name that exists (the one without records) is the response's
            response = getattr(exc, "kwargs", {}).get("response")
            asked = aliased(response.question[0].name, response) if response is not None and response.question \
                else name
            kinds = self._missing.setdefault(asked.rstrip("."), [])
            if kinds[:1] != ["NXDOMAIN"] and kind not in kinds:
                kinds.append(kind)
            return []
        except (dns.exception.DNSException, OSError) as exc:  # any answer but records or "none": YXDOMAIN too
            text, advised = failure_text(name, kind, exc)
            failed.append(text)
            if advised:
                self._advised.add(text)
            if unanswered(exc):
                self._unanswered.add(text)
            self._codes.update(dict.fromkeys(answered_codes(exc)))
            self._lifetime()  # a query cut short by start()'s deadline ends the lookup as a timeout
            return []

    def _capped(self, found: list[Endpoint], srv: tuple[int, int] | None = None) -> list[Endpoint]:
        """At most max_endpoints; ``srv``: an SRV answer's (target count, targets not looked up)."""
        if len(found) <= self.max_endpoints and not (srv and srv[1]):
            self._capped_at = None
            return found
        seen = (len(found), *(srv or ()))
        if self._capped_at != seen:
            self._capped_at = seen
            if srv is None:
                said = f"DNS answered {len(found)} endpoints for {self.host!r}; using the first" \
                       f" {self.max_endpoints} by address"
            else:
                said = f"DNS SRV answer for {self.host!r} names {srv[0]} target(s); using the first" \
                       f" {min(len(found), self.max_endpoints)} endpoints in priority order"
                if srv[1]:
                    said += f", without looking up the last {srv[1]} target(s)"
                    if len(found) < self.max_endpoints:
                        said += f" (at most {self.max_endpoints} targets are looked up, whatever they yield)"
            _log.warning("%s: each endpoint is a connection with its own health checks. Serve fewer records,"
                         " or split the plugin into several names", said)
        return found[:self.max_endpoints]

    def _srv_endpoints(self, records: list[object], failed: list[str]) -> tuple[list[Endpoint], tuple[int, int]]:
        """SRV per RFC 2782: target "." means no service; port 0 is no port; lower priorities first.

        Every target is an endpoint, in priority order: the pool's health checks and ejection,
        not DNS, tell which one is reachable (RFC 2782's "lowest priority it can reach"), so
        policy="pick_first" serves the lowest priority and fails over to the next, and
        round_robin spreads calls over all. Within a priority, heavier weights come first, then
        by name: the same answer in another order (a server rotating it) gives the same set.

        Targets are looked up in that order until max_endpoints are found, and at most max_endpoints
        targets whatever they yield (2 * max_endpoints + 1 queries in all); the answer's target count
        and how many were not looked up come back too, for the warning.
        """
        targets: set[tuple[int, int, str, int]] = set()
        for rr in records:
            target = str(getattr(rr, "target")).rstrip(".")
            port, priority = int(getattr(rr, "port")), int(getattr(rr, "priority"))
            if not target or not 0 < port < 65536:
                if not target:
                    self._missing.setdefault(self.host.rstrip("."), ["."])
                else:
                    _log.warning("DNS SRV record of %r names %s with port %d; skipping it (no such port)",
                                 self.host, target, port)
                continue
            targets.add((priority, -int(getattr(rr, "weight")), target, port))
        found: dict[Endpoint, None] = {}  # in order, without duplicates
        ordered = sorted(targets)
        for n, (_, _, target, port) in enumerate(ordered):
            # targets that yield nothing (no records, only addresses that are no replica) count too:
            # a hostile or broken answer must not cost two queries per target at every lookup
            if len(found) >= self.max_endpoints or n >= self.max_endpoints:
                return list(found), (len(ordered), len(ordered) - n)
            found.update(dict.fromkeys(self._srv_target(target, port, failed)))
        return list(found), (len(ordered), 0)

    def _loopback_refused(self) -> bool:
        """Whether the lookup refused a loopback address (one the opt-in would take): an answer of only
        those is an error saying what to pass, not an empty set for calls to wait on."""
        return not self.allow_loopback and refused_as_loopback(self._refused)

    def _dialable(self, host: str) -> bool:
        why = _refusal(host, allow_loopback=self.allow_loopback)
        if why is None:
            return True
        if len(self._refused) < self.max_endpoints:
            self._refused.append(host)
        if host not in self._skipped and len(self._skipped) < self.max_endpoints:  # said once, not per refresh
            self._skipped.add(host)
            _log.warning("DNS answer for %r names %s, which %s; skipping it", self.host, host, why)
        return False

    def _srv_target(self, target: str, port: int, failed: list[str]) -> list[Endpoint]:
        try:
            ip = ipaddress.ip_address(target)
        except ValueError:
            pass
        else:  # as the address reads, not as the answer spells it: one replica, one endpoint
            host = str(ip)
            return [Endpoint("tcp", f"[{host}]:{port}" if ip.version == 6 else f"{host}:{port}",
                             name=host)] if self._dialable(host) else []
        found = []
        for kind in ("A", "AAAA"):
            for rr in self._ask(target, kind, failed):
                host = rr.to_text()
                if self._dialable(host):
                    found.append(Endpoint("tcp", f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                                          name=target))
        # by address: a server that rotates a target's records (round-robin DNS) must not move
        # pick_first, or the capped set, at every refresh
        return sorted(set(found), key=lambda e: e.key)

    def _lifetime(self) -> float:
        """How long one query may take: ``timeout``, or less when the lookup's deadline is nearer.
        Also where a lookup ends once close() was called (a kill during start(), a client's close)."""
        if self._stop.is_set():
            raise DiscoveryError(f"DNS lookup of {self.host!r} ended: discovery was closed")
        if self._deadline is None:
            return self.timeout
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise DiscoveryError(f"DNS lookup of {self.host!r} at {self._server_text()} did not finish in"
                                 f" {self._budget}; check that the DNS server answers quickly")
        return min(self.timeout, left)

    def start(self, on_change: OnChange, *, deadline: float | None = None) -> None:
        """The first lookup (all its queries end by ``deadline``, a time.monotonic() value), then the thread."""
        self._deadline, self._budget = deadline, "the time start() had (start_timeout)"
        try:
            found = self.resolve()
        finally:
            self._deadline = None
        on_change(list(found))
        self._last = found  # only once taken: an answer the pool failed to take is handed over again
        self._thread = threading.Thread(target=self._run, args=(on_change,), daemon=True,
                                        name=f"plugbay-dns-{self._name}")
        self._thread.start()

    def refresh(self) -> None:
        """Look again soon (calls failed: the set may have changed)."""
        self._wake.set()

    def _run(self, on_change: OnChange) -> None:
        gap = _MIN_GAP
        while not self._stop.is_set():
            asked = self._wake.wait(self.refresh_every)
            if self._stop.wait(gap):
                return
            self._wake.clear()
            # asked again and nothing new (or a failure): space the next asked lookup further
            gap = min(gap * 2, _MAX_GAP, self.refresh_every) if asked else _MIN_GAP
            budget = max(_LOOKUP_QUERIES * self.timeout, self.refresh_every)
            self._deadline, self._budget = time.monotonic() + budget, f"{budget:g}s"
            try:
                found = self.resolve()
            except DiscoveryError as exc:
                if self._stop.is_set():
                    return
                _log.warning("%s; keeping the %d endpoint(s) known", exc, len(self._last or []))
                continue
            except Exception:  # whatever it was, discovery must not freeze: the next period asks again
                _log.exception("DNS lookup of %r failed unexpectedly; keeping the %d endpoint(s) known",
                               self.host, len(self._last or []))
                continue
            finally:
                self._deadline = None
            if found != self._last:
                gap = _MIN_GAP
                try:
                    on_change(list(found))
                except Exception:
                    _log.exception("the endpoint pool of %s failed to take DNS's new set; it is handed over"
                                   " again after the next lookup", self._name)
                    continue
                self._last = found

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10.0)
