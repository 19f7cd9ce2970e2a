"""`plugbay run` never prints the reattach config: it holds the AutoMTLS private key and the proof that lets a
reattach stop the plugin, and a run's stdout is a log under systemd or in a container (an operator's trial found
`plugbay run --automtls` printing `-----BEGIN PRIVATE KEY-----` in its `reattach: {...}` line and in --json's
`reattach`). Without --reattach-out the config goes to a 0600 file in a private (0700) folder of the run's, whose
path is printed as `reattach file`; the folder is removed when the run ends."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.cli_util import KV_PLUGIN, cli_env, plugbay

RUN = ["run", "--cmd", f"{sys.executable} {KV_PLUGIN}", "--cookie", "BASIC_PLUGIN=hello", "--automtls"]


def _until_ready(proc: subprocess.Popen[bytes], marker: bytes, tmp_path: Path, limit: float = 120) -> bytes:
    """stdout up to the line holding ``marker`` (bounded: fails past ``limit`` s or at the command's end)."""
    assert proc.stdout is not None
    got = b""
    deadline = time.monotonic() + limit
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while marker not in got:
            left = deadline - time.monotonic()
            assert left > 0, f"plugbay run not ready within {limit}s: {got!r}; its stderr: {_said(tmp_path)}"
            if sel.select(min(left, 1.0)):
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, f"plugbay run ended before it was ready: {got!r}; its stderr: {_said(tmp_path)}"
                got += chunk
    return got


def _said(tmp_path: Path) -> str:
    return (tmp_path / "run.err").read_text(errors="replace")[-4000:]


def _stop(proc: subprocess.Popen[bytes]) -> bytes:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    return out


def _private_file(path: Path) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, oct(path.parent.stat().st_mode)
    config = json.loads(path.read_text())
    assert "PRIVATE KEY" in config["client_cert"]["key_pem"]  # the file is the whole config, key and all


def _run(tmp_path: Path, *extra: str, **env: str) -> subprocess.Popen[bytes]:
    # stderr to a file: a run that fails says why in the assertion (_until_ready), and a pipe nobody reads could fill
    with open(tmp_path / "run.err", "wb") as errors:  # the child has its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "plugbay", *RUN, *extra], stdout=subprocess.PIPE,
                                stderr=errors, env=cli_env(**env), cwd=tmp_path, stdin=subprocess.DEVNULL)


def test_the_run_prints_where_the_reattach_config_is_not_the_config_and_its_key(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    try:
        shown = _until_ready(proc, b"ready:", tmp_path).decode()
        assert "PRIVATE KEY" not in shown and "reattach: {" not in shown, shown
        where = [line.split(":", 1)[1].strip() for line in shown.splitlines() if line.startswith("reattach file:")]
        assert len(where) == 1, shown
        path = Path(where[0])
        _private_file(path)
        info = plugbay("info", f"@{path}", "--json")
        assert info.returncode == 0, info.stderr
    finally:
        rest = _stop(proc).decode()
    assert "PRIVATE KEY" not in rest, rest
    assert proc.returncode == 0, rest
    assert not path.parent.exists(), sorted(os.listdir(path.parent))  # the run's folder went with it


def test_the_runs_json_names_the_reattach_file_and_holds_no_key(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--json")
    try:
        line = _until_ready(proc, b"\n", tmp_path).decode().splitlines()[0]
        assert "PRIVATE KEY" not in line, line
        facts = json.loads(line)
        assert "reattach" not in facts, facts
        path = Path(facts["reattach_file"])
        _private_file(path)
    finally:
        _stop(proc)
    assert proc.returncode == 0
    assert not path.parent.exists()


def test_a_sweep_keeps_a_killed_runs_config_while_its_plugin_answers(tmp_path: Path) -> None:
    # a run killed by SIGKILL leaves its process plugin up for a reattach (ProcessRunner's outlive grace); the
    # run's folder holds the plugin's socket folder too, so the sweep keeps it (and the config) while the plugin
    # answers, and removes it once the plugin is gone (the config was printed before, so this is what it keeps)
    from plugbay import Client, ClientConfig, HandshakeConfig, ReattachConfig

    # a short temp dir: the plugin's socket path nests two folders in it (a long one falls back to none)
    short = Path(tempfile.mkdtemp(prefix="pbr-", dir="/tmp"))
    try:
        _killed_run_swept(tmp_path, short, Client, ClientConfig, HandshakeConfig, ReattachConfig)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _killed_run_swept(tmp_path: Path, short: Path, Client: Any, ClientConfig: Any, HandshakeConfig: Any,
                      ReattachConfig: Any) -> None:
    proc = _run(tmp_path, TMPDIR=str(short))
    try:
        shown = _until_ready(proc, b"ready:", tmp_path).decode()
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    path = Path([line.split(":", 1)[1].strip() for line in shown.splitlines() if line.startswith("reattach file:")][0])
    assert path.parent.parent == short, path
    saved = ReattachConfig.from_json(path.read_text())
    kept = plugbay("sweep", "--temp", "--temp-dir", str(short), env=cli_env(TMPDIR=str(short)))
    try:
        assert kept.returncode == 0, kept.stderr
        assert path.exists(), f"the sweep removed a live plugin's reattach config: {kept.stdout}"
    finally:
        plugin = Client(ClientConfig(handshake=HandshakeConfig(1, "BASIC_PLUGIN", "hello"), plugins={},
                                     reattach=saved))
        plugin.start()
        plugin.kill()
    swept = plugbay("sweep", "--temp", "--temp-dir", str(short), env=cli_env(TMPDIR=str(short)))
    assert swept.returncode == 0, swept.stderr
    assert not path.parent.exists(), swept.stdout
