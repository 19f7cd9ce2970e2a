"""Plugins whose servicers are asyncio code (``async def`` handlers), for tests/test_async_servicers.py.

    async_plugins.py kv         the KV service (drop-in for go-plugin's KV plugin): keys in files
                                kv_<key> in the working folder, as examples/kv/plugin.py; control keys:
                                Get("__loop__")   the handler loop's thread name and loop id
                                Get("__hold__")   waits (an asyncio.Event) until a Get("__release__") comes
                                Get("__cancelled__") how many handlers saw their call cancelled
                                Get("__initial_metadata__") awaits context.send_initial_metadata (x-sent: awaited)
                                Get("__initial_metadata_unawaited__") calls it as sync code does (x-sent: called)
                                Get("__context_read__") awaits context.read(), grpc.aio's other style
                                Get("__context_write__") awaits context.write(), the same
                                Get("__done_callback__") grpc.aio's context checks: isinstance, done(),
                                                  cancelled(), add_done_callback (run as the call ends)
                                Get("__done_seen__") what that callback got, once it ran
                                Get("__system_exit__") raises SystemExit in the coroutine
                                Get("__timeout__") raises asyncio.TimeoutError (the builtin TimeoutError)
                                Get("__cancel_itself__") raises asyncio.CancelledError, its call still on
                                Get("__block__")  30 s of asyncio.to_thread(time.sleep) (blocking work)
                                Get("__block_loop__") 30 s of time.sleep in the coroutine (the loop blocked)
                                Get("__ignore_cancel__") 30 s of asyncio.sleep, each cancel caught and ignored
                                Get("__helper__") serves an asyncio AddHelper (the counter example's
                                                  service: Sum answers a*b here) on a new broker id,
                                                  returned as the value
                                Get("__streamer__") serves the streamer below on a new broker id, the same
                                Get("__stream_back__<id>") calls Echo on the host's broker id <id> with
                                                  a request iterator that raises ValueError after one
                                                  chunk; the value: what the call raised
    async_plugins.py streamer   the streaming example's service: Generate an async generator,
                                Echo over an async iterator of requests, GetStats a coroutine;
                                GetStats' ``cancelled`` counts Generate's generators closed; Echo
                                raises asyncio.TimeoutError at a chunk b"__timeout__" and
                                asyncio.CancelledError at b"__cancel_itself__"
    async_plugins.py bad-stream a server stream written as a coroutine (grpc.aio's context.write style):
                                refused when registered, so serve() fails
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "kv"))
sys.path.insert(0, str(REPO / "examples" / "streaming"))
sys.path.insert(0, str(REPO / "examples" / "counter"))
sys.path.insert(0, str(REPO / "src"))

import grpc  # noqa: E402
from kv_plugin_def import HANDSHAKE as KV_HANDSHAKE, PLUGIN_NAME as KV_NAME  # noqa: E402
from counterproto import counter_pb2, counter_pb2_grpc  # noqa: E402
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402
from streaming_plugin_def import HANDSHAKE as STREAM_HANDSHAKE, PLUGIN_NAME as STREAM_NAME  # noqa: E402
from streamingproto import streaming_pb2, streaming_pb2_grpc  # noqa: E402

from plugbay import GRPCBroker, GRPCPlugin, ServeConfig, serve  # noqa: E402


class AsyncMultiplier(counter_pb2_grpc.AddHelperServicer):
    async def Sum(self, request: counter_pb2.SumRequest, context: Any) -> counter_pb2.SumResponse:
        await asyncio.sleep(0)
        return counter_pb2.SumResponse(r=request.a * request.b)


class AsyncKV(kv_pb2_grpc.KVServicer):
    def __init__(self) -> None:
        self.release: asyncio.Event | None = None  # made on the handler loop
        self.cancelled = 0
        self.broker: GRPCBroker | None = None
        self.done_seen: list[str] = []  # what Get("__done_callback__")'s add_done_callback got

    async def Get(self, request: kv_pb2.GetRequest, context: Any) -> kv_pb2.GetResponse:
        if request.key == "__loop__":
            loop = asyncio.get_running_loop()
            return kv_pb2.GetResponse(value=f"{threading.current_thread().name} {id(loop)}".encode())
        if request.key == "__system_exit__":
            raise SystemExit(7)  # in a coroutine on the loop every handler shares
        if request.key == "__timeout__":
            raise asyncio.TimeoutError("the handler's own timeout")
        if request.key == "__cancel_itself__":
            raise asyncio.CancelledError()
        if request.key == "__block__":
            await asyncio.to_thread(time.sleep, 30)  # blocking work, still running at Shutdown
            return kv_pb2.GetResponse(value=b"unblocked")
        if request.key == "__block_loop__":
            time.sleep(30)  # a mistake plugins make: every coroutine waits meanwhile
            return kv_pb2.GetResponse(value=b"unblocked")
        if request.key == "__ignore_cancel__":
            end = time.monotonic() + 30
            while time.monotonic() < end:
                try:
                    await asyncio.sleep(0.1)
                except asyncio.CancelledError:
                    pass  # a slow or careless cleanup: it goes on
            return kv_pb2.GetResponse(value=b"done")
        if request.key == "__helper__" and self.broker is not None:
            broker, sid = self.broker, self.broker.next_id()
            await asyncio.to_thread(broker.accept_and_serve, sid,
                                    lambda s: counter_pb2_grpc.add_AddHelperServicer_to_server(AsyncMultiplier(), s))
            return kv_pb2.GetResponse(value=str(sid).encode())
        if request.key == "__streamer__" and self.broker is not None:
            broker, sid = self.broker, self.broker.next_id()
            await asyncio.to_thread(broker.accept_and_serve, sid,
                                    lambda s: streaming_pb2_grpc.add_StreamerServicer_to_server(AsyncStreamer(), s))
            return kv_pb2.GetResponse(value=str(sid).encode())
        if request.key.startswith("__stream_back__") and self.broker is not None:
            said = await asyncio.to_thread(_stream_back, self.broker, int(request.key.removeprefix("__stream_back__")))
            return kv_pb2.GetResponse(value=said.encode())
        if request.key in ("__initial_metadata__", "__initial_metadata_unawaited__"):
            if request.key == "__initial_metadata__":  # as grpc.aio servicers write it
                await context.send_initial_metadata((("x-sent", "awaited"),))
            else:
                context.send_initial_metadata((("x-sent", "called"),))
            return kv_pb2.GetResponse(value=b"sent")
        if request.key == "__context_read__":
            await context.read()
        if request.key == "__context_write__":
            await context.write(kv_pb2.GetResponse(value=b"written"))
        if request.key == "__done_callback__":
            context.add_done_callback(lambda ended: self.done_seen.append(
                f"callback got the context: {ended is context}, done then: {ended.done()}"))
            return kv_pb2.GetResponse(value=f"a ServicerContext: {isinstance(context, grpc.ServicerContext)},"
                                      f" done: {context.done()}, cancelled: {context.cancelled()}".encode())
        if request.key == "__done_seen__":
            while not self.done_seen:  # the callback runs as the earlier call ends, maybe after its answer
                await asyncio.sleep(0.01)
            return kv_pb2.GetResponse(value=self.done_seen[0].encode())
        if request.key == "__cancelled__":
            return kv_pb2.GetResponse(value=str(self.cancelled).encode())
        if request.key == "__release__":
            if self.release is not None:
                self.release.set()
            return kv_pb2.GetResponse(value=b"released")
        if request.key == "__hold__":
            if self.release is None or self.release.is_set():
                self.release = asyncio.Event()  # shared across calls: one loop serves them all
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return kv_pb2.GetResponse(value=b"held")
        await asyncio.sleep(0)  # a real await point between the read and the answer
        path = Path(f"kv_{request.key}")
        if not path.exists():
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no value stored for key {request.key!r}")
        return kv_pb2.GetResponse(value=path.read_bytes())

    async def Put(self, request: kv_pb2.PutRequest, context: Any) -> kv_pb2.Empty:
        await asyncio.sleep(0)
        Path(f"kv_{request.key}").write_bytes(request.value)
        return kv_pb2.Empty()


def _stream_back(broker: GRPCBroker, sid: int) -> str:
    """What a stream into the host's brokered server raised, its request iterator raising after one chunk."""
    def source() -> Any:
        yield streaming_pb2.Chunk(seq=0, data=b"first")
        raise ValueError("the plugin's own source broke")

    with broker.dial(sid) as channel:
        echo = channel.stream_stream("/streaming.Streamer/Echo",
                                     request_serializer=streaming_pb2.Chunk.SerializeToString,
                                     response_deserializer=streaming_pb2.Chunk.FromString)
        try:
            list(echo(source()))
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return "no error"


