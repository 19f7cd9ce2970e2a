"""The command line's wait for a connection before server reflection (cli.descriptors.from_reflection): when it
ends at --timeout, the wait is cancelled, so nothing stays subscribed to the channel's state (the command's
close of the channel waits for gRPC's polling of it to stop; a subscriber left behind made it wait its whole
second). The peer is a real listening socket that never accepts: the channel never becomes ready."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import pytest

from plugbay.cli.descriptors import from_reflection
from plugbay.errors import TargetUnreachableError


@pytest.fixture()
def silent_port() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)  # the kernel takes the connection; nothing ever answers HTTP/2
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.timeout(60)
def test_a_wait_that_ran_out_leaves_no_subscriber_on_the_channel(silent_port: int) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{silent_port}")
    try:
        with pytest.raises(TargetUnreachableError, match="did not accept a connection within 0.3s"):
            from_reflection(channel, 0.3)
        state = channel._connectivity_state  # grpc's own, as cli.targets._close_polled reads it
        with state.lock:
            assert state.callbacks_and_connectivities == []
    finally:
        channel.close()
