"""Socket group/mode changes never follow a name a container user could have swapped for a symlink."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from plugbay.core.broker.channels import share_socket
from plugbay.core.transport.sockets import give_to_group


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
