"""KubernetesRunner against the API stand-in (real kubeconfig, real containers), runner level."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from plugbay.errors import (
    ConfigError,
    EngineUnavailableError,
    ImageNotFoundError,
    PermissionDeniedError,
    PodStartTimeoutError,
    PodUnschedulableError,
    RunnerError,
)
from plugbay.runners.base import LaunchSpec, reattach_runner
from plugbay.runners.session import HOST_SESSION_ID
from plugbay.runners.kubernetes import RBAC_RULES, KubernetesRunner, sweep
from tests.kube_standin.fixtures import kubeconfig, standin, testapp  # noqa: F401
from tests.kube_standin.server import StandIn
from tests.procs import connections_to

pytestmark = pytest.mark.kubernetes
HANDSHAKE = "1|1|tcp|0.0.0.0:4000|grpc"
SPEC = LaunchSpec(env={"BASIC_PLUGIN": "hello", "PLUGIN_UNIX_SOCKET_DIR": "/host/only"},
                  labels={"plugbay.plugin": "testapp"})


def core(kubeconfig: str) -> Any:
    return client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))


@pytest.fixture()
def started(kubeconfig: str, testapp: str) -> Iterator[KubernetesRunner]:  # noqa: F811
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60)
    runner.start(SPEC)
    try:
        assert next(runner.stdout_lines()) == HANDSHAKE  # the plugin listens from here on
        yield runner
    finally:
        runner.kill(0)


def talk(address: str, line: str) -> str:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(line.encode() + b"\n")
        return conn.makefile("rb").readline().decode().strip()


def pods_of_session(kubeconfig: str) -> list[str]:
    found = core(kubeconfig).list_namespaced_pod("default", label_selector=f"plugbay.session={HOST_SESSION_ID}")
    return [p.metadata.name for p in found.items]


def test_pod_spec_has_labels_env_and_secure_defaults(kubeconfig: str, testapp: str) -> None:  # noqa: F811
    runner = KubernetesRunner(
        testapp, kubeconfig=kubeconfig, env={"EXTRA": "1"}, labels={"team": "a"},
        resources={"limits": {"memory": "256Mi", "cpu": "500m"}},
        tolerations=[{"key": "plugins", "operator": "Exists", "effect": "NoSchedule"}],
        node_selector={"kubernetes.io/os": "linux"}, service_account="plugin-sa",
        writable_dirs=("/tmp", "/data", "/tmp"),  # a folder named twice is mounted once
        pod_template={"metadata": {"annotations": {"team/owner": "me"}},
                      "spec": {"containers": [{"name": "x", "env": [{"name": "FROM_TEMPLATE", "value": "t"}],
                                               "securityContext": {"runAsUser": 10001}}]}})
    runner.start(SPEC)
    try:
        pod = core(kubeconfig).read_namespaced_pod(runner.pod_name, "default")
        meta, spec = pod.metadata, pod.spec
        assert meta.labels["plugbay.managed"] == "true"
        assert meta.labels["plugbay.session"] == HOST_SESSION_ID
        assert meta.labels["plugbay.plugin"] == "testapp" and meta.labels["team"] == "a"
        assert meta.annotations["team/owner"] == "me" and "plugbay.host" in meta.annotations
        c = spec.containers[0]
        env = {e.name: e.value for e in c.env}
        assert env["PLUGBAY_LISTEN"] == "tcp:0.0.0.0:4000"
        assert env["BASIC_PLUGIN"] == "hello" and env["EXTRA"] == "1" and env["FROM_TEMPLATE"] == "t"
        assert "PLUGIN_UNIX_SOCKET_DIR" not in env  # a host path means nothing in a pod
        sc = c.security_context
        assert sc.run_as_non_root and sc.read_only_root_filesystem and not sc.allow_privilege_escalation
        assert sc.capabilities.drop == ["ALL"] and sc.seccomp_profile.type == "RuntimeDefault"
        assert sc.run_as_user == 10001  # the template overrides a default
        assert c.name == "plugin" and c.image == testapp and c.image_pull_policy == "IfNotPresent"
        assert c.ports[0].container_port == 4000
        assert c.resources.limits == {"memory": "256Mi", "cpu": "500m"}
        assert spec.restart_policy == "Never" and spec.service_account_name == "plugin-sa"
        assert spec.node_selector == {"kubernetes.io/os": "linux"}
        assert spec.tolerations[0].key == "plugins"
        assert [v.empty_dir is not None for v in spec.volumes] == [True, True]
        assert [m.mount_path for m in c.volume_mounts] == ["/tmp", "/data"]
    finally:
        runner.kill(0)


def test_a_killed_runner_leaves_no_api_connection_open(kubeconfig: str, testapp: str,  # noqa: F811
                                                        standin: StandIn) -> None:  # noqa: F811
    # the followed log holds a connection of its own, which ApiClient.close() leaves to the garbage
    # collector: kill() closes it, and every other connection its client made
    import gc

    from urllib.parse import urlparse

    port = urlparse(standin.url).port
    assert port is not None
    gc.disable()  # what is left open must be closed by kill(), not found later by the collector
    try:
        runner = KubernetesRunner(testapp, kubeconfig=kubeconfig)
        runner.start(SPEC)
        assert next(runner.stdout_lines()) == HANDSHAKE
        assert connections_to(port) >= 1  # the log is followed over one
        runner.kill(1)
        assert connections_to(port) == 0
    finally:
        gc.enable()


def test_handshake_is_picked_out_of_the_merged_log(kubeconfig: str, testapp: str) -> None:  # noqa: F811
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig)
    runner.start(SPEC)
    lines = runner.stdout_lines()
    assert next(lines) == HANDSHAKE
    runner.kill(1)
    assert list(lines) == []  # stdout carries nothing but the handshake
    other = list(runner.stderr_lines())
    assert '{"@level":"info","@message":"testapp starting","@module":"testapp"}' in other
    assert "a plain log line before the handshake" in other and "testapp serving" in other
    assert not any("|grpc" in line for line in other)


@pytest.mark.parametrize("mode", ["port-forward", "in-cluster"])
def test_both_address_modes_reach_the_pod(kubeconfig: str, testapp: str, mode: str) -> None:  # noqa: F811
    # the stand-in's pods are processes of this machine: their IP is 127.0.0.1
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, address_mode=mode, allow_loopback=True)
    runner.start(SPEC)
    try:
        assert next(runner.stdout_lines()) == HANDSHAKE
        assert runner.address_mode == mode
        network, address = runner.plugin_to_host("tcp", "0.0.0.0:4000")
        assert network == "tcp" and address.startswith("127.0.0.1:")
        assert talk(address, "hello pod") == "echo: hello pod"
        assert talk(address, "again") == "echo: again"  # each connection gets its own stream
    finally:
        runner.kill(0)


def test_auto_mode_is_port_forward_outside_a_cluster(kubeconfig: str, testapp: str) -> None:  # noqa: F811
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig)
    assert runner.address_mode == "port-forward" and runner.namespace == "default"
    runner.kill(0)  # before start: only closes the client


def test_image_pull_failure_is_typed_and_cleans_up(kubeconfig: str) -> None:
    runner = KubernetesRunner("registry.invalid/nope:1", kubeconfig=kubeconfig)
    with pytest.raises(ImageNotFoundError, match=r"registry.invalid/nope:1.*(ErrImagePull|ImagePullBackOff)"):
        runner.start(SPEC)
    assert pods_of_session(kubeconfig) == []
    assert "ErrImagePull" in runner.diagnose() or "ImagePullBackOff" in runner.diagnose()


def test_unschedulable_pod(kubeconfig: str, testapp: str) -> None:  # noqa: F811
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, node_selector={"disktype": "ssd"})
    with pytest.raises(PodUnschedulableError, match="didn't match Pod's node affinity/selector.*node_selector"):
        runner.start(SPEC)
    assert pods_of_session(kubeconfig) == []


def test_container_the_engine_refuses_is_a_config_error(kubeconfig: str, testapp: str) -> None:  # noqa: F811
    # Docker refuses a 1 MiB memory limit at create time: the pod reports
    # CreateContainerConfigError (and the stand-in leaves no emptyDir folder behind)
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, resources={"limits": {"memory": "1Mi"}},
                              start_timeout=30)
    with pytest.raises(ConfigError, match="CreateContainerConfigError.*[Mm]inimum memory limit") as info:
        runner.start(SPEC)
    # the advice is the settings the refusal names, not runAsNonRoot's (given for every refusal)
    assert "runAsNonRoot" not in str(info.value) and "resources" in str(info.value)
    assert pods_of_session(kubeconfig) == []
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("plugbay-standin-emptydir-")]


def test_a_command_missing_from_the_image_is_a_config_error_naming_the_command(
        kubeconfig: str, testapp: str) -> None:  # noqa: F811
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, command=["/no-such-entrypoint"], start_timeout=30)
    with pytest.raises(ConfigError, match="no-such-entrypoint") as info:
        runner.start(SPEC)
    assert "runAsNonRoot" not in str(info.value) and "command" in str(info.value)
    assert pods_of_session(kubeconfig) == []


def test_root_image_is_refused_by_run_as_non_root(kubeconfig: str) -> None:
    runner = KubernetesRunner("plugbay-base:bookworm", kubeconfig=kubeconfig, command=["sleep", "30"])
    with pytest.raises(ConfigError, match="runAsNonRoot and image will run as root.*run_as_user"):
        runner.start(SPEC)


def test_start_timeout(standin: StandIn, kubeconfig: str, testapp: str) -> None:  # noqa: F811
    standin.store.start_delay = 5.0
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=1.0)
    with pytest.raises(PodStartTimeoutError, match=r"did not reach Running within 1s.*start_timeout") as info:
        runner.start(SPEC)
    assert isinstance(info.value, TimeoutError)
    assert pods_of_session(kubeconfig) == []


def test_wait_returns_the_exit_code_and_diagnose_shows_it(started: KubernetesRunner) -> None:
    _, address = started.plugin_to_host("tcp", "0.0.0.0:4000")
    assert started.wait(0) is None
    try:
        reply = talk(address, "exit 5")
    except OSError:
        reply = ""
    assert reply == ""  # the pod ended mid-request: no answer
    assert started.wait(30) == 5
    text = started.diagnose()
    assert "phase Failed" in text and "exitCode=5" in text and "Started container plugin" in text
    # a new port-forward to the ended pod is refused, and the message says what to check
    with pytest.raises(RunnerError, match=rf"port-forward to pod default/{started.pod_name} port 4001 failed:"
                                          r".*is not running.*Check that the pod is Running"):
        started.plugin_to_host("tcp", "0.0.0.0:4001")


def test_kill_deletes_the_pod_with_grace(kubeconfig: str, started: KubernetesRunner) -> None:
    name = started.pod_name
    started.kill(grace=1)
    assert name not in pods_of_session(kubeconfig)
    assert started.wait(5) == 0  # SIGTERM made it exit cleanly
    started.kill(1)  # idempotent


def test_pod_deleted_under_the_host(standin: StandIn, started: KubernetesRunner) -> None:
    assert standin.delete_pod("default", started.pod_name, grace=0)
    assert started.wait(30) is not None
    assert list(started.stdout_lines()) == []  # the streams end
    assert "(deleted)" in started.diagnose() or "not found" in started.diagnose()


def test_port_forward_dropped_breaks_only_open_connections(standin: StandIn, started: KubernetesRunner) -> None:
    _, address = started.plugin_to_host("tcp", "0.0.0.0:4000")
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"first\n")
        reader = conn.makefile("rb")
        assert reader.readline() == b"echo: first\n"
        conn.sendall(b"sleep 3\n")  # a call in flight...
        assert standin.drop_portforwards() >= 1  # ...when the stream is cut
        assert reader.readline() == b""  # EOF, not a hang
    assert talk(address, "after") == "echo: after"


def test_reattach_by_namespace_and_pod(kubeconfig: str, started: KubernetesRunner) -> None:
    data = json.loads(json.dumps(started.reattach_data()))
    assert data["kind"] == "KubernetesRunner" and data["pod"] == started.pod_name
    other = reattach_runner(data)
    assert other.id == started.id
    _, address = other.plugin_to_host("tcp", "0.0.0.0:4000")
    assert talk(address, "via reattach") == "echo: via reattach"
    assert other.wait(0) is None
    other.kill(0)
    assert started.wait(30) is not None
    with pytest.raises(RunnerError, match="no longer exists"):
        reattach_runner(data)


def test_reattach_refuses_a_pod_plugbay_did_not_start(kubeconfig: str, started: KubernetesRunner) -> None:
    from plugbay.errors import ReattachError

    api = core(kubeconfig)
    foreign = {"metadata": {"name": "not-plugbay", "labels": {"app": "someone-else"}},
               "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": started.image}]}}
    api.create_namespaced_pod("default", foreign)
    try:
        data = {**started.reattach_data(), "pod": "not-plugbay"}
        with pytest.raises(ReattachError, match="pod default/not-plugbay: it lacks plugbay's label"
                           " plugbay.managed=true.*leaves it alone"):
            reattach_runner(data)
        assert api.read_namespaced_pod("not-plugbay", "default").metadata.name == "not-plugbay"
    finally:
        api.delete_namespaced_pod("not-plugbay", "default", grace_period_seconds=0)


def test_sweep_removes_pods_of_gone_sessions(kubeconfig: str, started: KubernetesRunner) -> None:
    from plugbay.runners.session import HOST_PIDS, host_pids

    api = core(kubeconfig)
    boot, namespace = host_pids().split(".")
    # a dead pid of this pid namespace is a gone host; one of another namespace (a host in a container
    # sharing this machine's name) says nothing here, and a pod without the label cannot be judged
    for name, pids in (("plugbay-orphan", f"{boot}.{namespace}"), ("plugbay-elsewhere", f"{boot}.1{namespace}"),
                       ("plugbay-unlabelled", None)):
        labels = {"plugbay.managed": "true", "plugbay.session": "999999999-deadbeef0000"}
        if pids is not None:
            labels[HOST_PIDS] = pids
        pod = {"metadata": {"name": name, "labels": labels, "annotations": {"plugbay.host": socket.gethostname()}},
               "spec": {"restartPolicy": "Never", "containers": [{"name": "plugin", "image": started.image}]}}
        api.create_namespaced_pod("default", client.V1Pod.from_dict(pod))
    try:
        assert sweep("default", kubeconfig=kubeconfig) == ["plugbay-orphan"]
        for name in ("plugbay-elsewhere", "plugbay-unlabelled"):
            api.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        assert started.wait(0) is None  # our own pod stays
        assert sweep("default", live_sessions=[], kubeconfig=kubeconfig) == []  # own session is never swept
    finally:
        api.api_client.close()


def test_forbidden_create_names_every_permission(standin: StandIn, kubeconfig: str, testapp: str) -> None:  # noqa: F811
    standin.deny("create", "pods")
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig)
    with pytest.raises(PermissionDeniedError) as info:
        runner.start(SPEC)
    text = str(info.value)
    assert "refused to create pods" in text and "cannot create resource" in text
    for resource, verbs in RBAC_RULES:
        assert f"{resource}: {', '.join(verbs)}" in text


def test_forbidden_port_forward(standin: StandIn, started: KubernetesRunner) -> None:
    standin.deny("create", "pods/portforward")
    with pytest.raises(PermissionDeniedError, match="create pods/portforward.*pods/portforward: create, get"):
        started.plugin_to_host("tcp", "0.0.0.0:4000")


def test_a_port_forward_subprotocol_other_than_v4_is_a_clear_error(standin: StandIn,
                                                                  started: KubernetesRunner) -> None:
    standin.portforward_protocol = "v5.channel.k8s.io"
    try:  # the forwarder's start-up probe opens one stream and reads the answer
        with pytest.raises(RunnerError, match="subprotocol 'v5.channel.k8s.io'.*v4.channel.k8s.io"):
            started.plugin_to_host("tcp", "0.0.0.0:4000")
    finally:
        standin.portforward_protocol = "v4.channel.k8s.io"


def test_forbidden_watch(standin: StandIn, kubeconfig: str, testapp: str) -> None:  # noqa: F811
    standin.deny("watch", "pods")
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig)
    with pytest.raises(PermissionDeniedError, match="watch pods"):
        runner.start(SPEC)
    assert pods_of_session(kubeconfig) == []


def test_unreachable_api_server(tmp_path: Any, testapp: str, closed_port: int) -> None:  # noqa: F811
    port = closed_port
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    runner = KubernetesRunner(testapp, kubeconfig=str(path))
    with pytest.raises(EngineUnavailableError, match=f"cannot reach the Kubernetes API at http://127.0.0.1:{port}"
                       ) as info:
        runner.start(SPEC)
    assert "points at it. Pod default/plugbay-" in str(info.value) and ".." not in str(info.value)


def test_rejected_credentials_say_to_refresh_them(kubeconfig: str, testapp: str,  # noqa: F811
                                                  tmp_path: Any) -> None:
    cfg = json.loads(Path(kubeconfig).read_text())
    cfg["users"][0]["user"]["token"] = "expired-token"
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(cfg))
    runner = KubernetesRunner(testapp, kubeconfig=str(path))
    with pytest.raises(PermissionDeniedError, match=r"rejected the host's credentials \(401\) on create pods;"
                                                    " refresh the kubeconfig's token or certificate"):
        runner.start(SPEC)
    assert pods_of_session(kubeconfig) == []


def test_option_and_address_errors(kubeconfig: str, started: KubernetesRunner) -> None:
    with pytest.raises(ConfigError, match="address_mode must be one of"):
        KubernetesRunner("x", kubeconfig=kubeconfig, address_mode="magic")
    with pytest.raises(ConfigError, match="pull_policy"):
        KubernetesRunner("x", kubeconfig=kubeconfig, pull_policy="Sometimes")
    with pytest.raises(ConfigError, match="container_port"):
        KubernetesRunner("x", kubeconfig=kubeconfig, container_port=0)
    with pytest.raises(ConfigError, match="writable_dirs must be absolute paths"):
        KubernetesRunner("x", kubeconfig=kubeconfig, writable_dirs=("/tmp", "data"))
    with pytest.raises(EngineUnavailableError, match="no usable Kubernetes configuration"):
        KubernetesRunner("x", kubeconfig="/nonexistent/kubeconfig")
    with pytest.raises(ConfigError, match="must listen on TCP"):
        started.plugin_to_host("unix", "/tmp/plugin.sock")
    with pytest.raises(RunnerError, match=r"cannot reach host address unix:/tmp/b\.sock.*multiplex_broker=True"):
        started.host_to_plugin("unix", "/tmp/b.sock")
    with pytest.raises(RunnerError, match="already started"):
        started.start(SPEC)


def test_detach_ends_a_forwarded_connection_whose_pod_stops_reading(started: KubernetesRunner) -> None:
    """A connection stuck sending to the API server (the pod reads nothing) must not outlive detach()."""
    import threading

    _, address = started.plugin_to_host("tcp", "0.0.0.0:4000")
    host, port = address.rsplit(":", 1)
    conn = socket.create_connection((host, int(port)), timeout=10)
    try:
        conn.sendall(b"sleep 600\n")  # the pod's handler stops reading this connection
        conn.settimeout(3.0)
        chunk = b"x" * 65536
        for _ in range(4096):  # bounded: 256 MiB at most; every buffer on the way fills far sooner
            try:
                conn.sendall(chunk)
            except TimeoutError:
                break  # nothing moves: the forwarder's thread is stuck sending to the API server
        else:
            pytest.fail("the forwarded connection took 256 MiB without the pod reading")
        data = json.loads(json.dumps(started.reattach_data()))
        started.detach()  # leaves the pod running (a reattached host's close)
        stuck = [t.name for t in threading.enumerate() if t.name.startswith("plugbay-kpf-")]
        assert stuck == [], f"detach() left port-forward threads running: {stuck}"
        reattach_runner(data).kill(0)  # the pod goes now (the detached runner watches it no more)
    finally:
        conn.close()


def test_kill_after_detach_deletes_the_pod_and_sees_it_gone(kubeconfig: str, started: KubernetesRunner,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Like ProcessRunner/DockerRunner, kill() after detach() still ends the plugin: with no watch left
    it reads the pod until it is gone, instead of sitting out the 30 s fallback and warning."""
    name = started.pod_name
    started.detach()
    with caplog.at_level("WARNING", logger="plugbay.runners.kubernetes"):
        started.kill(0)
    assert name not in pods_of_session(kubeconfig)
    assert "still exists" not in caplog.text
    assert started.wait(0) in (0, -1)  # the runner knows the pod ended
    started.kill(0)  # idempotent


