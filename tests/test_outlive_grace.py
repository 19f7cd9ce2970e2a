"""A process plugin asked to outlive its host waits a bounded time for a later host to reattach.

A plugbay host's ProcessRunner asks its plugin to outlive the host (for a reattach: PLUGBAY_OUTLIVE_PIPE). A host
killed outright (SIGKILL, OOM, an unhandled SIGTERM) with no later host left its plugin serving for good, which
nothing stopped. Now the plugin stops as on SIGTERM (its socket removed) once no host has been connected for
ProcessRunner(outlive_grace=) seconds in a row: a host that reattached keeps it serving while connected, and
when that one dies too the count starts again; calls a dead host had sent do not count; None serves on as
before. Real processes: host scripts SIGKILLed, the examples' KV plugin, a reattaching Client.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import Client, ClientConfig, ConfigError, ProcessRunner, ReattachConfig
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.plugin.reattachwait import peer_probe
from plugbay.core.protocol.outlive import MAX_GRACE, OUTLIVE_GRACE, grace_value, read_grace
from plugbay.core.transport.tempdirs import MARKER, sweep_tempdirs
from tests.procs import end_closing, end_host, gone, popen_asked_to_outlive
from tests.resilience_util import wait_until

REPO = Path(__file__).resolve().parent.parent
KV_DIR = REPO / "examples" / "kv"
KV_PLUGIN = KV_DIR / "plugin.py"
sys.path.insert(0, str(KV_DIR))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
GRACE = 2.0
BOUND = 60.0  # a guard against a hang, not a timing: the plugin stops GRACE after its host died

_HOST = """
import json, sys, threading, time
sys.path[:0] = [{src!r}, {examples!r}]
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import Client, ClientConfig, ProcessRunner
client = Client(ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}}, start_timeout=30,
                             multiplex_broker={multiplex!r},
                             runner=ProcessRunner([sys.executable, {kv!r}], outlive_grace={grace!r})))
client.start()
kv = client.dispense(PLUGIN_NAME)
kv.put("k", b"v")
def busy():
    while True:
        try:
            kv.put("busy", b"v" * 100)
        except Exception:
            pass
for _ in range({threads!r}):  # calls in flight when the host is killed
    threading.Thread(target=busy, daemon=True).start()
time.sleep(0.5 if {threads!r} else 0)
config = client.reattach_config() if not {multiplex!r} else None
print(json.dumps([client.runner.pid, config and config.handshake.address, config and config.to_json()]),
      flush=True)
time.sleep(120)
"""

# a second host: reattaches to the first one's plugin (its reattach JSON on stdin), does a Put, says so, sleeps
_REATTACHER = """
import sys, time
sys.path[:0] = [{src!r}, {examples!r}]
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import Client, ClientConfig, ReattachConfig
client = Client(ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}}, start_timeout=30,
                             reattach=ReattachConfig.from_json(sys.stdin.readline())))
client.start()
client.dispense(PLUGIN_NAME).put("k", b"w")
print("reattached", flush=True)
time.sleep(120)
"""


@pytest.fixture
def sockets() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="og") as path:  # short: unix socket paths hold 107 bytes
        yield Path(path)


def _host_env(sockets: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
    env["TMPDIR"] = str(sockets)
    return env


def _host_then_sigkill(sockets: Path, grace: float | None, sig: int = signal.SIGKILL, threads: int = 0,
                       multiplex: bool = False, plugin: Path = KV_PLUGIN) -> tuple[int, str, str]:
    """A host process that starts the KV plugin (``grace``) and does a Put (then keeps ``threads`` threads
    putting), ended by ``sig`` (no kill() runs): the plugin's pid, its socket and the host's reattach JSON."""
    script = _HOST.format(src=str(REPO / "src"), examples=str(KV_DIR), kv=str(plugin), grace=grace,
                          threads=threads, multiplex=multiplex)
    host = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            env=_host_env(sockets), cwd=sockets, text=True)
    try:
        assert host.stdout is not None
        line = host.stdout.readline()
        assert line, "the host printed nothing: its plugin did not start"
        pid, address, text = json.loads(line)
        host.send_signal(sig)
        assert host.wait(10) == -sig
    finally:
        end_host(host)
    return int(pid), str(address), str(text)


def _reattach_then_sigkill(sockets: Path, text: str) -> None:
    """A second host process reattaches (``text``: the first's reattach JSON), does a Put and is SIGKILLed."""
    script = _REATTACHER.format(src=str(REPO / "src"), examples=str(KV_DIR))
    host = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=_host_env(sockets), cwd=sockets, text=True)
    try:
        assert host.stdin is not None and host.stdout is not None
        host.stdin.write(text + "\n")
        host.stdin.close()
        assert host.stdout.readline() == "reattached\n"
        host.send_signal(signal.SIGKILL)
        assert host.wait(10) == -signal.SIGKILL
    finally:
        if host.stdin is not None and not host.stdin.closed:
            host.stdin.close()
        end_host(host)


