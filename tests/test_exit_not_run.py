"""A plugin whose shell could not run its program (exit 127: not found, 126: not executable) is told so, not given
the magic-cookie advice of a plugin that ran and stopped (an operator's trial: a Docker image's shell-form
entrypoint naming `pythn` read "check that it serves with the same handshake config (magic cookie)")."""

from __future__ import annotations

import pytest

from plugbay.core.host.client import Client, ClientConfig
from plugbay.core.protocol.handshake import HandshakeConfig
from plugbay.errors import PluginExitedError
from plugbay.runners.docker import DockerRunner
from plugbay.runners.process import ProcessRunner

BASE = "plugbay-base:bookworm"  # built by plugbay's tests (never pulled)


def _start_error(runner: object) -> PluginExitedError:
    config = ClientConfig(HandshakeConfig(1, "BASIC_PLUGIN", "hello"), versioned_plugins={1: {}}, runner=runner)
    with pytest.raises(PluginExitedError) as caught:
        with Client(config):
            pass
    return caught.value


def test_a_process_plugins_shell_saying_not_found_is_told_so() -> None:
    error = _start_error(ProcessRunner(["sh", "-c", "pythn plugin.py"]))
    assert error.exit_code == 127
    text = str(error)
    assert "pythn: not found" in text  # its stderr line
    assert "was not found on the PATH" in text and "Check the command" in text, text
    assert "magic cookie) as the host" not in text, text  # the default advice of a plugin that ran


@pytest.mark.parametrize("said", ["fatal: license file /etc/kv.lic missing", "[ERROR] config: key not found"])
def test_a_program_that_ran_and_exited_127_itself_gets_no_shell_advice(said: str) -> None:
    # 127 is the program's own choice here (it ran, and said why it stops): "the plugin never started" would send
    # the user looking for a missing program (found in review; a log line ending "not found" too)
    error = _start_error(ProcessRunner(["sh", "-c", f"echo '{said}' >&2; exit 127"]))
    assert error.exit_code == 127
    text = str(error)
    assert said in text
    assert "never started" not in text and "Exit code 127 is a shell's" not in text, text


@pytest.mark.docker
@pytest.mark.usefixtures("plugbay_docker")
@pytest.mark.parametrize(("entrypoint", "code", "said"), [
    (["/bin/sh", "-c", "pythn /app/plugin.py"], 127, "was not found in the image"),
    (["/bin/sh", "-c", "/etc/hostname"], 126, "was found but could not be executed"),
])
def test_a_containers_shell_that_could_not_run_its_program_names_the_images_entrypoint(
        entrypoint: list[str], code: int, said: str) -> None:
    error = _start_error(DockerRunner(BASE, entrypoint=entrypoint))
    assert error.exit_code == code
    text = str(error)
    assert said in text and "ENTRYPOINT/CMD" in text and "the image's PATH" in text, text
    assert "magic cookie) as the host" not in text, text


@pytest.mark.parametrize(("said", "shell"), [("/bin/sh: 1: pythn: not found", True),
                                             ("fatal: license file /etc/kv.lic missing", False)])
def test_a_pod_whose_shell_could_not_run_its_program_is_told_so(said: str, shell: bool) -> None:
    # the pod runner's own error for a pod whose plugin container ended before the handshake (the cluster's words
    # as the Kubernetes API gives them): it had no such advice, only the magic cookie's (found in review)
    from plugbay.runners.kubernetes.pods import start_failure

    pod = {"status": {"phase": "Failed", "containerStatuses": [
        {"name": "plugin", "state": {"terminated": {"exitCode": 127, "reason": "Error"}}}]}}
    error = start_failure(pod, "kv", [said], [])
    assert isinstance(error, PluginExitedError) and error.exit_code == 127, repr(error)
    text = str(error)
    assert ("was not found in the image" in text and "ENTRYPOINT/CMD" in text) is shell, text
    assert ("magic cookie) as the host" not in text) is shell, text
