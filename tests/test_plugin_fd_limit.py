"""A Python plugin under a low descriptor limit survives one host's full session of streams.

Each stream of the multiplexed connection costs the plugin two descriptors (its bridge's
connection to the plugin's own gRPC server, both ends in the process). Under the common soft
RLIMIT_NOFILE of 1024, one session's 512 streams took every descriptor: the KV plugin could open
no file and its streams failed with "Too many open files". serve() now raises the soft limit to
the hard one (as Go's runtime does for a Go plugin), and where the hard limit itself is low a
session admits only the streams half the limit allows. The plugin is the real trap KV plugin
(PLUGIN_MULTIPLEX_GRPC), the peer a raw socket opening streams and never speaking on them.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netflood import ping, proc_counts, split_frames, syns
from tests.rlimited import rlimited
from tests.trap_kv_util import HANDSHAKE, TRAP

from plugbay.core.plugin.fdlimit import SOFT_CAP
from plugbay.core.transport.yamux import ACK, DATA, MAX_STREAMS, PING, RST, WINDOW_UPDATE

FLOOD = 600
_HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


class Plugin:
    def __init__(self, cwd: Path, soft: int, hard: int) -> None:
        env = dict(os.environ, PLUGIN_PROTOCOL_VERSIONS=str(HANDSHAKE.protocol_version),
                   PLUGIN_MULTIPLEX_GRPC="true", PYTHONDONTWRITEBYTECODE="1")
        env[HANDSHAKE.magic_cookie_key] = HANDSHAKE.magic_cookie_value
        self.err_path = cwd / "stderr.log"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                rlimited([*TRAP], RLIMIT_NOFILE=(soft, hard)), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=err, text=True)
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline().strip()
        assert self.line, self.stderr()

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def soft_limit(self) -> int:
        for line in open(f"/proc/{self.proc.pid}/limits"):
            if line.startswith("Max open files"):
                return int(line.split()[3])
        raise AssertionError("no open-files line")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def plugins(tmp_path: Path) -> Iterator[list[Plugin]]:
    made: list[Plugin] = []
    yield made
    for plugin in made:
        plugin.stop()


def flood(plugin: Plugin) -> tuple[set[int], set[int]]:
    """Open FLOOD streams and wait (bounded) until each one the plugin took has been routed to its
    gRPC server (whose HTTP/2 settings then arrive on it) or reset; (routed, reset at once) ids."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(plugin.line.split("|")[3])
    try:
        sock.sendall(syns(1, FLOOD) + ping(77))
        acked: set[int] = set()
        refused: set[int] = set()  # reset before the ping's answer: at the SYN
        routed: set[int] = set()
        failed: set[int] = set()  # reset after being taken: its route failed
        ponged = False
        data = b""
        deadline = time.monotonic() + 60
        while not ponged or not acked <= routed | failed:
            assert time.monotonic() < deadline, (len(acked), len(routed), len(failed), plugin.stderr()[-2000:])
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = sock.recv(1 << 20)
            assert chunk, plugin.stderr()[-2000:]
            frames, data = split_frames(data + chunk)
            for kind, flags, sid, length in frames:
                if kind == WINDOW_UPDATE and flags & ACK:
                    acked.add(sid)
                if kind == WINDOW_UPDATE and flags & RST:
                    (failed if sid in acked else refused).add(sid)
                elif kind == DATA and length:
                    routed.add(sid)
                elif kind == PING and flags & ACK and length == 77:
                    ponged = True
        assert not failed, (len(failed), plugin.stderr()[-2000:])
        fds = proc_counts(plugin.proc.pid)[1]
        assert fds < plugin.soft_limit(), fds
        return routed, refused
    finally:
        sock.close()


@pytest.mark.skipif(_HARD != resource.RLIM_INFINITY and _HARD <= 1024, reason="the hard limit leaves no room")
def test_a_plugin_started_under_a_soft_limit_of_1024_raises_it_and_carries_a_full_session(
        tmp_path: Path, plugins: list[Plugin]) -> None:
    plugin = Plugin(tmp_path, 1024, _HARD)
    plugins.append(plugin)
    wanted = SOFT_CAP if _HARD == resource.RLIM_INFINITY else min(_HARD, SOFT_CAP)
    assert plugin.soft_limit() == wanted
    routed, refused = flood(plugin)
    assert len(routed) == MAX_STREAMS and refused == {1 + 2 * i for i in range(MAX_STREAMS, FLOOD)}
    assert "Too many open files" not in plugin.stderr()


def test_a_plugin_whose_hard_limit_is_1024_admits_the_streams_half_its_descriptors_carry(
        tmp_path: Path, plugins: list[Plugin]) -> None:
    plugin = Plugin(tmp_path, 1024, 1024)
    plugins.append(plugin)
    assert plugin.soft_limit() == 1024
    routed, refused = flood(plugin)
    assert len(routed) == 1024 // 4 and refused == {1 + 2 * i for i in range(1024 // 4, FLOOD)}
    err = plugin.stderr()
    assert "Too many open files" not in err
    assert "the most one session may under this process's descriptor limit" in err
