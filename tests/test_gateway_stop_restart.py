"""Stopping a gateway (stop(), or SIGTERM to the command) while its keeper restarts a child that hangs
before its handshake line ends that restart at once: the stop does not wait out start_timeout, and the
hanging child does not outlive the gateway. Real Go KV plugin (go-plugin 1.0.1) as the first child."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from plugbay.core.resilience.restart import RestartPolicy
from plugbay.errors import GatewayError
from plugbay.network.gateway import Gateway, GatewayConfig
from tests import gobuild
from tests.race_util import Starting, pid_alive, wait_for_file
from tests.resilience_util import wait_until

_reason = gobuild.go_missing_reason()
pytestmark = [pytest.mark.go, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120.0  # an unfixed stop waits this out: far beyond every bound below
BOUND = 20.0
STALL_BOUND = 8.0  # far above a stop that runs at once, far below one that waits out the loop's joins


@pytest.fixture(scope="module")
def kv_bin() -> str:
    return str(gobuild.build_go("kv_plugin"))


def _child_script(folder: Path, kv_bin: str) -> tuple[Path, Path, Path]:
    """A child that runs the KV plugin the first time, and hangs before its handshake line after."""
    once, first, hang = folder / "started-once", folder / "first.pid", folder / "hang.pid"
    script = folder / "child.sh"
    script.write_text(f"#!/bin/sh\nif [ ! -e {once} ]; then touch {once}; echo $$ > {first}; exec {kv_bin}; fi\n"
                      f"echo $$ > {hang}\nexec sleep 300\n")
    script.chmod(0o755)
    return script, first, hang


def _hanging_script(folder: Path, says: str = "") -> tuple[Path, Path]:
    """A child that hangs before its handshake line from the first start on (saying ``says`` on stderr)."""
    hang = folder / "hang.pid"
    script = folder / "hang.sh"
    said = f"echo '{says}' >&2\n" if says else ""
    script.write_text(f"#!/bin/sh\necho $$ > {hang}\n{said}exec sleep 300\n")
    script.chmod(0o755)
    return script, hang


def _config(script: Path, **kw: object) -> GatewayConfig:
    return GatewayConfig(cmd=[str(script)], cookie=("BASIC_PLUGIN", "hello"), listen="127.0.0.1:0",
                         insecure=True, start_timeout=START_TIMEOUT, **kw)  # type: ignore[arg-type]


def _hang_pid(hang_file: Path) -> int:
    """The hanging child's pid, once it wrote it (its start now waits for a handshake line)."""
    wait_for_file(hang_file, BOUND)
    assert wait_until(lambda: hang_file.read_text().strip().isdigit(), BOUND)
    return int(hang_file.read_text())


def _kill_if_alive(pid: int | None) -> None:
    if pid is not None and pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def _keepers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "plugbay-gateway-keeper"]


@contextmanager
def _restarting_a_hanging_child(kv_bin: str, tmp_path: Path) -> Iterator[tuple[Gateway, int]]:
    """A started gateway whose first child was killed, and the restarted child that hangs."""
    script, _, hang_file = _child_script(tmp_path, kv_bin)
    policy = RestartPolicy(max_restarts=10, window=60, initial_backoff=0.05, max_backoff=0.1)
    gw = Gateway(_config(script, restart=policy))
    hang = None
    try:
        gw.start()
        first = gw.child_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        hang = _hang_pid(hang_file)  # the keeper restarted it, and that start now waits for its handshake
        yield gw, hang
    finally:
        gw.stop()
        _kill_if_alive(hang)


