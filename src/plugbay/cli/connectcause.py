"""Why a channel that ran out a deadline waiting for its connection has none (for the probes' messages)."""

from __future__ import annotations

import threading

import grpc


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
