"""A kubeconfig that is no kubeconfig (not YAML, fields of the wrong kind, certificate data that is not
base64, a proxy that is not http(s)) or whose server is no http(s) URL is a ConfigError naming the file and
what to fix, from every place that loads one: KubernetesRunner(...), sweep(), EndpointSliceResolver.start()
and the command line. The advice for a configuration that cannot be used fits where its path came from: the
caller's kubeconfig=, KUBECONFIG, or the default file.

The files are real kubeconfigs read by the kubernetes client's own loader; no API server is reached (a bad
server URL is refused before any call is made).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from plugbay.errors import ConfigError, EngineUnavailableError
from plugbay.network.kubernetes import EndpointSliceResolver
from plugbay.runners.kubernetes import KubernetesRunner, sweep
from tests.cli_util import cli_env, plugbay

pytestmark = pytest.mark.kubernetes


def kubeconfig_text(server: str = "https://127.0.0.1:6443", cluster: dict[str, Any] | None = None,
                    user: dict[str, Any] | None = None) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "u", "user": user or {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "default"}}]})


MALFORMED = {
    "not-yaml": "clusters: [\n  - : :\n",
    "list-at-top": "- a\n- b\n",
    "contexts-a-number": "apiVersion: v1\nkind: Config\ncontexts: 5\ncurrent-context: x\n",
    "ca-data-not-base64": kubeconfig_text(cluster={"certificate-authority-data": "!!!notbase64"}),
    "proxy-not-http": kubeconfig_text(cluster={"proxy-url": "ftp://proxy.example"}),
    "nul-bytes": "\x00\x01\x02",
}
BAD_SERVERS = {"not-a-url": "not a url", "port-out-of-range": "https://127.0.0.1:99999",
               "host-with-space": "https://api .example"}


def runner_of(path: str) -> None:
    KubernetesRunner("img", namespace="default", kubeconfig=path)


def sweep_of(path: str) -> None:
    sweep("default", kubeconfig=path, api_timeout=2)


def discovery_of(path: str) -> None:
    resolver = EndpointSliceResolver("default", "kv", 4000, kubeconfig=path)
    try:
        resolver.start(lambda endpoints: None)
    finally:
        resolver.close()


LOADERS: dict[str, Callable[[str], None]] = {"runner": runner_of, "sweep": sweep_of, "discovery": discovery_of}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_kubeconfig_that_is_no_kubeconfig_is_a_config_error(case: str, loader: str, tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(MALFORMED[case])
    with pytest.raises(ConfigError, match=rf"kubeconfig '{re.escape(str(path))}' \(passed as kubeconfig=\) is no"
                                          r" Kubernetes configuration plugbay can use \(.*\)\. Fix the kubeconfig"
                                          rf" file {re.escape(str(path))} \(its clusters, users and contexts.*\),"
                                          " or pass kubeconfig= a working one, or api_client=."):
        LOADERS[loader](str(path))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("case", list(BAD_SERVERS))
def test_a_server_that_is_no_url_is_a_config_error_before_any_call(case: str, loader: str, tmp_path: Path) -> None:
    server = BAD_SERVERS[case]
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_text(server=server))
    # said before anything is sent, not as an API that "answered with something that is not a Kubernetes object"
    with pytest.raises(ConfigError, match=rf"the Kubernetes API address '{re.escape(server)}' is not an http\(s\)"
                                          rf" URL \(from kubeconfig '{re.escape(str(path))}' \(passed as"
                                          r" kubeconfig=\)\); fix the server field of the kubeconfig's cluster"):
        LOADERS[loader](str(path))


@pytest.mark.timeout(60)
def test_the_command_line_says_a_broken_kubeconfig_as_a_usage_error(tmp_path: Path) -> None:
    for text, said in ((MALFORMED["contexts-a-number"], "is no Kubernetes configuration plugbay can use"),
                       (kubeconfig_text(server="not a url"), "fix the server field of the kubeconfig's cluster")):
        path = tmp_path / "kubeconfig"
        path.write_text(text)
        done = plugbay("sweep", "--kubernetes", "--namespace", "default", "--kubeconfig", str(path))
        assert done.returncode == 2, done.stderr  # a usage error, not "unexpected TypeError"
        assert said in done.stderr and str(path) in done.stderr and "unexpected" not in done.stderr, done.stderr


def test_a_kubeconfig_passed_that_names_a_missing_file_is_advised_as_the_callers(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_text(cluster={"certificate-authority": str(tmp_path / "no-ca.crt")}))
    with pytest.raises(EngineUnavailableError) as caught:
        KubernetesRunner("img", namespace="default", kubeconfig=str(path))
    assert str(caught.value) == (
        f"no usable Kubernetes configuration in kubeconfig {str(path)!r} (passed as kubeconfig=) (File does not"
        f" exist: {tmp_path / 'no-ca.crt'}). Fix that file, or pass kubeconfig= a working one, or api_client=.")


def test_a_kubeconfig_passed_that_is_not_there_is_said_to_be_missing(tmp_path: Path) -> None:
    # the client library calls a missing file "Invalid kube-config file. No configuration found."
    missing = tmp_path / "kubeconfig"
    with pytest.raises(EngineUnavailableError) as caught:
        KubernetesRunner("img", namespace="default", kubeconfig=str(missing))
    assert str(caught.value) == (
        f"no usable Kubernetes configuration in kubeconfig {str(missing)!r} (passed as kubeconfig=) (no such file)."
        " Pass kubeconfig= a working one, or api_client=.")


def loaded_unasked(env: dict[str, str]) -> str:
    """What KubernetesRunner(...) without kubeconfig= raises in a fresh process (the kubernetes client reads
    KUBECONFIG once, at its import)."""
    code = ("from plugbay.runners.kubernetes import KubernetesRunner\n"
            "try:\n    KubernetesRunner('img', namespace='default')\n"
            "except Exception as exc:\n    print(type(exc).__name__ + ': ' + ' '.join(str(exc).split()))\n")
    env = {k: v for k, v in env.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")} | {
        k: v for k, v in env.items() if k == "KUBECONFIG" and v}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.timeout(120)
def test_the_advice_fits_a_kubeconfig_named_by_kubeconfig_or_the_default(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text(MALFORMED["contexts-a-number"])
    said = loaded_unasked(cli_env(KUBECONFIG=str(broken), HOME=str(tmp_path)))
    assert said.startswith(f"ConfigError: kubeconfig {str(broken)!r} (named by KUBECONFIG) is no Kubernetes"), said
    assert said.endswith(f"Fix the kubeconfig file {broken} (its clusters, users and contexts: lists of named"
                         " entries, as kubectl config view shows them; certificate data in base64; a proxy-url of"
                         " http:// or https://), or set KUBECONFIG to a working one, or pass kubeconfig= or"
                         " api_client=."), said

    missing = tmp_path / "missing"
    said = loaded_unasked(cli_env(KUBECONFIG=str(missing), HOME=str(tmp_path)))
    assert said == (f"EngineUnavailableError: no usable Kubernetes configuration in kubeconfig {str(missing)!r}"
                    " (named by KUBECONFIG) (no such file). Set KUBECONFIG"
                    " to a working one, or pass kubeconfig= or api_client=."), said
    # a list of files, which the library merges, is missing only when none of them is there
    listed = [tmp_path / "a", tmp_path / "b"]
    said = loaded_unasked(cli_env(KUBECONFIG=f"{listed[0]}:{listed[1]}", HOME=str(tmp_path)))
    assert "(no such file)" in said, said
    for one in listed:
        one.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    said = loaded_unasked(cli_env(KUBECONFIG=f"{listed[0]}:{listed[1]}", HOME=str(tmp_path)))
    assert "Expected key current-context" in said and "no such file" not in said, said

    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text(MALFORMED["list-at-top"])
    said = loaded_unasked(cli_env(KUBECONFIG="", HOME=str(home)))
    assert said.startswith("ConfigError: kubeconfig '~/.kube/config' (the default: KUBECONFIG is not set) is no"
                           " Kubernetes configuration plugbay can use (TypeError"), said
    assert said.endswith("or pass kubeconfig= or api_client=, set KUBECONFIG, or run the host in a pod with a"
                         " service account."), said
    assert os.path.exists(home / ".kube" / "config")
