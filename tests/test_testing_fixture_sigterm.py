"""A pytest run that gets SIGTERM mid-test (a cancelled CI job) tears the fixtures' plugins down.

Python's default SIGTERM ended the inner run at once: the plugin process the fixture started was left
running (reparented), with its socket folder. The inner run is a real pytest subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent

INNER = textwrap.dedent("""
    import os, signal, sys, time
    sys.path[:0] = [{repo!r} + "/src", {repo!r} + "/examples/kv"]
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    if {own_handler!r}:  # at import, before any fixture: SIGTERM is then no longer Python's default
        signal.signal(signal.SIGTERM, lambda *_: open({pidfile!r} + ".own", "w").close())

    def test_hangs(plugin_process):
        client = plugin_process([sys.executable, {repo!r} + "/examples/kv/plugin.py"], HANDSHAKE,
                                {{PLUGIN_NAME: KVPlugin(None)}})
        client.dispense(PLUGIN_NAME).put("k", b"v")
        with open({pidfile!r} + ".tmp", "w") as f:
            f.write(str(client.runner.pid))
        os.rename({pidfile!r} + ".tmp", {pidfile!r})
        time.sleep(120)
""")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _ended(run: subprocess.Popen[str]) -> str:
    """The inner run's output for a failed wait: it is killed first (it may be still running)."""
    if run.poll() is None:
        run.kill()
    return run.communicate(timeout=30)[0]


def _run_and_terminate(tmp_path: Path, own_handler: bool) -> tuple[subprocess.Popen[str], int, str]:
    pidfile = tmp_path / "plugin.pid"
    (tmp_path / "test_inner.py").write_text(INNER.format(repo=str(REPO), pidfile=str(pidfile),
                                                         own_handler=own_handler))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_inner.py"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    plugin = None
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists():
            assert run.poll() is None and time.monotonic() < deadline, _ended(run)
            time.sleep(0.05)
        plugin = int(pidfile.read_text())
        run.send_signal(signal.SIGTERM)
        if own_handler:
            deadline = time.monotonic() + 60
            while not Path(f"{pidfile}.own").exists():  # the user's handler ran: the run goes on
                assert run.poll() is None and time.monotonic() < deadline, _ended(run)
                time.sleep(0.05)
            run.send_signal(signal.SIGINT)
        out = run.communicate(timeout=60)[0]
        return run, plugin, out
    except BaseException:  # a failed wait: the caller never learns the plugin's pid to end it
        if plugin is not None and not _gone(plugin):
            os.kill(plugin, signal.SIGKILL)
        raise
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_sigterm_mid_test_tears_the_fixture_plugin_down(tmp_path: Path) -> None:
    run, plugin, out = _run_and_terminate(tmp_path, own_handler=False)
    try:
        assert run.returncode == 2, out  # pytest's "interrupted", after its teardown: not -SIGTERM
        assert "SIGTERM: the run stops as on Ctrl-C" in out, out
        assert _gone(plugin), f"plugin {plugin} outlived the SIGTERMed run"
    finally:
        if not _gone(plugin):
            os.kill(plugin, signal.SIGKILL)


def test_a_sigterm_handler_of_the_users_is_left_in_charge(tmp_path: Path) -> None:
    # the test module set its own handler before the fixture ran: the fixture keeps out of it
    run, plugin, out = _run_and_terminate(tmp_path, own_handler=True)
    try:
        assert run.returncode == 2, out
        assert "SIGTERM: the run stops" not in out, out
        assert _gone(plugin)  # the Ctrl-C that followed tore it down
    finally:
        if not _gone(plugin):
            os.kill(plugin, signal.SIGKILL)
