"""``kubernetes:///NAMESPACE/SERVICE:PORT``: the endpoints of a Service, from its EndpointSlices.

The resolver lists the EndpointSlices labelled ``kubernetes.io/service-name=SERVICE``
in NAMESPACE and then watches them from the list's resourceVersion, so a pod
that becomes ready joins, one that is being deleted drains (``terminating``)
and one that is gone leaves, each as the API server reports it. A watch that
ends is resumed from the last version seen; one the server no longer has
(410 Gone / Expired) starts over with a fresh list; a lost API server is
retried with a bounded backoff while the last known endpoints stay in place.
The API server's answers are checked: a slice not labelled for SERVICE (or of
another namespace) is ignored, a watch's head is bounded in total as a list is,
and a watch the server ends early is not re-opened at once (slicecalls.py, api.py).

PORT is a port name (the Service port's name, which the slices carry) or the
number the slices list (the pod's target port). Endpoint addresses are pod IPs:
the host must run where pod IPs route, i.e. in the cluster.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from typing import Any, Self

from plugbay.core.transport.backoff import doubling_pause
from plugbay.errors import (
    ClientStateError,
    ConfigError,
    DiscoveryError,
    DiscoveryRefusedError,
    DiscoveryUnavailableError,
    EngineUnavailableError,
)
from plugbay.network.figures import check_count, check_switch
from plugbay.network.resolver import MAX_ENDPOINTS, Endpoint, OnChange, all_refused, refusal, refused_as_loopback
from plugbay.network.slicecalls import api_error, bounded_watch, late_list, malformed_list, read_list
from plugbay.network.slices import (SERVICE_NAME_LABEL, SliceCap, SliceReader, keep_at_most, parse_port, port_note,
                                    slice_of_service)
from plugbay.runners.kubernetes.api import (REWATCH_PAUSE, close_client, ended_early, load_api_client, no_change,
                                            watch_cut_short)
from plugbay.runners.kubernetes.deadline import Deadline, bounded
from plugbay.runners.kubernetes.options import check_api_client

_log = logging.getLogger("plugbay.network.kubernetes")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
MAX_BACKOFF = 10.0
_CLOSE_WAIT = 2.0  # close() waits this long for the watch thread, then leaves it to end on its own
LIST_CONNECT, LIST_TIMEOUT = 10.0, 30.0  # one list: to connect, and for its whole answer (not each read)
WATCH_HEAD_TIMEOUT = 30.0  # one watch: to connect and get its answer's head, in total


class _Gone(Exception):
    """The watch's resourceVersion is no longer kept by the API server: list again."""


