"""Host side of GRPCStdio: the plugin's stdout/stderr bytes, streamed over gRPC, to sinks.

A go-plugin plugin (current releases, and plugbay's serve()) redirects its own
stdout/stderr writes into the ``plugin.GRPCStdio`` stream. The host reads it
as it comes in one thread and hands every chunk, in order, to the matching sink
in another (what grpcio holds unread is lost if the plugin exits); the
default sink discards, as go-plugin's default does. Plugins that predate
GRPCStdio (go-plugin 1.0.1) answer UNIMPLEMENTED, which is not an error.

With no sink at all the host still opens the stream (a current go-plugin
plugin blocks its writes until someone reads them), but asks the plugin to
discard (STDIO_DISCARD_METADATA): a plugbay plugin then drops its output and
ends the stream at once, so its reader thread ends too; a go-plugin plugin
ignores the ask and is read (and discarded) for as long as it lives. For such
a plugin the Client uses :class:`AioStdio`: the stream runs on the shared
loop beside the broker's, on the same second connection, and costs no thread
(a reader thread and grpcio's spin thread for the plugin's whole life before).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

import grpc
from google.protobuf import empty_pb2

from plugbay._proto.plugin import grpc_stdio_pb2, grpc_stdio_pb2_grpc
from plugbay.core.protocol.handshake import STDIO_DISCARD_METADATA
from plugbay.core.transport import aioloop
from plugbay.core.transport.aioloop import Deferred
from plugbay.core.transport.secure import AioChannelShare

Sink = Callable[[bytes], None]
_AHEAD = 4 << 20  # bytes read ahead of slow sinks; then the plugin's writes wait (HTTP/2 flow control)
_log = logging.getLogger("plugbay.client")


class StdioReader:
    """Reads StreamStdio until the plugin closes it or close() is called."""

    def __init__(self, channel: grpc.Channel, stdout_sink: Sink | None, stderr_sink: Sink | None,
                 name: str = "plugin", delay: float | None = None) -> None:
        self._stub = grpc_stdio_pb2_grpc.GRPCStdioStub(channel)  # type: ignore[no-untyped-call]
        self._sinks = {grpc_stdio_pb2.StdioData.STDOUT: stdout_sink,
                       grpc_stdio_pb2.StdioData.STDERR: stderr_sink}
        self._call: object | None = None
        self._lock = threading.Lock()
        self._finishing = threading.Lock()
        # read, not yet handed to a sink; _pumped: the stream ended
        self._ahead: collections.deque[grpc_stdio_pb2.StdioData] = collections.deque()
        self._ahead_bytes = 0
        self._ahead_ready = threading.Condition()
        self._pumped = False
        self._closed = False
        self.supported: bool | None = None  # None until the plugin answered
        # what it reads goes somewhere: a kill() reads the stream to its end (see finish)
        self.keeps_output = any(sink is not None for sink in self._sinks.values())
        self._last_chunk = 0.0  # time.monotonic() once the last chunk was handed on (math.inf: in a sink now)
        self._last_read = 0.0  # time.monotonic() once the last chunk was taken off grpcio
        self._thread = threading.Thread(target=self._run, name=f"plugbay-stdio-{name}", daemon=True)
        self._started = False
        # delay: start on the shared loop that long from now, or at hurry(), whichever comes first;
        # math.inf: only when start() is called (the Client's StreamKick does)
        self._deferred = Deferred(self.start, delay) if delay is not None and delay != math.inf else None
        if delay is None:
            self.start()

    def hurry(self) -> None:
        """Start a delayed reader now (on the shared loop); a no-op once started."""
        if self._deferred is not None:
            self._deferred.now()

    def start(self) -> None:
        """Start reading (once); a no-op after close()."""
        with self._lock:
            if self._closed or self._started:
                return
            self._started = True
            self._thread.start()

    def _run(self) -> None:
        with self._lock:
            if self._closed:
                return
            discard = all(sink is None for sink in self._sinks.values())
            try:
                call = self._stub.StreamStdio(empty_pb2.Empty(),
                                              metadata=(STDIO_DISCARD_METADATA,) if discard else None)
            except ValueError as exc:  # grpcio: the exit watcher closed the channel before this call
                _log.debug("GRPCStdio not opened: %s", exc)
                return
            self._call = call
        if not self.keeps_output:
            self._pump(call)
            return
        # grpcio drops what it received once the connection breaks (a plugin that exits without ending
        # the stream): a second thread takes it off grpcio at once, while this one hands it to the sinks
        pump = threading.Thread(target=self._pump, args=(call,), name=f"{self._thread.name}-read", daemon=True)
        pump.start()
        try:
            self._deliver()
        finally:
            pump.join(5.0)  # ended by now: the stream ended, or close() cancelled it

    def _pump(self, call: Iterator[grpc_stdio_pb2.StdioData]) -> None:
        try:
            for data in call:
                self.supported = True
                if not self.keeps_output:
                    continue
                with self._ahead_ready:
                    while self._ahead_bytes >= _AHEAD and not self._closed:  # sinks far behind: the plugin waits
                        self._ahead_ready.wait()
                    if self._closed:
                        return
                    self._ahead.append(data)
                    self._ahead_bytes += len(data.data)
                    self._last_read = time.monotonic()
                    self._ahead_ready.notify_all()
        except grpc.RpcError as exc:
            if _unimplemented(exc):
                self.supported = False
        finally:
            with self._ahead_ready:
                self._pumped = True
                self._ahead_ready.notify_all()

    def _deliver(self) -> None:
        """Hand what was read to the sinks, in order, until the stream's end (close(): what is left is dropped)."""
        while True:
            with self._ahead_ready:
                while not self._ahead and not self._pumped and not self._closed:
                    self._ahead_ready.wait()
                if self._closed or not self._ahead:
                    return
                data = self._ahead.popleft()
                self._ahead_bytes -= len(data.data)
                self._ahead_ready.notify_all()
            sink = self._sinks.get(data.channel)
            if sink is not None:
                self._last_chunk = math.inf
                try:
                    sink(data.data)
                except Exception:
                    _log.warning("GRPCStdio sink raised; output dropped", exc_info=True)
            self._last_chunk = time.monotonic()

    def cancel(self) -> None:
        """End the stream (the plugin exited); no wait. The reader thread then ends by itself."""
        with self._lock:
            self._closed = True  # a start() after this is a no-op
            call = self._call
        if call is not None:
            call.cancel()  # type: ignore[attr-defined]
        with self._ahead_ready:  # the reader threads see _closed
            self._ahead_ready.notify_all()

    def settle(self, quiet: float, limit: float) -> None:
        """Begin reading (a held reader) and return once nothing came for ``quiet`` s or the stream
        ended; ``limit`` s at most. Before a plugin that does not end the stream itself is stopped:
        a go-plugin plugin's Shutdown cuts the connection at once, and what its pipes and grpcio held
        then is lost, so it is taken off grpcio first."""
        self.start()
        if self._thread is threading.current_thread():  # a sink that kills the Client: nothing is read meanwhile
            return
        begun = time.monotonic()
        with self._ahead_ready:
            while not self._pumped and not self._closed:
                # a pump waiting for slow sinks is not quiet: grpcio holds what the plugin sent meanwhile
                until = begun + limit
                if self._ahead_bytes < _AHEAD:
                    until = min(until, max(begun, self._last_read) + quiet)
                wait = until - time.monotonic()
                if wait <= 0:
                    return
                self._ahead_ready.wait(wait)

    def finish(self, timeout: float, quiet: float) -> None:
        """Read on until the plugin ends the stream, then close(); the plugin has been stopped.

        A plugbay plugin ends the stream once it has sent what it wrote; a go-plugin one's
        Shutdown cuts it (kill() let it settle() first), or its process's end, which a connection
        behind a published port may never show: then the stream is cut once nothing came for
        ``quiet`` seconds, or ``timeout`` from now."""
        if self._thread is threading.current_thread():  # a sink that kills the Client: it ends when it returns
            self.close()
            return
        # one at a time (the plugin's exit and a kill() after it both finish): a second waits for the first
        with self._finishing:
            with self._lock:
                started = self._started and not self._closed
            begun = time.monotonic()
            while started and self._thread.is_alive():
                now = time.monotonic()
                wait = min(begun + timeout, max(begun, self._last_chunk) + quiet) - now
                if wait <= 0:
                    break
                self._thread.join(wait)
            self.close(max(begun + timeout - time.monotonic(), 0.1))  # one limit for all: a sink may be stuck

    def close(self, timeout: float = 5.0) -> None:
        if self._deferred is not None:  # not under _lock: a deferred start() that runs takes it
            self._deferred.cancel()
        self.cancel()
        with self._lock:
            started = self._started
        # a sink that kills the Client runs on this thread: it ends when the sink returns
        if started and self._thread is not threading.current_thread():
            self._thread.join(timeout)


