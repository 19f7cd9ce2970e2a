"""A Kubernetes reattach is bounded by the reattaching host's times, never by ones its (untrusted) JSON names.

The JSON once set the runner's api_timeout (up to an hour): a Client with start_timeout=3 then waited
that long on an API server that took the request and never answered, and so did a later kill().
The API server is the stand-in (pods as local processes) told to stall the calls; the pytest
timeouts and thread joins only catch a hang, no assertion is on speed.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from plugbay import Client, ClientConfig, HandshakeConfig, ReattachConfig  # noqa: E402
from plugbay.errors import EngineUnavailableError  # noqa: E402
from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.server import StandIn  # noqa: E402

pytestmark = pytest.mark.kubernetes
HANG_BOUND = 20.0  # far past every bound the host chose here; the JSON's would be an hour


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    server = StandIn(runtime="process").start()
    monkeypatch.setenv("KUBECONFIG", server.write_kubeconfig(str(tmp_path / "kubeconfig.yaml")))
    try:
        yield server
    finally:
        server.unstall()  # the stalled requests end, unanswered
        server.stop()


def _in_thread(func: Any) -> dict[str, Any]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            func()
        except Exception as exc:
            outcome["error"] = exc
        outcome["ended"] = True

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_BOUND)
    return outcome


@pytest.mark.timeout(120)
@pytest.mark.parametrize("named", [{}, {"api_timeout": 3600}], ids=["none-named", "an-hour-named"])
def test_a_reattach_ends_within_the_clients_start_timeout(standin: StandIn, named: dict[str, Any]) -> None:
    standin.stall("get", "pods")
    text = json.dumps({"handshake": {"core_version": 1, "app_version": 1, "network": "tcp",
                                     "address": "0.0.0.0:4000", "protocol": "grpc"},
                       "runner": {"kind": "KubernetesRunner", "namespace": "default", "pod": "plugbay-x-1", **named}})
    client = Client(ClientConfig(handshake=HandshakeConfig(1, "K", "V"), plugins={}, start_timeout=3,
                                 reattach=ReattachConfig.from_json(text)))
    began = time.monotonic()
    outcome = _in_thread(client.start)
    assert outcome.get("ended"), f"the reattach still waited on the API server {HANG_BOUND:.0f}s into a 3s start"
    assert isinstance(outcome.get("error"), EngineUnavailableError), outcome
    assert "did not answer get pods" in str(outcome["error"]), outcome
    assert time.monotonic() - began < HANG_BOUND


@pytest.mark.timeout(120)
def test_the_kill_of_a_reattached_runner_is_bounded_by_the_hosts_api_timeout(standin: StandIn) -> None:
    kubeconfig = os.environ["KUBECONFIG"]  # the client library read $KUBECONFIG at import: name it
    runner = KubernetesRunner("no-engine/sleep:1", kubeconfig=kubeconfig,
                              command=[sys.executable, "-c", "import time; time.sleep(120)"])
    runner.start(LaunchSpec(env={}))
    try:
        attached = KubernetesRunner.attach({**runner.reattach_data(), "api_timeout": 3600}, kubeconfig=kubeconfig,
                                           api_timeout=2)
        standin.stall("delete", "pods")
        outcome = _in_thread(lambda: attached.kill(0))
        assert outcome.get("ended"), f"the kill still waited on the API server after {HANG_BOUND:.0f}s"
        assert isinstance(outcome.get("error"), EngineUnavailableError), outcome
        assert "did not answer delete pods" in str(outcome["error"]) and "within 2s" in str(outcome["error"])
    finally:
        standin.unstall()
        runner.kill(0)


@pytest.mark.timeout(120)
def test_a_reattach_late_in_its_start_leaves_the_runner_its_own_timeouts(standin: StandIn) -> None:
    # the time left of the Client's start bounds the attach's read, not what the runner does later
    from plugbay.runners.base import starting_until

    kubeconfig = os.environ["KUBECONFIG"]
    runner = KubernetesRunner("no-engine/sleep:1", kubeconfig=kubeconfig,
                              command=[sys.executable, "-c", "import time; time.sleep(120)"])
    runner.start(LaunchSpec(env={}))
    try:
        with starting_until(time.monotonic() + 0.5):  # half a second of the start left
            attached = KubernetesRunner.attach(runner.reattach_data(), kubeconfig=kubeconfig)
        try:
            assert attached.api_timeout == runner.api_timeout  # kill() is not held to that half second
            assert attached.start_timeout <= 0.5  # while the Client starts: its port-forward opens are
            attached.adopted()  # the Client started
            assert attached.start_timeout == runner.start_timeout
        finally:
            attached.detach()
    finally:
        runner.kill(0)
