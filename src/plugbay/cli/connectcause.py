"""Why a channel that ran out a deadline waiting for its connection has none (for the probes' messages)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import grpc

from plugbay.core.transport.handlenames import named_handles
from plugbay.errors import ConfigError, TLSConfigError

if TYPE_CHECKING:
    from plugbay.network.resolver import Endpoint
    from plugbay.network.tls import NetworkTLS


def connect_failure(channel: grpc.Channel) -> str:
    """"; the connection: <why it failed>" when ``channel``'s last connection attempt failed, else "".

    The probes wait for a target that is coming up (wait_for_ready, channel_ready_future), so a target that
    never came up ends in a deadline that says nothing of the cause. Only a channel in TRANSIENT_FAILURE has
    one to tell: a call that does not wait fails there at once, with it (connection refused, a TLS failure).
    A connected channel (a slow answer; a health service answering UNAVAILABLE itself) or one still
    connecting (a peer that took the connection and says nothing) has none, and costs no further wait.
    """
    from plugbay._proto.grpc.health.v1 import health_pb2_grpc

    if _state(channel) != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
        return ""
    exc = _attempt_failure(health_pb2_grpc.HealthStub(channel))  # type: ignore[no-untyped-call]
    if exc is not None and exc.code() == grpc.StatusCode.UNAVAILABLE:
        return f"; the connection: {named_handles(str(exc.details()))}"
    return ""  # connected since


def silence(channel: grpc.Channel, calling: bool = False) -> str:
    """"; <what the deadline met>" when ``channel`` was connected or still connecting as a wait ran out, else "".

    A deadline alone ("Deadline Exceeded") reads as a plugin that is not there. One whose connection is set up
    (READY) runs and does not answer; one still connecting took the connection (or the network dropped the
    packets) and said nothing: a stopped, wedged or overloaded plugin, whose process is what to look at, not
    the network or the certificates. Never a TLS failure (connect_failure says those). ``calling``: a method of
    the user's (plugbay call), which may simply take longer than the wait: said first."""
    state = _state(channel)
    if state == grpc.ChannelConnectivity.READY:
        slow = "the method takes longer than --timeout, or the plugin" if calling else "it runs but"
        return (f"; the connection is up but the plugin did not answer in time: {slow} is stopped, wedged or"
                " overloaded (look at its process, its log and its load)")
    if state == grpc.ChannelConnectivity.CONNECTING:
        return ("; the connection was still being set up when the time ran out: the peer took it and said nothing"
                " (a plugin stopped, wedged or overloaded: look at its process and its log) or the network drops"
                " the packets")
    return ""


def _state(channel: grpc.Channel) -> grpc.ChannelConnectivity | None:
    """``channel``'s current state, as gRPC reports it on its own thread (None: no report within 1 s: its
    thread runs the report at once, but a loaded machine may not schedule it within a shorter wait)."""
    first: list[grpc.ChannelConnectivity] = []
    seen = threading.Event()

    def note(state: grpc.ChannelConnectivity) -> None:
        if not first:
            first.append(state)
            seen.set()

    channel.subscribe(note, try_to_connect=False)  # called with the current state, on grpc's own thread
    try:
        seen.wait(1.0)
    finally:
        channel.unsubscribe(note)
    return first[0] if first else None


def _attempt_failure(stub: Any) -> grpc.RpcError | None:
    """gRPC's newest connection attempt's failure, from a health check that does not wait (it fails at once with
    the attempt's cause); None once it was answered (connected since)."""
    from plugbay._proto.grpc.health.v1 import health_pb2

    try:
        stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.2, wait_for_ready=False)
    except grpc.RpcError as exc:
        return exc
    return None


