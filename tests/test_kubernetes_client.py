"""The KV plugin as a pod, used through plugbay's Client, on the API stand-in (real containers)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import CallTimeoutError, Client, ClientConfig, PluginDiedError, PluginExitedError  # noqa: E402
from plugbay.errors import PermissionDeniedError, PodCrashLoopError  # noqa: E402
from plugbay.runners.attached import UNKNOWN_EXIT_CODE  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.fixtures import kubeconfig, kvtrap, standin, testapp  # noqa: E402,F401
from tests.kube_standin.server import StandIn  # noqa: E402

pytestmark = pytest.mark.kubernetes
WRITABLE = ("/tmp", "/data")  # the KV plugin writes kv_<key> files in its working dir /data


def kv_client(runner: KubernetesRunner, **kw: Any) -> Client:
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                               start_timeout=60, **kw))


@pytest.mark.parametrize(("mode", "auto_mtls"), [("port-forward", False), ("port-forward", True),
                                                 ("in-cluster", False), ("in-cluster", True)])
def test_kv_round_trip(kubeconfig: str, kvtrap: str, mode: str, auto_mtls: bool) -> None:  # noqa: F811
    runner = KubernetesRunner(kvtrap, kubeconfig=kubeconfig, address_mode=mode, writable_dirs=WRITABLE,
                              allow_loopback=True)  # the stand-in's pod IP is 127.0.0.1
    with kv_client(runner, auto_mtls=auto_mtls) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("greeting", b"hello from a pod \x00")
        assert kv.get("greeting") == b"hello from a pod \x00"
        assert client.handshake.network == "tcp" and client.handshake.address.startswith("127.0.0.1:")
        assert (client.handshake.server_cert is not None) == auto_mtls
        pod = runner.pod_name
    assert runner.wait(0) == 0  # GRPCController.Shutdown made the plugin exit by itself
    assert pod and runner.diagnose().startswith(f"pod default/{pod}")


def test_the_stderr_tail_asked_before_start_leaves_the_runner_alone(kubeconfig: str, kvtrap: str) -> None:  # noqa: F811
    # stderr_tail() looked at runner.wait(0) before start(): the runner's pod watch began on no pod name,
    # and start() never watched the real pod (a PodStartTimeoutError, then a kill waiting out its grace).
    runner = KubernetesRunner(kvtrap, kubeconfig=kubeconfig, writable_dirs=WRITABLE, start_timeout=20)
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                                 start_timeout=20))
    assert client.stderr_tail() == []
    with client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"


def test_reattach_from_another_client(kubeconfig: str, kvtrap: str) -> None:  # noqa: F811
    runner = KubernetesRunner(kvtrap, kubeconfig=kubeconfig, writable_dirs=WRITABLE)
    first = kv_client(runner)
    try:
        first.dispense(PLUGIN_NAME).put("k", b"v")
        saved = first.reattach_config().to_json()
        from plugbay import ReattachConfig

        second = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                     reattach=ReattachConfig.from_json(saved)))
        with second:
            assert second.dispense(PLUGIN_NAME).get("k") == b"v"
        assert runner.wait(30) is not None  # the second client shut the pod's plugin down
    finally:
        first.kill()


def test_reattach_with_a_kubeconfig_of_the_hosts_choosing(kubeconfig: str, kvtrap: str, tmp_path: Path,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A host whose own configuration is another kubeconfig reaches the pod's cluster with
    # ReattachConfig's attach, as go-plugin's ReattachFunc; the kubeconfig the JSON names is never loaded.
    import functools

    from plugbay import ReattachConfig, ReattachError

    runner = KubernetesRunner(kvtrap, kubeconfig=kubeconfig, writable_dirs=WRITABLE)
    first = kv_client(runner)
    try:
        first.dispense(PLUGIN_NAME).put("k", b"v")
        saved = first.reattach_config().to_json()
        other = tmp_path / "other.yaml"
        other.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
        monkeypatch.setenv("KUBECONFIG", str(other))
        refused = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                      reattach=ReattachConfig.from_json(saved), start_timeout=10))
        with pytest.raises(ReattachError, match="attach=functools.partial"):
            refused.start()
        refused.close()
        mine = tmp_path / "mine.yaml"  # this host's own file for the pod's cluster, at a path of its own
        mine.write_text(Path(kubeconfig).read_text())
        attach = functools.partial(KubernetesRunner.attach, kubeconfig=str(mine))
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                     reattach=ReattachConfig.from_json(saved, attach=attach)))
        with second:
            assert second.dispense(PLUGIN_NAME).get("k") == b"v"
        assert runner.wait(30) is not None  # the second client shut the pod's plugin down
    finally:
        first.kill()


def test_a_reattach_refused_for_a_loopback_pod_ip_advises_attachs_own_opt_in(kubeconfig: str,  # noqa: F811
                                                                           kvtrap: str) -> None:
    # A reattach's runner is made by ReattachConfig's attach (KubernetesRunner.attach), not by the host: the
    # refusal advised KubernetesRunner(allow_loopback=True), which a reattaching host has nowhere to pass.
    import functools

    from plugbay import PlugbayError, ReattachConfig

    runner = KubernetesRunner(kvtrap, kubeconfig=kubeconfig, address_mode="in-cluster", writable_dirs=WRITABLE,
                              allow_loopback=True)  # the stand-in's pod IP is 127.0.0.1
    first = kv_client(runner)
    try:
        first.dispense(PLUGIN_NAME).put("k", b"v")
        saved = first.reattach_config().to_json()
        refused = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                      reattach=ReattachConfig.from_json(saved), start_timeout=20))
        with pytest.raises(PlugbayError) as caught:
            refused.start()
        refused.close()
        said = str(caught.value)
        assert "is a loopback address" in said, said
        assert ("pass ReattachConfig.from_json(text, attach=functools.partial(KubernetesRunner.attach,"
                " allow_loopback=True)) only for an API stand-in") in said, said
        assert "KubernetesRunner(allow_loopback=True)" not in said, said
        attach = functools.partial(KubernetesRunner.attach, allow_loopback=True)  # the advice, taken
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                     reattach=ReattachConfig.from_json(saved, attach=attach)))
        with second:
            assert second.dispense(PLUGIN_NAME).get("k") == b"v"
    finally:
        first.kill()


def test_an_attach_that_returns_no_runner_is_a_config_error() -> None:
    from plugbay import ConfigError, ReattachConfig
    from plugbay.core.protocol.handshake import HandshakeInfo

    info = HandshakeInfo(1, 1, "tcp", "127.0.0.1:1", "grpc")
    config = ReattachConfig(handshake=info, runner={"kind": "KubernetesRunner"}, attach=lambda data: dict(data))
    assert config == ReattachConfig(handshake=info, runner={"kind": "KubernetesRunner"})  # attach: not compared
    assert "attach" not in config.to_dict()
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, reattach=config,
                                 start_timeout=5))
    with pytest.raises(ConfigError, match="returned dict, not a runner"):
        client.start()
    client.close()


def _pod_threads(pod: str) -> list[str]:
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith((f"plugbay-kpf-{pod}-", f"plugbay-kwatch-{pod}", f"plugbay-klog-{pod}")))


def test_close_of_a_reattached_client_lets_go_of_its_port_forward_and_watch(kubeconfig: str,  # noqa: F811
                                                                            kvtrap: str) -> None:  # noqa: F811
    from plugbay import ReattachConfig

    runner = KubernetesRunner(kvtrap, kubeconfig=kubeconfig, address_mode="port-forward", writable_dirs=WRITABLE)
    first = kv_client(runner)
    try:
        first.dispense(PLUGIN_NAME).put("k", b"v")
        before = _pod_threads(runner.pod_name)
        saved = ReattachConfig.from_json(first.reattach_config().to_json())
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, reattach=saved))
        second.start()
        assert second.dispense(PLUGIN_NAME).get("k") == b"v"
        assert len(_pod_threads(runner.pod_name)) > len(before)
        second.close()
        deadline = time.monotonic() + 10
        while _pod_threads(runner.pod_name) != before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _pod_threads(runner.pod_name) == before, "the closed client still forwards into the pod"
        assert first.dispense(PLUGIN_NAME).get("k") == b"v"  # the pod runs on
    finally:
        first.kill()


HOST_RETURNS = """
import sys
sys.path.insert(0, sys.argv[3])
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import Client, ClientConfig
from plugbay.runners.kubernetes import KubernetesRunner
runner = KubernetesRunner(sys.argv[2], kubeconfig=sys.argv[1], writable_dirs=("/tmp", "/data"))
c = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner, start_timeout=60))
c.start()
c.dispense(PLUGIN_NAME).put("k", b"v")
print(runner.pod_name, flush=True)
"""


def test_a_host_returning_from_main_without_kill_exits_and_deletes_its_pod(kubeconfig: str,  # noqa: F811
                                                                           kvtrap: str) -> None:  # noqa: F811
    import os
    import subprocess

    from kubernetes import client as k8s, config

    proc = subprocess.Popen([sys.executable, "-c", HOST_RETURNS, kubeconfig, kvtrap, str(REPO / "examples" / "kv")],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        pod = (proc.stdout.readline() if proc.stdout else "").strip()
        assert pod, "the host did not start its pod"
        assert proc.wait(45) == 0  # exits: no pod-runner thread holds the interpreter before atexit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
    api = k8s.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    try:
        names = [p.metadata.name for p in api.list_namespaced_pod("default").items]
        if pod and pod in names:  # clean up what the failed host left
            api.delete_namespaced_pod(pod, "default", grace_period_seconds=0)
        assert pod not in names, "cleanup_clients() at exit did not delete the pod"
    finally:
        api.api_client.close()


def test_crash_before_handshake(kubeconfig: str, testapp: str) -> None:  # noqa: F811
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, env={"APP_MODE": "crash"})
    with pytest.raises(PluginExitedError, match="crashed on purpose") as info:
        kv_client(runner).start()
    assert info.value.exit_code == 3


def test_crash_loop_before_handshake(standin: StandIn, kubeconfig: str, testapp: str) -> None:  # noqa: F811
    # the runner's pod says restartPolicy Never (a pod_template may not change it), but a mutating
    # admission webhook may: the crash loop it then gets is still reported as such
    standin.mutate_pods(lambda pod: pod["spec"].update(restartPolicy="Always"))
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, env={"APP_MODE": "crash"})
    with pytest.raises(PluginExitedError) as info:
        kv_client(runner).start()
    # Whether the watch saw the pod Running first or not, the plugin's exit code and the
    # crash loop are reported.
    assert info.value.exit_code == 3
    text = str(info.value)
    assert "CrashLoopBackOff" in text or isinstance(info.value, PodCrashLoopError)
    assert "crashed on purpose" in text


def test_oom_killed_during_a_call(kubeconfig: str, kvtrap: str) -> None:  # noqa: F811
    runner = KubernetesRunner(kvtrap, kubeconfig=kubeconfig, writable_dirs=WRITABLE,
                              resources={"limits": {"memory": "128Mi"}})
    with kv_client(runner, call_timeout=60) as client:
        kv = client.dispense(PLUGIN_NAME)
        with pytest.raises(grpc.RpcError):
            kv.get("__alloc__")
        assert runner.wait(30) == 137
        text = runner.diagnose()
        assert "OOMKilled" in text and "exitCode=137" in text


def test_pod_deleted_under_the_host(standin: StandIn, kubeconfig: str, kvtrap: str) -> None:  # noqa: F811
    runner = KubernetesRunner(kvtrap, kubeconfig=kubeconfig, writable_dirs=WRITABLE)
    with kv_client(runner, call_timeout=60) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("a", b"1")
        timer = threading.Timer(0.5, standin.delete_pod, ("default", runner.pod_name, 0))
        timer.name = "plugbay-test-delete-pod"
        timer.start()
        try:
            with pytest.raises(grpc.RpcError) as info:
                kv.get("__hang__")  # in flight when the pod goes
        finally:
            timer.join(30)
        assert not isinstance(info.value, CallTimeoutError)  # it failed, it did not wait for the deadline
        deadline = time.monotonic() + 30
        while not client.exited and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.exited
        # the container's exit reaches the runner before the pod's DELETED event: wait for that too
        while "(deleted)" not in runner.diagnose() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "(deleted)" in runner.diagnose()


def test_a_force_deleted_pod_is_said_to_be_deleted(standin: StandIn, kubeconfig: str, kvtrap: str) -> None:  # noqa: F811
    # A force delete takes the pod object at once, with no exit code recorded: wait() says -1, which the
    # call's error worded as a local process's ("a child process killed by SIGHUP reports -1 too")
    runner = KubernetesRunner(kvtrap, kubeconfig=kubeconfig, writable_dirs=WRITABLE)
    with kv_client(runner, call_timeout=60) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("a", b"1")
        assert standin.delete_pod("default", runner.pod_name, 0)
        assert runner.wait(30) == UNKNOWN_EXIT_CODE
        with pytest.raises(PluginDiedError) as info:
            kv.get("a")
    text = str(info.value)
    assert f"its pod {runner.id} was deleted" in text and "kubectl get events -n default" in text
    assert "SIGHUP" not in text


def test_port_forward_dropped_mid_call(standin: StandIn, kubeconfig: str, kvtrap: str) -> None:  # noqa: F811
    runner = KubernetesRunner(kvtrap, kubeconfig=kubeconfig, address_mode="port-forward", writable_dirs=WRITABLE)
    with kv_client(runner, call_timeout=60) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("a", b"1")
        timer = threading.Timer(0.5, standin.drop_portforwards)
        timer.name = "plugbay-test-drop-forwards"
        timer.start()
        try:
            with pytest.raises(grpc.RpcError) as info:
                kv.get("__hang__")
        finally:
            timer.join(30)
        assert not isinstance(info.value, CallTimeoutError)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        # the plugin still runs; the next call goes through a fresh port-forward stream
        assert runner.wait(0) is None
        value = None
        for _ in range(20):  # bounded: gRPC may need a moment to reconnect
            try:
                value = kv.get("a")
                break
            except grpc.RpcError:
                time.sleep(0.25)
        assert value == b"1"


def test_forbidden_through_the_client(standin: StandIn, kubeconfig: str, kvtrap: str) -> None:  # noqa: F811
    standin.deny("get", "pods/log")
    runner = KubernetesRunner(kvtrap, kubeconfig=kubeconfig, writable_dirs=WRITABLE, start_timeout=20)
    with pytest.raises((PermissionDeniedError, PluginExitedError)) as info:
        kv_client(runner).start()
    assert "pods/log: get" in str(info.value) and "403" in str(info.value)
