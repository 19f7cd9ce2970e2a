"""The command line's Kubernetes configuration errors advise what a shell user can type: ``--kubeconfig`` on
the commands that take it (run, diagnose, sweep), KUBECONFIG on those that do not (info, call, health), never
the Python API's ``kubeconfig=`` or ``api_client=``. The Python API keeps naming its keywords
(test_kube_kubeconfig_errors.py).

The kubeconfigs are real files read by the kubernetes client's own loader; no API server is reached.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_util import cli_env, plugbay
from tests.test_kube_kubeconfig_errors import MALFORMED, kubeconfig_text

pytestmark = [pytest.mark.kubernetes, pytest.mark.timeout(120)]

_HANDSHAKE = {"core_version": 1, "app_version": 1, "network": "unix", "address": "/x", "protocol": "grpc"}


def _reattach_json(**runner: object) -> str:
    return json.dumps({"handshake": _HANDSHAKE, "runner": {"kind": "KubernetesRunner", "namespace": "default",
                                                           "pod": "plugbay-kv-1", **runner}})


def _said(done: object, code: int) -> str:
    stderr = str(getattr(done, "stderr"))
    assert getattr(done, "returncode") == code, stderr
    assert "kubeconfig=" not in stderr and "api_client" not in stderr and "functools" not in stderr, stderr
    return " ".join(stderr.split())


def test_a_kubeconfig_the_user_typed_is_advised_as_the_flag(tmp_path: Path) -> None:
    malformed = tmp_path / "malformed"
    malformed.write_text(MALFORMED["contexts-a-number"])
    run = _said(plugbay("run", "--pod", "img", "--kubeconfig", str(malformed), "--cookie", "K=V"), 2)
    assert f"kubeconfig {str(malformed)!r} (passed as --kubeconfig) is no Kubernetes configuration" in run, run
    assert run.endswith("a proxy-url of http:// or https://), or pass --kubeconfig a working one."), run

    bad_server = tmp_path / "bad-server"
    bad_server.write_text(kubeconfig_text(server="not a url"))
    swept = _said(plugbay("sweep", "--kubernetes", "--kubeconfig", str(bad_server)), 2)
    assert swept.endswith(f"(from kubeconfig {str(bad_server)!r} (passed as --kubeconfig)); fix the server field"
                          " of the kubeconfig's cluster, or pass --kubeconfig a working one."), swept

    missing_ca = tmp_path / "missing-ca"
    missing_ca.write_text(kubeconfig_text(cluster={"certificate-authority": str(tmp_path / "no-ca.crt")}))
    diagnosed = _said(plugbay("diagnose", "pod:default/p", "--kubeconfig", str(missing_ca)), 3)
    assert diagnosed.endswith(f"(File does not exist: {tmp_path / 'no-ca.crt'}). Fix that file, or pass"
                              " --kubeconfig a working one."), diagnosed


def test_the_hosts_own_kubeconfig_is_advised_as_kubeconfig(tmp_path: Path) -> None:
    malformed = tmp_path / "malformed"
    malformed.write_text(MALFORMED["contexts-a-number"])
    env = cli_env(KUBECONFIG=str(malformed), HOME=str(tmp_path))
    # diagnose takes --kubeconfig, but was not given one: the file is KUBECONFIG's
    diagnosed = _said(plugbay("diagnose", "pod:default/p", env=env), 2)
    assert f"kubeconfig {str(malformed)!r} (named by KUBECONFIG) is no Kubernetes configuration" in diagnosed
    assert diagnosed.endswith("or set KUBECONFIG to a working one, or pass --kubeconfig."), diagnosed
    diagnosed = _said(plugbay("diagnose", _reattach_json(), env=env), 2)
    assert diagnosed.endswith("https://), or set KUBECONFIG to a working one."), diagnosed
    # health takes no --kubeconfig: KUBECONFIG is all it can be told
    for target in (_reattach_json(), "kubernetes:///default/kv:4000"):
        health = _said(plugbay("health", target, "--insecure", env=env), 2)
        assert f"kubeconfig {str(malformed)!r} (named by KUBECONFIG)" in health, health
        assert "--kubeconfig" not in health and "set KUBECONFIG to a working one" in health, health


def test_a_reattach_naming_another_kubeconfig_is_advised_as_the_flag(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.write_text(kubeconfig_text())
    data = _reattach_json(kubeconfig=str(tmp_path / "theirs"))
    env = cli_env(KUBECONFIG=str(mine), HOME=str(tmp_path))
    diagnosed = _said(plugbay("diagnose", data, env=env), 2)
    assert diagnosed.endswith(f"Set KUBECONFIG={tmp_path / 'theirs'} for this host if you trust that file, or pass"
                              " --kubeconfig with this host's kubeconfig for that cluster, or reattach from a host"
                              " that uses it"), diagnosed
    health = _said(plugbay("health", data, env=env), 2)
    assert health.endswith(f"Set KUBECONFIG={tmp_path / 'theirs'} for this host if you trust that file, or"
                           " reattach from a host that uses it"), health
