"""Every Kubernetes API call of the pod runner is bounded: an API server that takes the connection and
never answers (or answers the head and stalls) fails start(), kill() and sweep() with a typed error,
while a plugin's log stream that is merely quiet for longer than the bound is not cut.

The hung API servers are real sockets on 127.0.0.1; the quiet plugin runs as a pod on the stand-in.
No assertion is on speed: the pytest timeouts only catch a hang.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from plugbay.errors import ConfigError, EngineUnavailableError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.kubernetes import KubernetesRunner, sweep
from tests.kube_standin.fixtures import kubeconfig, standin, testapp  # noqa: F401
from tests.kube_standin.server import StandIn
from tests.test_kube_portforward_upgrade import RawServer, raw_serving

pytestmark = pytest.mark.kubernetes
HANDSHAKE = "1|1|tcp|0.0.0.0:4000|grpc"
SPEC = LaunchSpec(env={}, labels={"plugbay.plugin": "quiet"})


def never(head: bytes) -> None:
    return None


def head_then_stall(head: bytes) -> bytes:
    """A 200 head announcing a body, one byte of it, then nothing (the connection held open)."""
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{"


@pytest.fixture(params=[never, head_then_stall], ids=["never-answers", "head-then-stalls"])
def hung(request: pytest.FixtureRequest) -> Iterator[RawServer]:
    yield from raw_serving(request.param)


def kubeconfig_for(url: str, path: Path) -> str:
    cluster: dict[str, Any] = {"server": url, **({"insecure-skip-tls-verify": True} if url.startswith("https") else {})}
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "default"}}]}))
    return str(path)


def given_client(url: str) -> Any:
    """The caller's own ApiClient: urllib3's default retries (an idempotent call is tried 4 times) stay."""
    return client.ApiClient(client.Configuration(host=url))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", ["kubeconfig", "api_client"])
def test_start_and_kill_against_a_hung_api_server_fail_typed(hung: RawServer, tmp_path: Path,
                                                             source: str) -> None:
    url = f"http://127.0.0.1:{hung.port}"
    conn: dict[str, Any] = ({"kubeconfig": kubeconfig_for(url, tmp_path / "kubeconfig")} if source == "kubeconfig"
                            else {"api_client": given_client(url)})
    runner = KubernetesRunner("plugbay-testapp:never-made", start_timeout=5, api_timeout=1, **conn)
    with pytest.raises(EngineUnavailableError,
                       match=rf"the Kubernetes API at {url} did not answer create pods within 1s .*"
                             "raise the runner's api_timeout if it is only slow. Pod default/plugbay-.* may"
                             " exist all the same: the runner's kill\\(\\) deletes it by name"):
        runner.start(SPEC)
    assert hung.requests[0].startswith(b"POST /api/v1/namespaces/default/pods HTTP/1.1")
    # kill() still tries the delete (the create may have gone through), and that is bounded too
    with pytest.raises(EngineUnavailableError,
                       match=rf"did not answer delete pods \(default/{runner.pod_name}\) within 1s.*The pod may"
                             rf" still run: delete it with kubectl delete pod -n default {runner.pod_name}"):
        runner.kill(0)
    assert any(r.startswith(f"DELETE /api/v1/namespaces/default/pods/{runner.pod_name}".encode())
               for r in hung.requests)
    runner.kill(0)  # once is enough: a second kill does nothing


@pytest.mark.timeout(120)
def test_a_tls_handshake_that_never_completes_is_bounded(tmp_path: Path) -> None:
    server = RawServer(never)  # takes the TLS hello and never answers it
    url = f"https://127.0.0.1:{server.port}"
    try:
        runner = KubernetesRunner("img", kubeconfig=kubeconfig_for(url, tmp_path / "kubeconfig"), api_timeout=1)
        with pytest.raises(EngineUnavailableError, match=f"the Kubernetes API at {url} did not answer create pods"):
            runner.start(SPEC)
        with pytest.raises(EngineUnavailableError, match="did not answer delete pods"):
            runner.kill(0)
    finally:
        server.close()


@pytest.mark.timeout(120)
def test_reattach_to_a_hung_api_server_fails_typed(hung: RawServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{hung.port}"
    data = {"kind": "KubernetesRunner", "namespace": "default", "pod": "plugbay-x-123456",
            "kubeconfig": kubeconfig_for(url, tmp_path / "kubeconfig")}
    monkeypatch.setenv("KUBECONFIG", data["kubeconfig"])  # a reattach uses this host's own kubeconfig
    with pytest.raises(EngineUnavailableError, match=f"at {url} did not answer get pods within 1s"):
        KubernetesRunner.attach(data, api_timeout=1)
    with pytest.raises(ConfigError, match="api_timeout must be a positive number of seconds, not 'soon'"):
        KubernetesRunner.attach(data, api_timeout="soon")  # type: ignore[arg-type]


@pytest.mark.timeout(120)
def test_sweep_against_a_hung_api_server_fails_typed(hung: RawServer) -> None:
    url = f"http://127.0.0.1:{hung.port}"
    api_client = given_client(url)
    try:
        with pytest.raises(EngineUnavailableError, match=f"at {url} did not answer list pods within 1s"):
            sweep("default", api_client=api_client, api_timeout=1)
    finally:
        api_client.close()


def test_a_bad_api_timeout_is_a_config_error() -> None:
    cfg = client.Configuration(host="http://127.0.0.1:9")
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match=f"api_timeout must be a positive number of seconds, not {bad}"):
            KubernetesRunner("img", api_client=client.ApiClient(cfg), api_timeout=bad)
    with pytest.raises(ConfigError, match="api_timeout must be a positive number"):
        sweep("default", api_client=client.ApiClient(cfg), api_timeout=0)


@pytest.mark.timeout(60)
def test_an_api_timeout_too_large_for_a_socket_is_a_config_error(hung: RawServer, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A huge api_timeout must fail typed, not as the socket's OverflowError."""
    url = f"http://127.0.0.1:{hung.port}"
    data = {"kind": "KubernetesRunner", "namespace": "default", "pod": "plugbay-x-123456",
            "kubeconfig": kubeconfig_for(url, tmp_path / "kubeconfig")}
    monkeypatch.setenv("KUBECONFIG", data["kubeconfig"])
    api_client = given_client(url)
    try:
        for huge in (1e12, 1e300):
            with pytest.raises(ConfigError, match="api_timeout must be a positive number of seconds up to 3600"):
                KubernetesRunner.attach(data, api_timeout=huge)
            with pytest.raises(ConfigError, match="api_timeout must be a positive number of seconds up to 3600"):
                sweep("default", api_client=api_client, api_timeout=huge)
    finally:
        api_client.close()
    assert not hung.requests  # refused before any call


