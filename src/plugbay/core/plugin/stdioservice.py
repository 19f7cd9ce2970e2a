"""The GRPCStdio service over a :class:`~plugbay.core.plugin.stdio.StdioCapture`: StreamStdio's servicer
and the handler that registers it.

Apart from the capture because the two change for different reasons: stdio.py owns the file
descriptors, the pump thread and the bounded buffer; this module speaks the service, the call's
metadata (a host without a sink asks to discard) and grpcio's handler lookup (a reader's call is
announced to the capture as it arrives, see :class:`_StdioHandler`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from plugbay.core.plugin.stdio import StdioCapture
from plugbay.core.protocol.handshake import STDIO_DISCARD_METADATA

if TYPE_CHECKING:
    from plugbay._proto.plugin.grpc_stdio_pb2 import StdioData

# The generated GRPCStdio code is imported at the stream's first message: a go-plugin host before
# 1.3 never calls StreamStdio, a plugbay host calls it after its first call, and the import (with
# google.protobuf.empty_pb2) came before every plugin's handshake line.
SERVICE = "plugin.GRPCStdio"

_STREAM_POLL = 0.5
_EXPECT = 1.0  # how long a reader's call that arrived may take to begin, at most, for hand_over
_METHOD = f"/{SERVICE}/StreamStdio"


class StdioServicer:
    """StreamStdio: the capture's chunks to the latest caller; a caller that asks to discard ends at once."""

    def __init__(self, capture: StdioCapture) -> None:
        self.capture = capture

    def StreamStdio(self, request: object,
                    context: grpc.ServicerContext) -> Iterator[StdioData]:
        if tuple(STDIO_DISCARD_METADATA) in {tuple(m) for m in context.invocation_metadata()}:
            self.capture.discard()
            return  # the host has no sink: nothing to stream, and no reader to keep
        from plugbay._proto.plugin.grpc_stdio_pb2 import StdioData

        generation = self.capture.attach()
        context.add_callback(self.capture.wake)  # a cancelled caller stops waiting at once
        try:
            while context.is_active():
                item = self.capture.next_chunk(generation, _STREAM_POLL, context.is_active)
                if item is False:
                    return
                if item is None or item is True:
                    continue
                channel, data = item
                yield StdioData(channel=channel, data=data)  # type: ignore[arg-type]  # the enum's int
        finally:
            self.capture.detach(generation)


class _StdioHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """StreamStdio's handler, looked up on grpcio's server thread as the call arrives: a reader's
    call is announced to the capture there, before any call the host made after it can run."""

    def __init__(self, servicer: StdioServicer) -> None:
        self._capture = servicer.capture
        self._handler = grpc.unary_stream_rpc_method_handler(
            servicer.StreamStdio, request_deserializer=None, response_serializer=_serialize)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method != _METHOD:
            return None
        metadata = getattr(handler_call_details, "invocation_metadata", None) or ()
        if tuple(STDIO_DISCARD_METADATA) not in {tuple(m) for m in metadata}:
            self._capture.expect(_EXPECT)
        return self._handler


def add_to_server(servicer: StdioServicer, server: grpc.Server) -> None:
    """What the generated ``add_GRPCStdioServicer_to_server`` does; the request (an Empty) is not decoded.

    A generic handler only, not a registered one: grpcio looks a registered method's handler up
    without asking anyone, and the capture must hear of a reader's call as it arrives."""
    server.add_generic_rpc_handlers((_StdioHandler(servicer),))


def _serialize(message: StdioData) -> bytes:
    return bytes(message.SerializeToString())