def test_kill_after_detach_leaves_a_pod_that_took_the_name(standin: StandIn, kubeconfig: str,
                                                           started: KubernetesRunner) -> None:
    """Only the pod this runner made (its UID) is deleted: a pod made since under the same name stays."""
    name, api = started.pod_name, core(kubeconfig)
    started.detach()
    assert standin.delete_pod("default", name, grace=0)
    gone_wait(api, name)
    impostor = {"metadata": {"name": name, "labels": {"plugbay.managed": "true"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "plugin", "image": started.image}]}}
    api.create_namespaced_pod("default", client.V1Pod.from_dict(impostor))
    try:
        with pytest.raises(RunnerError, match=rf"pod default/{name} is no longer the pod plugbay started"
                                              r" \(its UID is not .+\); plugbay left it alone"):
            started.kill(0)
        assert api.read_namespaced_pod(name, "default").metadata.deletion_timestamp is None
    finally:
        api.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        gone_wait(api, name)
        api.api_client.close()


def gone_wait(api: Any, name: str) -> None:
    """Until the pod reads 404 (bounded: 120 reads 0.25 s apart)."""
    import time

    for _ in range(120):
        try:
            api.read_namespaced_pod(name, "default")
        except client.exceptions.ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(0.25)
    pytest.fail(f"pod {name} still exists 30 s after its deletion")


