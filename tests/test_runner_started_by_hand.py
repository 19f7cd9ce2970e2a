"""A Docker or Kubernetes runner started by hand and then given to a Client is refused untouched.

Only the process runner showed that it had been started: a Client took the others, their start()
refused to run twice, and the Client's failed start then killed the plugin someone else ran.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from plugbay import Client, ClientConfig
from plugbay.errors import RunnerError
from plugbay.runners.base import LaunchSpec, Runner
from plugbay.runners.docker import DockerRunner
from plugbay.runners.kubernetes import KubernetesRunner
from tests.kube_standin.process_fixtures import process_kubeconfig, process_standin  # noqa: F401 - fixtures
from tests.trap_kv_util import HANDSHAKE, PLUGIN_NAME, KVPlugin

REFUSED = r"was already started \(one runner runs one plugin once, for one Client\), so this Client left it alone"


def refused(runner: Runner) -> None:
    assert runner.start_called
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner))
    with pytest.raises(RunnerError, match=REFUSED):
        client.start()
    client.kill()  # nor does a kill() of the Client that never started it touch the runner
    assert runner.wait(0.5) is None, "the Client ended the plugin it was refused"


@pytest.mark.docker
@pytest.mark.usefixtures("plugbay_docker")
def test_docker(plugbay_docker: Any) -> None:
    runner = DockerRunner("plugbay-base:bookworm", entrypoint=["sleep", "60"])
    assert not runner.start_called
    runner.start(LaunchSpec(env={}))
    try:
        refused(runner)
        assert plugbay_docker.api.inspect_container(runner.id)["State"]["Running"]
        runner.detach()  # leaves the container running, and the runner started (it dropped its engine client)
        refused(runner)
        assert plugbay_docker.api.inspect_container(runner.id)["State"]["Running"]
    finally:
        runner.kill(0)


@pytest.mark.kubernetes
def test_kubernetes(kubeconfig: str) -> None:
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, start_timeout=20,
                              command=[sys.executable, "-c", "import time; time.sleep(60)"])
    assert not runner.start_called
    runner.start(LaunchSpec(env={}))
    try:
        refused(runner)
    finally:
        runner.kill(0)


def test_a_runner_of_ones_own_may_use_the_name_started(in_tmp: object) -> None:
    # the hook was first a `started` property: a subclass setting self.started could not be built,
    # and one with its own `started` was refused by every Client before it ever ran
    from plugbay.runners.process import ProcessRunner
    from tests.trap_kv_util import TRAP

    class Mine(ProcessRunner):
        def __init__(self) -> None:
            super().__init__(TRAP)
            self.started = True  # the runner's own business

    runner = Mine()
    assert not runner.start_called
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner)) as client:
        client.dispense(PLUGIN_NAME).put("k", b"v")
        assert runner.start_called
