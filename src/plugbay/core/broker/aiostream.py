"""The host's broker stream on grpc.aio: no thread per plugin, every plugin's stream on one shared loop.

On grpcio's sync API an open StartStream costs the host three threads for
as long as the plugin lives (the channel's spin thread, the request-iterator
consumer and a reader). Here the call runs on the shared asyncio loop
(plugbay.core.transport.aioloop) over a grpc.aio channel dialed like the
Client's own (its :class:`~plugbay.core.transport.secure.Redial`: same
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
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc

from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay._proto.plugin import grpc_broker_pb2_grpc as pb_grpc
from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.transport import aioloop
from plugbay.core.transport.secure import Redial
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

    def __init__(self, broker: GRPCBroker, lease: aioloop.Lease, channel: Any, call: Any,
                 requests: asyncio.Queue[pb.ConnInfo | None]) -> None:
        self._broker = broker
        self._lease = lease
        self._channel = channel  # grpc.aio objects: touched on the loop thread only
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

    def abort(self) -> None:
        """For a stream whose reader never started (the broker closed meanwhile): end it and release."""
        try:
            self._lease.run(self._finish()).result(_END_TIMEOUT)
        except Exception as exc:  # the loop is shared: report, never raise into close()
            log.debug("ending an unused broker stream: %r", exc)
        self._lease.release()

    # ------------------------------------------------------------- loop thread

    def _begin(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read())

    def _cancel(self) -> None:
        self._requests.put_nowait(None)
        if self._call is not None:
            self._call.cancel()

    async def _read(self) -> None:
        reason = "the plugin ended the stream"
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
        """Cancel the call, close the channel and drop them (a freed grpc.aio channel lets grpcio's poller end)."""
        channel, call, self._channel, self._call = self._channel, self._call, None, None
        self._requests.put_nowait(None)
        try:
            if call is not None:
                call.cancel()
            if channel is not None:
                await channel.close()
        except Exception as exc:
            log.debug("closing the broker's grpc.aio channel: %r", exc)
        finally:
            self._ended.set()


async def _open(redial: Redial) -> tuple[Any, Any, asyncio.Queue[pb.ConnInfo | None]]:
    channel = redial.aio_channel()
    requests: asyncio.Queue[pb.ConnInfo | None] = asyncio.Queue()
    try:
        stub = pb_grpc.GRPCBrokerStub(channel)  # type: ignore[no-untyped-call]
        # No deadline: the stream lives as long as the plugin (go-plugin does the same).
        call = stub.StartStream(_request_stream(requests), timeout=None)
    except BaseException:
        await channel.close()
        raise
    return channel, call, requests


def open_aio_host_stream(broker: GRPCBroker, redial: Redial) -> None:
    """Open the host's StartStream for ``broker`` on the shared loop (returns once the call is made)."""
    lease = aioloop.shared().acquire()
    try:
        channel, call, requests = lease.run(_open(redial)).result(_OPEN_TIMEOUT)
    except Exception as exc:
        lease.release()
        broker.mark_lost(f"the broker stream could not be opened: {exc!r}")
        raise BrokerClosedError(f"could not open the broker stream to the plugin ({exc!r}); the plugin"
                                " may have exited. Start a new Client") from exc
    stream = AioStream(broker, lease, channel, call, requests)
    if not broker.set_call(stream):  # closed meanwhile
        stream.abort()
        return
    broker.attach_stream(stream.outbox)
    if not broker.start_reader(stream):
        stream.abort()
