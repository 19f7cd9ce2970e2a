"""Client.kill() from another thread while Client.start() runs ends that start() at once, every time.

start() holds the Client's lock until the plugin answers or start_timeout passes; kill()
stops the plugin first (the runner's kill() is safe during its start), so start() fails
at once with a ClientStateError saying the client was killed, instead of kill() waiting
for start_timeout and start() blaming a slow plugin. Each phase is made to happen every
time: the launch held (trace / engine relay), the plugin launched and waiting before its
handshake line (a marker file), the host connected but the plugin never answering its
health check (the plugin writes the marker once the host's connection arrived).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from plugbay import Client, ClientConfig, HandshakeConfig, ReattachConfig
from plugbay.errors import ClientStateError, RunnerError
from plugbay.runners.base import AttachedRunner, LaunchSpec, Runner, reattach_runner
from plugbay.runners.docker import DockerRunner
from plugbay.runners.process import ProcessRunner
from tests.engine_relay import EngineRelay, relay  # noqa: F401  (relay is a fixture)
from tests.race_util import BOUND, PauseAt, Starting, pid_alive, wait_for_file
from tests.resilience_util import HANDSHAKE as KV_HANDSHAKE, PLUGINS as KV_PLUGINS, faulty_config, wait_until

PY = sys.executable
HANDSHAKE = HandshakeConfig(1, "PLUGBAY_RACE", "race")
START_TIMEOUT = 120.0  # far beyond every bounded wait here: start() must end by the kill, not by this
KILLED = ("the client of plugin 'race' was killed while it started the plugin; plugbay stopped the plugin."
          " Make a new Client to start it again")
# Launched: writes its marker, then waits (bounded) before it would print its handshake line.
BEFORE_LINE = "import sys, time; open(sys.argv[1], 'w').close(); time.sleep(60)"
# Prints a handshake line for a socket it listens on, takes the host's connection, writes
# its marker, and never answers: the host is connected and waits for the health check.
SILENT = textwrap.dedent("""
    import os, socket, sys, time
    path = os.path.join(os.environ["PLUGIN_UNIX_SOCKET_DIR"], "silent.sock")
    srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen(4)
    print("1|1|unix|%s|grpc" % path, flush=True)
    srv.settimeout(60)
    conn, _ = srv.accept()
    open(sys.argv[1], "w").close()
    time.sleep(60)
""")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A parent for the Client's socket folder whose socket paths stay within 107 characters."""
    with tempfile.TemporaryDirectory(prefix="race-") as folder:
        yield Path(folder)


def _client(runner: Runner, parent: Path) -> Client:
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={}, runner=runner, start_timeout=START_TIMEOUT,
                               kill_grace=0.5, name="race", unix_socket_temp_dir=str(parent)))


def _check_killed(client: Client, starting: Starting, runner: Runner, parent: Path) -> None:
    error = starting.outcome(BOUND)
    assert isinstance(error, ClientStateError) and str(error) == KILLED, error
    assert isinstance(error.__cause__, Exception)  # what the kill() made fail, kept for the curious
    assert client.exited
    assert list(parent.iterdir()) == []  # the Client's socket folder (and any socket in it) is gone
    with pytest.raises(ClientStateError, match="was killed; make a new Client"):
        client.start()
    client.kill()  # again: harmless
    with pytest.raises(RunnerError, match="was killed; a runner runs one .* once: make a new runner"):
        runner.start(LaunchSpec(env={}))


def _kill_meanwhile(client: Client, runner_kill: Any) -> Starting:
    """client.kill() on a thread of its own, once it has told the runner (it then waits for start())."""
    told = PauseAt(runner_kill.__code__, "return")
    killing = Starting(client.kill, told)
    told.wait_reached()
    told.release()
    return killing


def test_kill_while_the_runner_launches(tmp_path: Path, short_dir: Path) -> None:
    runner = ProcessRunner([PY, "-c", BEFORE_LINE, str(tmp_path / "launched")])
    client = _client(runner, short_dir)
    pause = PauseAt(subprocess.Popen.__init__.__code__, "return")  # the child runs; the runner does not know
    starting = Starting(client.start, pause)
    try:
        pause.wait_reached()
        child = pause.frame_locals["self"]
        assert isinstance(child, subprocess.Popen)
        pid = child.pid
        killing = _kill_meanwhile(client, ProcessRunner.kill)
    finally:
        pause.release()
    assert killing.outcome() is None
    _check_killed(client, starting, runner, short_dir)
    assert not pid_alive(pid)


