"""The broker's StartStream: the plugin serves it, the host calls it; ConnInfo flows both ways on it.

plugin_broker() and host_broker() build a GRPCBroker and wire it to that one
long-lived stream (go-plugin opens it once per plugin and keeps it to the end).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc

from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay._proto.plugin import grpc_broker_pb2_grpc as pb_grpc
from plugbay.core.broker.aiofork import grpc_aio_usable
from plugbay.core.broker.broker import DEFAULT_DIAL_TIMEOUT, GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.wire import PLUGIN_ENDED_STREAM
from plugbay.errors import BrokerClosedError

if TYPE_CHECKING:  # a plugin process does not load TLS code for this
    from plugbay.core.transport.secure import AioChannelShare, Redial

log = logging.getLogger("plugbay.broker")


# ---------------------------------------------------------------- factories


class _BrokerServicer(pb_grpc.GRPCBrokerServicer):
    def __init__(self, broker: GRPCBroker) -> None:
        self._broker = broker

    def StartStream(self, request_iterator: Iterator[pb.ConnInfo],
                    context: grpc.ServicerContext) -> Iterator[pb.ConnInfo]:
        broker = self._broker
        send_q: queue.Queue[pb.ConnInfo | None] = queue.Queue()
        context.add_callback(lambda: send_q.put(None))

        def receive() -> None:
            reason = "the host ended the stream"
            try:
                for msg in request_iterator:
                    broker.receive(msg)
            except grpc.RpcError as exc:
                reason = f"stream error: {exc}"
            except Exception as exc:  # a bad message must not kill the stream silently
                reason = f"broker failure: {exc!r}"
                log.exception("broker stream receive failed")
            broker.detach_stream(send_q, reason)
            send_q.put(None)

        reader = threading.Thread(target=receive, name="plugbay-broker-recv", daemon=True)
        broker.attach_stream(send_q)
        if not broker.start_reader(reader):
            return
        while True:
            item = send_q.get()
            if item is None:
                break
            yield item
        broker.detach_stream(send_q, "the plugin's broker stream ended")


def plugin_broker(server: grpc.Server, transport: BrokerTransport,
                  dial_timeout: float = DEFAULT_DIAL_TIMEOUT) -> GRPCBroker:
    """Plugin side: register the GRPCBroker service on ``server`` (not yet started).

    The stream starts when the host calls StartStream; announcements made
    before that are queued. The server needs a worker thread for the stream.
    """
    broker = GRPCBroker(transport, "plugin", dial_timeout)
    pb_grpc.add_GRPCBrokerServicer_to_server(_BrokerServicer(broker), server)  # type: ignore[no-untyped-call]
    return broker


def host_broker(channel: grpc.Channel, transport: BrokerTransport,
                dial_timeout: float = DEFAULT_DIAL_TIMEOUT, lazy: bool = False,
                redial: Redial | AioChannelShare | None = None) -> GRPCBroker:
    """Host side: open the StartStream on ``channel`` and broker over it.

    ``lazy``: open it on the broker's first use (next_id, accept_and_serve,
    dial) instead of now, so a plugin whose broker is never used costs the
    host no stream and no threads. Nothing is lost meanwhile: the plugin
    queues its announcements and knocks until the stream opens (plugbay's
    outbox; go-plugin's Send waits for the stream).

    ``redial``: how ``channel`` was dialed. Given, the stream runs on grpc.aio
    on the process's shared loop (plugbay.core.broker.aiostream: no thread per
    plugin) over a second connection dialed the same way (an AioChannelShare:
    the one the Client's other aio streams ride too); without it, on
    ``channel`` with grpcio's sync API (three threads while it is open). So too in
    a forked child of a process that ran grpc.aio, where grpc.aio calls never end
    (plugbay.core.broker.aiofork).
    """
    broker = GRPCBroker(transport, "host", dial_timeout)
    if redial is not None and grpc_aio_usable():
        from plugbay.core.broker.aiostream import open_aio_host_stream
        from plugbay.core.transport.secure import AioChannelShare

        share = redial if isinstance(redial, AioChannelShare) else AioChannelShare(redial)
        broker.open_stream_with(lambda delay: open_aio_host_stream(broker, share, delay))
        if not lazy:
            broker.open_stream()
        return broker
    # Built now, on the open channel: a stub built after the exit watcher closed the
    # channel crashes grpcio (a call on a closed channel's stub only raises ValueError).
    stub = pb_grpc.GRPCBrokerStub(channel)  # type: ignore[no-untyped-call]
    if lazy:
        broker.open_stream_with(lambda _delay: _open_host_stream(broker, stub))
    else:
        _open_host_stream(broker, stub)
    return broker


def _open_host_stream(broker: GRPCBroker, stub: Any) -> None:
    send_q: queue.Queue[pb.ConnInfo | None] = queue.Queue()

    def requests() -> Iterator[pb.ConnInfo]:
        while True:
            item = send_q.get()
            if item is None:
                return
            yield item

    # No deadline: the stream lives as long as the plugin (go-plugin does the same).
    try:
        call = stub.StartStream(requests(), timeout=None)
    except ValueError as exc:  # grpcio: "Cannot invoke RPC on closed channel!"
        broker.mark_lost(f"the connection to the plugin is closed ({exc})")
        raise BrokerClosedError("the broker's connection to the plugin is closed (the plugin exited or"
                                " the Client was closed); start a new Client") from None
    if not broker.set_call(call):  # closed meanwhile
        call.cancel()
        send_q.put(None)
        return
    broker.attach_stream(send_q)

    def receive() -> None:
        reason = PLUGIN_ENDED_STREAM
        try:
            for msg in call:
                broker.receive(msg)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            reason = f"stream failed with {code}: {exc.details() if hasattr(exc, 'details') else exc}"
        except Exception as exc:
            reason = f"broker failure: {exc!r}"
            log.exception("broker stream receive failed")
        broker.detach_stream(send_q, reason)
        send_q.put(None)

    if not broker.start_reader(threading.Thread(target=receive, name="plugbay-broker-recv", daemon=True)):
        send_q.put(None)  # closed while opening: end the request iterator grpcio is reading
