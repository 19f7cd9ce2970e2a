"""What the Kubernetes API server (or a proxy at its URL) says in a refusal is quoted by plugbay's errors
escaped and cut: a newline in it no longer starts a forged line of the host's log, and a message of
tens of kilobytes is cut to MAX_SAID characters. Both ways an answer is read: a call's Status (create
pods) and the port-forward's WebSocket upgrade.

The server is a real socket on 127.0.0.1 answering every request with the same Status.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay.errors import RunnerError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.kubernetes import KubernetesRunner
from plugbay.runners.kubernetes.wsupgrade import MAX_SAID
from tests.test_kube_api_timeouts import kubeconfig_for
from tests.test_kube_portforward_upgrade import RawServer, raw_serving, runner_for, status

pytestmark = pytest.mark.kubernetes
FORGED = "admission denied\n2026-12-06 09:00:00 ERROR plugbay: all plugins verified \x1b[32mOK"
LONG = FORGED + " " + "m" * 50_000


@pytest.fixture()
def refusing() -> Iterator[RawServer]:
    yield from raw_serving(lambda head: status(422, "Unprocessable Entity", LONG))


def _check(error: BaseException) -> None:
    said = str(error)
    assert "\n2026-12-06" not in said and "\x1b" not in said, said[:300]
    assert "admission denied\\x0a2026-12-06 09:00:00 ERROR plugbay: all plugins verified \\x1b[32mOK" in said
    assert "characters cut" in said and len(said) < MAX_SAID + 1000, len(said)


@pytest.mark.timeout(60)
def test_a_calls_refusal_is_quoted_escaped_and_cut(refusing: RawServer, tmp_path: Path) -> None:
    runner = KubernetesRunner("img", kubeconfig=kubeconfig_for(f"http://127.0.0.1:{refusing.port}",
                                                               tmp_path / "kubeconfig"), start_timeout=5, api_timeout=2)
    try:
        with pytest.raises(RunnerError, match="create pods in 'default' failed: 422") as caught:
            runner.start(LaunchSpec(env={}))
        _check(caught.value)
    finally:
        runner.detach()


@pytest.mark.timeout(60)
def test_a_port_forward_refusal_is_quoted_escaped_and_cut(refusing: RawServer) -> None:
    runner = runner_for(f"http://127.0.0.1:{refusing.port}")
    try:
        with pytest.raises(RunnerError, match="port 4000 failed: 422 Unprocessable Entity") as caught:
            runner.plugin_to_host("tcp", "0.0.0.0:4000")
        _check(caught.value)
    finally:
        runner.detach()
