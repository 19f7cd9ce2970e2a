"""The plugbay command with the Docker and Kubernetes runners: run, health, call, diagnose, sweep, and no
engine or cluster."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from tests.cli_util import KV_PROTO, cli_env, plugbay, running
from tests.kube_standin.fixtures import kubeconfig, kvtrap, standin  # noqa: F401

COOKIE = "BASIC_PLUGIN=hello"
DEAD_DOCKER = cli_env(DOCKER_HOST="unix:///nonexistent/docker.sock")


def docker_client() -> object:
    try:
        from plugbay.images import docker_client as make

        client = make()
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no Docker engine answers: {exc}")


@pytest.fixture(scope="module")
def kv_image() -> str:
    docker_client()
    from plugbay.images import ensure_example

    return ensure_example("kv", progress=lambda line: None)


def container_exists(container_id: str) -> bool:
    from docker.errors import NotFound

    client = docker_client()
    try:
        client.containers.get(container_id)  # type: ignore[attr-defined]
        return True
    except NotFound:
        return False
    finally:
        client.close()  # type: ignore[attr-defined]


def test_no_docker_engine(tmp_path: Path) -> None:
    out = plugbay("run", "--image", "plugbay-kv:latest", "--cookie", COOKIE, env=DEAD_DOCKER, cwd=tmp_path)
    assert out.returncode == 3, out.stderr
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    swept = plugbay("sweep", "--docker", "--dry-run", env=DEAD_DOCKER)
    assert swept.returncode == 3 and "Docker" in swept.stderr
    # not asked for by name, the engine is skipped with a word, and the temp folders still swept
    default = plugbay("sweep", "--dry-run", "--json", env=DEAD_DOCKER)
    assert default.returncode == 0 and "docker skipped" in default.stderr
    assert "temp" in json.loads(default.stdout) and "docker" not in json.loads(default.stdout)
    diag = plugbay("diagnose", "docker:0123456789ab", env=DEAD_DOCKER)
    assert diag.returncode == 3


_HANDSHAKE = {"core_version": 1, "app_version": 1, "network": "unix", "address": "/x", "protocol": "grpc"}


def _reattach_json(runner: dict[str, object]) -> str:
    return json.dumps({"handshake": _HANDSHAKE, "runner": runner})


@pytest.mark.parametrize("runner", [
    {"kind": "DockerRunner", "id": ""},
    {"kind": "DockerRunner"},
    {"kind": "DockerRunner", "id": None},
    {"kind": "DockerRunner", "id": 42},
    {"kind": "DockerRunner", "id": "../../info?x="},           # would reach another engine endpoint
    {"kind": "DockerRunner", "id": "x/../../images/plugbay-kv"},
], ids=["empty", "missing", "null", "number", "info", "images"])
def test_diagnose_refuses_docker_reattach_data_the_runner_refuses(runner: dict[str, object]) -> None:
    # the engine does not answer here: a refusal (exit 2) proves the id was checked before it was asked
    diag = plugbay("diagnose", _reattach_json(runner), env=DEAD_DOCKER)
    assert diag.returncode == 2, diag.stderr
    assert "container" in diag.stderr and "reattach" in diag.stderr and "unexpected" not in diag.stderr
    assert len(diag.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("ident", ["x/../../images/plugbay-kv", "../../info?x=", "a b"])
def test_diagnose_refuses_a_docker_id_the_engine_path_would_misread(ident: str) -> None:
    # docker:ID went into the engine's request path unchecked: 'x/../../images/NAME' inspected an image
    diag = plugbay("diagnose", f"docker:{ident}", env=DEAD_DOCKER)  # exit 2, not 3: refused before the engine
    assert diag.returncode == 2, diag.stderr
    assert "names no container" in diag.stderr and "unexpected" not in diag.stderr


def test_diagnose_takes_a_well_formed_docker_reattach_id_to_the_engine() -> None:
    diag = plugbay("diagnose", _reattach_json({"kind": "DockerRunner", "id": "0123456789ab"}), env=DEAD_DOCKER)
    assert diag.returncode == 3, diag.stderr


@pytest.mark.docker
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_docker_run_health_call_and_sigint(tmp_path: Path, kv_image: str, transport: str) -> None:
    with running(["--image", kv_image, "--transport", transport, "--writable", "/data", "--cookie", COOKIE],
                 tmp_path) as run:
        container = run.config()["runner"]["id"]
        assert container_exists(container)
        assert plugbay("health", run.target).returncode == 0
        put = plugbay("call", run.target, "/proto.KV/Put", '{"key": "d", "value": "ZA=="}', "--proto", str(KV_PROTO))
        assert put.returncode == 0, put.stderr
        diag = json.loads(plugbay("diagnose", run.target, "--json").stdout)
        assert diag["runner"] == "DockerRunner" and diag["state"] == "running" and diag["oom_killed"] is False
        info = plugbay("info", run.target, "--proto", str(KV_PROTO), "--json")
        assert info.returncode == 0, info.stderr
        mapped = json.loads(info.stdout)["facts"]["mapped_address"]
        # a unix socket is shown by its host path, not by the handle the probe held on it (/proc/self/fd/N)
        assert "/proc/self/fd/" not in mapped, mapped
        assert transport == "tcp" or mapped.startswith(f"unix:{tempfile.gettempdir()}/"), mapped
        # probing did not take the container from `plugbay run`: a sweep spares it while the run lives
        assert container not in json.loads(plugbay("sweep", "--dry-run", "--json").stdout)["docker"]
        assert run.interrupt() == 0
    assert "runner: docker" in run.stdout and "/proc/self/fd/" not in run.stdout, run.stdout
    assert not container_exists(container)


@pytest.mark.docker
@pytest.mark.parametrize(("flags", "tls"), [([], True), (["--no-automtls"], False)], ids=["default", "opted-out"])
def test_docker_tcp_run_uses_automtls_unless_told_not_to(tmp_path: Path, kv_image: str, flags: list[str],
                                                         tls: bool) -> None:
    # A port published on 127.0.0.1 is open to every local process: ClientConfig's default (auto_mtls=None)
    # turns AutoMTLS on for it, but `run` passed its flag's False and served the plugin in plaintext
    with running(["--image", kv_image, "--transport", "tcp", "--writable", "/data", "--cookie", COOKIE, *flags],
                 tmp_path) as run:
        assert (run.config().get("client_cert") is not None) is tls
        assert plugbay("health", run.target).returncode == 0  # its reattach file reaches it either way
        assert run.interrupt() == 0
    assert f"tls: {tls}" in run.stdout, run.stdout


@pytest.mark.docker
def test_docker_tcp_run_of_a_plugin_without_automtls_advises_no_automtls() -> None:
    # AutoMTLS is on by default for a tcp container, so a plugin without it is refused; the advice was the
    # library's "pass ClientConfig(require_tls=False)", which a shell user cannot pass
    import subprocess

    tag = f"plugbay-test-notls:{os.getpid()}"
    dockerfile = ('FROM plugbay-base:bookworm\nENTRYPOINT ["sh", "-c",'
                  ' "echo \'1|1|tcp|127.0.0.1:4000|grpc\'; exec sleep 600"]\n')
    with tempfile.TemporaryDirectory() as context:
        (Path(context) / "Dockerfile").write_text(dockerfile)
        built = subprocess.run(["docker", "build", "-q", "-t", tag, context], capture_output=True, timeout=300)
    try:
        if built.returncode != 0:
            pytest.skip(f"no image could be built: {built.stderr.decode()[-300:]}")
        refused = plugbay("run", "--image", tag, "--transport", "tcp", "--cookie", COOKIE, "--kill-grace", "0")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "announced no AutoMTLS certificate" in refused.stderr, refused.stderr
        assert "run again with --no-automtls to accept plaintext" in refused.stderr, refused.stderr
        assert "ClientConfig" not in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr, refused.stderr
        # --debug's traceback keeps the library's error (where it was raised) as the cause
        debugged = plugbay("--debug", "run", "--image", tag, "--transport", "tcp", "--cookie", COOKIE,
                           "--kill-grace", "0")
        assert debugged.returncode == 1, debugged.stdout + debugged.stderr
        assert "The above exception was the direct cause of the following exception" in debugged.stderr, \
            debugged.stderr
        assert "pass ClientConfig(require_tls=False) to accept plaintext" in debugged.stderr, debugged.stderr
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)


@pytest.mark.docker
def test_diagnose_a_container_whose_logs_the_engine_cannot_read(kv_image: str) -> None:
    # a log driver that keeps nothing (the engine answers 501) was "unexpected APIError ... report it"
    client = docker_client()
    container = client.containers.run(  # type: ignore[attr-defined]
        "plugbay-base:bookworm", ["sh", "-c", "exit 4"], detach=True, network_mode="none",
        log_config={"Type": "none", "Config": {}}, name=f"plugbay-test-nolog-{os.getpid()}")
    try:
        container.wait(timeout=30)
        diag = plugbay("diagnose", f"docker:{container.id}")
        assert diag.returncode == 0, diag.stderr
        assert "exit code: 4" in diag.stdout and "unexpected" not in diag.stderr
        assert "logs error: the engine cannot read its logs back (log driver 'none'" in diag.stdout
        facts = json.loads(plugbay("diagnose", f"docker:{container.id}", "--json").stdout)
        assert facts["last_log_lines"] == [] and "'none'" in facts["logs_error"]
    finally:
        container.remove(force=True)
        client.close()  # type: ignore[attr-defined]


@pytest.mark.docker
def test_sweep_and_diagnose_a_container_whose_host_died(tmp_path: Path, kv_image: str) -> None:
    with running(["--image", kv_image, "--cookie", COOKIE], tmp_path) as run:
        container = run.config()["runner"]["id"]
        run.proc.send_signal(signal.SIGKILL)  # the host dies; its container stays
        run.proc.wait(30)
    client = docker_client()
    try:
        assert container_exists(container)
        client.containers.get(container).kill(signal="SIGKILL")  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while client.containers.get(container).status != "exited" and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.1)
        diag = plugbay("diagnose", f"docker:{container}")
        assert diag.returncode == 0
        assert "exit code: 137" in diag.stdout and "signal: SIGKILL" in diag.stdout
        # only the dead host's session: another session's container may be between hosts, which a sweep of all
        # would remove (and the images and networks are the whole engine's)
        session = ["--docker", "--session", client.containers.get(container).labels["plugbay.session"]]  # type: ignore[attr-defined]
        listed = json.loads(plugbay("sweep", *session, "--dry-run", "--json").stdout)
        assert listed["docker"] == [container] and listed["dry_run"] is True and listed["docker_images"] == []
        assert container_exists(container)
        swept = plugbay("sweep", *session)
        assert swept.returncode == 0 and container[:12] in swept.stdout and "removed " in swept.stdout
        assert not container_exists(container)
        gone = plugbay("diagnose", f"docker:{container}")
        assert gone.returncode == 1 and "nothing left to diagnose" in gone.stderr
    finally:
        try:
            client.containers.get(container).remove(force=True)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - already swept
            pass
        from plugbay.runners.docker.madehere import forget_made

        forget_made(container)  # the dead host's record, when the test failed before the sweep dropped it
        client.close()  # type: ignore[attr-defined]


def test_no_cluster(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig.yaml"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    out = plugbay("run", "--pod", "plugbay-kv:latest", "--kubeconfig", str(bad), "--cookie", COOKIE)
    assert out.returncode == 3, out.stderr
    assert "Kubernetes configuration" in out.stderr
    swept = plugbay("sweep", "--kubernetes", "--kubeconfig", str(bad))
    assert swept.returncode == 3


@pytest.mark.parametrize(("runner", "field"), [
    ({"kind": "KubernetesRunner"}, "namespace"),
    ({"kind": "KubernetesRunner", "namespace": "default"}, "pod"),
    ({"kind": "KubernetesRunner", "namespace": "", "pod": "p"}, "namespace"),
    ({"kind": "KubernetesRunner", "namespace": "default", "pod": None}, "pod"),
    ({"kind": "KubernetesRunner", "namespace": 5, "pod": "p"}, "namespace"),
], ids=["nothing", "no-pod", "empty-namespace", "null-pod", "number-namespace"])
def test_diagnose_refuses_pod_reattach_data_the_runner_refuses(tmp_path: Path, runner: dict[str, object],
                                                               field: str) -> None:
    bad = tmp_path / "kubeconfig.yaml"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    # never the string "None" sent to the cluster: refused (exit 2) before any configuration is loaded
    diag = plugbay("diagnose", _reattach_json(runner), env=cli_env(KUBECONFIG=str(bad)))
    assert diag.returncode == 2, diag.stderr
    assert f"needs '{field}' as a non-empty string" in diag.stderr and "unexpected" not in diag.stderr
    good = dict(runner, namespace="default", pod="plugbay-kv-1")
    diag = plugbay("diagnose", _reattach_json(good), env=cli_env(KUBECONFIG=str(bad)))
    assert diag.returncode == 3 and "Kubernetes configuration" in diag.stderr, diag.stderr


@pytest.mark.kubernetes
def test_pod_run_health_diagnose_and_sigint(tmp_path: Path, kubeconfig: str, kvtrap: str) -> None:  # noqa: F811
    args = ["--pod", kvtrap, "--kubeconfig", kubeconfig, "--namespace", "default", "--cookie", COOKIE]
    with running(args, tmp_path) as run:
        pod = run.config()["runner"]["pod"]
        health = plugbay("health", run.target)
        assert health.returncode == 0, health.stdout + health.stderr
        diag = json.loads(plugbay("diagnose", run.target, "--json").stdout)
        assert diag["runner"] == "KubernetesRunner" and diag["state"] == "Running"
        assert run.interrupt() == 0
    assert "runner: kubernetes" in run.stdout
    gone = plugbay("diagnose", f"pod:default/{pod}", "--kubeconfig", kubeconfig)
    assert gone.returncode == 1 and "nothing left to diagnose" in gone.stderr
    assert os.path.exists(kubeconfig)
