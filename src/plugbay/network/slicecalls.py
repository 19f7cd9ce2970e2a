"""The EndpointSlice resolver's API calls (plugbay.network.kubernetes): the watch's bounded open, and
a failed list or watch said as discovery's typed errors, with what to check."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from plugbay.errors import DiscoveryError, DiscoveryPermissionError, DiscoveryUnavailableError
from plugbay.network.slices import SERVICE_NAME_LABEL
from plugbay.runners.kubernetes.api import api_host, api_message, used_up_message
from plugbay.runners.kubernetes.advice import answered_message
from plugbay.runners.kubernetes.deadline import Deadline, answered_in, bounded
from plugbay.runners.kubernetes.rbac import discovery_rbac_summary
from plugbay.runners.kubernetes.watchlines import PIECE, BoundedLines

# The most of a list's answer read. A Service's slices as JSON are far less: 1024 slices (MAX_SLICES) of 100
# endpoints each, a Service of 100,000 pods, are about 40 MiB. The API server's answer is untrusted input: an
# answer without end (a server or proxy that ignored the label selector, or a hostile one) grew the host's
# memory for as long as it came within the list's time limit, and the client's models then held it again.
MAX_LIST_BYTES = 64 << 20


def read_list(resp: Any, target: str, api_client: Any, limit: int = MAX_LIST_BYTES) -> Any:
    """The list's answer (urllib3's response, asked for unparsed) read PIECE at a time, whatever its chunks or
    length say, then read by the client's models as before (which refuse a slice of the wrong shape). Past
    ``limit`` bytes the read stops with a DiscoveryError."""
    body = bytearray()
    try:
        for piece in resp.stream(PIECE, decode_content=True):
            body += piece
            if len(body) > limit:
                raise DiscoveryError(
                    f"the Kubernetes API at {api_host(api_client)} answered list endpointslices for {target} with"
                    f" more than {limit >> 20} MiB, more than the EndpointSlices of any Service (1024 slices of 100"
                    " endpoints are about 40 MiB), so the answer was not read on and the list failed. Check that"
                    " the kubeconfig's server URL points at the API server itself, not a proxy or another"
                    " service, and that it honours the label selector")
    finally:
        resp.close()  # read whole or given up: nothing of it is read again
    # JSON's encoding is UTF-8 (RFC 8259): other bytes are a malformed list (UnicodeDecodeError)
    return deserialize_json(api_client, body.decode("utf-8"), "V1EndpointSliceList")


class _ReadAnswer:
    """What kubernetes 30..36's ApiClient.deserialize reads an answer's body from (its RESTResponse's .data)."""

    def __init__(self, data: str) -> None:
        self.data = data


def deserialize_json(api_client: Any, text: str, response_type: str) -> Any:
    """``text`` (JSON) as the client's model ``response_type``, by the client's own deserialize, whose form
    changed: kubernetes 37 takes (text, type, content type), 30..36 (response, type), reading response.data.
    pyproject allows both; a wrong form's TypeError would read as a malformed answer."""
    params = inspect.signature(api_client.deserialize).parameters
    if "content_type" in params or len(params) >= 3:
        return api_client.deserialize(text, response_type, "application/json")
    return api_client.deserialize(_ReadAnswer(text), response_type)


def bounded_watch(func: Callable[..., Any], api_client: Any, target: str, limit: float,
                  in_progress: Callable[[Deadline | None], None], closed: Callable[[], bool]) -> Callable[..., Any]:
    """``func`` (list_namespaced_endpoint_slice) whose connect and answer head are bounded by ``limit``
    seconds in total, as a list is: an API server trickling the head cannot hold the watch. The bound is
    handed to ``in_progress`` while the head is awaited, for close() to end it at once (Deadline.expire).
    Its name and doc are ``func``'s: the client's Watch reads the return type from them."""

    @functools.wraps(func)
    def opened(*args: Any, **kwargs: Any) -> Any:
        opening: Deadline | None = None
        try:
            with bounded(api_client, limit) as opening:
                in_progress(opening)
                try:
                    resp = func(*args, **kwargs)
                finally:
                    in_progress(None)
            if opening.expired:  # a head cut off by the deadline may still parse: its stream is no watch
                resp.close()
                raise TimeoutError(f"no answer head within {limit:g}s")
            # no endless event line; one too long is said as a broken connection is, without listing again
            return BoundedLines(resp, f"the endpointslices watch for {target}", error=DiscoveryUnavailableError)
        except Exception as exc:
            from kubernetes.client.exceptions import ApiException

            if opening is not None and opening.expired and not closed() and not isinstance(exc, ApiException):
                raise DiscoveryUnavailableError(
                    f"the Kubernetes API at {api_host(api_client)} did not answer the endpointslices watch"
                    f" for {target} within {limit:.0f}s (its head, from the connect on); check that the API"
                    " server (and any proxy in front of it) is up and not overloaded") from exc
            raise

    return opened


def api_error(target: str, namespace: str, api_client: Any, verb: str, exc: BaseException) -> DiscoveryError:
    """A failed list or watch of ``target``'s slices as discovery's error."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        if exc.status == 403:
            return DiscoveryPermissionError(
                f"the Kubernetes API refused to {verb} endpointslices in namespace {namespace!r}"
                f" (403 Forbidden), so {target} cannot be discovered. The host's service account or"
                " user needs a Role in that namespace granting in API group \"discovery.k8s.io\":"
                f" {discovery_rbac_summary()} (charts/plugbay adds it with network.enabled or"
                f" rbac.discovery). Server said: {api_message(exc)}")
        if exc.status == 401:
            return DiscoveryPermissionError(
                f"the Kubernetes API rejected the host's credentials (401) on {verb} endpointslices;"
                " refresh the kubeconfig's token or certificate")
        if exc.status == 404:
            return DiscoveryError(
                f"the Kubernetes API does not serve discovery.k8s.io/v1 endpointslices ({api_message(exc)});"
                f" {target} needs Kubernetes 1.21 or later")
        return DiscoveryError(f"Kubernetes API {verb} endpointslices in {namespace!r} failed:"
                              f" {exc.status} {api_message(exc)}")
    said = used_up_message(api_host(api_client), f"{verb} endpointslices", exc)
    if said:
        return DiscoveryUnavailableError(f"{said}; {target} cannot be discovered until it answers")
    return DiscoveryUnavailableError(
        f"cannot reach the Kubernetes API at {api_host(api_client)} to discover {target}: {exc}. Check that the"
        " cluster is up and that the kubeconfig (or the pod's service account) points at it.")


def late_list(target: str, api_client: Any, limit: float, starting: bool,
              exc: BaseException | None = None) -> DiscoveryUnavailableError:
    answered = answered_in(exc)
    if answered is not None:
        said = answered_message(api_host(api_client), "list endpointslices", answered, limit,
                                "start_timeout" if starting else None)
        return DiscoveryUnavailableError(f"{said}; {target} cannot be discovered until it answers")
    return DiscoveryUnavailableError(
        f"the Kubernetes API at {api_host(api_client)} did not answer list endpointslices within {limit:.1f}s"
        f"{' (what was left of start_timeout)' if starting else ''}, so {target} cannot be discovered."
        " Check that the API server (and any proxy in front of it) is up and not overloaded"
        + (", or raise start_timeout if it is only slow" if starting else ""))


def malformed_list(target: str, namespace: str, service: str, api_client: Any, exc: Exception) -> DiscoveryError:
    """The client's models refused the list's answer (pydantic), or it has no shape."""
    return DiscoveryError(
        f"the Kubernetes API at {api_host(api_client)} answered list endpointslices with something that is not"
        f" valid EndpointSlices ({type(exc).__name__}: {str(exc)[:300]}), so {target} cannot"
        " be discovered. Check that the kubeconfig's server URL points at the API server itself"
        " (not a proxy or a web page), and the Service's EndpointSlices (kubectl get endpointslices"
        f" -n {namespace} -l {SERVICE_NAME_LABEL}={service} -o yaml)")