def _end_plugin(pid: int) -> None:
    if pid and not gone(pid):
        os.kill(pid, signal.SIGKILL)  # started by this test (through its host)
        wait_until(lambda: gone(pid), 10)


def _reattached(text: str) -> Client:
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, start_timeout=30,
                                 reattach=ReattachConfig.from_json(text)))
    client.start()
    return client


def _leftovers(sockets: Path) -> list[str]:
    return sorted(str(p.relative_to(sockets)) for p in sockets.rglob("*"))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_plugin_no_host_reattaches_to_stops_after_the_grace(sockets: Path, sig: int) -> None:
    """Its host SIGKILLed (or SIGTERMed, with no handler for it) after a Put, no host reattaching: the plugin
    stops by itself, gracefully (its socket removed), where before it served on for good; the dead host's
    socket folder is then one a sweep removes."""
    pid = 0
    try:
        pid, address, _ = _host_then_sigkill(sockets, GRACE, sig)
        assert os.path.exists(address)
        assert wait_until(lambda: gone(pid), BOUND), "the plugin of a SIGKILLed host served on past its grace"
        assert not os.path.exists(address)  # a graceful stop, as on SIGTERM
        folder = os.path.dirname(address)  # the host's, marked with it as its maker: nothing answers in it now
        assert [e.name for e in os.scandir(folder)] == [MARKER], _leftovers(sockets)
        assert sweep_tempdirs([str(sockets)]) == [folder]
    finally:
        _end_plugin(pid)


@pytest.mark.parametrize("trial", range(4))
def test_a_busy_host_killed_with_calls_in_flight_leaves_no_plugin(sockets: Path, trial: int) -> None:
    """Several threads of the host putting when it is SIGKILLed: calls it had sent still sit in the plugin's
    socket and reach a handler after the host died. Before, the first of them ended the wait (taken for a
    reattach) and the plugin served on for good, 1 run in 4-6; it stops by itself now, each time."""
    pid = 0
    try:
        pid, address, _ = _host_then_sigkill(sockets, GRACE, threads=16)
        assert wait_until(lambda: gone(pid), BOUND), "the plugin of a busy SIGKILLed host served on past its grace"
        assert not os.path.exists(address)
    finally:
        _end_plugin(pid)


def test_a_reattached_host_killed_too_leaves_no_plugin(sockets: Path) -> None:
    """A second host reattaches within the grace, does a Put and is SIGKILLed too: the wait starts again and
    the plugin stops by itself (before, one call ended the wait for good: it served on forever)."""
    pid = 0
    try:
        pid, address, text = _host_then_sigkill(sockets, GRACE)
        _reattach_then_sigkill(sockets, text)
        assert wait_until(lambda: gone(pid), BOUND), "the plugin of a reattached, SIGKILLed host served on"
        assert not os.path.exists(address)
    finally:
        _end_plugin(pid)


def test_a_multiplexed_plugin_stops_with_its_host(sockets: Path) -> None:
    """multiplex_broker=True: the plugin cannot be reattached (as in go-plugin), so its runner does not ask it
    to outlive the host: it stops when its host is SIGKILLed, even with outlive_grace=None."""
    pid = 0
    try:
        pid, _, _ = _host_then_sigkill(sockets, None, multiplex=True)
        assert wait_until(lambda: gone(pid), BOUND), "a multiplexed plugin outlived its host"
    finally:
        _end_plugin(pid)


