"""PluginContainer and what its plugin says.

A PluginContainer(transport="unix") whose plugin announces an address plugbay refuses to dial (a socket path
outside the mounted folder, /etc/passwd; a TCP address, which the unix transport publishes no port for):
start() succeeded, and the typed error came only at the first dispense()/get_client(), then at each one
after, with the container left running. Now start() refuses it with that same typed error and removes the
container, as any failed start does. And a call that met the container's death advised "start a new Client",
which cannot bring the container back: it names the PluginContainer now. Real containers on the real engine
(plugbay-base, its entrypoint printing the handshake line a test sets; the kv image)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from plugbay.errors import MalformedHandshakeError, RunnerError

pytestmark = [pytest.mark.docker]
pytest.importorskip("testcontainers")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay.testing import PluginContainer  # noqa: E402

PLUGINS = {PLUGIN_NAME: KVPlugin(None)}  # type: ignore[arg-type]
IMAGE = "plugbay-base:bookworm"


def _labelled(docker: Any, tag: str) -> list[Any]:
    found: list[Any] = docker.containers.list(all=True, filters={"label": f"test.plugbay-announced={tag}"})
    return found


def _start_is_refused(line: str, error: type[Exception], says: str, **options: Any) -> None:
    """start() of a container that prints the handshake `line` raises `error` saying `says`, and leaves neither
    the container nor its socket folder."""
    import docker

    tag = uuid.uuid4().hex
    options.setdefault("plugins", PLUGINS)
    plugin = PluginContainer(IMAGE, HANDSHAKE, transport="unix", start_timeout=30,
                             labels={"test.plugbay-announced": tag},
                             entrypoint=["sh", "-c", f"echo '{line}'; sleep 120"], **options)
    engine = docker.from_env()
    try:
        with pytest.raises(error) as caught:
            plugin.start()
        assert says in str(caught.value), caught.value
        assert _labelled(engine, tag) == []  # removed, as a failed start's container is
        assert plugin._socket_dir is None  # its socket folder too
    finally:
        plugin.stop()
        for left in _labelled(engine, tag):
            left.remove(force=True)
        engine.close()


@pytest.mark.parametrize(("announced", "error", "says"), [
    ("unix|/etc/passwd", MalformedHandshakeError, "announced socket path '/etc/passwd', but it is not a file"
                                                   " directly in the mapped socket folder"),
    ("tcp|127.0.0.1:1", RunnerError, "announced tcp:127.0.0.1:1, which the host cannot reach: with the unix"
                                     " transport it must put its socket in"),
], ids=["outside-the-folder", "tcp-in-unix"])
def test_start_refuses_an_address_the_host_would_not_dial_and_removes_the_container(
        plugbay_docker: Any, announced: str, error: type[Exception], says: str) -> None:
    _start_is_refused(f"1|{HANDSHAKE.protocol_version}|{announced}|grpc", error, says)


def test_start_refuses_a_version_the_host_does_not_take_and_removes_the_container(plugbay_docker: Any) -> None:
    # start() succeeded, and the VersionMismatchError came only at the first dispense()/get_client()
    from plugbay.errors import VersionMismatchError

    _start_is_refused(f"1|{HANDSHAKE.protocol_version + 6}|unix|/plugbay/sock/plugin.sock|grpc",
                      VersionMismatchError, "host supports [1], plugin supports [7]")


def test_start_refuses_the_handshake_version_when_only_versioned_plugins_are_given(plugbay_docker: Any) -> None:
    # with versioned_plugins alone its Client takes only those versions (ClientConfig.versions()), but start()
    # also took the handshake's own: it succeeded, and the VersionMismatchError came at the first get_client()
    from plugbay.errors import VersionMismatchError

    assert HANDSHAKE.protocol_version == 1
    _start_is_refused("1|1|unix|/plugbay/sock/plugin.sock|grpc", VersionMismatchError,
                      "host supports [2], plugin supports [1]", plugins=None, versioned_plugins={2: PLUGINS})


def test_a_call_after_the_container_died_advises_restarting_the_plugin_container(plugbay_image: Any,
                                                                                  plugbay_docker: Any) -> None:
    # the Client's own advice, "start a new Client", cannot bring back a container PluginContainer runs
    from plugbay.errors import PluginDiedError

    with PluginContainer(plugbay_image("kv"), HANDSHAKE, PLUGINS, transport="unix") as plugin:
        kv = plugin.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        plugbay_docker.containers.get(plugin.get_container_id()).kill()
        with pytest.raises(PluginDiedError) as caught:
            kv.get("k")
        said = str(caught.value)
        assert "restart the PluginContainer (stop(), then start()) or make a new one" in said, said
        assert "start a new Client" not in said, said


def test_a_socket_in_the_folder_not_made_yet_is_left_to_get_client(plugbay_docker: Any) -> None:
    # a plugin that prints its line before it listens: no address plugbay refuses, so start() goes on (as before)
    plugin = PluginContainer(IMAGE, HANDSHAKE, PLUGINS, transport="unix", start_timeout=30,
                             entrypoint=["sh", "-c", "echo '1|1|unix|/plugbay/sock/later.sock|grpc'; exec sleep 60"])
    try:
        plugin.start()
        with pytest.raises(MalformedHandshakeError, match="'/plugbay/sock/later.sock', but it does not exist"):
            plugin.get_client()
    finally:
        plugin.stop()


def test_a_socket_made_just_after_the_failed_open_is_still_left_to_get_client(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the plugin binds its socket right after the check's one open found nothing: the check goes by that open's
    # reason (not there yet), not by a second look at the folder, which now holds a socket
    import socket

    from plugbay.core.host.reattach import ReattachConfig
    from plugbay.core.protocol.handshake import HandshakeInfo
    from plugbay.runners.docker.sockethandles import SocketHandles
    from plugbay.testing import announced

    made: list[socket.socket] = []

    class BoundJustAfter(SocketHandles):
        def dial_path(self, host_path: str) -> str:
            try:
                return super().dial_path(host_path)
            finally:
                if not made:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.bind(host_path)
                    made.append(sock)

    monkeypatch.setattr(announced, "SocketHandles", BoundJustAfter)
    handshake = HandshakeInfo(1, HANDSHAKE.protocol_version, "unix", "/plugbay/sock/later.sock", "grpc")
    config = ReattachConfig(handshake, {"transport": "unix", "host_socket_dir": str(tmp_path),
                                        "id": "c" * 64, "container_port": 1234})
    try:
        announced.check_announced(config)  # no refusal
        assert made and (tmp_path / "later.sock").is_socket()
    finally:
        for sock in made:
            sock.close()