def test_a_bad_start_timeout_is_a_config_error() -> None:
    """It bounds the port-forward upgrade's socket waits: NaN or 1e12 escaped there as ValueError/OverflowError."""
    cfg = client.Configuration(host="http://127.0.0.1:9")
    for bad in (0, -1.0, 1e12, float("inf"), float("nan"), True):
        with pytest.raises(ConfigError, match=f"start_timeout must be a positive number of seconds up to 86400,"
                                              f" not {bad}; pass e.g. start_timeout=120"):
            KubernetesRunner("img", api_client=client.ApiClient(cfg), start_timeout=bad)


def test_api_timeout_defaults_from_start_timeout() -> None:
    cfg = client.Configuration(host="http://127.0.0.1:9")
    assert KubernetesRunner("img", api_client=client.ApiClient(cfg)).api_timeout == 30
    assert KubernetesRunner("img", api_client=client.ApiClient(cfg), start_timeout=7).api_timeout == 7


# --- on the stand-in: a quiet log is not cut; a hung delete does not hang kill() ----------------------

QUIET = ("import sys, time\n"
         f"print('{HANDSHAKE}', flush=True)\n"
         "time.sleep(float(sys.argv[1]))\n"
         "print('after the silence', file=sys.stderr, flush=True)\n"
         "time.sleep(3600)\n")


@pytest.mark.timeout(180)
def test_a_quiet_log_stream_outlives_the_api_timeout(standin: StandIn, kubeconfig: str,  # noqa: F811
                                                     testapp: str) -> None:  # noqa: F811
    api_timeout = 2.0
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60, api_timeout=api_timeout,
                              command=["python3", "-u", "-c", QUIET, str(api_timeout * 3)])
    runner.start(SPEC)
    try:
        assert next(runner.stdout_lines()) == HANDSHAKE
        opened = standin.calls[("get", "pods/log")]
        assert "after the silence" in runner.stderr_lines()  # read on through three api_timeouts of silence
        assert standin.calls[("get", "pods/log")] == opened  # on the same stream: it was not cut and reopened
    finally:
        runner.kill(0)


@pytest.mark.timeout(180)
def test_kill_returns_typed_when_the_api_server_stops_answering(standin: StandIn, kubeconfig: str,  # noqa: F811
                                                                 testapp: str) -> None:  # noqa: F811
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60, api_timeout=2)
    runner.start(SPEC)
    name = runner.pod_name
    try:
        assert next(runner.stdout_lines()) == HANDSHAKE
        standin.stall("delete", "pods")
        with pytest.raises(EngineUnavailableError, match=rf"did not answer delete pods \(default/{name}\) within"
                                                         " 2s.*The pod may still run"):
            runner.kill(1)
        rest = list(runner.stderr_lines())  # it ends: kill() closed the log stream, hung API or not
        assert not any("|grpc" in line for line in rest)
    finally:
        standin.unstall()
        standin.delete_pod("default", name)
