"""The plugbay command writes text that is not its own with its control characters escaped.

A reattach file's name (refused, and quoted escaped) and a container's log lines are a plugin's (or a
forger's) words: printed raw, they set the terminal's title, clear its screen or forge lines. Checked
through a pipe and through a pseudo-terminal (colour on: the rich printers), as a user at a shell sees it.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_util import KV_PLUGIN, cli_env, plugbay, running

RUN = ["--cmd", f"{sys.executable} {KV_PLUGIN}", "--cookie", "BASIC_PLUGIN=hello"]
FORGED = "\x1b]0;PWNED-TITLE\x07\x1b[2J\x1b[31mfake: all good\r"
RAW = [b"\x1b", b"\x07", b"\r"]


def on_terminal(*args: str, timeout: float = 60) -> bytes:
    """`python -m plugbay ARGS` on a pseudo-terminal (TERM=xterm, colour on); all it wrote."""
    argv = [sys.executable, "-m", "plugbay", *args]
    env = cli_env(TERM="xterm", PYTHONDONTWRITEBYTECODE="1")
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(fd)
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    return data


def _forged_name(tmp_path: Path, config: dict[str, object]) -> Path:
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**config, "name": "kv" + FORGED}))
    return forged


def test_info_refuses_a_reattach_file_whose_name_holds_controls_and_shows_it_escaped(tmp_path: Path) -> None:
    # the name reaches the host's log lines too: reading the file refuses it, and the error quotes it escaped
    with running(RUN, tmp_path) as run:
        forged = _forged_name(tmp_path, run.config())
        piped = plugbay("info", f"@{forged}")
        assert piped.returncode == 2, piped.stdout + piped.stderr
        assert not any(c.decode() in piped.stdout + piped.stderr for c in RAW), "info printed the forged name raw"
        assert "'name' holds control or bidi formatting characters" in piped.stderr
        assert "'kv\\x1b]0;PWNED-TITLE\\x07\\x1b[2J" in piped.stderr
        shown = on_terminal("info", f"@{forged}")
        assert b"PWNED-TITLE" in shown, shown[-2000:]
        assert b"\x1b]0;PWNED-TITLE\x07" not in shown and b"\x1b[2J" not in shown and b"fake: all good\r" not in shown


@pytest.mark.docker
def test_diagnose_escapes_a_containers_log_lines() -> None:
    name = f"plugbay-test-esc-{os.getpid()}"
    payload = "printf 'ok line\\n\\033]0;PWNED-TITLE\\007\\033[2J\\033[31mfake: all good\\r\\n'"
    try:  # a `docker run` cut off by its timeout may have created the container: the finally removes it
        made = subprocess.run(["docker", "run", "--name", name, "--network", "none", "--entrypoint", "sh",
                               "plugbay-base:bookworm", "-c", payload], capture_output=True, timeout=120)
        if made.returncode != 0:
            pytest.skip(f"no container could be run: {made.stderr.decode()[-300:]}")
        piped = plugbay("diagnose", f"docker:{name}")
        assert piped.returncode == 0, piped.stderr
        assert "  ok line" in piped.stdout
        assert not any(c.decode() in piped.stdout for c in RAW), "diagnose printed the log lines raw"
        assert "\\x1b]0;PWNED-TITLE\\x07\\x1b[2J\\x1b[31mfake: all good\n" in piped.stdout
        shown = on_terminal("diagnose", f"docker:{name}")
        assert b"PWNED-TITLE" in shown, shown[-2000:]
        assert b"\x1b]0;PWNED-TITLE\x07" not in shown and b"\x1b[2J" not in shown
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


@pytest.mark.parametrize("line", ["[notice] A new release of pip is available", "copying to [/usr/lib/x]"])
def test_images_build_progress_shows_a_build_line_as_written(monkeypatch: pytest.MonkeyPatch, line: str) -> None:
    # the live progress on a terminal read each build line as rich markup: pip's "[notice]" lost its
    # tag, and a "[/x]" closing tag raised MarkupError out of the progress refresh
    import io

    from rich.console import Console

    from plugbay.cli import output, tools

    shown = io.StringIO()
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(output, "interactive", lambda: True)
    monkeypatch.setattr(output, "console", lambda stderr=False: Console(file=shown, force_terminal=True, width=200,
                                                                        color_system=None))
    with tools._Progress(quiet=False) as progress:
        progress.step("image kv")
        progress.line(line)
        progress._bar.refresh()
    assert any(line in row for row in shown.getvalue().replace("\r", "\n").splitlines())
