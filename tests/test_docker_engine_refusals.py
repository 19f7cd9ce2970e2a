"""The advice when the Docker engine refuses to run a plugin's container fits the engine's reason.

Before, every refusal advised checking the image's entrypoint/command, also when the engine itself refused
(a bind-mount source missing, a host port already taken): the wrong place to look. Real engine, real
containers (the base image, never pulled); each refusal comes from the engine itself.
"""

from __future__ import annotations

import socket
import uuid
from typing import Any

import pytest
from docker.types import Mount

from plugbay.core.protocol.handshake import HandshakeConfig
from plugbay.errors import RunnerError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

BASE = "plugbay-base:bookworm"
HANDSHAKE = HandshakeConfig(1, "FX_COOKIE", "fx")
ENGINE_SIDE = "The engine refused before the plugin's command ran"
COMMAND_SIDE = "The container's command cannot run"


def _names_the_command(text: str) -> bool:
    """Whether ``text`` advises looking at the container's command (the old advice said "entrypoint/command")."""
    return any(words in text for words in ("entrypoint/command", "entrypoint=/command=", "ENTRYPOINT/CMD",
                                           COMMAND_SIDE))


@pytest.fixture(autouse=True)
def _no_ryuk(monkeypatch: pytest.MonkeyPatch) -> None:
    from testcontainers.core.config import testcontainers_config

    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)  # Ryuk's image would be pulled


def _runner_refusal(**options: Any) -> str:
    with pytest.raises(RunnerError, match="the Docker engine refused to run") as info:
        DockerRunner(BASE, **options).start(LaunchSpec(env={}))
    return str(info.value)


def _container_refusal(container: Any) -> str:
    with pytest.raises(RunnerError, match="the Docker engine refused to run") as info:
        container.start()
    return str(info.value)


def _left(plugbay_docker: Any, mark: str) -> list[Any]:
    return plugbay_docker.containers.list(all=True, filters={"label": f"fx.refusal={mark}"})


@pytest.mark.parametrize("entrypoint, said", [
    (["/no/such/binary"], "no such file or directory"),
    (["no-such-command-here"], "executable file not found"),
    (["/etc/passwd"], "permission denied"),  # in the image, not executable
    (['no"such'], "executable file not found"),  # Go quotes the name: an escaped '"' inside it
    (None, "no command specified"),  # the base image has no ENTRYPOINT or CMD of its own
])
def test_a_command_that_cannot_run_gets_the_entrypoint_advice(entrypoint: list[str] | None, said: str) -> None:
    text = _runner_refusal(entrypoint=entrypoint)
    assert said in text.lower() and COMMAND_SIDE in text, text
    assert "DockerRunner's entrypoint=/command=" in text and ENGINE_SIDE not in text, text


def test_a_missing_bind_source_is_the_engines_refusal_not_the_commands(tmp_path: Any) -> None:
    missing = tmp_path / "not-made"
    text = _runner_refusal(mounts=[f"{missing}:/data:ro"])
    assert str(missing) in text and ENGINE_SIDE in text, text  # the engine's reason, quoted
    assert not _names_the_command(text) and "mounts" in text, text


def test_plugin_container_with_a_host_port_already_taken(plugbay_docker: Any) -> None:
    from plugbay.testing import PluginContainer

    mark = uuid.uuid4().hex
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        container = PluginContainer(BASE, HANDSHAKE, entrypoint=["sleep", "60"], start_timeout=30,
                                    labels={"fx.refusal": mark})
        container.ports["5000/tcp"] = ("127.0.0.1", taken)  # as docker-py takes it (with_bind_ports() takes no ip)
        text = _container_refusal(container)
    finally:
        holder.close()
    assert str(taken) in text and ENGINE_SIDE in text, text
    assert not _names_the_command(text) and "ports" in text, text
    assert _left(plugbay_docker, mark) == []  # the refused container was removed


def test_plugin_container_advice_follows_the_engines_reason(plugbay_docker: Any, tmp_path: Any) -> None:
    from plugbay.testing import PluginContainer

    missing = str(tmp_path / "not-made")
    bad_mount = PluginContainer(BASE, HANDSHAKE, transport="unix", entrypoint=["sleep", "60"],
                                mounts=[Mount(target="/data", source=missing, type="bind")])
    text = _container_refusal(bad_mount)
    assert missing in text and ENGINE_SIDE in text and not _names_the_command(text), text
    bad_command = PluginContainer(BASE, HANDSHAKE, transport="unix", entrypoint=["/no/such/binary"])
    text = _container_refusal(bad_command)
    assert "no such file or directory" in text.lower() and COMMAND_SIDE in text, text
    assert "entrypoint=/command= given to PluginContainer" in text, text


# Engine refusals that name an exec of the engine's own host programs, recorded from real engines (the
# reports: moby/moby#49519, coreos/rpm-ostree#2168, containers/crun#926); a healthy engine cannot be made to
# give them here. They read like a command's 'exec: "x": executable file not found' and were advised so.
@pytest.mark.parametrize("reason", [
    'driver failed programming external connectivity on endpoint plugin (0f3c): exec: "docker-proxy":'
    ' executable file not found in $PATH',
    "driver failed programming external connectivity on endpoint plugin (0f3c): failed to bind port"
    " 127.0.0.1:8082/tcp: fork/exec /usr/bin/rootlesskit-docker-proxy: no such file or directory",
    "OCI runtime create failed: unable to retrieve OCI runtime error (open /run/containerd/io.containerd.runtime"
    ".v2.task/moby/0f3c/log.json: no such file or directory): fork/exec /usr/local/bin/crun: no such file or"
    " directory: unknown",
])
def test_an_engine_failing_to_run_its_own_program_is_the_engines_refusal(reason: str) -> None:
    from docker.errors import APIError

    from plugbay.runners.docker.refusal import engine_refused

    text = str(engine_refused(BASE, APIError("500 Server Error", explanation=reason), "the entrypoint", "options"))
    assert ENGINE_SIDE in text and not _names_the_command(text), text

