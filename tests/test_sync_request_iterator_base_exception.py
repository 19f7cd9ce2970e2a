"""A sync stream whose request iterator raises a BaseException that is no Exception (an asyncio.CancelledError
from a grpc.aio call the source reads) ends at once, as on the asyncio side: grpcio's request reader catches
Exception only, so such an error ended its thread and the call waited out its deadline. Real streaming plugin
(examples/streaming): Echo, also called as a stream-unary method (the plugin waits for more requests, so the
call ends only by the iterator's error or its deadline)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from plugbay import Client, ClientConfig
from tests.test_sync_request_iterator import (DETAILS, PLUGIN_NAME, REPO, HANDSHAKE, StreamerPlugin, calls, outcome,
                                              streaming_pb2)

CALL_TIMEOUT = 5.0  # what such a call waited before: it then failed DEADLINE_EXCEEDED (CallTimeoutError)


@pytest.mark.parametrize("raised", [asyncio.CancelledError, SystemExit, KeyboardInterrupt])
def test_a_request_iterator_raising_a_cancelled_error_ends_the_call_with_its_own_unknown(
        raised: type[BaseException]) -> None:
    # SystemExit and KeyboardInterrupt too: raised on grpcio's reader thread they end only that thread
    cancelled = raised()

    def source() -> Iterator[Any]:
        yield streaming_pb2.Chunk(seq=0, data=b"first")
        raise cancelled

    said: dict[str, str] = {}
    logged = logging.getLogger("grpc._channel")  # grpcio logs the iterator's error
    was, logged.disabled = logged.disabled, True
    try:
        with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: StreamerPlugin()},
                                 call_timeout=CALL_TIMEOUT,
                                 cmd=[sys.executable, str(REPO / "examples" / "streaming" / "plugin.py")])) as client:
            streamer = client.dispense(PLUGIN_NAME)
            for how, call in calls(client.channel).items():
                error = outcome(call, source())
                chain, cause = [], None if error is None else error.__cause__
                while cause is not None:
                    chain.append(cause)
                    cause = cause.__cause__
                said[how] = (f"{type(error).__name__} {error.code().name} {error.details() in DETAILS}"
                             if isinstance(error, grpc.RpcError) else repr(error)) + f"; cancelled {cancelled in chain}"
                del error, chain
            assert type(streamer.stats()).__name__ == "Stats"  # the client still serves calls
    finally:
        logged.disabled = was
    # the call's own UNKNOWN (typed as any other), the iterator's error its cause: not raised as it is, which
    # would end the caller's task as a cancel nobody asked for
    assert all(said[how].endswith(" UNKNOWN True; cancelled True") for how in said) and len(said) == 5, said
