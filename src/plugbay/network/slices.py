"""EndpointSlice objects (API JSON) -> endpoints: the parsing half of Kubernetes discovery.

The API server's text is checked, not trusted: an address that does not match its
slice's addressType, or a port that is not TCP, yields no endpoint. No API calls here
(see plugbay.network.kubernetes for the list and watch).

An FQDN slice's host names are ignored: gRPC would resolve them when it dials, past the
checks a pod IP gets (a name can resolve to the metadata service), and Kubernetes has no use
for them either (the EndpointSlice controller never makes FQDN slices; kube-proxy ignores
them). A name that reads as an IPv4 address is that address, and checked as one.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from plugbay.errors import ConfigError
from plugbay.network.resolver import Endpoint, discoverable, refused_as_loopback

SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # the label an EndpointSlice names its Service with
# The most EndpointSlices of one Service kept: each watch event merges every kept slice's endpoints, and an API
# server (or a proxy) that streamed new slice names without end grew the host's memory, and each event's
# work, without bound. Kubernetes fills a slice with up to 100 endpoints (at most 1000), so this holds a
# Service of 100,000 pods or more, far past the MAX_ENDPOINTS a host dials.
MAX_SLICES = 1024
# The most endpoints kept of one slice: Kubernetes' own limit (its API refuses a slice of more). An API server
# or proxy that sends more in one slice has the slice read whole (its size is bounded by the watch's event
# limit, MAX_EVENT_BYTES, and it is in memory already) and ranked as keep_at_most ranks: kept by position,
# the same endpoints in another order kept another set (a pool's churn at each event), and 1000 entries
# not ready listed before the ready ones kept none ready.
MAX_SLICE_ENDPOINTS = 1000
# The most refused addresses of one slice kept for reporting (a slice is read whole, and what is kept is
# handed over at every watch event): the warnings name each, and the error names the first five and "..."
MAX_REFUSED_KEPT = 16
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?\Z")  # IANA_SVC_NAME, at most 15
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?\Z")
_log = logging.getLogger("plugbay.network.kubernetes")
_told = threading.Event()  # one warning per process: a slice is read again whenever its object changes


def parse_port(port: int | str) -> int | str:
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, (int, str)):
        raise ConfigError(f"port must be a port number or name, not {port!r}")
    if isinstance(port, int):
        if not 0 < port < 65536:
            raise ConfigError(f"port must be a TCP port (1-65535) or a port name, not {port}")
        return port
    if not _PORT_NAME.match(port) or "--" in port or not re.search("[a-z]", port):
        raise ConfigError(f"port {port!r} is not a Kubernetes port name (at most 15 lowercase letters,"
                          " digits and single '-', with a letter); use the Service port's name or a number")
    return port


def _slice_port(ports: Sequence[Mapping[str, Any]], want: int | str) -> int | None:
    for p in ports:
        number = _tcp_number(p)
        if number is None:
            continue
        if (p.get("name") or "") == want if isinstance(want, str) else number == want:
            return number if 0 < number < 65536 else None
    return None


def _tcp_number(port: Mapping[str, Any]) -> int | None:
    """A slice port entry's number when it is a TCP port's integer (in range or not), else None."""
    number = port.get("port")
    # JSON true is a Python int: a bool is no port (not port 1)
    if (port.get("protocol") or "TCP") != "TCP" or isinstance(number, bool) or not isinstance(number, int):
        return None
    return number


def port_note(slices: Iterable[Mapping[str, Any]], service: str, port: int | str) -> str:
    """Why no endpoint has ``port`` when slices list endpoints on other TCP ports only (a misspelled port
    name, the Service's port number where the slices carry the pod's): which ports they do list. "" else."""
    seen: set[str] = set()
    for slc in slices:
        if not slc.get("endpoints"):
            continue
        for p in slc.get("ports") or []:
            number = _tcp_number(p)
            if number is None or not 0 < number < 65536:
                continue
            name = p.get("name") or ""
            if (name if isinstance(port, str) else number) == port:
                # the slices list it: their endpoints were left out for another reason (an FQDN slice, no
                # address), and "none named ..." would contradict what they list
                return ""
            seen.add(f"{str(name)[:15]!r} ({number})" if name else str(number))
    if not seen:
        return ""
    return (f"the EndpointSlices of Service {service!r} list endpoints on port(s) {', '.join(sorted(seen)[:8])},"
            f" none {'named' if isinstance(port, str) else 'numbered'} {port!r}: name one of those in the target"
            " (the Service port's name, or the number the slices list, the pod's target port)")


def _address(kind: str, host: str, port: int, allow_loopback: bool, refused: list[str]) -> str | None:
    """HOST:PORT for a slice address it can vouch for (the API server's text is checked, not trusted).
    An address that may not be a replica (plugbay.network.resolver.refusal) goes to ``refused``."""
    if kind in ("IPv4", "IPv6"):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        if ip.version != (4 if kind == "IPv4" else 6):
            return None
        if not discoverable(ip, allow_loopback=allow_loopback):
            refused.append(str(ip))
            return None
        return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    if kind == "FQDN" and _HOSTNAME.match(host):
        try:
            # getaddrinfo reads "2130706433" or "0x7f.1" as the IPv4 address it encodes, as it does
            # "169.254.169.254": such a name must pass the check an IPv4 slice's address gets
            packed = socket.inet_aton(host)
        except OSError:
            _ignored(host)
            return None
        return _address("IPv4", str(ipaddress.IPv4Address(packed)), port, allow_loopback, refused)
    return None


def _ignored(host: str) -> None:
    if _told.is_set():
        _log.debug("ignored host name %r of an FQDN EndpointSlice", host)
        return
    _told.set()
    _log.warning("an EndpointSlice of addressType FQDN names host %r: ignored, as plugbay takes the pod IPs"
                 " of IPv4/IPv6 slices only (a name is resolved when dialled, past the checks an IP gets;"
                 " kube-proxy ignores FQDN slices too). Later ones are logged at debug level.", host)


def _slice_endpoints(slc: Mapping[str, Any], port: int | str, allow_loopback: bool,
                     refused: list[str]) -> tuple[list[Endpoint], int]:
    """One slice's endpoints of ``port`` (see endpoints_from_slices), at most MAX_SLICE_ENDPOINTS of them, ranked
    as keep_at_most ranks (the same slice keeps the same set, whatever the order of its entries); and how many
    it has when that is more (0 else)."""
    number = _slice_port(slc.get("ports") or [], port)
    if number is None:
        return [], 0
    out = []
    for ep in slc.get("endpoints") or []:
        addresses = ep.get("addresses") or []
        address = _address(str(slc.get("addressType")), str(addresses[0]), number, allow_loopback,
                           refused) if addresses else None
        if address is None:
            continue
        cond = ep.get("conditions") or {}
        terminating = cond.get("terminating") is True
        ready = cond.get("ready") is not False and not terminating
        ref = ep.get("targetRef") or {}
        out.append(Endpoint("tcp", address, ready=ready, terminating=terminating,
                            name=str(ref.get("name") or ep.get("hostname") or "")))
    if len(out) <= MAX_SLICE_ENDPOINTS:
        return out, 0
    out = _merged([out])  # an address listed twice is one endpoint, as across slices
    return (out, 0) if len(out) <= MAX_SLICE_ENDPOINTS else (keep_at_most(out, MAX_SLICE_ENDPOINTS), len(out))


def _kept_refused(refused: list[str]) -> list[str]:
    """The refused addresses of one slice kept for reporting: the first MAX_REFUSED_KEPT, and the first one
    refused only for being loopback when none of those is (the error's allow_loopback advice rests on it)."""
    if len(refused) <= MAX_REFUSED_KEPT:
        return refused
    kept = refused[:MAX_REFUSED_KEPT]
    if not refused_as_loopback(kept):
        kept += next(([a] for a in refused[MAX_REFUSED_KEPT:] if refused_as_loopback([a])), [])
    return kept


def _merged(per_slice: Iterable[Sequence[Endpoint]]) -> list[Endpoint]:
    found: dict[str, Endpoint] = {}
    for endpoints in per_slice:
        for endpoint in endpoints:
            seen = found.get(endpoint.key)
            if seen is None or (endpoint.ready and not seen.ready):
                found[endpoint.key] = endpoint
    return sorted(found.values(), key=lambda e: e.key)


def endpoints_from_slices(slices: Iterable[Mapping[str, Any]], port: int | str, *, allow_loopback: bool = False,
                          refused: list[str] | None = None) -> list[Endpoint]:
    """The endpoints of ``port`` in EndpointSlice objects (API JSON), one per address, sorted.

    Addresses that may not be replicas (loopback ones unless ``allow_loopback``: Kubernetes itself
    refuses them in Endpoints) yield none and are added to ``refused``, for the caller to say so.

    Kubernetes' conditions map as: ready (absent means ready) -> ``ready``;
    terminating -> ``terminating`` and never ready. An address listed twice (two
    slices during a change) counts once, ready if either says so. Of one slice at most
    MAX_SLICE_ENDPOINTS are kept, ready ones first, then by address (keep_at_most).
    """
    refused = refused if refused is not None else []
    return _merged(_slice_endpoints(slc, port, allow_loopback, refused)[0] for slc in slices)


class SliceReader:
    """endpoints_from_slices of a resolver's kept slices, each slice read once: a watch event changes one
    slice, and reading every kept one again at each event cost a large Service about 0.8 s of CPU per event
    (1024 slices of 100 endpoints; 0.07 s when only the changed one is read). A slice is read again only when
    its object is replaced. The merged set is kept between events too, and a change updates only its slice's
    endpoints there: merging every kept endpoint again cost about 0.8 s of CPU per event at 1024 slices of
    1000 (0.2 s now, most of it the sorted list handed over). An address more than one slice lists is
    picked again, as endpoints_from_slices picks it.

    The endpoints equal endpoints_from_slices' for the slices given (its refused addresses are capped per slice
    here, for the report only) as long as a slice whose object is unchanged
    keeps its place among them: which of two listings of one address is used depends on the slices' order,
    and that pick is made again only for the changed slices' addresses. The Kubernetes resolver keeps to
    it: a list gives every slice a new object (all read again), a changed slice keeps its place in the
    dict, a new name goes last and a DELETED one leaves."""

    def __init__(self, target: str, port: int | str, allow_loopback: bool) -> None:
        self.target, self.port, self.allow_loopback = target, port, allow_loopback
        self._read: dict[str, tuple[Mapping[str, Any], list[Endpoint], list[str]]] = {}
        self._told = False
        # the kept slices the cap was said of, so it is said once per slice, not at each event that changes
        # one; a slice that leaves goes from here as from _read, so neither outgrows the slices kept
        self._capped: set[str] = set()
        # the endpoints of the slices in _read: how many times each key is listed, and the one used
        self._listed: dict[str, int] = {}
        self._merged: dict[str, Endpoint] = {}

    def __len__(self) -> int:
        """How many slices it holds read."""
        return len(self._read)

    def endpoints(self, slices: Mapping[str, Mapping[str, Any]], refused: list[str]) -> list[Endpoint]:
        """The endpoints of ``slices`` (name -> object), sorted; addresses refused are added to ``refused``."""
        shared: set[str] = set()  # keys listed more than once whose pick may have changed
        try:
            for name in [n for n in self._read if n not in slices]:
                self._drop(self._read.pop(name)[1], shared)
                self._capped.discard(name)
            for name, slc in slices.items():
                read = self._read.get(name)
                if read is None or read[0] is not slc:
                    turned_away: list[str] = []
                    endpoints, listed = _slice_endpoints(slc, self.port, self.allow_loopback, turned_away)
                    if listed and name not in self._capped:
                        self._capped.add(name)
                        (_log.debug if self._told else _log.warning)(
                            "%s: EndpointSlice %r lists %d endpoints; %d are used, ready ones first, then by"
                            " address (Kubernetes allows no more in one slice). Other slices like it are logged at"
                            " debug level", self.target, name[:80], listed, MAX_SLICE_ENDPOINTS)
                        self._told = True
                    if read is not None:
                        self._drop(read[1], shared)
                    self._add(endpoints, shared)
                    read = self._read[name] = (slc, endpoints, _kept_refused(turned_away))
                refused.extend(read[2])
        finally:  # a slice that failed to read leaves the others' state whole
            if shared:
                self._pick(slices, shared)
        return [self._merged[key] for key in sorted(self._merged)]

    def _drop(self, endpoints: list[Endpoint], shared: set[str]) -> None:
        for endpoint in endpoints:
            key = endpoint.key
            left = self._listed[key] - 1
            if left:
                self._listed[key] = left
                shared.add(key)
            else:
                del self._listed[key], self._merged[key]
                shared.discard(key)

    def _add(self, endpoints: list[Endpoint], shared: set[str]) -> None:
        for endpoint in endpoints:
            key = endpoint.key
            listed = self._listed[key] = self._listed.get(key, 0) + 1
            if listed == 1:
                self._merged[key] = endpoint
            else:
                shared.add(key)

    def _pick(self, slices: Mapping[str, Mapping[str, Any]], shared: set[str]) -> None:
        """The endpoint used for each of ``shared``, as _merged picks it: in the slices' order, the first
        listed, unless a later one is ready and it is not."""
        for key in shared:
            del self._merged[key]
        for name in slices:
            read = self._read.get(name)
            for endpoint in read[1] if read is not None else ():
                key = endpoint.key
                if key in shared:
                    seen = self._merged.get(key)
                    if seen is None or (endpoint.ready and not seen.ready):
                        self._merged[key] = endpoint


def slice_of_service(obj: Any, namespace: str, service: str) -> bool:
    """Whether an EndpointSlice the API server answered is one of Service ``service`` in ``namespace``:
    labelled kubernetes.io/service-name=SERVICE, as the list and watch asked for, and of that namespace
    when it says one. The server's (or a proxy's) answer is checked, not trusted to have applied them."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        return False
    labels = meta.get("labels")
    if not isinstance(labels, Mapping) or labels.get(SERVICE_NAME_LABEL) != service:
        return False
    return meta.get("namespace") in (None, namespace)


def keep_at_most(endpoints: Sequence[Endpoint], limit: int) -> list[Endpoint]:
    """The ``limit`` endpoints to keep when there are more, in address order.

    Ready ones are kept first, then those not ready yet (they may become ready), then terminating
    ones (they get no new calls); by address within each, so the same slices always keep the same set.
    """
    ranked = sorted(endpoints, key=lambda e: (not e.ready, e.terminating, e.key))
    return sorted(ranked[:limit], key=lambda e: e.key)


class SliceCap:
    """At most MAX_SLICES slices of ``target``'s Service kept; a list's first refusal is a warning, later ones
    debug. ``refused``: whether a slice was left out since the last list (one kept deleted then makes room,
    and the slices are listed again to fill it: the watch does not send the ones it was refused again)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.refused = False
        self._told = False

    def admits(self, kept: Mapping[str, Any], name: str) -> bool:
        """Whether a watch's slice ``name`` may be kept beside ``kept`` (one kept already may change)."""
        if name in kept or len(kept) < MAX_SLICES:
            return True
        self._tell(f"a watch event adds EndpointSlice {name[:80]!r}")
        self.refused = True
        return False

    def capped(self, listed: dict[str, Any]) -> dict[str, Any]:
        """A list's slices, the first MAX_SLICES by name when there are more."""
        self._told = self.refused = False  # a new list: what it leaves out is said again
        if len(listed) <= MAX_SLICES:
            return listed
        self.refused = True
        self._tell(f"the list has {len(listed)} EndpointSlices")
        return {name: listed[name] for name in sorted(listed)[:MAX_SLICES]}

    def _tell(self, what: str) -> None:
        (_log.debug if self._told else _log.warning)(
            "%s: %s, and at most %d of one Service are kept (later ones are logged at debug level); its endpoints"
            " in the others are not used. Check what makes so many (kubectl get endpointslices -l %s=...)",
            self.target, what, MAX_SLICES, SERVICE_NAME_LABEL)
        self._told = True
