"""A cancelled future tells the layers working for it to stop before any done callback runs, also one
that another thread adds while cancel() is still cancelling the try in flight."""

from __future__ import annotations

import logging
import threading
import time

from plugbay.core.host.callfuture import CallFuture


class _SlowCancelTry:
    """A try whose cancel() takes a moment, so that another thread can act in between."""

    def __init__(self, order: list[str], cancelling: threading.Event) -> None:
        self.order = order
        self.cancelling = cancelling

    def cancel(self) -> bool:
        self.order.append("try cancelled")
        self.cancelling.set()
        time.sleep(0.3)
        return True


class _Recorded(CallFuture):
    def __init__(self, order: list[str]) -> None:
        super().__init__(logging.getLogger("test"), "plugin 'x'")
        self.order = order

    def _stop_layers(self) -> None:
        self.order.append("layers told")


def test_a_callback_added_during_cancel_runs_after_the_layers_are_told() -> None:
    order: list[str] = []
    cancelling = threading.Event()
    future = _Recorded(order)
    assert future._set_inner(_SlowCancelTry(order, cancelling))
    canceller = threading.Thread(target=future.cancel)
    canceller.start()
    assert cancelling.wait(10)
    future.add_done_callback(lambda _f: order.append("callback ran"))
    canceller.join(10)
    assert future.cancelled()
    assert order.index("layers told") < order.index("callback ran"), order


def test_callbacks_added_before_cancel_run_once_after_the_layers_are_told() -> None:
    order: list[str] = []
    future = _Recorded(order)
    future.add_done_callback(lambda _f: order.append("callback ran"))
    assert future.cancel() and not future.cancel()
    assert order == ["layers told", "callback ran"]
