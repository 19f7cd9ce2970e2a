"""A PluginContainer started outside a `with` block and never stopped is stopped at interpreter exit: when its
script ends, and when SIGTERM ends it through the one-line handler docs/docker.md gives (plugbay sets no signal
handler of its own outside its pytest fixtures). Before, a reattached Client only disconnects at exit, and the
container ran on. Real host processes and a real container (Ryuk off, so nothing else removes it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from docker.errors import NotFound

from plugbay.runners.docker.madehere import forget_made

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

SRC = Path(__file__).resolve().parent.parent / "src"
# the plugin: its socket, the handshake line, then it waits
PLUGIN = textwrap.dedent("""
    import os, socket, time
    path = os.path.join(os.environ["PLUGIN_UNIX_SOCKET_DIR"], "plugin.sock")
    srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen()
    print("1|1|unix|%s|grpc" % path, flush=True)
    time.sleep(120)
""")
HOST = textwrap.dedent("""
    import json, os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from plugbay.core.protocol.handshake import HandshakeConfig
    from plugbay.testing import PluginContainer
    plugin = PluginContainer("plugbay-base:bookworm", HandshakeConfig(1, "FX_COOKIE", "fx"), transport="unix",
                             entrypoint=["python3", "-c", sys.argv[2]])
    plugin.start()
    if sys.argv[3] == "sigterm":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # docs/docker.md's one line
    child = os.fork()
    if child == 0:  # a forked child's exit handlers: its parent's container is not its to stop
        sys.exit(0)
    os.waitpid(child, 0)
    status = plugin.get_docker_client().client.containers.get(plugin.get_container_id()).status
    print(json.dumps({"id": plugin.get_container_id(), "after_child": status}), flush=True)
    if sys.argv[3] == "sigterm":
        time.sleep(120)
""")


@pytest.mark.parametrize("end", ["script_end", "sigterm"])
def test_an_unstopped_plugin_container_is_stopped_at_exit(plugbay_docker: Any, end: str) -> None:
    env = {**os.environ, "TESTCONTAINERS_RYUK_DISABLED": "true"}
    host = subprocess.Popen([sys.executable, "-c", HOST, str(SRC), PLUGIN, end], stdout=subprocess.PIPE, text=True,
                            env=env)
    container_id = ""
    try:
        assert host.stdout is not None
        facts = json.loads(host.stdout.readline())
        container_id = facts["id"]
        assert facts["after_child"] == "running", "a forked child's exit stopped its parent's container"
        if end == "sigterm":
            host.send_signal(signal.SIGTERM)
        assert host.wait(120) == (143 if end == "sigterm" else 0)
        with pytest.raises(NotFound):
            plugbay_docker.containers.get(container_id)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait(10)
        if host.stdout is not None:
            host.stdout.close()
        if container_id:
            for c in plugbay_docker.containers.list(all=True, filters={"id": container_id}):
                c.remove(force=True)
            forget_made(container_id)
