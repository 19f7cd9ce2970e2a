"""``plugbay diagnose pod:NS/NAME`` against an API server that does not answer, or answers only some calls.

Each of its Kubernetes calls is bounded by --api-timeout (connect, answer, whole body) and its failures
are plugbay's typed errors: an API server (or a proxy) that takes the request and never answers held the
command for good. Against the Kubernetes stand-in (its pods are local processes).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("kubernetes")

from plugbay.cli.ops import API_TIMEOUT  # noqa: E402
from plugbay.runners.kubernetes.api import DEFAULT_API_TIMEOUT, close_client, load_api_client  # noqa: E402
from tests.cli_util import plugbay  # noqa: E402
from tests.kube_standin.server import StandIn  # noqa: E402

pytestmark = pytest.mark.kubernetes
POD = "plugbay-diagnosed"


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[StandIn, str]]:
    standin = StandIn(runtime="process").start()
    try:
        yield standin, standin.write_kubeconfig(str(tmp_path / "kubeconfig.yaml"))
    finally:
        standin.stop()


def _make_pod(kubeconfig: str) -> None:
    from kubernetes import client

    api_client, _ = load_api_client(kubeconfig)
    try:
        program = "import sys, time\nprint('a line of the plugin', flush=True)\ntime.sleep(60)\n"
        client.CoreV1Api(api_client).create_namespaced_pod("default", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": POD},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "plugin", "image": "x", "command": [sys.executable, "-c", program]}]}})
    finally:
        close_client(api_client)


def _diagnose(kubeconfig: str, *extra: str) -> dict[str, object]:
    out = plugbay("diagnose", f"pod:default/{POD}", "--kubeconfig", kubeconfig, "--json", *extra)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_the_default_api_timeout_is_the_runners() -> None:
    assert API_TIMEOUT == DEFAULT_API_TIMEOUT


@pytest.mark.timeout(120)
def test_an_api_server_that_never_answers_is_an_error_not_a_hang(server: tuple[StandIn, str]) -> None:
    standin, kubeconfig = server
    standin.stall("get", "pods")
    out = plugbay("diagnose", f"pod:default/{POD}", "--kubeconfig", kubeconfig, "--api-timeout", "1")
    assert out.returncode == 3, out.stderr  # EngineUnavailableError
    assert "did not answer get pods within 1s" in out.stderr, out.stderr
    bad = plugbay("diagnose", f"pod:default/{POD}", "--kubeconfig", kubeconfig, "--api-timeout", "0")
    assert bad.returncode == 2 and "api_timeout must be a positive number" in bad.stderr, bad.stderr


@pytest.mark.timeout(120)
def test_events_or_a_log_that_do_not_come_are_said_and_the_pod_still_diagnosed(server: tuple[StandIn, str]) -> None:
    standin, kubeconfig = server
    _make_pod(kubeconfig)
    deadline = time.monotonic() + 30
    while (facts := _diagnose(kubeconfig))["last_log_lines"] != ["a line of the plugin"]:
        assert time.monotonic() < deadline, facts
        time.sleep(0.2)
    assert facts["state"] == "Running" and facts["logs_error"] is None
    standin.stall("list", "events")
    standin.stall("get", "pods/log")
    facts = _diagnose(kubeconfig, "--api-timeout", "1")
    assert facts["state"] == "Running"
    (event,) = facts["events"]
    assert isinstance(event, str) and event.startswith("(events unavailable: ") and "list events within 1s" in event
    assert facts["last_log_lines"] == [] and "get pods/log within 1s" in str(facts["logs_error"])
    standin.unstall()
    standin.deny("list", "events")  # a Role without events (or pods/log): said in place, as a timeout is
    standin.deny("get", "pods/log")
    facts = _diagnose(kubeconfig)
    assert "refused to list events" in str(facts["events"]) and "refused to get pods/log" in str(facts["logs_error"])
