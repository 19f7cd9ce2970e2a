"""A plugin command may name its files by os.PathLike (pathlib.Path), as cwd= and unix_socket_temp_dir= do:
the config and runner hold them as str; bytes and other types stay a ConfigError saying what to pass."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig, ConfigError, ProcessRunner  # noqa: E402
from plugbay.network.gateway.config import GatewayConfig  # noqa: E402

SCRIPT = REPO / "examples" / "kv" / "plugin.py"
PLUGINS = {PLUGIN_NAME: KVPlugin()}


class _BytesPath(os.PathLike[bytes]):
    def __fspath__(self) -> bytes:
        return os.fsencode(SCRIPT)


def test_a_cmd_of_paths_starts_the_plugin_and_is_held_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the KV plugin writes kv_<key> files in its cwd
    config = ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[Path(sys.executable), SCRIPT])
    assert config.cmd == [sys.executable, str(SCRIPT)]
    assert config == ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[sys.executable, str(SCRIPT)])
    assert "PosixPath" not in repr(config)
    with Client(config) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"
        assert client.reattach_config().to_json()  # serialises with the str command


def test_a_cmd_of_paths_set_after_construction_is_made_text_by_client(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[sys.executable, str(SCRIPT)])
    config.cmd = [sys.executable, SCRIPT]
    with Client(config) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"
    assert config.cmd == [sys.executable, str(SCRIPT)]


def test_process_runner_and_gateway_take_paths_as_text() -> None:
    assert ProcessRunner([Path(sys.executable), SCRIPT]).cmd == [sys.executable, str(SCRIPT)]
    gateway = GatewayConfig(cmd=[SCRIPT], cookie=("BASIC_PLUGIN", "hello"), insecure=True)
    gateway.check()
    assert gateway.cmd == [str(SCRIPT)]


@pytest.mark.parametrize("part, says", [
    (os.fsencode(SCRIPT), "decode a bytes path with os.fsdecode()"),
    (_BytesPath(), "decode a bytes path with os.fsdecode()"),
    (3, "non-empty list of strings (or os.PathLike paths such as pathlib.Path)"),
    (Path("plug\0in.py"), "ClientConfig.cmd holds a NUL byte"),
])
def test_a_cmd_item_that_is_no_str_path_is_a_config_error(part: Any, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[sys.executable, part])
    assert says in str(err.value)
    assert "ClientConfig.cmd" in str(err.value)


def test_a_cmd_of_strings_stays_the_callers_own_list() -> None:
    # only a cmd holding paths is replaced by its text: a list of str stays the one the caller passed (and
    # later edits of it count, as before paths were taken), and a gateway's argv follows a cmd set after check()
    cmd = [sys.executable, str(SCRIPT)]
    config = ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=cmd)
    config.check()
    assert config.cmd is cmd
    texts = [sys.executable, str(SCRIPT)]
    gateway = GatewayConfig(cmd=texts, cookie=("BASIC_PLUGIN", "hello"), insecure=True)
    gateway.check()
    assert gateway.cmd is texts
    gateway.cmd = [Path(sys.executable), SCRIPT]
    assert gateway.argv == [sys.executable, str(SCRIPT)]


def test_a_bad_cmd_is_named_after_an_earlier_bad_field() -> None:
    # the config's check names the first field that cannot work: cmd's text is made after it
    with pytest.raises(ConfigError) as err:
        ClientConfig(handshake=None, plugins=PLUGINS, cmd=[3])  # type: ignore[list-item]
    assert "handshake" in str(err.value)
