"""Kubernetes API access for the pod runner: loading the client configuration, timeouts, error text.

The kubernetes client waits forever by default: an API server (or a proxy in
front of it) that takes the connection and never answers would hang start,
kill and sweeps for good. Every call plugbay makes passes ``_request_timeout``
(connect, read) from :func:`request_timeout`; a timed-out call is an
EngineUnavailableError that names the call and the setting to raise. On the
clients plugbay builds itself a timed-out attempt is not retried (urllib3
would repeat an idempotent one up to three times), so ``api_timeout`` bounds
the connect and the wait for each answer of one call, not four of them.
Beyond each socket read, :func:`call` bounds the whole call (connect, head
and body; a stream until its head) by the same ``api_timeout``, so a server
that trickles its answer a byte at a time cannot hold it either (deadline.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

from plugbay.errors import ConfigError, EngineUnavailableError, PermissionDeniedError, RunnerError
from plugbay.runners.kubernetes.advice import (MAX_API_TIMEOUT, answered_message, config_source, context_choice,
                                               exhausted_message, reattach_choice, status_advice)
from plugbay.runners.kubernetes.deadline import answered_in, bounded, exhausted_in
from plugbay.runners.kubernetes.rbac import forbidden
from plugbay.runners.kubernetes.wsupgrade import api_url_problem, said

SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
DEFAULT_API_TIMEOUT = 30.0  # seconds; the runner uses min(this, start_timeout) unless told


def request_timeout(api_timeout: float) -> tuple[float, float]:
    """``_request_timeout`` for one call: ``api_timeout`` to connect and again for each read of the answer.

    :func:`call` also bounds the whole call by the read value (see deadline.py)."""
    return (api_timeout, api_timeout)


def total_limit(timeout: Any) -> float | None:
    """The whole call's deadline from a ``_request_timeout`` (a number, or (connect, read)); None: unbounded."""
    limit = timeout[-1] if isinstance(timeout, tuple) and timeout else timeout
    return float(limit) if isinstance(limit, (int, float)) and not isinstance(limit, bool) else None


def check_api_timeout(api_timeout: float) -> float:
    if isinstance(api_timeout, bool) or not (isinstance(api_timeout, (int, float)) and 0 < api_timeout < float("inf")):
        raise ConfigError(f"api_timeout must be a positive number of seconds, not {api_timeout!r}")
    if api_timeout > MAX_API_TIMEOUT:  # a socket refuses timeouts past time_t (OverflowError): say so typed
        raise ConfigError(f"api_timeout must be a positive number of seconds up to {MAX_API_TIMEOUT:.0f},"
                          f" not {api_timeout!r}; pass a smaller api_timeout (the default is"
                          f" {DEFAULT_API_TIMEOUT:.0f})")
    return float(api_timeout)


def _retries() -> Any:
    """urllib3's default retries, except an attempt that timed out: that ends the call."""
    from urllib3.util.retry import Retry

    class NoTimeoutRetry(Retry):
        def increment(self, method: Any = None, url: Any = None, response: Any = None, error: Any = None,
                      _pool: Any = None, _stacktrace: Any = None) -> Any:
            if error is not None and timed_out(error):
                raise error
            return super().increment(method, url, response, error, _pool, _stacktrace)

    return NoTimeoutRetry(total=Retry.DEFAULT.total)


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(SA_TOKEN)


