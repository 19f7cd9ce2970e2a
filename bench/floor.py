"""The floor for a Python host: a bare grpcio host of a go-plugin KV plugin, no plugbay at all.

``BareKV`` launches the plugin with the cookie and version in its environment,
reads the go-plugin handshake line from its stdout, opens one grpcio channel to
the unix socket it names and offers ``put``/``get`` like the example's KVClient.
``close`` calls GRPCController.Shutdown and waits for the exit (SIGKILL after
5 s). Nothing else: no stderr relay, no health check, no broker, no TLS.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "kv"))
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402  (the example's generated code)

ENV = {"BASIC_PLUGIN": "hello", "PLUGIN_PROTOCOL_VERSIONS": "1", "PLUGIN_MIN_PORT": "10000",
       "PLUGIN_MAX_PORT": "25000"}


class BareKV:
    """One plugin process and one channel, the least a Python host can do."""

    def __init__(self, cmd: list[str], cwd: str, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **ENV}, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        parts = line.split("|")
        if len(parts) < 5 or parts[2] != "unix" or parts[4] != "grpc":
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"unexpected handshake line {line!r} from {cmd}")
        self.timeout = timeout
        self.channel = grpc.insecure_channel(f"unix:{parts[3]}")
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
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def __enter__(self) -> BareKV:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
