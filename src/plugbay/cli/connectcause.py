"""Why a channel that ran out a deadline waiting for its connection has none (for the probes' messages)."""

from __future__ import annotations

import threading

import grpc

from plugbay.errors import TLSConfigError


def connect_failure(channel: grpc.Channel) -> str:
    """"; the connection: <why it failed>" when ``channel``'s last connection attempt failed, else "".

    The probes wait for a target that is coming up (wait_for_ready, channel_ready_future), so a target that
    never came up ends in a deadline that says nothing of the cause. Only a channel in TRANSIENT_FAILURE has
    one to tell: a call that does not wait fails there at once, with it (connection refused, a TLS failure).
    A connected channel (a slow answer; a health service answering UNAVAILABLE itself) or one still
    connecting (a peer that took the connection and says nothing) has none, and costs no further wait.
    """
    from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc

    first: list[grpc.ChannelConnectivity] = []
    seen = threading.Event()

    def note(state: grpc.ChannelConnectivity) -> None:
        if not first:
            first.append(state)
            seen.set()

    channel.subscribe(note, try_to_connect=False)  # called with the current state, on grpc's own thread
    try:
        seen.wait(0.2)
    finally:
        channel.unsubscribe(note)
    if first[:1] != [grpc.ChannelConnectivity.TRANSIENT_FAILURE]:
        return ""
    stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    try:
        stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.2, wait_for_ready=False)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return f"; the connection: {exc.details()}"
    return ""  # connected since


# network mode's words (plugbay.network.tls) for its API's fields, as the command line's flags say them
_FLAGS = (("(ca_file)", "(--ca)"), ("ca_file", "--ca"), ("cert_file", "--cert"), ("key_file", "--key"),
          ("server_name", "the address dialed (a SAN of the certificate)"),
          ("connect with insecure=True", "pass --insecure"), ("pass tls=NetworkTLS(...)", "pass --ca/--cert/--key"))


def tls_refusal(detail: str, target: str, insecure: bool) -> TLSConfigError | None:
    """The typed error of a probe whose connection failed on TLS (``detail``: gRPC's words, with the cause
    connect_failure found), saying which flag to fix; None when they show no TLS failure."""
    from plugbay.network.tls import tls_failure

    meaning = tls_failure(detail, tls=not insecure)
    if meaning is None:
        return None
    for api, flag in _FLAGS:
        meaning = meaning.replace(api, flag)
    fix = ("pass --ca with the CA that signed the plugin's certificate, and --cert/--key with a certificate"
           " signed by a CA the plugin trusts" if not insecure else "pass --ca/--cert/--key for mTLS")
    return TLSConfigError(f"TLS with {target} failed: {meaning}; {fix} (gRPC said: {detail.lstrip('; ')})")
