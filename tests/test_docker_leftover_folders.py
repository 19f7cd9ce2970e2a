"""A SIGKILLed host's socket folder, after the sweeps: the container sweep frees what is plugbay's, and a
folder the plugin left a file in keeps its maker's marker, so the temp sweep still removes it.

The host is a real process (a DockerRunner given the folder a Client makes, or a PluginContainer with the
unix transport) killed with SIGKILL; the plugin is a real container writing a temp file into its $TMPDIR,
which is the bind-mounted socket folder.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugbay.core.transport.tempdirs import MARKER, sweep_tempdirs
from plugbay.runners.docker import sweep
from plugbay.runners.docker.madehere import forget_made
from tests.procs import first_line_then_sigkill

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

REPO = Path(__file__).resolve().parent.parent

# the plugin: a temp file in $TMPDIR (the socket folder), its socket, the handshake line, then it waits
PLUGIN = textwrap.dedent("""
    import os, socket, tempfile, time
    with tempfile.NamedTemporaryFile(delete=False, prefix="cache-") as f:
        f.write(b"the plugin's temp file")
    path = os.path.join(os.environ["PLUGIN_UNIX_SOCKET_DIR"], "plugin.sock")
    srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen()
    print("1|1|unix|%s|grpc" % path, flush=True)
    time.sleep(120)
""")

HOSTS = {
    # as a Client does: its own marked folder (private_folder) handed to the runner
    "runner": textwrap.dedent("""
        import json, sys, time
        sys.path.insert(0, sys.argv[1])
        from plugbay.core.host.launch import private_folder
        from plugbay.runners.base import LaunchSpec
        from plugbay.runners.docker import DockerRunner
        folder = private_folder(None, None, True)
        runner = DockerRunner("plugbay-base:bookworm", entrypoint=["python3", "-c", sys.argv[2]])
        runner.start(LaunchSpec(env={}, socket_dir=folder))
        next(iter(runner.stdout_lines()))  # the handshake: the temp file is written
        print(json.dumps({"id": runner.id, "folder": folder}), flush=True)
        time.sleep(120)
    """),
    "plugin_container": textwrap.dedent("""
        import json, sys, time
        sys.path.insert(0, sys.argv[1])
        from plugbay.core.protocol.handshake import HandshakeConfig
        from plugbay.testing import PluginContainer
        plugin = PluginContainer("plugbay-base:bookworm", HandshakeConfig(1, "FX_COOKIE", "fx"), transport="unix",
                                 entrypoint=["python3", "-c", sys.argv[2]])
        plugin.start()
        runner = plugin.reattach_config().runner
        print(json.dumps({"id": runner["id"], "folder": runner["host_socket_dir"]}), flush=True)
        time.sleep(120)
    """),
}


@pytest.fixture
def root() -> Iterator[Path]:
    """A short folder to make the socket folders in (pytest's tmp_path is too long for a socket path)."""
    made = Path(tempfile.mkdtemp(prefix="lf-"))
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


def _killed_host(host: str, plugin: str, root: Path) -> dict[str, Any]:
    """The container id and socket folder of a ``host`` (one of HOSTS) that then died by SIGKILL."""
    env = {**os.environ, "TMPDIR": str(root), "TESTCONTAINERS_RYUK_DISABLED": "true"}
    facts = first_line_then_sigkill([sys.executable, "-c", HOSTS[host], str(REPO / "src"), plugin], env)
    assert Path(facts["folder"]).parent == root
    return facts


def _swept(docker: Any, container_id: str) -> list[str]:
    """sweep() of the session that made the container alone: another session's may be between hosts."""
    return sweep(sessions=[docker.containers.get(container_id).labels["plugbay.session"]])


def _remove(docker: Any, container_id: str) -> None:
    for c in docker.containers.list(all=True, filters={"id": container_id}):
        c.remove(force=True)
        forget_made(c.id)  # the crashed host's record of it


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_a_folder_the_plugin_wrote_in_is_left_to_the_temp_sweep(plugbay_docker: Any, root: Path, host: str) -> None:
    # the container sweep removed the folder's owner marker with the sockets: the folder, holding the
    # plugin's temp file, could not be removed and no temp sweep recognised it any more (leaked for good)
    facts = _killed_host(host, PLUGIN, root)
    try:
        folder = Path(facts["folder"])
        assert facts["id"] in _swept(plugbay_docker, facts["id"])
        left = sorted(p.name for p in folder.iterdir())
        assert len(left) == 2 and left[0] == MARKER and left[1].startswith("cache-"), left
        assert sweep_tempdirs([str(root)]) == [str(folder)]
        assert not folder.exists()
    finally:
        _remove(plugbay_docker, facts["id"])


def test_a_folder_the_plugin_left_nothing_in_goes_with_its_marker(plugbay_docker: Any, root: Path) -> None:
    # the marker is kept only while something else stays: an emptied folder is removed by the container sweep
    quiet = PLUGIN.replace("delete=False", "delete=True")
    facts = _killed_host("runner", quiet, root)
    try:
        assert facts["id"] in _swept(plugbay_docker, facts["id"])
        assert not Path(facts["folder"]).exists()
    finally:
        _remove(plugbay_docker, facts["id"])
