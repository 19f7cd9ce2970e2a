"""A Docker plugin's TMPDIR: the bind-mounted socket folder for the unix transport (go-plugin <= 1.4 puts its
socket there), unless the caller gives one; never the socket folder for tcp, which mounts none.

Writes to the socket folder land on the host's disk past read_only and tmpfs_size, so a plugin that names its
socket by PLUGIN_UNIX_SOCKET_DIR (plugbay's own) can be given env={"TMPDIR": "/tmp"} and stays reachable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from plugbay.core.host.client import Client, ClientConfig
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import CONTAINER_SOCKET_DIR, DockerRunner
from tests.test_docker_runner import _ask, _handshake, _runner

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

REPO = Path(__file__).resolve().parent.parent


def _plugin_env(runner: DockerRunner, spec_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the stand-in plugin (test_docker_runner's ECHO) sees, asked through its address."""
    runner.start(LaunchSpec(env=spec_env or {}))
    try:
        env: dict[str, str] = _ask(*runner.plugin_to_host(*_handshake(runner)))["env"]
    finally:
        runner.kill()
    return env


def test_the_unix_transports_tmpdir_is_the_socket_folder_by_default() -> None:
    env = _plugin_env(_runner())
    assert env["TMPDIR"] == env["PLUGIN_UNIX_SOCKET_DIR"] == CONTAINER_SOCKET_DIR


@pytest.mark.parametrize("given", ["runner", "client"])
def test_a_tmpdir_the_caller_gives_wins_and_the_plugin_stays_reachable(given: str) -> None:
    # the socket folder's TMPDIR replaced the caller's: a plugin could not be kept off the host's disk
    runner = _runner(env={"TMPDIR": "/tmp"} if given == "runner" else None)
    env = _plugin_env(runner, {"TMPDIR": "/tmp"} if given == "client" else None)
    assert env["TMPDIR"] == "/tmp" and env["PLUGIN_UNIX_SOCKET_DIR"] == CONTAINER_SOCKET_DIR


def test_the_tcp_transport_gives_no_socket_folder_tmpdir() -> None:
    runner = _runner(transport="tcp")
    env = _plugin_env(runner)
    assert "TMPDIR" not in env and runner.reattach_data()["host_socket_dir"] is None  # nothing of the host's


def test_the_tcp_transport_passes_on_no_host_socket_folder_or_group() -> None:
    # the Client's PLUGIN_UNIX_SOCKET_DIR names a folder of this host, which a tcp container does not mount:
    # a plugbay plugin there would make its brokers' sockets in a folder that is not there
    host_folder = {"PLUGIN_UNIX_SOCKET_DIR": "/tmp/plugbay-hostonly", "PLUGIN_UNIX_SOCKET_GROUP": "10001"}
    env = _plugin_env(_runner(transport="tcp"), {"PLUGIN_MIN_PORT": "10000", **host_folder})
    assert env["PLUGIN_MIN_PORT"] == "10000" and not set(host_folder) & set(env), env
    # one the caller gives the runner itself is theirs, and kept
    env = _plugin_env(_runner(transport="tcp", env={"PLUGIN_UNIX_SOCKET_DIR": "/data"}), host_folder)
    assert env["PLUGIN_UNIX_SOCKET_DIR"] == "/data" and "PLUGIN_UNIX_SOCKET_GROUP" not in env


def test_a_plugbay_plugin_with_tmpdir_off_the_socket_folder_serves_and_calls_back(plugbay_image: Any,
                                                                                   plugbay_docker: Any) -> None:
    # the documented way to keep a plugbay plugin's temp files off the host: its socket and the broker's
    # (a callback per connection through the bind mount) follow PLUGIN_UNIX_SOCKET_DIR, not TMPDIR
    sys.path.insert(0, str(REPO / "examples" / "counter"))
    from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin

    class Adder:
        def sum(self, a: int, b: int) -> int:
            return a + b

    runner = DockerRunner(plugbay_image("counter"), env={"TMPDIR": "/tmp"}, writable_dirs=("/tmp", "/data"))
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, runner=runner)) as client:
        assert not client.handshake.multiplex
        counter = client.dispense(PLUGIN_NAME)
        counter.put("t", 2, Adder())
        counter.put("t", 3, Adder())
        assert counter.get("t") == 5
        env = plugbay_docker.api.inspect_container(runner.id)["Config"]["Env"]
        assert "TMPDIR=/tmp" in env and f"PLUGIN_UNIX_SOCKET_DIR={CONTAINER_SOCKET_DIR}" in env
        code, out = plugbay_docker.containers.get(runner.id).exec_run(["python3", "-c",
                                                                      "import tempfile; print(tempfile.gettempdir())"])
        assert (code, out.decode().strip()) == (0, "/tmp")
