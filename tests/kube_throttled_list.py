"""A pod list the stand-in throttles (429, Retry-After 30): bounded to 1 s it ends with its bound; bounded
far off, only a Cancel can end it in time, and then at once, as a plain timeout (not "its limit ran out").
Shared by the Retry-After tests of urllib3's Retry and of the kubernetes client's client-go mode."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from plugbay.errors import EngineUnavailableError
from plugbay.runners.kubernetes import sweep
from plugbay.runners.kubernetes.api import within_deadline
from plugbay.runners.kubernetes.deadline import Cancel, answered_in, cancellable
from tests.kube_standin.server import StandIn

LIST = ("list", "pods")
MARGIN = 8.0  # seconds: far under the 30 s the server asks for, far over the 1 s bound


def ends_with_its_bound(server: StandIn, api_client: Any) -> None:
    server.throttle(*LIST, retry_after=30)
    began = time.monotonic()
    with pytest.raises(EngineUnavailableError,
                       match=rf"at {server.url} answered list pods 429 \(throttled: API Priority and Fairness,"
                             r" or an overloaded server\), asking to be asked again in 30s; the call's limit of 1s"
                             r" ran out while it waited"):
        sweep("default", api_client=api_client, api_timeout=1)
    took = time.monotonic() - began
    assert took < MARGIN, f"the call bounded to 1s took {took:.1f}s: it waited out the Retry-After"
    assert server.calls[LIST] == 1  # not asked again after its deadline


def cancel_while_it_waits(server: StandIn, api_client: Any, waiting: Callable[[threading.Thread], bool],
                          name: str) -> None:
    """``waiting(thread)``: True once the list's thread waits for the 429's Retry-After."""
    server.throttle(*LIST, retry_after=30)
    cancel = Cancel()
    ended: list[BaseException] = []

    def listing() -> None:
        with cancellable(cancel):
            try:  # bounded far off: only the Cancel can end it in time
                within_deadline(api_client, client.CoreV1Api(api_client).list_namespaced_pod, "default",
                                _request_timeout=(60, 60))
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                ended.append(exc)

    lister = threading.Thread(target=listing, name=name)
    lister.start()
    try:
        assert waiting(lister), "the call never waited for the 429's Retry-After"
        began = time.monotonic()
        cancel.cancel()
        lister.join(MARGIN)
        took = time.monotonic() - began
        assert not lister.is_alive(), "the cancelled call still sleeps out the Retry-After"
    finally:
        server.allow_all()  # a call still sleeping (the old code) is answered when it wakes
        lister.join(60)
    assert took < MARGIN
    assert len(ended) == 1 and isinstance(ended[0], TimeoutError), ended
    assert answered_in(ended[0]) is None, ended  # ended by the Cancel, not by its limit: no "limit ran out"
    assert server.calls[LIST] == 1
