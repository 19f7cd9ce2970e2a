"""Once kill() returned, ``exit_code`` is the code the plugin ended with, as its runner reports an exit:
a process's -N for signal N, a container's or a pod's engine code (128+N), -1 for a reattached process
(whose status only the Client that started it reads). Real plugins: the KV example as a process, in a
container and as a pod on the API stand-in. Before, exit_code stayed None after kill() while exited was True.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import AsyncClient, Client, ClientConfig  # noqa: E402
from plugbay.runners.attached import UNKNOWN_EXIT_CODE  # noqa: E402
from tests.kube_standin.fixtures import kubeconfig, kvtrap, standin  # noqa: E402,F401
from tests.procs import stopped  # noqa: E402
from tests.resilience_util import wait_until  # noqa: E402

KV = [sys.executable, str(REPO / "examples" / "kv" / "plugin.py")]
WRITABLE = ("/tmp", "/data")  # the KV plugin writes kv_<key> files in its working dir /data
# a Shutdown taken gives 0 only if the plugin exits within kill_grace (the default 2 s is short on a loaded machine,
# after which it is killed): a bound, not a timing
GRACE = 30


def _config(tmp_path: Path, **kw: Any) -> ClientConfig:
    from plugbay import ProcessRunner

    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                        runner=ProcessRunner(KV, cwd=tmp_path), **kw)


def test_a_killed_process_plugins_exit_code_is_the_one_it_ended_with(tmp_path: Path) -> None:
    client = Client(_config(tmp_path, kill_grace=GRACE))
    client.start()
    client.dispense(PLUGIN_NAME).put("a", b"1")
    client.kill()
    assert client.exited and client.exit_code == 0  # it took the Shutdown and exited by itself
    assert client.exit_code == client.runner.wait(0)


def test_a_frozen_process_plugin_killed_by_sigkill_says_minus_nine(tmp_path: Path) -> None:
    # a Supervisor's restart of a plugin that answered no health check: SIGKILL while still frozen
    client = Client(_config(tmp_path))
    client.start()
    pid = client.runner.pid  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGSTOP)
    # SIGSTOP is asynchronous: a plugin not yet stopped is not frozen to kill_unanswering(), which sends it SIGTERM
    assert wait_until(lambda: stopped(pid), 10)
    client.kill_unanswering()
    assert client.exited and client.exit_code == -signal.SIGKILL


def test_a_killed_async_clients_exit_code_is_the_one_its_plugin_ended_with(tmp_path: Path) -> None:
    async def main() -> AsyncClient:
        client = AsyncClient(_config(tmp_path, kill_grace=GRACE))
        await client.start()
        kv = await client.dispense(PLUGIN_NAME)
        await kv.put("a", b"1")
        await client.kill()
        return client

    client = asyncio.run(main())
    assert client.exited and client.exit_code == 0


def test_a_reattached_client_that_killed_the_plugin_says_its_code_is_unknown(tmp_path: Path) -> None:
    first = Client(_config(tmp_path))
    first.start()
    try:
        again = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                    reattach=first.reattach_config()))
        again.start()
        again.kill()
        # not the plugin's parent: how it ended cannot be read here (the Client that started it can)
        assert again.exited and again.exit_code == UNKNOWN_EXIT_CODE
        assert "its exit status is unknown" in again.runner.exit_words(UNKNOWN_EXIT_CODE)
    finally:
        first.kill()
    assert first.exit_code is not None and first.exit_code == first.runner.wait(0)


def test_a_closed_reattached_client_leaves_exit_code_none_while_the_plugin_runs(tmp_path: Path) -> None:
    with Client(_config(tmp_path)) as first:
        again = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                    reattach=first.reattach_config()))
        again.start()
        again.close()
        assert again.exited and again.exit_code is None  # it let go: the plugin runs on
        assert first.runner.wait(0) is None


@pytest.mark.docker
@pytest.mark.parametrize("frozen", [False, True], ids=["shutdown", "paused"])
def test_a_killed_containers_exit_code_is_the_engines(plugbay_image: Any, plugbay_docker: Any, frozen: bool) -> None:
    from plugbay.runners.docker import DockerRunner

    runner = DockerRunner(plugbay_image("kv"), transport="unix", writable_dirs=WRITABLE)
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                             kill_grace=GRACE)) as client:
        client.dispense(PLUGIN_NAME).put("a", b"1")
        if frozen:
            plugbay_docker.api.pause(runner.id)
            client.kill_unanswering()  # killed while paused: SIGKILL, which the engine reports as 128 + 9
            assert client.exited and client.exit_code == 128 + signal.SIGKILL
        else:
            client.kill()
            assert client.exited and client.exit_code == 0


@pytest.mark.kubernetes
def test_a_killed_pods_exit_code_is_the_one_its_runner_reports(kubeconfig: str, kvtrap: str) -> None:  # noqa: F811
    from plugbay.runners.kubernetes import KubernetesRunner

    runner = KubernetesRunner(kvtrap, kubeconfig=kubeconfig, address_mode="port-forward", writable_dirs=WRITABLE,
                              allow_loopback=True)
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                             start_timeout=60, kill_grace=GRACE)) as client:
        client.dispense(PLUGIN_NAME).put("a", b"1")
        client.kill()
        # 0: the watch saw its container end after the Shutdown; -1 (UNKNOWN_EXIT_CODE) only where the pod was
        # read gone before the watch told its container's end
        assert client.exited and client.exit_code in (0, UNKNOWN_EXIT_CODE), client.exit_code
        assert client.exit_code == runner.wait(0)


@pytest.mark.kubernetes
def test_a_pods_plugin_killed_by_a_signal_says_128_plus_its_number(standin: Any, kubeconfig: str,  # noqa: F811
                                                                    kvtrap: str, plugbay_docker: Any) -> None:  # noqa: F811
    from plugbay.runners.kubernetes import KubernetesRunner

    runner = KubernetesRunner(kvtrap, kubeconfig=kubeconfig, address_mode="port-forward", writable_dirs=WRITABLE,
                              allow_loopback=True)
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                             start_timeout=60, kill_grace=GRACE)) as client:
        client.dispense(PLUGIN_NAME).put("a", b"1")
        # the pod's container on the stand-in's engine, SIGKILLed as the OOM killer or a node's runtime ends one
        box = standin.store.pods[(runner.namespace, runner.pod_name)].box
        plugbay_docker.api.kill(box.id, "SIGKILL")
        assert runner.wait(30) == 128 + signal.SIGKILL  # the pod's status, as the API server reports it
        client.kill()
        assert client.exited and client.exit_code == 128 + signal.SIGKILL
