"""Socket group/mode changes never follow a name a container user could have swapped for a symlink."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from plugbay.core.broker.channels import share_socket
from plugbay.core.transport.sockets import give_to_group, group_id
from plugbay.errors import ConfigError
from tests.serverproc import COOKIE, KV_PLUGIN, PluginProc, plugins, refused  # noqa: F401  (a fixture)


def test_a_symlink_in_place_of_the_socket_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    secret = tmp_path / "host-file"
    secret.write_text("the host's")
    secret.chmod(0o600)
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o2770)  # setgid, as a folder shared with a container user is: share_socket acts
    link = folder / "plugin.sock"
    link.symlink_to(secret)
    with pytest.raises(OSError, match="not a socket or a folder"):
        give_to_group(str(link), os.getgid(), 0o660)
    share_socket(str(link), str(folder))  # the broker's caller logs the refusal and goes on
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_a_real_socket_gets_the_group_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "plugin.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        give_to_group(str(path), os.getgid(), 0o660)
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()


class _SwapOnFolderCheck:
    """The listener module's ``os``, with a folder user's swap of the fresh socket for a symlink made
    at the very moment the listener looks at the folder (between bind and the mode change)."""

    def __init__(self, folder: Path, victim: Path) -> None:
        self._folder, self._victim = str(folder), victim
        self.swapped = 0

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def stat(self, path: str, *args: object, **kwargs: object) -> os.stat_result:
        if path == self._folder:
            for name in os.listdir(path):
                sock = os.path.join(path, name)
                if stat.S_ISSOCK(os.lstat(sock).st_mode):
                    os.unlink(sock)
                    os.symlink(self._victim, sock)
                    self.swapped += 1
        return os.stat(path, *args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("through_relay", [False, True], ids=["grpc-binds", "front-binds"])
def test_plugin_socket_swapped_for_a_symlink_in_a_setgid_folder_is_refused_and_its_target_left_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, through_relay: bool) -> None:
    import ssl
    from concurrent import futures

    import grpc

    from plugbay.core.plugin import listener
    from plugbay.errors import ConfigError

    victim = tmp_path / "host-file"
    victim.write_text("the plugin user's")
    victim.chmod(0o600)
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o2770)  # PLUGIN_UNIX_SOCKET_DIR shared with a container user's group
    endpoint = listener.plan_endpoint({"PLUGIN_UNIX_SOCKET_DIR": str(folder)})
    swap = _SwapOnFolderCheck(folder, victim)
    monkeypatch.setattr(listener, "os", swap)
    relay_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) if through_relay else None
    server = grpc.server(futures.ThreadPoolExecutor(1))
    try:
        with pytest.raises(ConfigError, match="group-writable.*not a socket or a folder"):
            listener.listen(server, endpoint, credentials=None, relay_context=relay_context, multiplex=False,
                            folder=str(tmp_path))
    finally:
        server.start()  # grpcio frees a port it bound only once its server ran
        server.stop(0).wait()
    assert swap.swapped == 1
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert victim.read_text() == "the plugin user's"


@pytest.mark.parametrize("value", ["\u0661\u0662", "99999999999", "4294967295", "\uff11", "9" * 5000])
def test_a_socket_group_that_is_no_ascii_gid_in_range_is_a_config_error(value: str) -> None:
    # str.isdigit took Arabic-Indic digits as gid 12, and an out-of-range gid raised OverflowError at chown
    with pytest.raises(ConfigError, match="advice"):
        group_id(value, "advice")


def test_socket_group_gids_in_range_are_taken() -> None:
    assert group_id("0", "advice") == 0
    assert group_id("4294967294", "advice") == 2**32 - 2
    assert group_id(str(os.getgid()), "advice") == os.getgid()


def test_a_plugin_given_an_out_of_range_socket_group_refuses_in_one_line(plugins: list[PluginProc],
                                                                         tmp_path: Path) -> None:
    err = refused(plugins, {**COOKIE, "PLUGIN_PROTOCOL_VERSIONS": "1", "PLUGIN_UNIX_SOCKET_DIR": str(tmp_path),
                            "PLUGIN_UNIX_SOCKET_GROUP": "99999999999"}, script=KV_PLUGIN)
    assert "Traceback" not in err, err
    assert "'99999999999'" in err and "PLUGIN_UNIX_SOCKET_GROUP" in err
    assert os.listdir(tmp_path) == []
