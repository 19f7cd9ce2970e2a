"""How the advice in Kubernetes configuration errors names the caller's settings.

One loader serves the Python API (``KubernetesRunner(kubeconfig=...)``, ``sweep()``,
EndpointSliceResolver) and the command line (``plugbay run --pod ... --kubeconfig FILE``).
Advice to "pass kubeconfig=" names nothing a shell user can type, and "or api_client="
nothing they have: a caller whose settings are spelled otherwise says so around its
calls with :func:`spelled`; the Python API's keywords are the default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

MAX_API_TIMEOUT = 3600.0  # an hour for one API call's answer is already no bound a caller would want


@dataclass(frozen=True)
class Spelling:
    """The caller's names for the settings that choose a cluster; None: the caller has no such setting."""

    kubeconfig: str | None = "kubeconfig="
    context: str | None = "context="
    api_client: str | None = "api_client="
    attach: bool = True  # the caller may give ReattachConfig.from_json(...) an attach= of its own


PYTHON = Spelling()


def command_line(kubeconfig_flag: str | None) -> Spelling:
    """A command's spelling: its kubeconfig flag (None: the command has none), and no other setting."""
    return Spelling(kubeconfig=kubeconfig_flag, context=None, api_client=None, attach=False)


_SPELLING: ContextVar[Spelling] = ContextVar("plugbay_kubernetes_spelling", default=PYTHON)


@contextmanager
def spelled(spelling: Spelling) -> Iterator[None]:
    """Advice given inside names the caller's settings as ``spelling`` does."""
    token = _SPELLING.set(spelling)
    try:
        yield
    finally:
        _SPELLING.reset(token)


def current() -> Spelling:
    return _SPELLING.get()


def config_source(kubeconfig: str | None, from_sa: bool, default_path: str) -> tuple[str | None, str, str]:
    """(the kubeconfig load_api_client loads, None in-cluster; where that path came from; how the caller
    makes it load another, "" when it cannot), for messages. ``default_path``: what the client library
    loads unasked ($KUBECONFIG as it was when the library was imported, else ~/.kube/config)."""
    s = current()
    ways = " or ".join(name for name in (s.kubeconfig, s.api_client) if name)
    if from_sa:
        return None, "", f"pass {ways} to use another cluster's" if ways else ""
    if kubeconfig is not None and s.kubeconfig:
        return kubeconfig, f"passed as {s.kubeconfig}", (f"pass {s.kubeconfig} a working one"
                                                          + (f", or {s.api_client}" if s.api_client else ""))
    # a caller without a kubeconfig setting passes only this host's own (reattach_kubeconfig's default)
    path = kubeconfig if kubeconfig is not None else default_path
    passing = f"pass {ways}" if ways else ""
    if os.environ.get("KUBECONFIG") == path:
        return path, "named by KUBECONFIG", "set KUBECONFIG to a working one" + (f", or {passing}" if passing else "")
    how = ("the default: KUBECONFIG is not set" if path == "~/.kube/config" else
           "KUBECONFIG when the kubernetes client was imported")
    return path, how, ", ".join(x for x in (passing, "set KUBECONFIG") if x) + (
        ", or run the host in a pod with a service account")


def context_choice() -> str:
    """" (or pass a context= it has)" where the caller has a context setting, else ""."""
    name = current().context
    return f" (or pass a {name} it has)" if name else ""


def reattach_choice(context: bool) -> str:
    """", or pass ..." saying how the caller reattaches with a kubeconfig (and ``context``) of its own; ""
    when it has no way to."""
    s = current()
    if s.attach:
        return (", or pass ReattachConfig.from_json(..., attach=functools.partial(KubernetesRunner.attach,"
                + (" kubeconfig=..., context=...)) with one of yours" if context else
                   " kubeconfig=...)) with this host's kubeconfig for that cluster"))
    if s.kubeconfig and not context:
        return f", or pass {s.kubeconfig} with this host's kubeconfig for that cluster"
    return ""


def seconds_text(seconds: float) -> str:
    """``seconds`` a server asked for, for a message: a Retry-After may be past any float (10**400), which
    round() and :g cannot print."""
    try:
        value = float(seconds)
    except OverflowError:
        value = math.inf
    return f"{round(value, 1):g}s" if math.isfinite(value) else "more than 1e+308s"


def digits_seconds(text: object) -> float | None:
    """A Retry-After of decimal digits as seconds, however many: int() refuses over 4300 digits (leading
    zeros too) and float() past 1e308 (math.inf then); None when it is no such number."""
    value = str(text).strip()
    if not value or not value.isascii() or not value.isdigit():
        return None
    significant = value.lstrip("0")
    if len(significant) > 309:
        return math.inf
    try:
        return float(int(significant or "0"))
    except OverflowError:  # 309 digits can be past 1.8e308 too
        return math.inf


