"""A Kubernetes reattach never loads the kubeconfig or context its (untrusted) data names.

Loading a kubeconfig runs its user's ``exec:`` credential plugin at once, so a reattach JSON
naming one could run any command as the host. These reattaches run against real kubeconfig
files whose exec plugin, if ever run, leaves a marker file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("kubernetes")

from plugbay import Client, ClientConfig, ReattachConfig, ReattachError  # noqa: E402
from plugbay.core.protocol.handshake import HandshakeConfig  # noqa: E402
from plugbay.runners.base import reattach_runner  # noqa: E402


def _kubeconfig(path: Path, marker: Path, contexts: tuple[str, ...] = ("c",)) -> str:
    """A kubeconfig whose user's exec plugin writes ``marker`` (it would run on load)."""
    script = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')"
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable,
                     "args": ["-c", script], "interactiveMode": "Never"}}
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": contexts[0],
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": n, "context": {"cluster": "c", "user": "u"}} for n in contexts]}))
    return str(path)


def _data(**extra: object) -> dict[str, object]:
    return {"kind": "KubernetesRunner", "namespace": "default", "pod": "plugbay-x-123456", "api_timeout": 1,
            **extra}


def test_a_kubeconfig_named_by_reattach_json_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran"
    evil = _kubeconfig(tmp_path / "evil.yaml", marker)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "own.yaml"))  # this host's own (never reached)
    with pytest.raises(ReattachError, match="names kubeconfig .*evil.yaml.*Set KUBECONFIG="):
        reattach_runner(_data(kubeconfig=evil))
    text = json.dumps({"handshake": {"core_version": 1, "app_version": 1, "network": "tcp",
                                     "address": "127.0.0.1:1", "protocol": "grpc"},
                       "runner": _data(kubeconfig=evil)})
    client = Client(ClientConfig(handshake=HandshakeConfig(1, "K", "V"), reattach=ReattachConfig.from_json(text),
                                 start_timeout=5))
    with pytest.raises(ReattachError, match="names kubeconfig"):
        client.start()
    assert not marker.exists(), "the exec plugin of the kubeconfig the reattach JSON named ran"


def test_a_context_named_by_reattach_json_must_be_one_of_the_hosts_own(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from plugbay.runners.kubernetes.api import reattach_kubeconfig

    marker = tmp_path / "ran"
    own = _kubeconfig(tmp_path / "own.yaml", marker, contexts=("safe", "other"))
    monkeypatch.setenv("KUBECONFIG", own)
    with pytest.raises(ReattachError, match="context 'elsewhere', which this host's kubeconfig .* does not have"):
        reattach_runner(_data(kubeconfig=own, context="elsewhere"))
    assert not marker.exists()
    # a context of the host's own (trusted) kubeconfig is used, current or not: a runner made with
    # context="other" while "safe" is current reattaches
    assert reattach_kubeconfig(own, "other") == (own, "other")
    assert not marker.exists()  # only parsed
    with pytest.raises(ReattachError, match="kubeconfig must be a string or null"):
        reattach_runner(_data(kubeconfig=["x"]))


def test_a_kubeconfig_the_caller_passes_is_used_whatever_the_json_names(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # KubernetesRunner.attach(data, kubeconfig=mine) (ReattachConfig's attach): the caller chose the file,
    # so the other host's path in the JSON is neither loaded nor compared with it
    from plugbay.runners.kubernetes.api import reattach_kubeconfig

    marker = tmp_path / "ran"
    theirs = _kubeconfig(tmp_path / "theirs.yaml", marker)
    mine = _kubeconfig(tmp_path / "mine.yaml", marker, contexts=("c", "prod"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "default.yaml"))
    assert reattach_kubeconfig(theirs, None, mine) == (mine, None)
    assert reattach_kubeconfig(theirs, "prod", mine) == (mine, "prod")  # a context of the caller's file
    with pytest.raises(ReattachError, match="context 'elsewhere'"):
        reattach_kubeconfig(theirs, "elsewhere", mine)
    with pytest.raises(ReattachError, match="names kubeconfig .*theirs.yaml"):  # the host's default is compared
        reattach_kubeconfig(theirs, None)
    assert not marker.exists()


@pytest.mark.parametrize("data, problem", [
    ({"kind": "KubernetesRunner", "pod": "p"}, "'namespace' as a non-empty string"),
    (_data(container_port="x"), "'container_port' as a TCP port"),
    (_data(pod=7), "'pod' as a non-empty string"),
    (_data(address_mode="sideways"), "'address_mode' as one of"),
])
def test_malformed_pod_reattach_data_is_a_reattach_error(data: dict[str, object], problem: str) -> None:
    with pytest.raises(ReattachError, match=problem):
        reattach_runner(data)