@pytest.mark.parametrize("by", ["client", "health-check"])
def test_a_host_that_reattaches_within_the_grace_keeps_the_plugin(sockets: Path, by: str) -> None:
    """A new host reattaches within the grace (a Client; or a bare gRPC channel that did a health Check): the
    plugin serves on well past the grace while that host is connected, its data still there; once the channel
    is closed the plugin stops by itself again (the Client's kill() stops it at once)."""
    pid = 0
    try:
        pid, address, text = _host_then_sigkill(sockets, GRACE)
        if by == "health-check":
            with grpc.insecure_channel(f"unix:{address}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[no-untyped-call]
                    health_pb2.HealthCheckRequest(service="plugin"), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                time.sleep(3 * GRACE)  # past the grace: a plugin that still waited would have stopped by now
                assert not gone(pid)
            assert wait_until(lambda: gone(pid), BOUND), "the plugin served on once its last host was gone"
            return
        client = _reattached(text)
        try:
            time.sleep(3 * GRACE)
            assert not gone(pid)
            assert client.dispense(PLUGIN_NAME).get("k") == b"v"
        finally:
            client.kill()
        assert wait_until(lambda: gone(pid), BOUND)
    finally:
        _end_plugin(pid)


def test_a_host_reattached_under_a_double_slash_folder_keeps_the_plugin(sockets: Path) -> None:
    """TMPDIR=//tmp/...: the plugin announces '//tmp/.../pluginX' but the socket is bound (and listed by the
    kernel) as '/tmp/...'. Before, the reattached host was never seen as connected and the plugin stopped
    under it after the grace; it serves on now, and stops by itself once that host is gone."""
    pid = 0
    try:
        pid, address, text = _host_then_sigkill(Path("/" + str(sockets)), GRACE)
        assert address.startswith("//")
        client = _reattached(text)
        try:
            time.sleep(3 * GRACE)  # past the grace: a plugin that did not see this host would have stopped
            assert not gone(pid)
            assert client.dispense(PLUGIN_NAME).get("k") == b"v"
        finally:
            client.kill()
    finally:
        _end_plugin(pid)


# the KV plugin, which once serving points its fds 1 and 2 at /dev/null (as a daemon-like library may)
_QUIET = """
import os, runpy, sys, threading, time
def quiet():
    first = os.fstat(1).st_ino
    while os.fstat(1).st_ino == first:  # until the stdio capture took fd 1
        time.sleep(0.01)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
threading.Thread(target=quiet, daemon=True).start()
sys.argv = [{kv!r}]
runpy.run_path({kv!r}, run_name="__main__")
"""


@pytest.mark.parametrize("grace", [GRACE, "multiplexed"])
def test_a_plugin_that_points_its_output_elsewhere_still_sees_its_host_die(sockets: Path, grace: Any) -> None:
    """The plugin points fds 1 and 2 at /dev/null once serving: both capture pipes close. Before, the pump
    that watches the host's pipe ended with them and the plugin served on for good once its host was
    SIGKILLed (the grace never ran; a plugin not asked to outlive its host did not stop either)."""
    quiet = sockets / "quiet.py"
    quiet.write_text(_QUIET.format(kv=str(KV_PLUGIN)))
    pid = 0
    try:
        multiplex = grace == "multiplexed"
        pid, _, _ = _host_then_sigkill(sockets, None if multiplex else grace, multiplex=multiplex, plugin=quiet)
        assert wait_until(lambda: gone(pid), BOUND), "a plugin with its output pointed elsewhere outlived its host"
    finally:
        _end_plugin(pid)


def test_no_grace_serves_on_until_told(sockets: Path) -> None:
    """outlive_grace=None: the plugin of a SIGKILLed host serves on (the behaviour before the grace)."""
    pid = 0
    try:
        pid, _, text = _host_then_sigkill(sockets, None)
        time.sleep(3 * GRACE)
        assert not gone(pid)
        client = _reattached(text)
        try:
            assert client.dispense(PLUGIN_NAME).get("k") == b"v"
        finally:
            client.kill()
    finally:
        _end_plugin(pid)


@pytest.mark.parametrize("grace", [True, -1, math.nan, math.inf, "600", [1], MAX_GRACE + 1, 10**400])
def test_outlive_grace_is_checked(grace: Any) -> None:
    with pytest.raises(ConfigError, match="outlive_grace must be a number of seconds"):
        ProcessRunner([sys.executable, str(KV_PLUGIN)], outlive_grace=grace)


def test_outlive_grace_accepts_seconds_and_none() -> None:
    for grace in (0, 2.5, 600, MAX_GRACE, None):
        assert ProcessRunner([sys.executable, str(KV_PLUGIN)], outlive_grace=grace).outlive_grace == grace


def test_too_long_a_grace_says_to_pass_none() -> None:
    with pytest.raises(ConfigError, match="pass None for no limit"):
        ProcessRunner([sys.executable, str(KV_PLUGIN)], outlive_grace=10**400)


@pytest.mark.parametrize("grace", [0, 0.25, 2, 2.5, 600, 1e-7, 123456.789, MAX_GRACE, None])
def test_the_plugin_reads_the_grace_the_runner_writes(grace: float | None) -> None:
    read, problem = read_grace(grace_value(grace))
    assert problem == "" and (read == grace if grace is None else abs(read - grace) < 1e-6)  # type: ignore[operator]


@pytest.mark.parametrize("value", ["", "x", "nan", "inf", "-1", "1" * 400, "None", " 5 ", "\u0665", "1_0", "+5",
                                   "-0", "1e-400", "1e3", "5\n", "1.", ".5", "0x10"])
def test_a_malformed_grace_in_the_plugins_environment_is_the_default(value: str) -> None:
    """From the environment (untrusted): what is not seconds nor "none" is the default, said in a line."""
    grace, problem = read_grace(value)
    assert grace == OUTLIVE_GRACE
    assert "PLUGBAY_OUTLIVE_GRACE" in problem and len(problem) < 400


def test_a_plugin_with_a_malformed_grace_serves_and_says_so(sockets: Path) -> None:
    """PLUGBAY_OUTLIVE_GRACE that is no number does not stop the plugin's start: a warning line, then it serves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
    env.update({"BASIC_PLUGIN": "hello", "PLUGIN_PROTOCOL_VERSIONS": "1", "TMPDIR": str(sockets),
                "PYTHONPATH": str(REPO / "src"), "PLUGBAY_OUTLIVE_GRACE": "soon\x1b[2J"})
    proc = popen_asked_to_outlive([sys.executable, str(KV_PLUGIN)], env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, cwd=sockets)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().count(b"|") >= 4
        said = b""
        until = time.monotonic() + BOUND
        while b"is not seconds" not in said and time.monotonic() < until:
            if select.select([proc.stderr], [], [], 1)[0]:
                chunk = os.read(proc.stderr.fileno(), 65536)
                if not chunk:
                    break
                said += chunk
        assert b"PLUGBAY_OUTLIVE_GRACE='soon\\\\x1b[2J' is not seconds" in said, said
        assert b"\x1b" not in said
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(BOUND) == 0
    finally:
        end_closing(proc)


def test_a_peer_is_seen_on_its_listeners_whole_path(sockets: Path) -> None:
    """/proc/net/unix, read as the plugin does: a connection accepted on ``s2`` is not one on ``s`` (the path
    matched whole, not as a prefix); a path with a space is matched too; a closed connection is not seen."""
    names = ["s", "s2", "a b"]
    listeners, open_ = [], []
    try:
        for name in names:
            listener = socket.socket(socket.AF_UNIX)
            listeners.append(listener)
            listener.bind(str(sockets / name))
            listener.listen()
        probes = {name: peer_probe("unix", str(sockets / name)) for name in names}
        assert [probes[name]() for name in names] == [False, False, False]
        for index in (1, 2):
            client = socket.socket(socket.AF_UNIX)
            open_.append(client)
            client.connect(str(sockets / names[index]))
            open_.append(listeners[index].accept()[0])
        assert [probes[name]() for name in names] == [False, True, True]
        open_.pop().close()  # the server's end of "a b"'s connection, as gRPC closes it at the peer's EOF
        assert [probes[name]() for name in names] == [False, True, False]
    finally:
        for sock in listeners + open_:
            sock.close()


def test_a_tcp_peer_is_seen_on_the_announced_port() -> None:
    """/proc/net/tcp: an ESTABLISHED connection on the listener's port is a peer; the listener alone, or the
    connection once the server closed its end, is not."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        probe = peer_probe("tcp", f"127.0.0.1:{listener.getsockname()[1]}")
        assert probe() is False
        with socket.create_connection(listener.getsockname(), timeout=10) as client:
            accepted = listener.accept()[0]
            try:
                assert probe() is True
            finally:
                accepted.close()
            assert probe() is False
            assert client.recv(1) == b""


def test_a_tcp_peer_on_the_same_port_of_another_address_is_not_one() -> None:
    """A connection accepted on 127.0.0.2 at the announced port is no peer of the listener on 127.0.0.1 at that
    port (before, the local port alone was matched); the probe for 127.0.0.2 sees it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_server(("127.0.0.2", port)) as other:
            probe, other_probe = peer_probe("tcp", f"127.0.0.1:{port}"), peer_probe("tcp", f"127.0.0.2:{port}")
            with socket.create_connection(("127.0.0.2", port), timeout=10):
                accepted = other.accept()[0]
                try:
                    assert (probe(), other_probe()) == (False, True)
                finally:
                    accepted.close()