# who chose a wait between asks that was no Retry-After: its words, and the setting that makes it shorter
_BACKOFFS = {"Retry": ("the client's Retry backoff", "the ApiClient's Retry backoff_factor"),
             "client_go": ("the client-go retry backoff", "the duration (or factor, cap) of the ApiClient"
                                                          " configuration's client_go_retry_backoff")}
GATEWAY = frozenset({502, 503, 504})  # what a proxy or load balancer says for an API server it cannot reach


def answered_message(host: str, what: str, answered: tuple[int, float, bool, str], limit: float | None,
                     tunable: str | None = "the runner's api_timeout") -> str:
    """A call cut by its ``limit`` (seconds) while waiting to ask again after an answer (deadline.answered_in);
    ``tunable``: the setting that would give it longer (None: none would)."""
    status, seconds, asked, waiter = answered
    within = f" of {round(limit, 1):g}s" if limit is not None else ""
    wait = seconds_text(seconds)
    endless = seconds > MAX_API_TIMEOUT  # no setting waits that out: raising one is no advice
    tunable = None if endless else tunable
    if asked:
        why = "throttled: API Priority and Fairness, or an overloaded server" if status == 429 else "busy"
        if endless:  # a server (or proxy) asking for hours or years: a fault, not a queue to wait in
            return (f"the Kubernetes API at {host} answered {what} {status} ({why}), asking to be asked again in"
                    f" {wait}, longer than any call waits (an API call's limit is at most {MAX_API_TIMEOUT:.0f}s);"
                    f" the call's limit{within} ran out while it waited. Check the API server and any proxy in front"
                    " of it (kubectl get --raw /readyz): a Retry-After that long is a fault")
        return (f"the Kubernetes API at {host} answered {what} {status} ({why}), asking to be asked again in"
                f" {wait}; the call's limit{within} ran out while it waited. Retry later"
                + (f", or raise {tunable} to wait it out" if tunable else ""))
    backoff, setting = _BACKOFFS.get(waiter, _BACKOFFS["Retry"])
    return (f"the Kubernetes API at {host} answered {what} {status}, and the call's limit{within} ran out during"
            f" {backoff} of {wait} before asking again. Check the API server, or lower {setting}"
            + (f" or raise {tunable}" if tunable else ""))


def exhausted_message(host: str, what: str, answers: tuple[tuple[int, ...], int]) -> str:
    """A call whose Retry asked again after each of ``answers``' statuses, and after its lost connections
    (deadline.exhausted_in), until its retries ran out: the API answered, so it is no "cannot reach"."""
    statuses, lost = answers
    kinds = set(statuses)
    times = f"{len(statuses)} time{'s' if len(statuses) > 1 else ''}"
    said = f"{statuses[0]} {times}" if len(kinds) == 1 else f"{', '.join(map(str, statuses))} ({times})"
    if lost:
        said += f", and {lost} connection{'s were' if lost > 1 else ' was'} lost"
    if kinds == {429}:  # only throttled: a mix with failures is failing
        verdict = ("the API server is up but throttling the host (API Priority and Fairness, or an overloaded"
                   " server). Retry later")
    elif kinds - {429} <= GATEWAY:  # a proxy's words as much as the API server's: neither is known to be up
        verdict = ("a proxy or load balancer in front of the API server may be answering for one it cannot reach,"
                   " or the API server is failing the request. Check both (kubectl get --raw /readyz, and their"
                   " logs)")
    else:
        verdict = ("the API server is up but failing the request. Check it and any proxy in front of it (kubectl"
                   " get --raw /readyz, and the server's log)")
    return (f"the Kubernetes API at {host} answered {what} {said}, {'a status' if len(kinds) == 1 else 'statuses'}"
            f" the ApiClient's Retry asks again after, until its retries ran out: {verdict}, or give the Retry"
            f" more retries ({'total, status, read, connect' if lost else 'total, status'}) if the failures pass")


def status_advice(status: object) -> str:
    """What to do about a final 429 or 5xx answer (a client's retries, client-go's too, ended on it)."""
    if status == 429:
        return ("; the API server is throttling the host (API Priority and Fairness, or an overloaded server):"
                " retry later")
    if status == 500 or status in GATEWAY:  # not 501/505: a request the server does not support is no outage
        return "; the API server (or a proxy in front of it) failed the request: check it (kubectl get --raw /readyz)"
    return ""
