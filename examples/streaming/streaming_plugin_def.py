"""The streaming plugin definition shared by examples/streaming/host.py and plugin.py.

Service ``streaming.Streamer``: ``Generate`` (server streaming: N chunks of
SIZE bytes), ``Echo`` (bidirectional: every chunk sent back) and ``GetStats``
(how far the producer got, how many streams were cancelled, the plugin's RSS).

gRPC's HTTP/2 flow control is the backpressure: a producer whose consumer
stops reading blocks in ``yield`` once the windows are full, so its memory
does not grow. A cancelled stream ends the generator at that ``yield``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for streamingproto

from streamingproto import streaming_pb2, streaming_pb2_grpc  # noqa: E402

from plugbay import GRPCBroker, GRPCPlugin, HandshakeConfig  # noqa: E402

HANDSHAKE = HandshakeConfig(protocol_version=1, magic_cookie_key="STREAMING_PLUGIN",
                            magic_cookie_value="flow")
PLUGIN_NAME = "streamer"


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class StreamerServicer(streaming_pb2_grpc.StreamerServicer):
    """The plugin's implementation; also usable on a brokered server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.produced = self.echoed = self.received = self.cancelled = self.active = 0

    def _add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def Generate(self, request: streaming_pb2.GenerateRequest,
                 context: grpc.ServicerContext) -> Iterator[streaming_pb2.Chunk]:
        payload = os.urandom(request.size)
        finished = False
        self._add(active=1)
        try:
            seq = 0
            while request.count == 0 or seq < request.count:
                if not context.is_active():
                    break
                yield streaming_pb2.Chunk(seq=seq, data=payload)
                seq += 1
                self._add(produced=1)
            finished = context.is_active()
        finally:
            # a client cancel closes this generator at its yield (GeneratorExit)
            self._add(active=-1, cancelled=0 if finished else 1)

    def Echo(self, request_iterator: Iterator[streaming_pb2.Chunk],
             context: grpc.ServicerContext) -> Iterator[streaming_pb2.Chunk]:
        finished = False
        self._add(active=1)
        try:
            for chunk in request_iterator:
                self._add(received=1)
                yield chunk
                self._add(echoed=1)
            finished = context.is_active()
        except grpc.RpcError:
            pass  # the request stream broke because the client cancelled
        finally:
            self._add(active=-1, cancelled=0 if finished else 1)

    def GetStats(self, request: streaming_pb2.StatsRequest, context: grpc.ServicerContext) -> streaming_pb2.Stats:
        with self._lock:
            return streaming_pb2.Stats(produced=self.produced, echoed=self.echoed, received=self.received,
                                       cancelled=self.cancelled, active=self.active, rss_bytes=rss_bytes())


class StreamerClient:
    """Host side: what dispense("streamer") returns."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = streaming_pb2_grpc.StreamerStub(channel)

    def generate(self, count: int, size: int, timeout: float | None = None) -> Any:
        """The server stream (iterate it; ``.cancel()`` it to stop the producer)."""
        return self.stub.Generate(streaming_pb2.GenerateRequest(count=count, size=size), timeout=timeout)

    def echo(self, chunks: Iterator[streaming_pb2.Chunk], timeout: float | None = None) -> Any:
        return self.stub.Echo(chunks, timeout=timeout)

    def stats(self) -> streaming_pb2.Stats:
        return self.stub.GetStats(streaming_pb2.StatsRequest(), timeout=10)


class AsyncStreamerClient:
    """Host side under AsyncClient: the same streams on grpc.aio (``async for`` them)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = streaming_pb2_grpc.StreamerStub(channel)

    def generate(self, count: int, size: int, timeout: float | None = None) -> Any:
        return self.stub.Generate(streaming_pb2.GenerateRequest(count=count, size=size), timeout=timeout)

    def echo(self, chunks: AsyncIterator[streaming_pb2.Chunk] | Iterator[streaming_pb2.Chunk] | None = None,
             timeout: float | None = None) -> Any:
        """Without ``chunks``, write() them to the call and done_writing() at the end."""
        return self.stub.Echo(chunks, timeout=timeout)

    async def stats(self) -> streaming_pb2.Stats:
        return await self.stub.GetStats(streaming_pb2.StatsRequest(), timeout=10)


class StreamerPlugin(GRPCPlugin):
    def __init__(self, impl: StreamerServicer | None = None) -> None:
        self.impl = impl

    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        streaming_pb2_grpc.add_StreamerServicer_to_server(self.impl or StreamerServicer(), server)

    def grpc_client(self, broker: GRPCBroker, channel: grpc.Channel) -> StreamerClient:
        return StreamerClient(channel)

    def grpc_client_async(self, broker: GRPCBroker, channel: grpc.aio.Channel) -> AsyncStreamerClient:
        return AsyncStreamerClient(channel)
