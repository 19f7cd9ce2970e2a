"""A process plugin asked to outlive its host waits a bounded time for a later host to reattach.

A plugbay host's ProcessRunner asks its plugin to outlive the host (for a reattach: PLUGBAY_OUTLIVE_PIPE). A host
killed outright (SIGKILL, OOM, an unhandled SIGTERM) with no later host left its plugin serving for good, which
nothing stopped. Now the plugin waits ProcessRunner(outlive_grace=) seconds for a call of any kind and stops as
on SIGTERM (its socket removed) when none came; a host that reattached within it keeps it serving; None serves
on as before. Real processes: a host script SIGKILLed, the examples' KV plugin, a reattaching Client.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
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
from plugbay.core.protocol.outlive import OUTLIVE_GRACE, read_grace
from plugbay.core.transport.tempdirs import MARKER, sweep_tempdirs
from tests.procs import end_host, gone, popen_asked_to_outlive
from tests.resilience_util import wait_until

REPO = Path(__file__).resolve().parent.parent
KV_DIR = REPO / "examples" / "kv"
KV_PLUGIN = KV_DIR / "plugin.py"
sys.path.insert(0, str(KV_DIR))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
GRACE = 2.0
BOUND = 60.0  # a guard against a hang, not a timing: the plugin stops GRACE after its host died

_HOST = """
import json, sys, time
sys.path[:0] = [{src!r}, {examples!r}]
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import Client, ClientConfig, ProcessRunner
client = Client(ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}}, start_timeout=30,
                             runner=ProcessRunner([sys.executable, {kv!r}], outlive_grace={grace!r})))
client.start()
client.dispense(PLUGIN_NAME).put("k", b"v")
config = client.reattach_config()
print(json.dumps([client.runner.pid, config.handshake.address, config.to_json()]), flush=True)
time.sleep(120)
"""


@pytest.fixture
def sockets() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="og") as path:  # short: unix socket paths hold 107 bytes
        yield Path(path)


def _host_then_sigkill(sockets: Path, grace: float | None, sig: int = signal.SIGKILL) -> tuple[int, str, str]:
    """A host process that starts the KV plugin (``grace``) and does a Put, ended by ``sig`` (no kill() runs):
    the plugin's pid, its socket and the host's reattach JSON."""
    script = _HOST.format(src=str(REPO / "src"), examples=str(KV_DIR), kv=str(KV_PLUGIN), grace=grace)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
    env["TMPDIR"] = str(sockets)
    host = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            env=env, cwd=sockets, text=True)
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


@pytest.mark.parametrize("by", ["client", "health-check"])
def test_a_host_that_reattaches_within_the_grace_keeps_the_plugin(sockets: Path, by: str) -> None:
    """A new host reattaches within the grace (its connect's health check is the plugin's first call since; a
    bare health Check alone is one too): the plugin serves on well past the grace, its data still there."""
    pid = 0
    try:
        pid, address, text = _host_then_sigkill(sockets, GRACE)
        if by == "health-check":
            with grpc.insecure_channel(f"unix:{address}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[no-untyped-call]
                    health_pb2.HealthCheckRequest(service="plugin"), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            time.sleep(3 * GRACE)
        client = _reattached(text)
        try:
            time.sleep(3 * GRACE)  # past the grace: a plugin that still waited would have stopped by now
            assert not gone(pid)
            assert client.dispense(PLUGIN_NAME).get("k") == b"v"
        finally:
            client.kill()
        assert wait_until(lambda: gone(pid), BOUND)
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


@pytest.mark.parametrize("grace", [True, -1, math.nan, math.inf, "600", [1]])
def test_outlive_grace_is_checked(grace: Any) -> None:
    with pytest.raises(ConfigError, match="outlive_grace must be a number of seconds"):
        ProcessRunner([sys.executable, str(KV_PLUGIN)], outlive_grace=grace)


def test_outlive_grace_accepts_seconds_and_none() -> None:
    for grace in (0, 2.5, 600, None):
        assert ProcessRunner([sys.executable, str(KV_PLUGIN)], outlive_grace=grace).outlive_grace == grace


@pytest.mark.parametrize("value", ["", "x", "nan", "inf", "-1", "1" * 400, "None"])
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
        while b"is not a number of seconds" not in said and time.monotonic() < until:
            if select.select([proc.stderr], [], [], 1)[0]:
                chunk = os.read(proc.stderr.fileno(), 65536)
                if not chunk:
                    break
                said += chunk
        assert b"PLUGBAY_OUTLIVE_GRACE='soon\\\\x1b[2J' is not a number of seconds" in said, said
        assert b"\x1b" not in said
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(BOUND) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
