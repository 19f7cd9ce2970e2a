"""The host's broker stream on grpc.aio: no thread per plugin, every plugin's stream on one shared loop.

On grpcio's sync API an open StartStream costs the host three threads for
as long as the plugin lives (the channel's spin thread, the request-iterator
consumer and a reader). Here the call runs on the shared asyncio loop
(plugbay.core.transport.aioloop) over a grpc.aio channel dialed like the
Client's own (its :class:`~plugbay.core.transport.secure.AioChannelShare`: same
target, credentials and options), and GRPCBroker's blocking side talks to it
through thread-safe hand-offs: what the broker sends is put on the call's
request queue with ``call_soon_threadsafe``; what arrives is handed to
``broker.receive`` on the loop (it only files the message and notifies).

The stream holds a lease on the loop from opening until the broker's close()
joins it, so the last broker closed stops the loop and joins its thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc

from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay._proto.plugin import grpc_broker_pb2_grpc as pb_grpc
from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.wire import PLUGIN_ENDED_STREAM
from plugbay.core.transport import aioloop
from plugbay.core.transport.secure import AioChannelShare
from plugbay.errors import BrokerClosedError

log = logging.getLogger("plugbay.broker")

_OPEN_TIMEOUT = 10.0  # making the channel and the call object: no network wait in it
_END_TIMEOUT = 10.0


class _Outbox:
    """The broker's send queue: hands each message to the call's request queue on the loop."""

    def __init__(self, lease: aioloop.Lease, requests: asyncio.Queue[pb.ConnInfo | None]) -> None:
        self._lease = lease
        self._requests = requests

    def put(self, item: pb.ConnInfo | None) -> None:
        self._lease.call_soon(self._requests.put_nowait, item)


async def _request_stream(requests: asyncio.Queue[pb.ConnInfo | None]) -> AsyncIterator[pb.ConnInfo]:
    while True:
        item = await requests.get()
        if item is None:
            return
        yield item


class AioStream:
    """The host's StartStream on the shared loop: the broker's ``call`` (cancel) and its reader (start, join)."""

    def __init__(self, broker: GRPCBroker, lease: aioloop.Lease, share: AioChannelShare, call: Any,
                 requests: asyncio.Queue[pb.ConnInfo | None]) -> None:
        self._broker = broker
        self._lease = lease
        self._share: AioChannelShare | None = share  # grpc.aio objects: touched on the loop thread only
        self._call = call
        self._requests = requests
        self.outbox = _Outbox(lease, requests)
        self._ended = threading.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------- any thread

    def start(self) -> None:
        """Start reading on the loop (GRPCBroker.start_reader calls this under its lock)."""
        self._lease.call_soon(self._begin)

    def cancel(self) -> None:
        """Cancel the call (thread-safe); the reader then ends and frees the channel."""
        self._lease.call_soon(self._cancel)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the reader to end and give the loop back (the last user's release joins its thread)."""
        if not self._ended.wait(_END_TIMEOUT if timeout is None else timeout):
            log.warning("the broker stream did not end in time; giving the shared loop back anyway")
        self._lease.release()

    # ------------------------------------------------------------- loop thread

    def _begin(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read())

    def _cancel(self) -> None:
        self._requests.put_nowait(None)
        if self._call is not None:
            self._call.cancel()

    async def _read(self) -> None:
        reason = PLUGIN_ENDED_STREAM
        try:
            async for msg in self._call:
                self._broker.receive(msg)
        except asyncio.CancelledError:
            reason = "the host closed the stream"
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            reason = f"stream failed with {code}: {exc.details() if hasattr(exc, 'details') else exc}"
        except Exception as exc:  # a bad message must not end the stream silently
            reason = f"broker failure: {exc!r}"
            log.exception("broker stream receive failed")
        finally:
            self._broker.detach_stream(self.outbox, reason)
            await self._finish()

    async def _finish(self) -> None:
        """Cancel the call, give the channel back and drop them (a freed grpc.aio channel lets grpcio's poller end)."""
        share, call, self._share, self._call = self._share, self._call, None, None
        self._requests.put_nowait(None)
        try:
            if call is not None:
                call.cancel()
            if share is not None:
                await share.release()
        except Exception as exc:
            log.debug("closing the broker's grpc.aio channel: %r", exc)
        finally:
            self._ended.set()