def _unimplemented(exc: grpc.RpcError) -> bool:
    """How a GRPCStdio stream ended (logged): True when the plugin does not serve it at all."""
    code = exc.code() if hasattr(exc, "code") else None
    if code == grpc.StatusCode.UNIMPLEMENTED:
        _log.debug("plugin does not serve GRPCStdio (go-plugin < 1.4); stdio not streamed")
        return True
    if code != grpc.StatusCode.CANCELLED:
        _log.debug("GRPCStdio stream ended: %s", exc)
    return False


class AioStdio:
    """GRPCStdio read and discarded on the shared loop, over the Client's AioChannelShare: no thread.

    For a Client with no sink (nothing of the user's runs on the loop): start(),
    close() and ``supported`` as :class:`StdioReader` has them, and cancel() for
    the plugin's exit. It keeps its hold on the shared channel until close() or
    cancel(), even after a plugin without GRPCStdio (go-plugin < 1.4) said so: the
    broker stream, opened at the first dispense, then rides the same connection
    instead of dialing it again.
    """

    def __init__(self, share: AioChannelShare) -> None:
        self._share = share
        self.supported: bool | None = None  # None until the plugin answered
        self._lock = threading.Lock()
        self._closed = False
        self._lease: aioloop.Lease | None = None
        self._release_when_freed = False  # close() on the loop: the loop gives the lease back
        self._call: grpc.aio.Call | None = None  # loop thread only, as the three below
        self._holding = False  # a hold on the shared channel to give back
        self._reading = False
        self._giving = False
        self._freed = threading.Event()  # nothing held on the loop any more

    def start(self) -> None:
        """Start reading on the shared loop (once); a no-op after close() or cancel()."""
        with self._lock:
            if self._closed or self._lease is not None:
                return
            self._lease = lease = aioloop.shared().acquire()
        if not lease.call_soon(self._begin):
            self._freed.set()
            lease.release()

    def cancel(self) -> None:
        """End the stream and free the channel (the plugin exited); no wait, from any thread."""
        with self._lock:
            self._closed = True
            lease = self._lease
        if lease is not None and not lease.call_soon(self._end):
            self._freed.set()

    def close(self, timeout: float = 5.0) -> None:
        on_loop = aioloop.shared().on_loop()
        with self._lock:
            self._closed = True
            self._release_when_freed = on_loop
            lease = self._lease
        if lease is None:
            return
        if not lease.call_soon(self._end):
            self._freed.set()
            lease.release()
        elif not on_loop:  # on the loop itself the lease goes back once the channel is given back
            self._freed.wait(timeout)
            lease.release()

    # ------------------------------------------------------------- loop thread

    def _begin(self) -> None:
        self._reading = True
        asyncio.get_running_loop().create_task(self._read())

    def _end(self) -> None:
        """Stop reading and give the channel back: whoever holds it last frees it (idempotent)."""
        if self._call is not None:
            self._call.cancel()  # _read() ends and gives the channel back
        elif self._reading or self._giving:
            pass  # they end in _give_back()
        elif self._holding:
            self._giving = True
            asyncio.get_running_loop().create_task(self._give_back())
        else:
            self._freed_now()

    async def _read(self) -> None:
        try:
            if not self._closed:
                channel = self._share.acquire()
                self._holding = True
                await self._stream(channel)
        except Exception:  # never a silent dead task on the shared loop
            _log.exception("GRPCStdio reader failed")
        finally:
            self._reading = False
            if self._closed:  # else the hold stays for the broker stream, until close() or cancel()
                await self._give_back()

    async def _stream(self, channel: grpc.aio.Channel) -> None:
        try:
            stub = grpc_stdio_pb2_grpc.GRPCStdioStub(channel)  # type: ignore[no-untyped-call]
            # No deadline: a go-plugin plugin keeps the stream for its life.
            self._call = call = stub.StreamStdio(empty_pb2.Empty(), metadata=(STDIO_DISCARD_METADATA,),
                                                 timeout=None)
            async for _ in call:
                self.supported = True
        except asyncio.CancelledError:
            pass
        except grpc.RpcError as exc:
            if _unimplemented(exc):
                self.supported = False
        finally:
            self._call = None

    async def _give_back(self) -> None:
        self._giving = True
        try:
            if self._holding:
                self._holding = False
                await self._share.release()
        except Exception as exc:
            _log.debug("closing the GRPCStdio reader's grpc.aio channel: %r", exc)
        finally:
            self._giving = False
            self._freed_now()

    def _freed_now(self) -> None:
        self._freed.set()
        if self._release_when_freed and self._lease is not None:
            self._lease.release()
