"""A network-mode serve() on a thread of the program's own (no SIGTERM handler there, GRPCController.Shutdown
ignored without allow_shutdown) is stopped by the program with NetworkServe(stop=ServeStop()): serve()
returns, the port is closed, and the program exits by itself. A real process, a real thread, real calls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from plugbay import NetworkServe, ServeStop
from plugbay.errors import ConfigError
from tests.ports import bind_lost, held_by, released_ports

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "plugins" / "net_serve_thread.py"
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402


def _start(tmp_path: Path, address: str, early: bool = False) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_"))}
    env.update({"NET_SERVE_LISTEN": address, "NET_SERVE_EARLY": "1" if early else "0"})
    return subprocess.Popen([sys.executable, str(SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path, text=True)


def _finish(proc: subprocess.Popen[str], stdin: str) -> tuple[str, str]:
    try:
        return proc.communicate(stdin, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_serve_on_a_thread_stops_when_the_program_asks(tmp_path: Path) -> None:
    for port in released_ports():  # the handshake line names the very address asked for
        address = f"127.0.0.1:{port}"
        proc = _start(tmp_path, address)
        stdin, stdout = proc.stdin, proc.stdout
        assert stdin is not None and stdout is not None
        line = stdout.readline()  # the handshake line: it serves
        if not line.startswith("SERVE FAILED"):
            break
        _, err = _finish(proc, "")
        assert bind_lost(err), (line, err[-2000:])  # only a port taken in the gap is given up for another
    assert f"|tcp|{address}|grpc" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    with grpc.insecure_channel(address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        kv.Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=10)
        # a host's Shutdown is ignored: the service is shared (allow_shutdown=False)
        channel.unary_unary("/plugin.GRPCController/Shutdown")(b"", timeout=10)
        assert kv.Get(kv_pb2.GetRequest(key="k"), timeout=10).value == b"v"
    assert held_by(proc.pid, port) != []  # the look below sees its listener
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None and stdout is not None
    stdin.write("stop\n")
    stdin.flush()
    returned = stdout.readline()
    # serve() returned: the listener is closed (the process still runs; the port may be anyone's now)
    listening = held_by(proc.pid, port) if returned.strip() == "RETURNED" else None
    out, err = _finish(proc, "")
    assert returned.strip() == "RETURNED" and out == "", (returned, out, err[-2000:])
    assert listening == [], listening
    assert proc.returncode == 0, err[-2000:]


def test_a_stop_asked_before_serve_started_ends_it_once_started(tmp_path: Path) -> None:
    proc = _start(tmp_path, "127.0.0.1:0", early=True)
    out, err = _finish(proc, "")
    assert "RETURNED" in out, (out, err[-2000:])
    assert proc.returncode == 0, err[-2000:]


def test_serve_stop_is_typed_and_shown_in_the_config() -> None:
    stop = ServeStop()
    assert not stop.asked
    network = NetworkServe(listen="127.0.0.1:0", insecure=True, stop=stop)
    assert network.stop is stop and NetworkServe(listen="127.0.0.1:0", insecure=True).stop is None
    stop.stop()
    stop.stop()  # idempotent
    assert stop.asked
    with pytest.raises(ConfigError, match="NetworkServe.stop must be a ServeStop"):
        NetworkServe(listen="127.0.0.1:0", insecure=True, stop=True)  # type: ignore[arg-type]