@contextmanager
def _command(script: Path, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The gateway command serving ``script``, ended whatever the test does."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "plugbay.network.gateway", "--insecure", "--listen", "127.0.0.1:0",
         "--cookie", "BASIC_PLUGIN=hello", "--start-timeout", str(int(START_TIMEOUT)), "--", str(script)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def _sigterm(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """SIGTERM to the command, and its output once it exited (within BOUND, or the test fails)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the gateway did not exit within {BOUND}s of SIGTERM (start_timeout"
                             f" {START_TIMEOUT:g}s)") from None


def test_stop_during_a_restart_ends_it_and_the_hanging_child(kv_bin: str, tmp_path: Path) -> None:
    with _restarting_a_hanging_child(kv_bin, tmp_path) as (gw, hang):
        stopping = Starting(gw.stop)
        assert stopping.ended(BOUND), f"gateway.stop() did not return within {BOUND}s (start_timeout {START_TIMEOUT})"
        assert stopping.error is None, stopping.error
        assert wait_until(lambda: not _keepers(), BOUND), _keepers()
        assert wait_until(lambda: not pid_alive(hang), BOUND), f"the hanging child {hang} outlived stop()"
        assert gw.keeper.client is None


def test_sigterm_during_a_restart_ends_the_command_and_the_hanging_child(kv_bin: str, tmp_path: Path) -> None:
    script, first_file, hang_file = _child_script(tmp_path, kv_bin)
    hang = None
    try:
        with _command(script, tmp_path) as proc:
            assert proc.stdout is not None
            with selectors.DefaultSelector() as sel:  # the first child is up once the gateway listens
                sel.register(proc.stdout, selectors.EVENT_READ)
                assert sel.select(BOUND), "the gateway printed nothing"
            assert proc.stdout.readline().startswith(b"listening tcp 127.0.0.1:")
            os.kill(int(first_file.read_text()), signal.SIGKILL)
            hang = _hang_pid(hang_file)
            _, err = _sigterm(proc)
            assert proc.returncode == 0, err.decode()[-2000:]
            assert wait_until(lambda: not pid_alive(hang), BOUND), f"the hanging child {hang} outlived the gateway"
    finally:
        _kill_if_alive(hang)


def test_stop_during_the_first_start_ends_it_and_the_hanging_child(tmp_path: Path) -> None:
    # start() holds the gateway's lock until its first child answers: stop() used to wait for that
    # lock until start_timeout (and start() then failed as if the plugin had)
    script, hang_file = _hanging_script(tmp_path)
    gw = Gateway(_config(script))
    starting = Starting(gw.start)
    hang = None
    try:
        hang = _hang_pid(hang_file)
        stopping = Starting(gw.stop)
        assert stopping.ended(BOUND), f"gateway.stop() did not return within {BOUND}s (start_timeout {START_TIMEOUT})"
        assert stopping.error is None, stopping.error
        error = starting.outcome(BOUND)
        assert isinstance(error, GatewayError) and "stopped" in str(error), error
        assert wait_until(lambda: not pid_alive(hang), BOUND), f"the hanging child {hang} outlived stop()"
    finally:
        gw.stop()
        starting.ended(BOUND)
        _kill_if_alive(hang)


def test_sigterm_during_the_first_start_exits_0_and_ends_the_hanging_child(tmp_path: Path) -> None:
    script, hang_file = _hanging_script(tmp_path)
    hang = None
    try:
        with _command(script, tmp_path) as proc:
            hang = _hang_pid(hang_file)
            out, err = _sigterm(proc)
            assert proc.returncode == 0, err.decode()[-2000:]  # a stop, as documented (it exited 1)
            assert b"listening" not in out and b"error" not in err
            assert b"gateway: stopped before the plugin started" in err, err.decode()[-2000:]  # not silently
            assert wait_until(lambda: not pid_alive(hang), BOUND), f"the hanging child {hang} outlived the gateway"
    finally:
        _kill_if_alive(hang)


def test_cleanup_clients_during_a_restart_ends_it_and_the_hanging_child(kv_bin: str, tmp_path: Path) -> None:
    # what an exiting interpreter runs: it halted the keeper with a 30 s join while the restart waited
    from plugbay import cleanup_clients

    with _restarting_a_hanging_child(kv_bin, tmp_path) as (_, hang):
        cleaning = Starting(cleanup_clients)
        assert cleaning.ended(BOUND), f"cleanup_clients() did not return within {BOUND}s"
        assert cleaning.error is None, cleaning.error
        assert wait_until(lambda: not pid_alive(hang), BOUND), f"the hanging child {hang} outlived the cleanup"


def test_stop_from_a_log_handler_during_the_first_start_returns_and_ends_the_start(tmp_path: Path) -> None:
    # GatewayConfig.logger's handlers run on the shared plugbay-io loop thread: a stop() there waited
    # for start()'s lock while start() waited on that very loop (its child's pipes), until timeouts
    import logging

    script, hang_file = _hanging_script(tmp_path, says="about to hang")
    logger = logging.getLogger("test-gateway-stop-in-handler")
    stopped = threading.Event()

    class StopOnLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "about to hang" in record.getMessage() and not stopped.is_set():
                gw.stop()
                stopped.set()

    handler = StopOnLine()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    gw = Gateway(_config(script, logger=logger))
    starting = Starting(gw.start)
    hang = None
    try:
        # a few seconds' bound, not BOUND: the stalled loop let the old stop() return after its
        # joins' timeouts (about 18 s), not never
        assert stopped.wait(STALL_BOUND), "stop() in the handler did not return"
        error = starting.outcome(STALL_BOUND)
        assert isinstance(error, GatewayError) and "stopped" in str(error), error
        hang = int(hang_file.read_text())
        assert wait_until(lambda: not pid_alive(hang), BOUND), f"the hanging child {hang} outlived stop()"
    finally:
        logger.removeHandler(handler)
        gw.stop()
        starting.ended(BOUND)
        _kill_if_alive(hang)
