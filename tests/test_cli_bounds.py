"""The plugbay command keeps its bounds: --timeout over server reflection, SIGTERM's cleanup, a
watch ended by Ctrl-C, and a --reattach-out file that is another run's or the user's."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2
from plugbay.core.plugin.health import HealthServicer
from plugbay.core.plugin.health import add_to_server as add_health
from tests.cli_util import KV_PLUGIN, cli_env, plugbay, running, serving
from tests.procs import end

RUN = ["--cmd", f"{sys.executable} {KV_PLUGIN}", "--cookie", "BASIC_PLUGIN=hello"]


@pytest.fixture()
def stalled() -> Iterator[str]:
    """A server whose health says SERVING and whose server-reflection stream never answers; its target."""
    release = threading.Event()

    def stall(requests: Any, context: Any) -> Iterator[bytes]:
        release.wait(60)
        yield from ()

    server = grpc.server(futures.ThreadPoolExecutor(4))
    health = HealthServicer()  # 'plugin' SERVING, as a plugbay plugin's
    health.set_status("plugin", health_pb2.HealthCheckResponse.SERVING)
    add_health(health, server)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "grpc.reflection.v1alpha.ServerReflection",
        {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(stall, lambda b: b, lambda b: b)})])
    with serving(server) as target:
        try:
            yield target
        finally:
            release.set()
            health.close()


@pytest.mark.parametrize("command", [["info"], ["call", "/proto.KV/Get", "{}"]])
def test_a_stalled_reflection_stream_is_bounded_by_timeout(stalled: str, command: list[str]) -> None:
    # the reflection database's streams had no deadline: both commands hung with --timeout 1
    done = plugbay(command[0], stalled, *command[1:], "--insecure", "--timeout", "1", timeout=30)
    assert done.returncode == 3, done.stderr
    assert "did not answer server reflection within 1s" in done.stderr


@pytest.fixture()
def own_tmp() -> Iterator[Path]:
    """A TMPDIR for the command alone, short (a run's sockets go there); removed after the test."""
    short = tempfile.mkdtemp(prefix="t-")
    try:
        yield Path(short)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _start(args: list[str], tmp: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "plugbay", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(TMPDIR=str(tmp)),
                            stdin=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[str], sig: int) -> tuple[int, str, str]:
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    return proc.returncode, out, err


def test_sigterm_ends_a_command_with_its_cleanup(stalled: str, own_tmp: Path) -> None:
    # only `run` handled SIGTERM: info, call and health died at once and left their temp folder
    proc = _start(["info", stalled, "--insecure", "--timeout", "30"], own_tmp)
    time.sleep(2)  # into the reflection wait (a bound on a live command, not a speed figure)
    code, _, err = _stop(proc, signal.SIGTERM)
    assert code == 143 and "error: terminated" in err, err
    assert list(own_tmp.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_health_watch_ended_by_a_signal_exits_with_the_last_checks_code(stalled: str, own_tmp: Path,
                                                                          sig: int) -> None:
    proc = _start(["health", stalled, "--insecure", "--watch", "--interval", "0.2", "--json"], own_tmp)
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    assert first["status"] == "SERVING"
    code, _, err = _stop(proc, sig)
    assert code == 0, err  # the last check's (SERVING), where Ctrl-C gave 130 and "error: aborted"
    assert list(own_tmp.iterdir()) == []


def _kv_plugin_on(sock: Path) -> subprocess.Popen[bytes]:
    """The KV example, a real plugin, serving on the unix socket ``sock``."""
    return subprocess.Popen([sys.executable, str(KV_PLUGIN)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=cli_env(BASIC_PLUGIN="hello", PLUGBAY_LISTEN=f"unix:{sock}"))


def _ends_serving(watch: subprocess.Popen[str], seen: list[str]) -> None:
    """A health watch that has printed ``seen`` goes on to print SERVING, and Ctrl-C then ends it with that
    last check's code, 0."""
    assert watch.stdout is not None
    while seen[-1] != "SERVING":
        line = watch.stdout.readline()
        assert line, f"the watch ended before the plugin served: {seen}"
        seen.append(json.loads(line)["status"])
    code, _, err = _stop(watch, signal.SIGINT)
    assert code == 0, err


def test_a_health_watch_goes_on_until_the_plugin_comes_up_on_its_socket(own_tmp: Path) -> None:
    # a unix:// target without its socket yet printed one UNREACHABLE and ended the watch (exit 3): a watch
    # meant to see a plugin come up saw nothing; a static:// target's watch went on
    sock = own_tmp / "kv.sock"
    watch = _start(["health", f"unix://{sock}", "--insecure", "--watch", "--interval", "0.2", "--count", "300",
                    "--json"], own_tmp)  # the count bounds it, should the plugin never answer
    plugin = None
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        assert first["status"] == "UNREACHABLE" and "no socket at" in first["detail"], first
        # the KV example, a real plugin, brought up on the very path the watch looks at
        plugin = _kv_plugin_on(sock)
        _ends_serving(watch, [first["status"]])
    finally:
        end(watch)
        if plugin is not None:
            end(plugin)


def test_a_health_watch_on_a_refused_target_says_so_every_interval_and_sees_it_come_up(own_tmp: Path) -> None:
    # each check of a watch waited --timeout for the connection: a target that refused it got one line every
    # --timeout + --interval (here 600.1 s: the watch is killed long before its first line would have come)
    sock = own_tmp / "kv.sock"
    with socket.socket(socket.AF_UNIX) as unheard:  # a socket nothing listens on: connections are refused
        unheard.bind(str(sock))
    watch = _start(["health", f"unix://{sock}", "--insecure", "--watch", "--interval", "0.1", "--timeout", "600",
                    "--count", "3000", "--json"], own_tmp)  # 300 s: the timer ends it first
    bound = threading.Timer(120, watch.kill)  # a bound on the old code's wait, not a speed figure
    bound.start()
    plugin = None
    try:
        assert watch.stdout is not None
        refused = [json.loads(watch.stdout.readline() or "null") for _ in range(3)]
        assert all(r is not None and r["status"] == "UNREACHABLE" and "Connection refused" in r["detail"]
                   for r in refused), refused
        sock.unlink()  # and the KV example, a real plugin, comes up on that path
        plugin = _kv_plugin_on(sock)
        _ends_serving(watch, [r["status"] for r in refused])
    finally:
        bound.cancel()
        end(watch)
        if plugin is not None:
            end(plugin)


def test_reattach_out_refuses_a_file_that_is_not_a_reattach_config(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    proc = subprocess.Popen([sys.executable, "-m", "plugbay", "run", *RUN, "--reattach-out", str(notes)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=tmp_path,
                            stdin=subprocess.DEVNULL)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it started the plugin: Ctrl-C stops both
        code, _, err = _stop(proc, signal.SIGINT)
        raise AssertionError(f"the run was not refused (it ran until stopped, exit {code}): {err}") from None
    assert proc.returncode == 2 and "exists and is not a reattach file" in err, err
    assert notes.read_text() == "my notes\n"


def test_a_run_leaves_the_reattach_file_another_run_wrote_over_its_own(tmp_path: Path) -> None:
    # both runs write the same --reattach-out: the first one's exit removed the second's live file
    with running(RUN, tmp_path) as first:
        first_pid = first.config()["runner"]["pid"]
        second = subprocess.Popen([sys.executable, "-m", "plugbay", "run", *RUN, "--reattach-out", str(first.reattach)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                                  cwd=tmp_path, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and second.poll() is None:
                try:
                    if json.loads(first.reattach.read_text())["runner"]["pid"] != first_pid:
                        break
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.05)
            second_pid = json.loads(first.reattach.read_text())["runner"]["pid"]
            assert second_pid != first_pid, second.stderr.read() if second.poll() is not None else ""
            assert first.interrupt() == 0
            assert json.loads(first.reattach.read_text())["runner"]["pid"] == second_pid
        finally:
            code, _, err = _stop(second, signal.SIGINT)
        assert code == 0, err
        assert not first.reattach.exists()  # the second run removed its own


def test_sigterm_while_run_starts_the_plugin_exits_143(own_tmp: Path) -> None:
    # run's own handler raised a plain KeyboardInterrupt while starting: exit 130, "aborted"
    proc = _start(["run", "--cmd", "sleep 30", "--cookie", "BASIC_PLUGIN=hello", "--start-timeout", "60"], own_tmp)
    time.sleep(2)  # into the wait for the handshake line (a bound on a live command, not a speed figure)
    code, _, err = _stop(proc, signal.SIGTERM)
    assert code == 143 and "error: terminated" in err, err
    assert list(own_tmp.iterdir()) == []


def test_an_ignored_sigterm_stays_ignored(stalled: str, tmp_path: Path) -> None:
    # the parent chose to ignore SIGTERM: the command must not turn it into an exit
    proc = subprocess.Popen([sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                             " from plugbay.cli import main; sys.exit(main(sys.argv[1:]))",
                             "health", stalled, "--insecure", "--watch", "--interval", "0.2", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    json.loads(proc.stdout.readline())
    proc.send_signal(signal.SIGTERM)
    json.loads(proc.stdout.readline())  # still watching
    code, _, err = _stop(proc, signal.SIGINT)
    assert code == 0, err
