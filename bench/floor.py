"""The floor for a Python host: a bare grpcio host of a go-plugin KV plugin, no plugbay at all.

``BareKV`` launches the plugin with the cookie and version in its environment,
reads the go-plugin handshake line from its stdout, opens one grpcio channel to
the unix socket it names and offers ``put``/``get`` like the example's KVClient.
``close`` calls GRPCController.Shutdown and waits for the exit (SIGKILL after
5 s). Nothing else: no stderr relay, no health check, no broker. With
``automtls`` it sends a host certificate as go-plugin's host does and dials
the plugin through bench/floor_relay.py's minimal TLS relay (grpcio's TLS
cannot take the Go plugin's P-521 certificate).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "kv"))
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402  (the example's generated code)

ENV = {"BASIC_PLUGIN": "hello", "PLUGIN_PROTOCOL_VERSIONS": "1", "PLUGIN_MIN_PORT": "10000",
       "PLUGIN_MAX_PORT": "25000"}


def launch(cmd: list[str], cwd: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], list[str]]:
    """Start a go-plugin plugin and read its handshake line (unix, grpc): the process and the line's fields."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        line = first_line(proc).strip()
    except BaseException:
        end(proc)
        raise
    parts = line.split("|")
    if len(parts) < 5 or parts[2] != "unix" or parts[4] != "grpc":
        end(proc)
        raise RuntimeError(f"unexpected handshake line {line!r} from {cmd}")
    return proc, parts


def first_line(proc: subprocess.Popen[Any], timeout: float = 30.0) -> str:
    """The first line ``proc`` prints on stdout, waited for at most ``timeout`` s (RuntimeError after:
    a plugin alive but silent must not hang the bench). Read from the pipe itself, unbuffered."""
    assert proc.stdout is not None
    fd, got, deadline = proc.stdout.fileno(), b"", time.monotonic() + timeout
    while b"\n" not in got:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RuntimeError(f"no handshake line from {proc.args} within {timeout:.0f} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        got += chunk
    return got.split(b"\n", 1)[0].decode(errors="replace")


def end(proc: subprocess.Popen[bytes], wait: float = 0) -> None:
    """Wait ``wait`` s for the plugin's exit (then kill it) and close its pipe."""
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


class BareKV:
    """One plugin process and one channel, the least a Python host can do."""

    def __init__(self, cmd: list[str], cwd: str, timeout: float = 30.0, automtls: bool = False) -> None:
        env = {**os.environ, **ENV}
        if automtls:
            from floor_relay import host_certificate

            cert, key = host_certificate()
            env["PLUGIN_CLIENT_CERT"] = cert.decode()
        self.proc, parts = launch(cmd, cwd, env)
        self.timeout = timeout
        self.relay: Any = None
        self.folder = ""
        target = parts[3]
        if automtls:
            from floor_relay import BareRelay, plugin_certificate_pem

            try:
                if len(parts) < 6 or not parts[5]:
                    raise RuntimeError(f"no plugin certificate in handshake line {'|'.join(parts)!r} from {cmd}")
                self.folder = tempfile.mkdtemp(prefix="plugbay-bench-relay-")
                self.relay = BareRelay(target, plugin_certificate_pem(parts[5]), cert, key, self.folder)
            except BaseException:
                self._end_process()
                raise
            target = self.relay.path
        self.channel = grpc.insecure_channel(f"unix:{target}")
        self._stub = kv_pb2_grpc.KVStub(self.channel)
        self._shutdown = self.channel.unary_unary("/plugin.GRPCController/Shutdown")

    def put(self, key: str, value: bytes) -> None:
        self._stub.Put(kv_pb2.PutRequest(key=key, value=value), timeout=self.timeout)

    def get(self, key: str) -> bytes:
        return bytes(self._stub.Get(kv_pb2.GetRequest(key=key), timeout=self.timeout).value)

    def close(self) -> None:
        try:
            self._shutdown(b"", timeout=2)
        except grpc.RpcError:
            pass
        self.channel.close()
        self._end_process(wait=5)

    def _end_process(self, wait: float = 0) -> None:
        """Stop the relay, wait ``wait`` s for the plugin's exit (then kill it), free its pipe and folder."""
        if self.relay is not None:
            self.relay.close()
        end(self.proc, wait)
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> BareKV:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
