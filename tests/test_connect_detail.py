"""wait_healthy with a runner that heard why its plugin cannot be reached (connect_detail): the start
fails at once with that reason, unless the plugin is ending, whose exit (code, log tail) says more.

A Kubernetes plugin that crashes right after its handshake makes the kubelet refuse the port-forward;
the pod watch learns of the exit a moment later. Against a real gRPC channel to a port nothing serves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from plugbay.core.host.connect import wait_healthy
from plugbay.errors import RunnerError

REFUSED = "port-forward to pod ns/p port 4000: the API server said 'connection refused'"


@pytest.fixture()
def channel(closed_port: int) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(f"127.0.0.1:{closed_port}")  # nothing listens there
    try:
        yield ch
    finally:
        ch.close()


def test_a_plugin_exiting_as_its_connection_is_refused_is_an_exit(channel: grpc.Channel) -> None:
    gone_at = time.monotonic() + 0.3  # the runner hears of the exit after the refusal
    assert wait_healthy(channel, 10.0, exited=lambda: time.monotonic() >= gone_at, detail=lambda: REFUSED) is False


def test_a_refusal_of_a_plugin_that_runs_on_fails_at_once(channel: grpc.Channel) -> None:
    t0 = time.monotonic()
    with pytest.raises(RunnerError, match="cannot reach it: port-forward to pod ns/p port 4000"):
        wait_healthy(channel, 20.0, exited=lambda: False, detail=lambda: REFUSED)
    assert time.monotonic() - t0 < 10, "the refusal waited for the timeout"
