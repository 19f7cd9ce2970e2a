"""Brokered callbacks with the counter plugin as a pod on the Kubernetes stand-in, via port-forward.

The host reaches the pod only through the API server's port-forward of the
plugin's one port: multiplexed brokering rides inside that connection;
per-connection brokering has no way in and says so.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay.core.host.client import Client, ClientConfig
from plugbay.errors import RunnerError
from plugbay.runners.kubernetes import KubernetesRunner
from tests.kube_standin.fixtures import kubeconfig, need_docker, standin  # noqa: F401

pytestmark = pytest.mark.kubernetes

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "counter"))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402


@pytest.fixture(scope="module")
def counter_image() -> str:
    need_docker()
    from plugbay import images

    return images.ensure_example("counter", progress=lambda line: None)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def sum(self, a: int, b: int) -> int:
        self.calls.append((a, b))
        return a + b


def _client(image: str, kubeconfig: str, **kwargs: Any) -> Client:  # noqa: F811
    runner = KubernetesRunner(image, kubeconfig=kubeconfig, start_timeout=90, address_mode="port-forward",
                              writable_dirs=("/tmp", "/data"))
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, runner=runner,
                               start_timeout=120, **kwargs))


@pytest.mark.parametrize("auto_mtls", [False, True], ids=["plain", "automtls"])
def test_multiplexed_callbacks_through_port_forward(counter_image: str, kubeconfig: str,  # noqa: F811
                                                    auto_mtls: bool) -> None:
    rec = Recorder()
    with _client(counter_image, kubeconfig, multiplex_broker=True, auto_mtls=auto_mtls) as client:
        assert client.handshake.multiplex and client.handshake.network == "tcp"
        counter = client.dispense(PLUGIN_NAME)
        counter.put("k", 2, rec)
        counter.put("k", 40, rec)
        assert counter.get("k") == 42
        assert rec.calls == [(0, 2), (2, 40)]


def test_per_connection_cannot_cross_port_forward(counter_image: str, kubeconfig: str) -> None:  # noqa: F811
    with _client(counter_image, kubeconfig) as client:
        counter = client.dispense(PLUGIN_NAME)
        # the host's per-connection socket exists only on the host: the runner refuses to
        # announce it, so the call fails at once and says how to broker across a pod
        rec = Recorder()
        with pytest.raises(RunnerError, match="cannot reach host address unix:") as err:
            counter.put("k", 1, rec)
        assert "multiplex_broker=True" in str(err.value)
        assert client.broker._served == [] and rec.calls == []
        # the main connection is unaffected
        with pytest.raises(grpc.RpcError, match="no value stored"):
            counter.get("k")
