"""pin_socket()'s refusal of an announced unix path this host cannot open says what went wrong: only a permission
error is advised to run as another user; a symlink loop or a name too long no user opens, and the advice that ends
the message survives the error's cut of a long reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plugbay.core.host.socketpin import pin_socket
from plugbay.core.protocol.handshake import HandshakeInfo
from plugbay.errors import UnprovenAddressError

ADVICE = "Have the plugin announce the address its own server listens on"


def refused(path: str) -> str:
    announced = HandshakeInfo(1, 1, "unix", path)
    with pytest.raises(UnprovenAddressError) as caught:
        pin_socket(path, announced, "kv", reattached=False)
    return str(caught.value)


def test_a_symlink_loop_is_told_as_one_not_as_a_permission(tmp_path: Path) -> None:
    # before: "this host may not open it (Too many levels of symbolic links); run as a user who may open PATH"
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    said = refused(str(tmp_path / "a"))
    assert "(ELOOP: Too many levels of symbolic links); check the path" in said, said
    assert "run as a user" not in said and said.rstrip(".").endswith(ADVICE), said


def test_a_name_too_long_keeps_its_advice_and_shows_the_path_escaped_and_cut(tmp_path: Path) -> None:
    # before: the whole path (and its control characters) in the message, whose middle the error's 800-character
    # cut took with the start of the advice; and "run as a user who may open" it, which no user may
    path = str(tmp_path / ("x\x1b" * 3000))
    said = refused(path)
    assert "(ENAMETOOLONG: File name too long); check the path" in said, said
    assert "\x1b" not in said and "run as a user" not in said, said
    assert said.rstrip(".").endswith(ADVICE) and "characters cut)...x\\x1b" in said, said
    assert "announced address refused:" in said and said.count("characters cut") == 2, said


def test_a_permission_error_still_says_to_run_as_a_user_who_may_open_it(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root opens a folder of mode 000")
    shut = tmp_path / "shut"
    shut.mkdir(mode=0o000)
    try:
        said = refused(str(shut / "plugin.sock"))
    finally:
        shut.chmod(0o700)
    assert f"(Permission denied); run as a user who may open {shut / 'plugin.sock'}" in said, said