def tls_failed_early(channel: grpc.Channel, target: str, insecure: bool, answer: grpc.Future,
                     timeout: float, endpoint: Endpoint | None = None,
                     network_tls: NetworkTLS | None = None) -> ConfigError | None:
    """The typed error of a definite TLS failure of ``channel``'s connection, found while ``answer`` (a call,
    or a wait for the connection, that waits for a target coming up) is pending, for at most ``timeout`` (a
    wait for the connection has no deadline of its own); None once it ended or the channel connected, at
    the timeout, and for any other failure. ``answer`` is cancelled when the error is returned.

    No wait helps a certificate the other side refused or a CA that did not sign its certificate: the
    library's pool fails such a call at once, and so does the command line rather than at --timeout. A
    failure that is no definite TLS one (refused, cut short, a silent peer) is left to the call's own wait,
    and so is the plugin's certificate out of its dates by this host's clock: a plugin mid-renewal, a few
    seconds of clock skew, is reached once the date passes (the call names the cause at its end).

    Plaintext (``insecure``) to a TLS server reads as a connection cut short during setup, as a plugin
    restarting does: the library's TLS probe of ``endpoint`` (plugbay.network.tlsprobe, the pool's own
    judgement) tells them apart, and a peer that answers a TLS handshake is said at once too.
    """
    from plugbay._proto.grpc.health.v1 import health_pb2_grpc
    from plugbay.network.tls import PEER_CERT_DATES, cut_short, tls_failure, with_lapsed_cert

    changed = threading.Condition()
    states: list[grpc.ChannelConnectivity] = []

    def note(state: grpc.ChannelConnectivity) -> None:
        with changed:
            states.append(state)
            changed.notify_all()

    def ended(_: object) -> None:
        with changed:
            changed.notify_all()

    stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    seen, deadline = 0, time.monotonic() + timeout
    closing = ""  # gRPC's words of the last close during setup, once a probe found one right after the handshake
    answer.add_done_callback(ended)
    channel.subscribe(note, try_to_connect=True)  # called on grpc's own thread, with each state
    try:
        while True:
            with changed:
                # woken each _LOOK_AGAIN too: gRPC's channel stays in TRANSIENT_FAILURE across its later attempts,
                # so no new state tells of them, and only the first one would be looked at
                news = changed.wait_for(lambda: len(states) > seen or answer.done(),
                                        min(max(deadline - time.monotonic(), 0), _LOOK_AGAIN))
                if answer.done() or (not news and time.monotonic() >= deadline):
                    return _closed_throughout(closing, answer, stub, target, network_tls, endpoint)
                if not states:
                    continue
                seen, state = len(states), states[-1]
            if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.SHUTDOWN):
                return None
            if state != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                continue
            exc = _attempt_failure(stub)
            if exc is not None:
                detail = f"UNAVAILABLE: {named_handles(str(exc.details()))}"
                meaning = tls_failure(detail, tls=not insecure) if exc.code() == grpc.StatusCode.UNAVAILABLE else None
                if meaning in PEER_CERT_DATES:
                    continue  # the plugin's certificate's date may yet pass: --timeout's wait names it at its end
                dialed = endpoint.address if endpoint is not None else ""
                refused = None if meaning is None else _refusal(with_lapsed_cert(meaning, network_tls), detail,
                                                                target, insecure, _checked(network_tls, dialed))
                if refused is None and insecure and endpoint is not None and cut_short(detail):
                    refused = _wants_tls(endpoint, detail, target, max(deadline - time.monotonic(), 0.1))
                elif refused is None and endpoint is not None and cut_short(detail):
                    # cut short again after a probe saw the close: so it goes on (a probe on a loaded machine may
                    # miss a close that comes late, which must not undo the one seen)
                    if closing or _closes_after_handshake(endpoint, network_tls, deadline):
                        closing = detail
                else:  # any other failure (refused, silent): the closes, if any, did not last to the end
                    closing = ""
                if refused is not None:
                    answer.cancel()
                    return refused
            else:
                return None  # connected since
    finally:
        channel.unsubscribe(note)


_LOOK_AGAIN = 1.0  # seconds between looks at a connection that keeps failing (gRPC's newest attempt's words)

# network mode's words (plugbay.network.tls) for its API's fields, as the command line's flags say them
_FLAGS = (("(ca_file)", "(--ca)"), ("ca_file", "--ca"), ("cert_file", "--cert"), ("key_file", "--key"),
          ("server_name", "--server-name (by default the address dialed)"),
          ("connect with insecure=True", "pass --insecure"), ("pass tls=NetworkTLS(...)", "pass --ca/--cert/--key"))


def _closes_after_handshake(endpoint: Endpoint, network_tls: NetworkTLS | None, deadline: float) -> bool:
    """Whether the library's TLS probe sees the endpoint close right after each handshake: grpcio's TLS (the
    gateway without --multiplex) refuses a certificate so, with no alert, and gRPC says only "Socket closed"."""
    from plugbay.network.tlsprobe import CLOSED_AFTER_HANDSHAKE, probe_taken

    return probe_taken(endpoint, network_tls, min(max(deadline - time.monotonic(), 0.1), 2.0)) \
        == CLOSED_AFTER_HANDSHAKE


def _closed_throughout(closing: str, answer: grpc.Future, stub: Any, target: str, network_tls: NetworkTLS | None,
                       endpoint: Endpoint | None) -> ConfigError | None:
    """At the wait's end: the refusal of a plugin that, to the last attempt, closed the connection right after
    the handshake (gRPC's ``closing`` words), unless ``answer`` was answered meanwhile. Such a plugin most likely
    refused --cert (or it is a TLS proxy whose backend is down: the words say both), which the command told as
    UNREACHABLE, "check that the plugin runs", exit 3; the pool calls it so once it lasts 3 s."""
    from plugbay.network.tls import cut_short, with_lapsed_cert
    from plugbay.network.tlsprobe import CLOSED_AFTER_HANDSHAKE

    if not closing or (answer.done() and not answer.cancelled() and _plugin_answered(answer)):
        return None
    # gRPC's channel stays in TRANSIENT_FAILURE across its later attempts (no new state to wake the wait):
    # the newest attempt's words, asked now, say whether the closes lasted (a plugin gone since is refused)
    exc = _attempt_failure(stub)
    if exc is None:
        return None  # connected since
    latest = f"UNAVAILABLE: {named_handles(str(exc.details()))}"
    if exc.code() != grpc.StatusCode.UNAVAILABLE or not cut_short(latest):
        return None  # the plugin answered since, or the newest attempt met something else (refused, silent)
    closing = latest
    answer.cancel()
    dialed = endpoint.address if endpoint is not None else ""
    return _refusal(with_lapsed_cert(CLOSED_AFTER_HANDSHAKE, network_tls), closing, target, False,
                    _checked(network_tls, dialed))


