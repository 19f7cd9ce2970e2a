"""A caller that cancels while the gateway is still setting up its forwarded call cancels the child's call too.

The gateway registers the forwarded call's cancel with grpcio before it makes the call. Registered after
(as it was), a caller that cancelled in between was never passed on: grpcio registers no callback for a
call that has ended, and the child's call ran until its own end (60 s here), holding a --max-calls slot all
the while. The window is a few microseconds; slowing grpcio's add_callback for the forwarder's cancel
widens it to 0.4 s, so the callers below always cancel inside it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc._server
import pytest

from plugbay.network.gateway import Gateway, GatewayConfig

CHILD = Path(__file__).resolve().parent / "plugins" / "gateway_child.py"
HELD = 3


@pytest.fixture
def slow_cancel_registration(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    original = grpc._server._Context.add_callback

    def add_callback(self: Any, callback: Callable[[], None]) -> bool:
        if type(callback).__name__ == "_CancelChild" or getattr(callback, "__name__", "") == "cancel":
            time.sleep(0.4)  # the forwarder's cancel (before the fix: a bound call.cancel)
        return bool(original(self, callback))

    monkeypatch.setattr(grpc._server._Context, "add_callback", add_callback)
    yield


@pytest.mark.timeout(120)
def test_a_caller_cancelling_while_the_call_is_set_up_cancels_the_childs_call(
        slow_cancel_registration: None) -> None:
    config = GatewayConfig(cmd=[sys.executable, str(CHILD)], cookie=("GWCHILD", "x"), listen="127.0.0.1:0",
                           insecure=True, child_mtls=False, max_calls=HELD, max_peer_calls=HELD)
    with Gateway(config) as gateway, grpc.insecure_channel(gateway.address) as channel:
        assert channel.unary_unary("/gwchild.S/Fast")(b"", timeout=10) == b"fast"
        holds = [channel.unary_unary("/gwchild.S/Hold").future(b"", timeout=60) for _ in range(HELD)]
        time.sleep(0.2)  # inside the slowed registration
        for call in holds:
            call.cancel()
        # the forwarded Holds end with their callers, so their slots come back: a new call is answered
        deadline = time.monotonic() + 10
        answer, last = b"", ""
        while answer != b"fast" and time.monotonic() < deadline:
            try:
                answer = channel.unary_unary("/gwchild.S/Fast")(b"", timeout=5)
            except grpc.RpcError as exc:
                last = f"{exc.code()}: {exc.details()}"
                time.sleep(0.2)
        assert answer == b"fast", f"the cancelled callers' forwarded calls still hold the gateway's slots ({last})"