def test_kill_while_the_host_waits_for_the_handshake_line(tmp_path: Path, short_dir: Path) -> None:
    marker = tmp_path / "launched"
    runner = ProcessRunner([PY, "-c", BEFORE_LINE, str(marker)])
    client = _client(runner, short_dir)
    starting = Starting(client.start)
    wait_for_file(marker)
    pid = runner.pid
    assert pid is not None and pid_alive(pid)
    client.kill()  # returns once start() has ended (it held the lock)
    assert starting.ended(BOUND)
    assert not pid_alive(pid)
    _check_killed(client, starting, runner, short_dir)


def test_kill_after_the_handshake_while_the_host_connects(tmp_path: Path, short_dir: Path) -> None:
    marker = tmp_path / "connected"
    runner = ProcessRunner([PY, "-c", SILENT, str(marker)])
    client = _client(runner, short_dir)
    starting = Starting(client.start)
    wait_for_file(marker)  # the host read the line and dialed: it waits for the health answer
    pid = runner.pid
    assert pid is not None
    client.kill()
    assert starting.ended(BOUND) and not pid_alive(pid)
    _check_killed(client, starting, runner, short_dir)


class _KillOnHandshakeRecord(logging.Handler):
    """Calls ``client.kill()`` from the thread that logs the handshake line: the one in start()."""

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client
        self.thread: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.thread is None and record.getMessage().startswith("plugin race handshake:"):
            self.thread = threading.current_thread()
            self.client.kill()


def test_kill_from_the_starting_thread_itself(tmp_path: Path, short_dir: Path) -> None:
    """A log handler on the thread in start() asks kill(): start() must not go on with a torn-down Client."""
    marker = tmp_path / "connected"
    runner = ProcessRunner([PY, "-c", SILENT, str(marker)])
    client = _client(runner, short_dir)
    logger = logging.getLogger("plugbay.client")
    handler, level = _KillOnHandshakeRecord(client), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        starting = Starting(client.start)
        error = starting.outcome(BOUND)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert handler.thread is not None and handler.thread.name == "plugbay-test-start"
    assert isinstance(error, ClientStateError) and str(error) == KILLED, error
    pid = runner.pid
    assert pid is not None and not pid_alive(pid)
    _check_killed(client, starting, runner, short_dir)


def test_kill_while_a_reattaching_start_still_attaches(tmp_path: Path, short_dir: Path) -> None:
    """kill() before the attach made the runner: nothing to signal yet, but start() must not wait for
    the (stopped, never answering) plugin's health check until start_timeout."""
    first = Client(faulty_config(tmp_path))
    first.start()
    pid = first.runner.pid
    assert pid is not None
    attaching, go = threading.Event(), threading.Event()

    def attach(data: Mapping[str, Any]) -> AttachedRunner:  # an engine round trip still under way
        attaching.set()
        go.wait(BOUND)
        return reattach_runner(data)

    saved = ReattachConfig.from_json(first.reattach_config().to_json(), attach=attach)
    client = Client(ClientConfig(handshake=KV_HANDSHAKE, plugins=KV_PLUGINS, reattach=saved,
                                 start_timeout=START_TIMEOUT, kill_grace=0.5, name="race",
                                 unix_socket_temp_dir=str(short_dir)))
    os.kill(pid, signal.SIGSTOP)  # it would never answer the health check
    try:
        starting = Starting(client.start)
        assert attaching.wait(BOUND)
        killing = Starting(client.kill)
        assert wait_until(lambda: client._kill_asked, BOUND)
        go.set()
        assert killing.outcome(BOUND) is None
        error = starting.outcome(BOUND)
        assert isinstance(error, ClientStateError) and str(error) == KILLED, error
        assert not pid_alive(pid)
    finally:
        go.set()
        if pid_alive(pid):
            os.kill(pid, signal.SIGCONT)
        client.kill()
        first.kill()


def _before_noting(start_code: Any) -> PauseAt:
    """Holds start() where it holds the Client's lock but has not yet noted itself as starting."""
    return PauseAt(threading.current_thread.__code__, "call",
                   when=lambda frame: frame.f_back is not None and frame.f_back.f_code is start_code)


