"""What a pod's plugin and the cluster say reaches the host's errors with its controls escaped.

A plugin's log lines, its container's termination message and the pod's events are untrusted text:
an ESC or a newline in them could drive the terminal that shows the error or forge a line of the
host's log. The process and Docker runners escape them (plugbay.errors.printable); the pod runner's
description of a failed pod (in PluginExitedError, HandshakeTimeoutError, ``plugbay diagnose``)
does too. The plugin runs as a local process on the Kubernetes stand-in.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("kubernetes")

from plugbay import Client, ClientConfig, HandshakeConfig, PluginExitedError  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner, pods  # noqa: E402
from tests.kube_standin.process_fixtures import process_kubeconfig, process_standin  # noqa: E402,F401 - fixtures
from tests.kube_standin.server import StandIn  # noqa: E402

pytestmark = pytest.mark.kubernetes
RAW = ("\x1b", "\x07", "\x9b", "\u2028")
LINE = "boom \x1b]0;owned-title\x07 \x1b[2J cleared \x9b31m \u2028forged"


@pytest.mark.timeout(120)
def test_a_pod_plugins_log_lines_reach_its_exit_error_escaped(kubeconfig: str) -> None:
    program = (f"import sys, time\nsys.stderr.write({LINE!r} + '\\n'); sys.stderr.flush()\n"
               "time.sleep(2)\nsys.exit(3)\n")
    runner = KubernetesRunner("no-engine/escapes:1", kubeconfig=kubeconfig, command=[sys.executable, "-c", program],
                              start_timeout=30, api_timeout=5)
    client = Client(ClientConfig(handshake=HandshakeConfig(1, "K", "V"), plugins={}, runner=runner,
                                 start_timeout=30))
    try:
        with pytest.raises(PluginExitedError) as info:
            client.start()
    finally:
        client.kill()
    text = str(info.value)
    assert "last log lines:" in text and "\\x1b]0;owned-title\\x07" in text
    assert not [c for c in RAW if c in text], text


def _failed_pod(message: str) -> dict[str, object]:
    term = {"exitCode": 3, "reason": "Error\x1b[2J", "message": message}
    return {"metadata": {"namespace": "ns", "name": "p1", "uid": "u"},
            "spec": {"containers": [{"name": "plugin", "image": "x"}]},
            "status": {"phase": "Failed", "conditions": [
                {"type": "Ready", "status": "False", "reason": "PodCompleted", "message": "ended\x1b]0;t\x07"}],
                "containerStatuses": [{"name": "plugin", "image": "x", "restartCount": 0,
                                       "state": {"terminated": term}}]}}


def test_a_termination_message_and_events_are_escaped_in_the_description() -> None:
    """The container's termination message is the plugin's own words (its /dev/termination-log), the
    events the cluster's: a description, and the start failure built on it, escape them all."""
    events = [pods.format_event({"type": "Warning", "reason": "Odd\x07", "message": f"two\nlines {LINE}",
                                 "count": 2})]
    pod = _failed_pod(f"panic: {LINE}\nsecond line")
    text = pods.describe(pod, False, events, [LINE])
    assert not [c for c in RAW if c in text], text
    assert len(text.splitlines()) == 8, text  # no line of its own from a newline inside a fact
    assert "message=panic: boom \\x1b]0;owned-title\\x07" in text and "two\\x0alines" in text
    failure = pods.start_failure(pod, "ns/p1", [LINE], events)
    assert isinstance(failure, PluginExitedError)
    assert not [c for c in RAW if c in str(failure)], str(failure)
    assert "reason: Error\\x1b[2J" in str(failure)


def test_describe_of_a_pod_the_cli_diagnoses_is_escaped(tmp_path: Path) -> None:
    """``plugbay diagnose`` prints pods.describe's text: the same escapes reach the terminal."""
    from click.testing import CliRunner

    from plugbay.cli.ops import diagnose

    server = StandIn(runtime="process").start()
    try:
        from kubernetes import client as kclient

        from plugbay.runners.kubernetes.api import close_client, load_api_client

        kubeconfig = server.write_kubeconfig(str(tmp_path / "kubeconfig.yaml"))
        api_client, _ = load_api_client(kubeconfig)
        try:
            program = f"import sys\nsys.stderr.write({LINE!r} + '\\n')\nsys.exit(3)\n"
            kclient.CoreV1Api(api_client).create_namespaced_pod("default", {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plugbay-escapes"},
                "spec": {"restartPolicy": "Never", "containers": [
                    {"name": "plugin", "image": "x", "command": [sys.executable, "-c", program]}]}})
            deadline = time.monotonic() + 30
            while True:
                result = CliRunner().invoke(diagnose, ["pod:default/plugbay-escapes", "--kubeconfig", kubeconfig])
                if "\\x1b]0;owned-title" in result.output or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            close_client(api_client)
        assert result.exit_code == 0, result.output
        assert "\\x1b]0;owned-title\\x07" in result.output, result.output
        assert not [c for c in RAW if c in result.output], result.output
    finally:
        server.stop()
