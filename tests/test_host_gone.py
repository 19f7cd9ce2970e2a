"""A process plugin whose host died stops by itself, as on SIGTERM (its socket removed).

The host's end of the plugin's stderr closes when the host dies (SIGKILL, a Go panic). A Go
go-plugin plugin dies of SIGPIPE at its next log line; a Python one ignores SIGPIPE and served on
forever, unreachable, its socket left behind. serve() watches its original stderr when that is a
pipe (the stdio pump polls it for POLLERR) and stops without waiting for a write. Real processes:
a bare pipe reader as the host (what a Go host's exec.Cmd is), and a plugbay host SIGKILLed, whose
ProcessRunner asks its plugin to outlive it (PLUGBAY_OUTLIVE_PIPE naming the plugin's stderr pipe) for a
reattach unless told otherwise, and a go-plugin 1.0.1 host (tests/go/kv_host) that such a host started, whose
plugbay plugin inherits that ask, which names the Go host's pipe, not the plugin's: it stops with the Go host.
Plus the setup-error line a go-plugin 1.0.1 host (tests/go/kv_host) shows at ERROR.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests import gobuild
from tests.procs import descendants, end_closing, end_host, gone, outlive_pipe, popen_asked_to_outlive
from tests.resilience_util import wait_until

REPO = Path(__file__).resolve().parent.parent
KV_PLUGIN = REPO / "examples" / "kv" / "plugin.py"
FAILING = REPO / "tests" / "plugins" / "failing_setup.py"
HELD_KV = REPO / "tests" / "plugins" / "held_kv.py"
BOUND = 20.0
OUTLIVE, PIPE, SESSION = "PLUGBAY_OUTLIVE_HOST", "PLUGBAY_OUTLIVE_PIPE", "PLUGBAY_HOST_SESSION"


@pytest.fixture
def sockets() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hg") as path:  # short: unix socket paths hold 107 bytes
        yield Path(path)


def _env(sockets: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
    env.update({"BASIC_PLUGIN": "hello", "PLUGIN_PROTOCOL_VERSIONS": "1", "TMPDIR": str(sockets),
                "PYTHONPATH": str(REPO / "src")}, **extra)
    return env


def _launch(sockets: Path, stderr: int, outlive: bool = False, **extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """``outlive``: asked as ProcessRunner asks, its stderr a pipe made here and named in PLUGBAY_OUTLIVE_PIPE."""
    args = [sys.executable, str(KV_PLUGIN)]
    if outlive:
        proc = popen_asked_to_outlive(args, _env(sockets, **extra), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      cwd=sockets)
    else:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                env=_env(sockets, **extra), cwd=sockets)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if line.count("|") < 4:
        _end(proc)
        pytest.fail(f"no handshake line: {line!r}")
    return proc, line.split("|")[3]


def _end(proc: subprocess.Popen[bytes]) -> None:
    end_closing(proc)


def _serving(address: str) -> bool:
    from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address if address.startswith("127.") else f"unix:{address}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=10)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.parametrize("ask", ["none", "0", "1", "session-only", "another-pipe", "malformed", "own-pipe-but-0"])
def test_plugin_stops_when_its_hosts_stderr_pipe_closes(sockets: Path, ask: str) -> None:
    """Nothing asks it to outlive its host but PLUGBAY_OUTLIVE_PIPE naming its own stderr pipe: not "1" alone (a
    plugbay host from before the name, or one a Go host passed on from its own host: the plugin cannot tell
    them apart), nor PLUGBAY_HOST_SESSION alone (a plugbay host before the ask), nor another pipe's name; and
    an explicit PLUGBAY_OUTLIVE_HOST=0 beside its own pipe's name still says stop."""
    other = outlive_pipe()  # open throughout: its number cannot be the plugin's pipe's
    extra = {"none": {}, "0": {OUTLIVE: "0"}, "1": {OUTLIVE: "1", SESSION: "1-2.3"}, "session-only": {SESSION: "1-2.3"},
             "another-pipe": {OUTLIVE: "1", PIPE: other[2], SESSION: "1-2.3"},
             "malformed": {OUTLIVE: "1", PIPE: "pipe:x:9" + "9" * 5000}, "own-pipe-but-0": {OUTLIVE: "0"}}
    try:
        proc, address = _launch(sockets, subprocess.PIPE, ask == "own-pipe-but-0", **extra[ask])
    finally:
        os.close(other[0])
        os.close(other[1])
    try:
        assert proc.stderr is not None
        proc.stderr.close()  # the host died: no reader is left on the plugin's stderr
        try:
            code = proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail("the plugin served on after its host's end of stderr closed")
        assert code == 0  # a graceful stop, as on SIGTERM
        assert not os.path.exists(address)  # its socket removed
    finally:
        _end(proc)


@pytest.mark.parametrize("case", ["file", "listen", "outlive"])
def test_plugin_whose_stderr_is_no_hosts_pipe_serves_on(sockets: Path, tmp_path: Path, case: str) -> None:
    """A file (or a terminal) never reports a closed reader; under PLUGBAY_LISTEN (a container's plugin)
    stderr is its engine's, and a closed reader there is no host's death; PLUGBAY_OUTLIVE_PIPE naming its
    stderr pipe is a host's ask to leave the plugin running for a later host to reattach."""
    if case == "file":
        with open(tmp_path / "stderr.log", "wb") as log:
            proc, address = _launch(sockets, log.fileno())
    else:
        extra = {"PLUGBAY_LISTEN": f"unix:{sockets}/listen.sock"} if case == "listen" else {}
        proc, address = _launch(sockets, subprocess.PIPE, outlive=case == "outlive", **extra)
        assert proc.stderr is not None
        proc.stderr.close()
    try:
        assert _serving(address)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(BOUND) == 0
    finally:
        _end(proc)