async def _open(share: AioChannelShare) -> tuple[Any, asyncio.Queue[pb.ConnInfo | None]]:
    channel = share.acquire()
    requests: asyncio.Queue[pb.ConnInfo | None] = asyncio.Queue()
    try:
        stub = pb_grpc.GRPCBrokerStub(channel)  # type: ignore[no-untyped-call]
        # No deadline: the stream lives as long as the plugin (go-plugin does the same).
        call = stub.StartStream(_request_stream(requests), timeout=None)
    except BaseException:
        await share.release()
        raise
    return call, requests


class Opening:
    """A StartStream being made on the loop; the loop attaches it to the broker once made.

    GRPCBroker.start_reader() starts it (so close() joins it like a reader): the
    caller is not held while the loop makes the grpc.aio channel and the call, and
    what the broker sends meanwhile waits in its outbox. wait() blocks until it is
    attached (or raises why it could not be), for a use that needs the stream.
    """

    def __init__(self, broker: GRPCBroker, share: AioChannelShare, delay: float = 0.0) -> None:
        self._broker = broker
        self._share = share
        self._delay = delay
        self._lease: aioloop.Lease | None = None
        self._begun = False  # touched on the loop thread only
        self._done = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        """Schedule the opening on the shared loop (under the broker's lock: close() then joins it).

        With a ``delay`` it begins that much later unless hurry() comes first; math.inf: only
        at hurry() (or wait()), and nothing is posted to the loop now."""
        lease = self._lease = aioloop.shared().acquire()
        if self._delay == math.inf:
            return
        if self._delay > 0:
            lease.call_soon(self._begin_later)
        else:
            lease.call_soon(self._begin)

    def hurry(self) -> None:
        """Begin now if a delayed opening has not begun yet (thread-safe, idempotent)."""
        if self._lease is not None and not self._done.is_set():
            self._lease.call_soon(self._begin)

    def _begin_later(self) -> None:
        asyncio.get_running_loop().call_later(self._delay, self._begin)

    def _begin(self) -> None:
        if not self._begun:
            self._begun = True
            asyncio.get_running_loop().create_task(self._open())

    def wait(self) -> None:
        """Block until the stream is attached; BrokerClosedError if it could not be made."""
        self.hurry()
        if not self._done.wait(_OPEN_TIMEOUT):
            self._error = self._error or TimeoutError(f"not made within {_OPEN_TIMEOUT:g}s")
        if self._error is not None:
            self._give_back()
            exc = self._error
            raise BrokerClosedError(f"could not open the broker stream to the plugin ({exc!r}); the plugin"
                                    " may have exited. Start a new Client") from exc

    def join(self, timeout: float | None = None) -> None:
        """close(): wait for the opening to end; a stream it made is joined as a reader of its own."""
        self.hurry()  # a delayed one begins now, finds the broker closed and ends
        self._done.wait(_OPEN_TIMEOUT if timeout is None else timeout)
        if self._error is not None or not self._done.is_set():
            self._give_back()

    def _give_back(self) -> None:
        if self._lease is not None:
            self._lease.release()  # idempotent; from this thread, so the last user joins the loop

    async def _open(self) -> None:
        broker = self._broker
        assert self._lease is not None
        try:
            call, requests = await _open(self._share)
        except Exception as exc:
            self._error = exc
            broker.mark_lost(f"the broker stream could not be opened: {exc!r}")
            self._done.set()
            return
        stream = AioStream(broker, self._lease, self._share, call, requests)
        attached = broker.set_call(stream)
        if attached:
            broker.attach_stream(stream.outbox)
            attached = broker.start_reader(stream)
        if not attached:  # closed meanwhile: end it here; join() gives the loop back
            await stream._finish()
            self._error = BrokerClosedError("the broker closed while its stream was being opened")
        self._done.set()


def open_aio_host_stream(broker: GRPCBroker, share: AioChannelShare, delay: float = 0.0) -> Opening | None:
    """Start opening the host's StartStream for ``broker`` on the shared loop; returns at once.

    None when the broker is closed already; otherwise the Opening (wait() for the stream,
    hurry() to begin a delayed one now).
    """
    opening = Opening(broker, share, delay)
    return opening if broker.start_reader(opening) else None