class EndpointSliceResolver:
    """Endpoints of Service ``service``'s ``port`` in ``namespace``, kept current by a watch.

    ``api_client`` (a kubernetes ApiClient) or ``kubeconfig``/``context`` choose the
    cluster; by default the pod's service account in-cluster, else KUBECONFIG.
    """

    def __init__(self, namespace: str, service: str, port: int | str, *, api_client: Any = None,
                 kubeconfig: str | None = None, context: str | None = None,
                 watch_timeout: int = 240, max_endpoints: int = MAX_ENDPOINTS, allow_loopback: bool = False) -> None:
        for what, value in (("namespace", namespace), ("service", service)):
            if not isinstance(value, str) or not _DNS_LABEL.match(value):
                raise ConfigError(f"{what} {value!r} is not a Kubernetes name (a DNS label: at most 63"
                                  " lowercase letters, digits and '-')")
        self.namespace, self.service, self.port = namespace, service, parse_port(port)
        # checked here as RemoteConfig checks them: a str or 0 would fail later, in the watch thread
        self.watch_timeout = check_count(watch_timeout, "EndpointSliceResolver watch_timeout (seconds)", 1)
        check_switch(allow_loopback, "EndpointSliceResolver allow_loopback")
        self.allow_loopback = allow_loopback  # see plugbay.network.resolver.refusal
        self._refused_told: set[str] = set()  # refused addresses already warned about (bounded)
        self.refused: list[str] = []  # the addresses the last set refused
        # why the set is empty when the slices list endpoints on other ports only (a misspelled port): the
        # pool's NoEndpointsError says so, and it is logged once (again when it changes)
        self.empty_note = ""
        if api_client is not None:
            check_api_client(api_client, "EndpointSliceResolver")
        self._api_client, self._owns_client = api_client, api_client is None
        self._kubeconfig, self._context = kubeconfig, context
        self._api: Any = None
        self._on_change: OnChange | None = None
        self._slices: dict[str, dict[str, Any]] = {}
        self._slice_cap = SliceCap(self.target)
        self._reader = SliceReader(self.target, self.port, allow_loopback)
        self._rv: str | None = None
        self._delivered = 0  # events other than ERROR the current watch delivered
        self._changes = 0  # the current watch's events that changed the slices kept
        self._gone_before = False  # the last watch ended in 410 Gone (no event delivered since)
        self._reported: list[Endpoint] | None = None
        self.max_endpoints = check_count(max_endpoints, "EndpointSliceResolver max_endpoints", 1)
        self._capped_at: int | None = None  # the endpoint count last warned about
        self._stop = threading.Event()
        self._watch: Any = None
        # the list (or watch head) in progress: close() ends it by shutting its sockets
        self._listing: Deadline | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.last_error: BaseException | None = None  # the watch loop's latest failure (it retries)
        self.lists = 0  # full lists so far (1 + one per expired watch)

    @property
    def target(self) -> str:
        return f"kubernetes:///{self.namespace}/{self.service}:{self.port}"

    # --- Resolver protocol ---------------------------------------------------------

    def start(self, on_change: OnChange, *, deadline: float | None = None) -> None:
        """List the slices (by ``deadline``, a time.monotonic() value, when given), then watch them."""
        with self._lock:
            if self._on_change is not None or self._stop.is_set():
                raise ClientStateError(f"the resolver for {self.target} was already started or closed;"
                                       " make a new one")
            self._on_change = on_change
        try:
            if self._api_client is None:
                try:
                    self._api_client, _ = load_api_client(self._kubeconfig, self._context)
                except EngineUnavailableError as exc:
                    raise DiscoveryUnavailableError(f"{exc} ({self.target} cannot be discovered)") from exc
            from kubernetes import client

            self._api = client.DiscoveryV1Api(self._api_client)
            self._relist(deadline)
            if not self._reported and self._loopback_refused():
                raise DiscoveryRefusedError(self._all_refused())
        except BaseException:
            self._close_client()
            self._on_change = None  # start() may be tried again, e.g. once RBAC is fixed
            raise
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"plugbay-endpointslices-{self.namespace}-{self.service}")
        self._thread.start()

    def close(self) -> None:
        """Stop the watch and free the API client. Bounded: see _CLOSE_WAIT. Safe on the watch thread."""
        self._stop.set()
        self._interrupt()  # a list in progress (start()'s on another thread, or the watch's) ends now
        thread = self._thread
        if thread is threading.current_thread():  # a callback closed us: the watch loop ends when it returns
            thread = None
        give_up = time.monotonic() + _CLOSE_WAIT
        while thread is not None and thread.is_alive() and time.monotonic() < give_up:
            self._interrupt()
            thread.join(timeout=0.2)
        if thread is not None and thread.is_alive():
            _log.info("%s: the watch thread has not ended yet; it ends on its own, as it sees the close",
                      self.target)
        self._close_client()

    def _interrupt(self) -> None:
        watch = self._watch
        if watch is not None:
            watch.stop()  # shuts the socket of a read in progress down
        with self._lock:
            listing = self._listing
        if listing is not None:
            listing.expire()  # likewise for a list: its read wakes at once, not at its timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- API calls -----------------------------------------------------------------

    def _closed_error(self) -> DiscoveryError:
        return DiscoveryError(f"the resolver for {self.target} was closed; make a new one")

    def _set_listing(self, listing: Deadline | None) -> None:
        with self._lock:
            self._listing = listing
        if listing is not None and self._stop.is_set():  # closed before _interrupt() could see this list
            listing.expire()

    def _relist(self, deadline: float | None = None) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        connect, limit = LIST_CONNECT, LIST_TIMEOUT
        if deadline is not None:  # start()'s caller has only start_timeout for all of discovery
            left = max(deadline - time.monotonic(), 0.1)
            connect, limit = min(connect, left), min(limit, left)

        api, api_client = self._api, self._api_client
        if api is None or api_client is None:
            raise self._closed_error()
        listing: Deadline | None = None
        try:
            # bounded in total, not only per read: an API server trickling its answer cannot hold the list
            with bounded(api_client, limit) as listing:
                self._set_listing(listing)
                try:  # unparsed: read_list reads it within the bound, at most MAX_LIST_BYTES
                    found = api.list_namespaced_endpoint_slice(
                        self.namespace, label_selector=f"{SERVICE_NAME_LABEL}={self.service}",
                        _request_timeout=(connect, limit), _preload_content=False)
                    found = read_list(found, self.target, api_client)
                finally:
                    self._set_listing(None)
            data = api_client.sanitize_for_serialization(found)
            # the API server's answer is checked, not trusted: a slice of another Service (a server or proxy
            # that ignored the label selector) would make this host dial that Service's pods
            slices = self._slice_cap.capped({str(s["metadata"]["name"]): s for s in data.get("items") or []
                                             if slice_of_service(s, self.namespace, self.service)})
        except Exception as exc:
            if self._stop.is_set():  # close() cut the list short: that is no trouble of the API server's
                raise self._closed_error() from exc
            if isinstance(exc, DiscoveryError):  # said already (read_list: past MAX_LIST_BYTES)
                raise
            if listing is not None and listing.expired and not isinstance(exc, ApiException):
                raise late_list(self.target, self._api_client, limit, limit < LIST_TIMEOUT, exc) from exc
            if isinstance(exc, (ApiException, HTTPError, OSError)):
                raise api_error(self.target, self.namespace, self._api_client, "list", exc) from exc
            raise malformed_list(self.target, self.namespace, self.service, api_client, exc) from exc
        self.lists += 1
        self._slices = slices
        self._rv = str((data.get("metadata") or {}).get("resourceVersion") or "") or None
        self._report()

    def _loopback_refused(self) -> bool:
        return not self.allow_loopback and refused_as_loopback(self.refused)

    def _all_refused(self) -> str:
        return all_refused(f"{self.target}: the EndpointSlices", self.refused)

    def _report(self) -> None:
        refused: list[str] = []
        endpoints = self._capped(self._reader.endpoints(self._slices, refused))
        self.refused = refused
        note = "" if endpoints or refused else port_note(self._slices.values(), self.service, self.port)
        if note and note != self.empty_note:
            _log.warning("%s: %s", self.target, note)
        self.empty_note = note
        for address in refused:  # said once per address, not at every watch event
            if address not in self._refused_told and len(self._refused_told) < self.max_endpoints:
                self._refused_told.add(address)
                _log.warning("%s: an EndpointSlice names %s, which %s; skipping it", self.target, address,
                             refusal(ipaddress.ip_address(address), allow_loopback=self.allow_loopback))
        if not endpoints and endpoints != self._reported and self._reported is not None and self._loopback_refused():
            _log.warning("%s", self._all_refused())
        if endpoints == self._reported or self._on_change is None:
            return
        try:
            self._on_change(list(endpoints))
        except Exception:  # the pool's trouble must not end discovery
            _log.exception("%s: the endpoint callback failed; the set is handed over again at the next"
                           " change or list", self.target)
            return
        self._reported = endpoints  # only once taken: the same set after a failure is handed over again

    def _capped(self, endpoints: list[Endpoint]) -> list[Endpoint]:
        if len(endpoints) <= self.max_endpoints:
            self._capped_at = None
            return endpoints
        if self._capped_at != len(endpoints):  # once per size, not at every watch event
            self._capped_at = len(endpoints)
            _log.warning("%s: the EndpointSlices list %d endpoints; using %d of them (ready ones first, then by"
                         " address): each endpoint is a connection with its own health checks. Serve the plugin"
                         " from fewer pods, or split it over several Services", self.target, len(endpoints),
                         self.max_endpoints)
        return keep_at_most(endpoints, self.max_endpoints)

    # --- the watch thread ----------------------------------------------------------

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        failures = 0
        while not self._stop.is_set():
            self._delivered = self._changes = 0
            try:
                if self._rv is None:
                    self._relist()
                started = time.monotonic()
                events = self._watch_once()
                took = time.monotonic() - started
                if self._stop.is_set():
                    break
                cut = watch_cut_short(self._changes, took, self.watch_timeout)
                if self._delivered or not cut:  # the server kept a watch: a later 410 is an expiry again
                    self._gone_before = False
                if not cut:
                    failures = 0
                    if ended_early(took, self.watch_timeout):  # changes, but the server hung up early
                        self._stop.wait(REWATCH_PAUSE)
                    continue
                self.last_error = DiscoveryError(
                    f"the endpointslices watch for {self.target} ended after {took:.1f}s with {no_change(events)},"
                    f" long before its {self.watch_timeout}s; the API server (or a proxy in front"
                    " of it) cuts it short")
            except (_Gone, ApiException) as exc:
                if isinstance(exc, ApiException) and exc.status != 410:
                    self.last_error = api_error(self.target, self.namespace, self._api_client, "watch", exc)
                else:
                    self._rv = None
                    if not self._gone_again():
                        continue
            except DiscoveryError as exc:
                if self._stop.is_set():  # close() ended a list in progress
                    break
                self.last_error = exc
            except (HTTPError, OSError) as exc:  # a dropped connection, a reset API server
                if self._stop.is_set():
                    break
                self.last_error = api_error(self.target, self.namespace, self._api_client, "watch", exc)
            except Exception as exc:  # e.g. an object the client cannot read: log it, list again
                if self._stop.is_set():
                    break
                self.last_error = DiscoveryError(f"watching endpointslices for {self.target} failed: {exc!r};"
                                              " listing them again")
                self._rv = None
            failures += 1
            delay = doubling_pause(failures, 0.2, MAX_BACKOFF)
            _log.warning("%s: %s (retrying in %.1fs)", self.target, self.last_error, delay)
            self._stop.wait(delay)

    def _gone_again(self) -> bool:
        """A watch ended in 410 Gone: the first one lists again at once (the version expired); another
        with no event delivered since, even from a fresh list, is a failure to back off from (an API
        server or a proxy answering every watch so would otherwise get lists as fast as it answers)."""
        again = self._gone_before and not self._delivered
        self._gone_before = True
        if again:
            self.last_error = DiscoveryError(
                f"the endpointslices watch for {self.target} got 410 Gone again right after listing them; the"
                " API server (or a proxy in front of it) refuses every watch")
        return again

    def _watch_once(self) -> int:
        """One watch, until its end; how many events it had (bookmarks too)."""
        from kubernetes import watch as watch_mod

        module: Any = watch_mod
        watch: Any = module.Watch()
        self._watch = watch
        if self._stop.is_set():
            return 0
        opened = bounded_watch(self._api.list_namespaced_endpoint_slice, self._api_client, self.target,
                               WATCH_HEAD_TIMEOUT, self._set_listing, self._stop.is_set)
        stream = watch.stream(opened, self.namespace,
                              label_selector=f"{SERVICE_NAME_LABEL}={self.service}",
                              resource_version=self._rv, allow_watch_bookmarks=True,
                              timeout_seconds=self.watch_timeout,
                              _request_timeout=(10, self.watch_timeout + 30))
        events = 0
        for event in stream:
            events += 1
            if self._stop.is_set():
                break
            kind, obj = event.get("type"), event.get("raw_object") or {}
            meta = obj.get("metadata") or {}
            if kind == "ERROR":  # a Status the client did not raise
                if obj.get("code") == 410:
                    raise _Gone()
                raise DiscoveryError(f"the endpointslices watch failed: {obj.get('message') or obj}")
            self._delivered += 1
            if meta.get("resourceVersion"):
                self._rv = str(meta["resourceVersion"])
            if kind == "BOOKMARK" or not meta.get("name"):
                continue
            name = str(meta["name"])
            if kind == "DELETED" or (kind in ("ADDED", "MODIFIED")
                                     and not slice_of_service(obj, self.namespace, self.service)):
                # a slice that is not (or no longer) this Service's leaves the set, as a deleted one
                if self._slices.pop(name, None) is None:
                    continue
            elif kind in ("ADDED", "MODIFIED"):
                if not self._slice_cap.admits(self._slices, name):
                    continue
                if self._slices.get(name) == obj:  # no change, but a set the callback failed to take goes again
                    self._report()
                    continue
                self._slices[name] = obj
            else:
                continue
            self._changes += 1
            self._report()
            if self._stop.is_set():  # the callback closed us: do not wait for another event
                break
            if self._slice_cap.refused and name not in self._slices:  # room for one refused: list them again
                self._rv = None
                break
        return events

    def _close_client(self) -> None:
        with self._lock:  # close() and a failing start() may both get here
            api_client = self._api_client if self._owns_client else None
            if api_client is not None:
                self._api_client = None
                self._api = None
        if api_client is not None:
            close_client(api_client)
