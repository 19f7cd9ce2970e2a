"""The floor for the gateway: the least proxy a bare grpcio program can put in front of a go-plugin plugin.

``BareProxy`` starts the plugin as bench/floor.py's BareKV does (with AutoMTLS: a host certificate
and bench/floor_relay.py's relay to the plugin, as the gateway's child speaks TLS through plugbay's
relay) and serves one grpcio server on 127.0.0.1 (plaintext, or mutual TLS from given server
credentials) with a generic handler that forwards every method to the plugin as stream-stream with
raw bytes, as the gateway must (it has no descriptors, so cannot know which methods are unary).
It forwards the requests, the responses, what is left of the deadline, and an error's status code
and details; nothing else: no metadata either way, no gate, no health checks of the plugin, no
restarts, no refusals. The plugin's stderr is discarded, as BareKV does (the Go KV plugin logs a
line per call, which the gateway reads and relays to its log).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from floor import BareKV

_NO_DEADLINE = 10 * 365 * 24 * 3600.0  # grpcio reports "no deadline" as a far-future one


def _raw(data: bytes) -> bytes:
    return data


class _Forward(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        channel = self._channel

        def forward(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            remaining = context.time_remaining()
            timeout = None if remaining is None or remaining > _NO_DEADLINE else remaining
            call = channel.stream_stream(method, request_serializer=_raw, response_deserializer=_raw)(
                requests, timeout=timeout)
            try:
                yield from call
            except grpc.RpcError:
                context.abort(call.code(), call.details() or "")

        return grpc.stream_stream_rpc_method_handler(forward)


class BareProxy:
    """One plugin process behind one grpcio server; ``address`` is HOST:PORT."""

    def __init__(self, cmd: list[str], cwd: str, automtls: bool = True,
                 credentials: grpc.ServerCredentials | None = None) -> None:
        self.plugin = BareKV(cmd, cwd, automtls=automtls)
        try:
            self._pool = ThreadPoolExecutor(max_workers=8)
            self.server = grpc.server(self._pool, handlers=[_Forward(self.plugin.channel)])
            bind = "127.0.0.1:0"
            port = (self.server.add_secure_port(bind, credentials) if credentials is not None
                    else self.server.add_insecure_port(bind))
            self.server.start()
        except BaseException:
            self.plugin.close()
            raise
        self.address = f"127.0.0.1:{port}"

    def close(self) -> None:
        self.server.stop(0).wait(5)
        self._pool.shutdown(wait=True)
        self.plugin.close()

    def __enter__(self) -> BareProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
