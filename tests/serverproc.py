"""Running serve() plugins as real processes for the plugin-side tests."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay._proto.plugin import grpc_controller_pb2, grpc_controller_pb2_grpc
from plugbay.core.protocol.handshake import HandshakeInfo, parse_handshake_line
from plugbay.core.transport.relay import TLSRelay
from tests.procs import popen_asked_to_outlive

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "tests" / "plugins" / "probe.py"
KV_PLUGIN = REPO / "examples" / "kv" / "plugin.py"
sys.path.insert(0, str(REPO / "examples" / "kv"))  # kvproto, kv_plugin_def

COOKIE = {"BASIC_PLUGIN": "hello"}
STDOUT, STDERR = 1, 2


class PluginProc:
    """One plugin process: its handshake, a channel to it, and a bounded teardown."""

    def __init__(self, env: dict[str, str], script: Path = PROBE, cwd: Path | None = None,
                 outlive: bool = False) -> None:
        """``outlive``: asked to outlive its host, as a plugbay host's ProcessRunner asks (its stderr pipe named)."""
        full = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "PROBE_"))}
        full.update(env)
        if outlive:
            self.proc = popen_asked_to_outlive([sys.executable, str(script)], full, stdout=subprocess.PIPE, cwd=cwd)
        else:
            self.proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=full, cwd=cwd)
        self.channels: list[grpc.Channel] = []
        self.relays: list[TLSRelay] = []

    def handshake_line(self, timeout: float = 30) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise AssertionError(f"no handshake line within {timeout}s")
        return self.proc.stdout.readline().decode().rstrip("\n")

    def handshake(self) -> HandshakeInfo:
        return parse_handshake_line(self.handshake_line())

    def channel(self, info: HandshakeInfo, creds: grpc.ChannelCredentials | None = None) -> grpc.Channel:
        target = f"unix:{info.address}" if info.network == "unix" else info.address
        if creds is None:
            ch = grpc.insecure_channel(target)
        else:
            ch = grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", "localhost")])
        self.channels.append(ch)
        return ch

    def finish(self, timeout: float = 20) -> tuple[int, str]:
        """Wait for the exit; returns (exit code, stderr)."""
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err.decode()

    def close(self) -> None:
        for ch in self.channels:
            ch.close()
        for relay in self.relays:
            relay.close()
        if self.proc.poll() is None:  # SIGTERM first, so the plugin removes its socket
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.communicate(timeout=20)


@pytest.fixture
def plugins() -> Iterator[list[PluginProc]]:
    started: list[PluginProc] = []
    yield started
    for p in started:
        p.close()


def start(plugins: list[PluginProc], env: dict[str, str] | None = None, **kw: Any) -> PluginProc:
    p = PluginProc({**COOKIE, "PLUGIN_PROTOCOL_VERSIONS": "1", **(env or {})}, **kw)
    plugins.append(p)
    return p


def shutdown(ch: grpc.Channel) -> None:
    grpc_controller_pb2_grpc.GRPCControllerStub(ch).Shutdown(grpc_controller_pb2.Empty(), timeout=10)


def health(ch: grpc.Channel, service: str = "plugin") -> int:
    resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return int(resp.status)


def refused(plugins: list[PluginProc], env: dict[str, str], **kw: Any) -> str:
    """Run a plugin that must fail setup: no handshake line, exit 1; returns stderr."""
    p = PluginProc(env, **kw)
    plugins.append(p)
    code, err = p.finish()
    assert p.proc.stdout is not None
    assert code == 1, err
    return err