_HOST = """
import json, sys, time
sys.path[:0] = [{src!r}, {examples!r}]
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import Client, ClientConfig, ProcessRunner
client = Client(ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}}, start_timeout=30,
                             runner=ProcessRunner([sys.executable, {kv!r}], env={env!r})))
client.start()
client.dispense(PLUGIN_NAME).put("k", b"v")
config = client.reattach_config()
print(json.dumps([client.runner.pid, config.handshake.address]), flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("outlive", ["default", "0"])
def test_a_plugbay_hosts_plugin_outlives_its_crash_unless_asked_not_to(sockets: Path, outlive: str) -> None:
    """A plugbay host's ProcessRunner (without die_with_host) asks its plugin to outlive it, so a later host
    can reattach (docs/resilience.md's 'Reattach first'); PLUGBAY_OUTLIVE_HOST=0 in its env= asks it to stop."""
    script = _HOST.format(src=str(REPO / "src"), examples=str(REPO / "examples" / "kv"), kv=str(KV_PLUGIN),
                          env={} if outlive == "default" else {"PLUGBAY_OUTLIVE_HOST": outlive})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
    env["TMPDIR"] = str(sockets)
    host = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            env=env, cwd=sockets, text=True)
    pid = 0
    try:
        assert host.stdout is not None
        line = host.stdout.readline()
        pid, address = json.loads(line)
        assert os.path.exists(address)
        host.send_signal(signal.SIGKILL)
        host.wait(10)
        if outlive == "default":
            assert _serving(address), "the plugin of a SIGKILLed plugbay host stopped: nothing left to reattach"
            assert not gone(pid)
        else:
            assert wait_until(lambda: gone(pid), BOUND), "the plugin served on after its host was SIGKILLed"
            assert not os.path.exists(address)  # stopped gracefully: it removed its socket
    finally:
        end_host(host)
        if pid and not gone(pid):
            os.kill(pid, signal.SIGKILL)  # started by this test (through its host)
            wait_until(lambda: gone(pid), 10)


@pytest.mark.go
@pytest.mark.skipif(gobuild.go_missing_reason() is not None, reason=gobuild.go_missing_reason() or "")
def test_setup_error_shows_at_error_under_a_go_host(tmp_path: Path, sockets: Path) -> None:
    """go-plugin 1.0.1 logs a plain stderr line at DEBUG (kv_host shows WARN and ERROR only); an
    hclog JSON line at level error shows as [ERROR], as a Go plugin's setup errors do."""
    env = _env(sockets, KV_PLUGIN=f"{sys.executable} {FAILING}")
    del env["BASIC_PLUGIN"], env["PLUGIN_PROTOCOL_VERSIONS"]  # the Go host sets them
    done = gobuild.run_program(gobuild.build_go("kv_host"), ["--timeout", "60s", "put", "a", "b"], env=env,
                               cwd=tmp_path, timeout=90)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [x for x in done.stderr.splitlines() if "[ERROR]" in x]
    assert any("error registering 'kv_grpc': database URL not set; export KV_DB" in x for x in errors), done.stderr


@pytest.mark.go
@pytest.mark.skipif(gobuild.go_missing_reason() is not None, reason=gobuild.go_missing_reason() or "")
def test_a_plugbay_plugin_stops_with_the_go_host_a_plugbay_host_started(tmp_path: Path, sockets: Path) -> None:
    """A plugbay host's ProcessRunner (default: its plugin asked to outlive it) runs a go-plugin 1.0.1 host
    (kv_host), whose plugin is a plugbay one: go-plugin hands its plugin its own environment whole, the
    ProcessRunner's ask included, but that ask names the Go host's stderr pipe, not the plugin's. The Go
    host SIGKILLed while the plugin's Get is held, the plugbay plugin stops by itself, as a Go plugin does."""
    from plugbay import ProcessRunner
    from plugbay.runners.base import LaunchSpec

    env = _env(sockets, KV_PLUGIN=f"{sys.executable} {HELD_KV}")
    del env["BASIC_PLUGIN"], env["PLUGIN_PROTOCOL_VERSIONS"]  # the Go host sets them
    runner = ProcessRunner([str(gobuild.build_go("kv_host")), "--timeout", "120s", "get", "hold"], env=env,
                           cwd=tmp_path, skip_host_env=True)
    runner.start(LaunchSpec(env={}))
    assert runner.pid is not None
    started: list[int] = []
    try:
        assert wait_until(lambda: (tmp_path / "held").exists(), BOUND), runner.diagnose()  # its Get runs
        started = [pid for pid, _ in descendants(runner.pid)]  # the plugin (and a `sh -c` that forked)
        plugin = [pid for pid, name in descendants(runner.pid) if name.startswith("python")]
        assert len(plugin) == 1, descendants(runner.pid)
        os.kill(runner.pid, signal.SIGKILL)  # the Go host alone: its plugin leads a group of its own
        assert runner.wait(BOUND) is not None
        (tmp_path / "release").touch()  # the held Get returns: a handler still running would hold its exit
        assert wait_until(lambda: gone(plugin[0]), BOUND), "the plugbay plugin served on after its Go host died"
    finally:
        (tmp_path / "release").touch()
        runner.kill(0)
        for pid in started:  # started by this test (through its Go host)
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        for pid in started:
            wait_until(lambda: gone(pid), 10)