class AsyncStreamer(streaming_pb2_grpc.StreamerServicer):
    def __init__(self) -> None:
        self.produced = self.echoed = self.closed = 0

    async def Generate(self, request: streaming_pb2.GenerateRequest, context: Any) -> Any:
        try:
            for seq in range(request.count):
                await asyncio.sleep(0)
                self.produced += 1
                yield streaming_pb2.Chunk(seq=seq, data=b"x" * request.size)
        finally:
            self.closed += 1

    async def Echo(self, request_iterator: Any, context: Any) -> Any:
        async for chunk in request_iterator:
            if chunk.data == b"__timeout__":
                raise asyncio.TimeoutError("the handler's own timeout")
            if chunk.data == b"__cancel_itself__":
                raise asyncio.CancelledError()
            self.echoed += 1
            yield chunk

    async def GetStats(self, request: streaming_pb2.StatsRequest, context: Any) -> streaming_pb2.Stats:
        return streaming_pb2.Stats(produced=self.produced, echoed=self.echoed, cancelled=self.closed)


class CoroutineStream(AsyncStreamer):
    async def Generate(self, request: streaming_pb2.GenerateRequest, context: Any) -> None:  # type: ignore[override]
        await context.write(streaming_pb2.Chunk(seq=0))


class _Plugin(GRPCPlugin):
    def __init__(self, add: Any, servicer: Any) -> None:
        self._add = add
        self._servicer = servicer

    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        if hasattr(self._servicer, "broker"):
            self._servicer.broker = broker
        self._add(self._servicer, server)

    def grpc_client(self, broker: GRPCBroker, channel: grpc.Channel) -> Any:
        raise NotImplementedError("the plugin side only")


def main() -> None:
    if sys.argv[1:] == ["kv"]:
        serve(ServeConfig(handshake=KV_HANDSHAKE,
                          plugins={KV_NAME: _Plugin(kv_pb2_grpc.add_KVServicer_to_server, AsyncKV())}))
    elif sys.argv[1:] == ["streamer"]:
        serve(ServeConfig(handshake=STREAM_HANDSHAKE, plugins={
            STREAM_NAME: _Plugin(streaming_pb2_grpc.add_StreamerServicer_to_server, AsyncStreamer())}))
    elif sys.argv[1:] == ["bad-stream"]:
        serve(ServeConfig(handshake=STREAM_HANDSHAKE, plugins={
            STREAM_NAME: _Plugin(streaming_pb2_grpc.add_StreamerServicer_to_server, CoroutineStream())}))
    else:
        sys.exit("usage: async_plugins.py kv|streamer|bad-stream")


if __name__ == "__main__":
    main()
