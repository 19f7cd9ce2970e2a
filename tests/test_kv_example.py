"""examples/kv/host.py, run as a user would: KV_PLUGIN names the plugin command (sh -c)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests import gobuild

REPO = Path(__file__).resolve().parent.parent
HOST = REPO / "examples" / "kv" / "host.py"
PY_PLUGIN = f"{shlex.quote(sys.executable)} {shlex.quote(str(REPO / 'examples' / 'kv' / 'plugin.py'))}"


def run_host(cwd: Path, plugin: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("KV_PLUGIN", None)
    if plugin is not None:
        env["KV_PLUGIN"] = plugin
    return subprocess.run([sys.executable, str(HOST), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def go_plugin() -> str:
    return shlex.quote(str(gobuild.go_program_or_skip("kv_plugin")))


@pytest.mark.parametrize("flags", [[], ["--automtls"]], ids=["plain", "automtls"])
@pytest.mark.parametrize("which", ["python", "go"])
def test_put_then_get(tmp_path: Path, flags: list[str], which: str) -> None:
    plugin = PY_PLUGIN if which == "python" else go_plugin()
    put = run_host(tmp_path, plugin, *flags, "put", "greeting", "hello world")
    assert (put.returncode, put.stdout) == (0, ""), put.stderr
    assert (tmp_path / "kv_greeting").read_text() == "hello world"
    get = run_host(tmp_path, plugin, *flags, "get", "greeting")
    assert (get.returncode, get.stdout) == (0, "hello world\n"), get.stderr


def test_python_and_go_plugins_share_the_store(tmp_path: Path) -> None:
    assert run_host(tmp_path, PY_PLUGIN, "put", "k", "from python").returncode == 0
    get = run_host(tmp_path, go_plugin(), "--automtls", "get", "k")
    assert get.stdout == "from python\n", get.stderr


def test_missing_key_is_an_error(tmp_path: Path) -> None:
    get = run_host(tmp_path, PY_PLUGIN, "get", "nothing")
    assert get.returncode == 1
    assert "Error:" in get.stderr and "kv_nothing" in get.stderr
    assert "no value stored for key 'nothing'" in get.stderr and "put one first" in get.stderr
    assert "Traceback" not in get.stderr  # a missing key is an answer, not a plugin crash


def test_missing_kv_plugin_variable(tmp_path: Path) -> None:
    out = run_host(tmp_path, None, "get", "x")
    assert out.returncode == 1 and "set KV_PLUGIN" in out.stderr


def test_plugin_that_is_not_a_plugin(tmp_path: Path) -> None:
    out = run_host(tmp_path, "echo not a plugin", "get", "x")
    assert out.returncode == 1
    assert "malformed handshake line 'not a plugin'" in out.stderr


def test_usage_errors(tmp_path: Path) -> None:
    out = run_host(tmp_path, PY_PLUGIN, "put", "only-key")
    assert out.returncode == 2 and "put needs KEY and VALUE" in out.stderr
    out = run_host(tmp_path, PY_PLUGIN, "delete", "x")
    assert out.returncode == 2 and "invalid choice" in out.stderr
