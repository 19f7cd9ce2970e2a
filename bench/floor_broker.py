"""The floor for a brokered callback: a bare grpcio host of go-plugin's counter plugin, no plugbay.

``BareCounter`` does what go-plugin's own host does for each ``Put``, in the
plainest grpcio: it opens the ``GRPCBroker.StartStream`` stream once, and per
call takes the next broker id, builds and starts a ``grpc.server`` (a fresh
thread pool) with AddHelper on a fresh unix socket, announces the socket as a
``ConnInfo`` on the stream, calls ``Put`` (the plugin dials the id and calls
``Sum`` back) and stops the server (``stop(None)``, as go-plugin's ``Stop()``).
Nothing else: no spare servers, no health check, no TLS. ``timed_ahead``
times the same Puts with every server started before the timed calls (the
lower bound of any grpcio host, below the floor: see its docstring). ConnInfo is encoded
by hand (three fields), so not even plugbay's generated code is loaded.
"""

from __future__ import annotations

import os
import queue
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "counter"))
from counterproto import counter_pb2, counter_pb2_grpc  # noqa: E402  (the example's generated code)
from floor import ENV, end, launch  # noqa: E402  (the bare host's launch and end of a plugin)



def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def conn_info(service_id: int, network: str, address: str) -> bytes:
    """plugin.ConnInfo{service_id, network, address} in protobuf's wire format."""
    net, addr = network.encode(), address.encode()
    return (b"\x08" + _varint(service_id) + b"\x12" + _varint(len(net)) + net
            + b"\x1a" + _varint(len(addr)) + addr)


class _Adder(counter_pb2_grpc.AddHelperServicer):
    def Sum(self, request: Any, context: grpc.ServicerContext) -> Any:
        return counter_pb2.SumResponse(r=request.a + request.b)


class BareCounter:
    """One plugin process, one channel, one broker stream; a grpc.server per brokered call."""

    def __init__(self, cmd: list[str], cwd: str, timeout: float = 30.0) -> None:
        self.proc, parts = launch(cmd, cwd, {**os.environ, **ENV})
        self.timeout = timeout
        self.dir = tempfile.mkdtemp(prefix="plugbay-bench-floor-")
        self.channel = grpc.insecure_channel(f"unix:{parts[3]}")
        self._stub = counter_pb2_grpc.CounterStub(self.channel)
        self._shutdown = self.channel.unary_unary("/plugin.GRPCController/Shutdown")
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        start_stream = self.channel.stream_stream("/plugin.GRPCBroker/StartStream")
        self._stream = start_stream(self._announcements())
        self._next_id = 0

    def _announcements(self) -> Iterator[bytes]:
        while (msg := self._outbox.get()) is not None:
            yield msg

    def put(self, key: str, value: int) -> None:
        sid, path, server, pool = self._start_server()
        try:
            self.put_to(sid, path, key, value)
        finally:
            server.stop(None)
            pool.shutdown(wait=False)

    def _start_server(self) -> tuple[int, str, grpc.Server, ThreadPoolExecutor]:
        """The next broker id and a started server with AddHelper on a fresh socket for it."""
        self._next_id += 1
        sid = self._next_id
        path = os.path.join(self.dir, f"{sid}.sock")
        pool = ThreadPoolExecutor(max_workers=4)
        server = grpc.server(pool)
        counter_pb2_grpc.add_AddHelperServicer_to_server(_Adder(), server)
        server.add_insecure_port(f"unix:{path}")
        server.start()
        return sid, path, server, pool

    def put_to(self, sid: int, path: str, key: str, value: int) -> None:
        """Announce ``sid`` at ``path`` and call Put with it (the plugin dials it and calls Sum)."""
        self._outbox.put(conn_info(sid, "unix", path))
        self._stub.Put(counter_pb2.PutRequest(add_server=sid, key=key, value=value), timeout=self.timeout)

    def timed_ahead(self, calls: int, batch: int = 20) -> list[float]:
        """Per-call latencies (us, unsorted) of ``calls`` Puts whose servers were all started before
        the timed calls and stopped after them, ``batch`` at a time: still a server per id, as
        go-plugin's pattern asks, but none of its start or stop in a timed call. No host can do
        less per brokered call with grpcio servers: the lower bound, not a floor to match."""
        took: list[float] = []
        while len(took) < calls:
            ahead = [self._start_server() for _ in range(min(batch, calls - len(took)))]
            try:
                for sid, path, _, _ in ahead:
                    t0 = time.perf_counter()
                    self.put_to(sid, path, "bench", 1)
                    took.append((time.perf_counter() - t0) * 1e6)
            finally:
                for _, _, server, pool in ahead:
                    server.stop(None)
                    pool.shutdown(wait=False)
        return took

    def get(self, key: str) -> int:
        return int(self._stub.Get(counter_pb2.GetRequest(key=key), timeout=self.timeout).value)

    def close(self) -> None:
        self._outbox.put(None)
        try:
            self._shutdown(b"", timeout=2)
        except grpc.RpcError:
            pass
        self._stream.cancel()
        self.channel.close()
        end(self.proc, 5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> BareCounter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