def test_wait_before_start_does_not_blind_the_later_start(kubeconfig: str, testapp: str) -> None:  # noqa: F811
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=30)
    try:
        assert runner.wait(0) is None  # no pod yet
        runner.start(SPEC)  # its watch follows the pod it made, not the empty name wait() saw
        assert next(runner.stdout_lines()) == HANDSHAKE
        assert runner.wait(0) is None
    finally:
        runner.kill(0)


def test_a_client_failing_before_the_pod_exists_ends_at_once(kubeconfig: str, testapp: str) -> None:  # noqa: F811
    import time

    from plugbay import Client, ClientConfig
    from plugbay.core.host.secure import SecureConfig
    from plugbay.core.protocol.handshake import HandshakeConfig

    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig)
    began = time.monotonic()
    with pytest.raises(ConfigError):  # this runner cannot check a SecureConfig: refused before any pod
        Client(ClientConfig(handshake=HandshakeConfig(1, "K", "V"), plugins={}, runner=runner,
                            secure_config=SecureConfig(bytes(32)))).start()
    assert time.monotonic() - began < 5, "the teardown of a runner that never started waited out a watch"


def test_a_pod_create_refused_as_a_name_clash_leaves_the_other_pod_alone(
        kubeconfig: str, started: KubernetesRunner, testapp: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from plugbay.runners.kubernetes import pods

    taken = started.pod_name
    monkeypatch.setattr(pods, "pod_name_for", lambda image: taken)  # the clash made certain
    other = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=30)
    with pytest.raises(RunnerError, match="409|already exists"):
        other.start(SPEC)
    other.kill(0)
    assert core(kubeconfig).read_namespaced_pod(taken, "default").metadata.uid == started._pod.uid
    _, address = started.plugin_to_host("tcp", "0.0.0.0:4000")
    assert talk(address, "still here") == "echo: still here"


def test_pod_names_carry_48_random_bits() -> None:
    from plugbay.runners.kubernetes import pods

    name = pods.pod_name_for("registry.example.com/team/" + "x" * 80 + ":1")
    assert len(name) <= 63 and len(name.rsplit("-", 1)[1]) == 12


def test_force_kill_deletes_the_pod_after_a_kill_cut_short(kubeconfig: str, testapp: str) -> None:  # noqa: F811
    # Ctrl-C inside kill() leaves the runner counted as killed with its pod still there; the
    # Client then calls force_kill(), which must not be a no-op like a second kill()
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig)
    runner.start(SPEC)
    try:
        name = runner.pod_name
        with runner._lock:
            runner._killed = True  # where an interrupted kill() leaves it
        runner.kill(0)
        assert name in pods_of_session(kubeconfig)  # the guard: nothing done
        runner.force_kill()
        assert name not in pods_of_session(kubeconfig)
    finally:
        runner.force_kill()
