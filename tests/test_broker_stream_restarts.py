"""A host may call the plugin's broker StartStream again and again (each call replaces the last
stream): the plugin's broker must not keep something for every call it ever took."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.stream import _BrokerServicer


class _Context:
    def add_callback(self, callback: Callable[[], None]) -> None:
        pass


def test_repeated_start_stream_calls_keep_no_ended_reader() -> None:
    broker = GRPCBroker(BrokerTransport(), "plugin")
    servicer = _BrokerServicer(broker)
    try:
        for _ in range(50):
            empty: list[Any] = []
            for _item in servicer.StartStream(iter(empty), _Context()):  # type: ignore[arg-type]
                pass  # the host sent nothing and ended: the stream ends, its reader too
        with broker._cond:
            readers = list(broker._threads)
        for reader in readers:  # a bounded wait for the last ones to finish
            reader.join(10)
        with broker._cond:
            kept = len(broker._threads)
        assert kept < 10, f"{kept} readers kept after 50 streams ended"
        assert not any(t.name == "plugbay-broker-recv" for t in threading.enumerate())
    finally:
        broker.close()