def require_client() -> None:
    """The Kubernetes client is an extra: its absence is said with how to install it."""
    try:
        import kubernetes  # noqa: F401
    except ImportError as exc:
        raise EngineUnavailableError("the Kubernetes client is missing: pip install 'plugbay[kubernetes]'"
                                     ) from exc


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> tuple[Any, bool]:
    """(ApiClient, loaded from the in-cluster service account?).

    No usable configuration (no file, a file or context it names missing) is an EngineUnavailableError;
    a kubeconfig that is no kubeconfig (not YAML, fields of the wrong kind, certificate data that is not
    base64) or whose server is no http(s) URL is a ConfigError naming the file: the client library
    would raise its own YAML, type and base64 errors, or take the server and fail each call on it."""
    require_client()
    import yaml
    from kubernetes import client
    from kubernetes import config as config_mod

    config: Any = config_mod
    from_sa = kubeconfig is None and in_cluster()
    # what the library loads unasked: $KUBECONFIG as it was when the library was imported, else ~/.kube/config
    default_path = str(getattr(config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", "~/.kube/config"))
    path, how, alt = config_source(kubeconfig, from_sa, default_path)
    where = "the in-cluster service account" if path is None else f"kubeconfig {path!r} ({how})"
    cfg: Any = type.__call__(client.Configuration)  # not a copy of the process-wide default
    cfg.retries = _retries()  # set before the ApiClient: its connection pool takes them
    try:
        if from_sa:
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
        problem = api_url_problem(str(cfg.host))
        if problem is None:
            return client.ApiClient(cfg), from_sa  # ValueError: a proxy-url urllib3 cannot use
    except (config_mod.ConfigException, OSError) as exc:
        # KUBECONFIG may list files (a:b), which the library merges: missing when none of them is there
        missing = path is not None and not any(os.path.exists(os.path.expanduser(one))
                                               for one in path.split(os.pathsep) if one)
        fix = "" if path is None or missing else (
            "Fix that file" + (context_choice() if context is not None else ""))
        # the library says "Invalid kube-config file. No configuration found." of a file that is not there
        why = "no such file" if missing else str(exc)
        raise EngineUnavailableError(f"no usable Kubernetes configuration in {where} ({why})." + _advice(fix, alt)
                                     ) from exc
    except (yaml.YAMLError, ValueError, TypeError, AttributeError, KeyError) as exc:
        name = type(exc).__name__ if type(exc).__name__ != "Error" else f"{type(exc).__module__}.Error"  # binascii
        fix = "" if path is None else (
            f"Fix the kubeconfig file {path} (its clusters, users and contexts: lists of named entries, as"
            " kubectl config view shows them; certificate data in base64; a proxy-url of http:// or https://)")
        detail = " ".join(str(exc).split())  # a YAML error spans lines
        raise ConfigError(f"{where} is no Kubernetes configuration plugbay can use ({name}: {detail})."
                          + _advice(fix, alt)) from exc
    if path is None:
        raise ConfigError(f"{problem} (from {where}); the pod's KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT"
                          " give it" + (f"; {alt}." if alt else "."))
    fix = "fix the server field of the kubeconfig's cluster" + (f" of context {context!r}" if context else "")
    raise ConfigError(f"{problem} (from {where}); {fix}" + (f", or {alt}." if alt else "."))


def _advice(fix: str, alt: str) -> str:
    """" Fix ..., or alt." / " Alt." / "" as one sentence."""
    said = f"{fix}, or {alt}" if fix and alt else fix or alt
    return f" {said[:1].upper()}{said[1:]}." if said else ""


def host_kubeconfig() -> str | None:
    """The kubeconfig this host loads unasked (as load_api_client(None)): None in-cluster, else
    $KUBECONFIG, else ~/.kube/config (read now: the client library reads $KUBECONFIG once, at import)."""
    if in_cluster():
        return None
    return os.environ.get("KUBECONFIG") or "~/.kube/config"


def _same_paths(a: str, b: str) -> bool:
    def norm(value: str) -> list[str]:
        return [os.path.realpath(os.path.expanduser(p)) for p in value.split(os.pathsep) if p]
    return norm(a) == norm(b)


def _contexts(kubeconfig: str | None) -> set[str]:
    """The context names in ``kubeconfig`` (this host's own file)."""
    if kubeconfig is None:
        return set()
    try:
        from kubernetes import config as config_mod

        config: Any = config_mod
        contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)  # parses only: runs no plugin
        return {str(c.get("name")) for c in contexts or [] if c.get("name")}
    except Exception:
        return set()


def reattach_kubeconfig(named: Any, named_context: Any, kubeconfig: str | None = None,
                        context: str | None = None) -> tuple[str | None, str | None]:
    """The (kubeconfig, context) a reattach may load: the caller's, else this host's own.

    Reattach data is untrusted, and loading a kubeconfig runs its ``exec:`` credential
    plugin: a file or context the data names is never loaded, only compared with what
    this host would use; a different one is a ReattachError saying how to point the host at it.
    """
    from plugbay.errors import ReattachError

    for key, value in (("kubeconfig", named), ("context", named_context)):
        if value is not None and not isinstance(value, str):
            raise ReattachError(f"reattach data's {key} must be a string or null, not {type(value).__name__};"
                                " pass the JSON that Client.reattach_config().to_json() produced")
    own = kubeconfig if kubeconfig is not None else host_kubeconfig()
    # a kubeconfig the caller passed is its own choice for this reattach (the named file is never
    # loaded): only a host's default is compared with the one the data names
    if named is not None and kubeconfig is None and (own is None or not _same_paths(named, own)):
        uses = "its in-cluster service account" if own is None else f"kubeconfig {own!r}"
        raise ReattachError(
            f"the reattach data names kubeconfig {named!r}, but this host uses {uses}; plugbay loads no"
            " kubeconfig that reattach data names (its exec: plugin would run before anything is checked)."
            f" Set KUBECONFIG={named} for this host if you trust that file{reattach_choice(False)}, or reattach"
            " from a host that uses it")
    # a context of this host's own kubeconfig is this host's own setting (the file is trusted), whichever
    # is current: a runner made with context="prod" while "dev" is current reattaches
    if context is None and named_context is not None and named_context not in _contexts(own):
        where = "in-cluster service account" if own is None else f"kubeconfig {own!r}"
        raise ReattachError(
            f"the reattach data names Kubernetes context {named_context!r}, which this host's {where} does"
            f" not have; reattach from a host whose kubeconfig has that context{reattach_choice(True)}")
    return own, context if context is not None else named_context


def default_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the pod's service account in-cluster, else of the kubeconfig context."""
    if in_cluster():
        try:
            with open(os.path.join(os.path.dirname(SA_TOKEN), "namespace")) as f:
                return f.read().strip() or "default"
        except OSError:
            pass
    try:
        from kubernetes import config as config_mod

        config: Any = config_mod
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        ctx = active if context is None else next((c for c in contexts if c.get("name") == context), None)
        return str(((ctx or {}).get("context") or {}).get("namespace") or "default")
    except Exception:
        return "default"


def api_message(exc: Any) -> str:
    """The message of a Kubernetes Status body, else the HTTP reason."""
    return status_message(exc) or said(str(exc.reason))


def status_message(exc: Any) -> str | None:
    """The message of a Kubernetes Status body; None when the answer is no Status that has one."""
    try:
        message = json.loads(exc.body).get("message")
    except Exception:
        return None
    return said(str(message)) if message else None


def not_found(exc: Any, resource: str, name: str) -> bool:
    """Whether an ApiException proves there is no ``resource`` (plural: "pods") named ``name``: a 404 whose
    body is the API server's Status, reason NotFound, naming that object. A 404 of anything else (a proxy's
    or load balancer's "404 page not found", a server URL that is not the API's) proves nothing about the
    object: a caller that took it for "gone" would report a running plugin as exited, and leave it running."""
    if getattr(exc, "status", None) != 404:
        return False
    try:
        body = json.loads(exc.body)
    except Exception:  # noqa: BLE001 - no JSON (None, a text page): no Status
        return False
    if not isinstance(body, dict) or body.get("kind") != "Status" or body.get("reason") != "NotFound":
        return False
    details = body.get("details")
    return isinstance(details, dict) and details.get("name") == name and details.get("kind") == resource


def close_client(api_client: Any) -> None:
    """Close an ApiClient plugbay made, and its connections.

    ``ApiClient.close()`` clears its pool manager, and urllib3 2's ``PoolManager.clear()`` drops the
    pools without closing them: their idle connections (a followed log's, released when it ended)
    stay open until the garbage collector runs. Each pool is closed first: its idle connections at
    once, and one still in a call on another thread (a start() being killed) when that call is done,
    so the call itself is not cut short.
    """
    pools = getattr(getattr(getattr(api_client, "rest_client", None), "pool_manager", None), "pools", None)
    try:
        held = [pools[key] for key in list(pools.keys())] if pools is not None else []
    except (KeyError, TypeError, AttributeError):  # not urllib3's container: close() does what it can
        held = []
    for pool in held:
        try:
            pool.close()
        except Exception:  # noqa: BLE001 - closing what is left: one that fails is closed enough
            pass
    api_client.close()


def api_host(api_client: Any) -> str:
    """The API server's URL an ApiClient talks to, for messages ("?" when it has none)."""
    return str(getattr(getattr(api_client, "configuration", None), "host", "?"))


def call(api_client: Any, namespace: str, verb: str, resource: str, func: Any, *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)`` against the API, its failures turned into plugbay's typed errors.

    Pass ``_request_timeout`` (see :func:`request_timeout`): without one the call may wait forever.
    """
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        answer = within_deadline(api_client, func, *args, **kwargs)
    except ApiException as exc:
        if exc.status == 403:
            raise forbidden(verb, resource, namespace, status_message(exc)) from exc
        if exc.status == 401:
            raise PermissionDeniedError(
                f"the Kubernetes API rejected the host's credentials (401) on {verb} {resource};"
                " refresh the kubeconfig's token or certificate") from exc
        raise RunnerError(f"Kubernetes API {verb} {resource} in {namespace!r} failed:"
                          f" {exc.status} {api_message(exc)}{status_advice(exc.status)}") from exc
    except UNREADABLE as exc:
        raise RunnerError(not_an_object(api_client, f"{verb} {resource}", exc)) from exc
    except (HTTPError, OSError) as exc:
        host = getattr(api_client.configuration, "host", "?")
        if timed_out(exc):
            raise EngineUnavailableError(late_message(host, f"{verb} {resource}", exc, kwargs.get("_request_timeout"))
                                         ) from exc
        raise EngineUnavailableError(used_up_message(host, f"{verb} {resource}", exc) or
                                     f"cannot reach the Kubernetes API at {host}: {exc}. Check that"
                                     " the cluster is up and the kubeconfig points at it.") from exc
    if answer is None and kwargs.get("_preload_content", True):  # a 200 whose body is JSON null
        raise RunnerError(not_an_object(api_client, f"{verb} {resource}", None))
    return answer


def within_deadline(api_client: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)`` ended by its ``_request_timeout`` in total; a late one raises TimeoutError."""
    from kubernetes.client.exceptions import ApiException

    limit = total_limit(kwargs.get("_request_timeout"))
    if limit is None:
        return func(*args, **kwargs)
    with bounded(api_client, limit) as deadline:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if deadline.expired and not isinstance(exc, ApiException):  # its sockets were shut: say why
                raise TimeoutError(f"no whole answer within {limit:g}s") from exc
            raise


# What the client raises reading a 200 whose body is no Kubernetes object: JSONDecodeError and pydantic's
# ValidationError (ValueErrors); TypeError or AttributeError from a field of the wrong kind (a number
# where a list goes: {"spec": {"containers": 3}}), which pydantic leaves to the deserialiser
UNREADABLE = (ValueError, TypeError, AttributeError)


def not_an_object(api_client: Any, what: str, exc: BaseException | None) -> str:
    """The message for an answer that is no Kubernetes object: ``exc`` the error reading it, None a null body."""
    host = getattr(api_client.configuration, "host", "?")
    why = "JSON null" if exc is None else f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
    return (f"the Kubernetes API at {host} answered {what} with something that is not a Kubernetes object"
            f" ({why}). Check that the kubeconfig's server URL points at the API"
            " server itself, not at a proxy or a web page")


def timed_out(exc: BaseException) -> bool:
    """Whether a urllib3/socket failure is a timeout (urllib3 wraps a retried one in MaxRetryError)."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError, TimeoutError as Urllib3Timeout

    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    # NewConnectionError (refused, no route) subclasses urllib3's ConnectTimeoutError: not a timeout here
    return isinstance(exc, (Urllib3Timeout, TimeoutError)) and not isinstance(exc, NewConnectionError)


def late_message(host: str, what: str, exc: BaseException, timeout: Any) -> str:
    """A call its limit cut: while it waited to ask again after an answer (a throttling server), or unanswered."""
    answered = answered_in(exc)
    return (answered_message(host, what, answered, total_limit(timeout)) if answered
            else timeout_message(host, what, timeout))


def used_up_message(host: str, what: str, exc: BaseException) -> str | None:
    """A call whose Retry the API's answers used up (each a status it asks again after), if ``exc`` says so."""
    answers = exhausted_in(exc)
    return exhausted_message(host, what, answers) if answers else None


def timeout_message(host: str, what: str, timeout: Any) -> str:
    limit = total_limit(timeout)
    within = f" within {limit:g}s" if limit is not None else ""
    return (f"the Kubernetes API at {host} did not answer {what}{within} (it took the connection, or not,"
            " but sent no answer in time). Check that the API server (and any proxy in front of it) is up"
            " and not overloaded, or raise the runner's api_timeout if it is only slow")


REWATCH_PAUSE = 0.5  # seconds before the next watch after one that ended early having changed something


def ended_early(took: float, timeout: float) -> bool:
    """Whether a watch ended in under half its timeoutSeconds: the API server did not end it."""
    return took < timeout / 2


def watch_cut_short(changes: int, took: float, timeout: float) -> bool:
    """Whether a watch ended early (:func:`ended_early`) having changed nothing: no event, or only bookmarks
    and what was known already. The API server (or a proxy in front of it) cuts watches short, so watching
    again at once would spin; count a failure. One that ended early with changes is followed by at least
    REWATCH_PAUSE: a server that sends one event and hangs up each time gets a watch per pause, no more."""
    return not changes and ended_early(took, timeout)


def no_change(events: int) -> str:
    """How a watch that changed nothing is described: "no event", or its events and no change."""
    return "no event" if not events else f"{events} event(s) and no change"