def _plugin_answered(answer: grpc.Future) -> bool:
    """Whether the done health check was answered by the plugin (a status, or an error the plugin sent), so no
    refusal of --cert explains the wait's end. Its own deadline (made just before this wait's) or a cancel is no
    answer: it ran out while the plugin kept closing."""
    error = answer.exception()
    return error is None or not isinstance(error, grpc.RpcError) or error.code() not in (
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def _wants_tls(endpoint: Endpoint, detail: str, target: str, timeout: float) -> ConfigError | None:
    """The typed error when the plaintext connection's peer, cut short during setup, answers a TLS handshake
    of the library's probe; None for anything else (nothing listens, a reset before any handshake)."""
    from plugbay.network.tls import WANTS_TLS
    from plugbay.network.tlsprobe import probe_taken

    if probe_taken(endpoint, None, min(timeout, 2.0)) != WANTS_TLS:
        return None
    return _refusal(WANTS_TLS, detail, target, insecure=True)


def tls_refusal(detail: str, target: str, insecure: bool, network_tls: NetworkTLS | None = None,
                dialed: str = "") -> ConfigError | None:
    """The typed error of a probe whose connection failed on TLS (``detail``: gRPC's words, with the cause
    connect_failure found), saying which flag to fix; None when they show no TLS failure. ``network_tls``:
    the NetworkTLS the connection was made with, whose --cert out of its dates a refusal names (the library's
    words); ``dialed``: the endpoint's address, the name checked without --server-name."""
    from plugbay.network.tls import tls_failure, with_lapsed_cert

    meaning = tls_failure(detail, tls=not insecure)
    return None if meaning is None else _refusal(with_lapsed_cert(meaning, network_tls), detail, target, insecure,
                                                 _checked(network_tls, dialed))


def _checked(network_tls: NetworkTLS | None, dialed: str) -> tuple[str, bool]:
    """The name the plugin's certificate was checked against (--server-name, else the host dialed), and
    whether --server-name gave it."""
    if network_tls is not None and network_tls.server_name:
        return network_tls.server_name, True
    return (dialed.rsplit(":", 1)[0].strip("[]") if ":" in dialed else dialed), False


def _name_mismatch(target: str, checked: str, given: bool, detail: str) -> TLSConfigError:
    """A certificate that does not name the name checked: which name, where it came from, what to pass. The
    CA is not in question (gRPC checks the name after the chain)."""
    which = (f"{checked!r}, the name given by --server-name" if given else
             f"{checked!r}, the address dialed (the name checked without --server-name)" if checked else
             "the address dialed (the name checked without --server-name)")
    return TLSConfigError(f"TLS with {target} failed: the plugin's certificate does not name {which}. Pass"
                          " --server-name with a name its subjectAltName carries, or serve the plugin with a"
                          f" certificate that names {checked or 'that address'} (gRPC said: {detail.lstrip('; ')})")


def _refusal(meaning: str, detail: str, target: str, insecure: bool, checked: tuple[str, bool] = ("", False)
             ) -> ConfigError:
    """A TLSConfigError naming the flag to fix; for a plaintext peer that answered no HTTP/2 (no TLS involved)
    a ConfigError worded as the library's RemoteProtocolError, whose advice (--ca/--cert/--key) its meaning
    already holds. Both exit 2, as docs/cli.md says: the flags or the target are what to fix. ``checked``:
    the name the plugin's certificate was checked against, and whether --server-name gave it."""
    from plugbay.network.tls import NAME_MISMATCH, NOT_HTTP2, not_grpc_words

    if meaning == NAME_MISMATCH:
        return _name_mismatch(target, *checked, detail)
    plaintext_no_http2 = meaning == NOT_HTTP2
    for api, flag in _FLAGS:
        meaning = meaning.replace(api, flag)
    if plaintext_no_http2:
        return ConfigError(not_grpc_words(target, "--insecure", meaning, detail.lstrip("; ")))
    fix = ("; pass --ca with the CA that signed the plugin's certificate, and --cert/--key with a certificate"
           " signed by a CA the plugin trusts" if not insecure else
           "" if "--ca/--cert/--key" in meaning else "; pass --ca/--cert/--key for mTLS")  # said once
    return TLSConfigError(f"TLS with {target} failed: {meaning}{fix} (gRPC said: {detail.lstrip('; ')})")