def test_kill_in_the_instant_start_took_the_lock_but_had_not_noted_itself(tmp_path: Path, short_dir: Path) -> None:
    runner = ProcessRunner([PY, "-c", BEFORE_LINE, str(tmp_path / "launched")])
    client = _client(runner, short_dir)
    pause = _before_noting(Client.start.__code__)
    starting = Starting(client.start, pause)
    try:
        pause.wait_reached()
        killing = Starting(client.kill)  # finds no start noted, so it waits for the lock...
        time.sleep(0.5)  # (lets it get there; were it later, it would see the start and pass all the same)
    finally:
        pause.release()
    # ...and must still end that start, not wait its start_timeout (120 s) for the lock
    assert killing.outcome(BOUND) is None
    _check_killed(client, starting, runner, short_dir)


def test_close_in_the_instant_a_reattaching_start_had_not_noted_itself(tmp_path: Path, short_dir: Path) -> None:
    first = Client(faulty_config(tmp_path))
    first.start()
    pid = first.runner.pid
    assert pid is not None
    saved = ReattachConfig.from_json(first.reattach_config().to_json())
    client = Client(ClientConfig(handshake=KV_HANDSHAKE, plugins=KV_PLUGINS, reattach=saved,
                                 start_timeout=START_TIMEOUT, kill_grace=0.5, name="race",
                                 unix_socket_temp_dir=str(short_dir)))
    os.kill(pid, signal.SIGSTOP)  # it would never answer the health check
    pause = _before_noting(Client.start.__code__)
    try:
        starting = Starting(client.start, pause)
        try:
            pause.wait_reached()
            closing = Starting(client.close)
            time.sleep(0.5)
        finally:
            pause.release()
        assert closing.outcome(BOUND) is None  # it used to wait for the lock until start_timeout
        error = starting.outcome(BOUND)
        assert isinstance(error, ClientStateError) and "was abandoned (close() came while it reattached" in str(error)
        assert pid_alive(pid)  # a reattached plugin is left running
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGCONT)
        client.kill()
        first.kill()


@pytest.mark.parametrize("noted", [True, False])
def test_close_of_a_client_that_starts_its_plugin_is_refused_at_once(tmp_path: Path, short_dir: Path,
                                                                    noted: bool) -> None:
    # close() leaves a plugin running: a Client that starts its own would refuse it once started, so
    # it refuses now, not after waiting for the lock until the start ends (up to start_timeout)
    marker = tmp_path / "launched"
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={}, runner=ProcessRunner([PY, "-c", BEFORE_LINE,
                                                                                        str(marker)]),
                                 start_timeout=6.0, name="race", unix_socket_temp_dir=str(short_dir)))
    pause = None if noted else _before_noting(Client.start.__code__)
    starting = Starting(client.start, pause)
    try:
        if pause is None:
            wait_for_file(marker)
            closing = Starting(client.close)
        else:
            pause.wait_reached()
            closing = Starting(client.close)  # finds no start noted, so it waits for the lock...
            time.sleep(0.5)
            pause.release()  # ... and looks again while it waits
        error = closing.outcome(3.0)
        assert isinstance(error, ClientStateError) and "stop it with kill()" in str(error), error
        assert not client.exited  # the start goes on
    finally:
        if pause is not None:
            pause.release()
        client.kill()
    assert isinstance(starting.outcome(BOUND), ClientStateError)


# --- the same through a DockerRunner -------------------------------------------------------------------


def _containers(docker: Any, tag: str) -> list[str]:
    return [c["Id"] for c in docker.api.containers(all=True, filters={"label": f"test.plugbay-race={tag}"})]


def _docker_client(parent: Path, script: str) -> tuple[Client, DockerRunner, str]:
    tag = uuid.uuid4().hex
    marker = "os.path.join(os.environ['PLUGIN_UNIX_SOCKET_DIR'], 'launched')"
    runner = DockerRunner("plugbay-base:bookworm", labels={"test.plugbay-race": tag},
                          entrypoint=["python3", "-c", f"import os, sys; sys.argv[1:] = [{marker}]\n{script}"])
    return _client(runner, parent), runner, tag


def _docker_marker(parent: Path) -> None:
    """Until the container wrote its marker into the Client's socket folder (made under ``parent``)."""
    deadline = time.monotonic() + BOUND
    while not list(parent.glob("plugbay-*/launched")):
        if time.monotonic() > deadline:
            raise AssertionError("the container never wrote its marker")
        time.sleep(0.05)


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_docker_kill_while_the_engine_creates_the_container(relay: EngineRelay, plugbay_docker: Any,
                                                            short_dir: Path) -> None:
    client, runner, tag = _docker_client(short_dir, BEFORE_LINE)
    relay.hold("POST", "/containers/create")
    starting = Starting(client.start)
    try:
        assert relay.holding.wait(30), "the create never reached the engine"
        killing = _kill_meanwhile(client, DockerRunner.kill)
    finally:
        relay.release()
    assert killing.outcome(60) is None
    _check_killed(client, starting, runner, short_dir)
    assert _containers(plugbay_docker, tag) == []


@pytest.mark.docker
@pytest.mark.timeout(120)
@pytest.mark.parametrize("script", ["before the line", "silent"])
def test_docker_kill_while_the_plugin_waits(relay: EngineRelay, plugbay_docker: Any, short_dir: Path,
                                            script: str) -> None:
    client, runner, tag = _docker_client(short_dir, BEFORE_LINE if script == "before the line" else SILENT)
    starting = Starting(client.start)
    _docker_marker(short_dir)
    assert len(_containers(plugbay_docker, tag)) == 1
    client.kill()
    assert starting.ended(BOUND)
    _check_killed(client, starting, runner, short_dir)
    assert _containers(plugbay_docker, tag) == []


_EXITING_HOST = textwrap.dedent("""
    import sys, threading, time
    from plugbay import Client, ClientConfig, HandshakeConfig
    client = Client(ClientConfig(handshake=HandshakeConfig(1, "PLUGBAY_RACE", "race"), plugins={}, name="race",
                                 cmd=[sys.executable, "-c", "import time; time.sleep(60)"], start_timeout=120,
                                 unix_socket_temp_dir=sys.argv[1]))
    threading.Thread(target=client.start, daemon=True).start()
    deadline = time.monotonic() + 30
    while client._runner is None or getattr(client._runner, "pid", None) is None:
        if time.monotonic() > deadline:
            sys.exit("the plugin never started")
        time.sleep(0.02)
    print(client._runner.pid, flush=True)  # then the host exits, start() still waiting for the handshake
""")


def test_a_host_exiting_while_a_daemon_thread_starts_a_client_kills_its_plugin(short_dir: Path) -> None:
    host = subprocess.run([PY, "-c", _EXITING_HOST, str(short_dir)], capture_output=True, text=True, timeout=150)
    assert host.returncode == 0, host.stderr[-2000:]
    pid = int(host.stdout.split()[0])
    try:
        assert not pid_alive(pid), "the plugin outlived its host"
        assert list(short_dir.iterdir()) == []  # nor its private folder
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


_EXITING_REATTACH_HOST = textwrap.dedent("""
    import json, sys, threading, time
    from plugbay import Client, ClientConfig, HandshakeConfig, ReattachConfig
    from plugbay.core.protocol.handshake import parse_handshake_line
    reattach = ReattachConfig(handshake=parse_handshake_line(sys.argv[1]), runner=json.loads(sys.argv[2]))
    client = Client(ClientConfig(handshake=HandshakeConfig(1, "PLUGBAY_RACE", "race"), plugins={}, name="race",
                                 reattach=reattach, start_timeout=120))
    threading.Thread(target=client.start, daemon=True).start()
    time.sleep(1.0)  # the start waits on a plugin that accepts but never answers; the host exits
""")


def test_a_host_exiting_while_a_daemon_thread_reattaches_does_not_wait_for_that_start(short_dir: Path) -> None:
    # a reattach leaves its plugin running when its host ends: the exit has nothing to wait for
    from plugbay.runners.session import start_ticks

    path = short_dir / "plugin.sock"
    plugin_id = uuid.uuid4().hex
    code = (f"import socket, time; s = socket.socket(socket.AF_UNIX); s.bind({str(path)!r}); s.listen(16);"
            " time.sleep(120)")
    silent = subprocess.Popen([PY, "-c", code], env={**os.environ, "PLUGBAY_PLUGIN_ID": plugin_id})
    try:
        assert wait_until(path.exists, 10)
        runner = {"kind": "ProcessRunner", "id": str(silent.pid), "pid": silent.pid, "name": "race",
                  "start_time": int(start_ticks(silent.pid)), "plugin_id": plugin_id}
        started = time.monotonic()
        host = subprocess.run([PY, "-c", _EXITING_REATTACH_HOST, f"1|1|unix|{path}|grpc", json.dumps(runner)],
                              capture_output=True, text=True, timeout=150)
        took = time.monotonic() - started
        assert host.returncode == 0, host.stderr[-2000:]
        assert took < 60, f"the host's exit waited {took:.0f} s for a reattaching start"
        assert silent.poll() is None  # and left the plugin it reattached to running
    finally:
        silent.kill()
        silent.wait(10)
