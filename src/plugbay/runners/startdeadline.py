"""The deadline of the Client start a runner call is part of (plugbay.runners.base re-exports these).

What a runner asks its service during a Client's start (a reattach's reads, check_secure_config()'s lookups,
plugin_to_host()'s port-forward) is bounded by that start's deadline, never by a time the (untrusted) reattach
data names. It travels in a context variable, not as an argument: the ReattachFunc and Runner method
signatures are the callers' (functools.partial(KubernetesRunner.attach, ...)) or their overrides.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# the deadline of the Client start running on this thread (time.monotonic()), None outside one
_start_deadline: ContextVar[float | None] = ContextVar("plugbay_start_deadline", default=None)


@contextmanager
def starting_until(deadline: float | None) -> Iterator[None]:
    """Runner calls on this thread within the block are part of a Client start that ends at ``deadline``
    (time.monotonic(); None: of no Client's start)."""
    token = _start_deadline.set(deadline)
    try:
        yield
    finally:
        _start_deadline.reset(token)


def start_deadline() -> float | None:
    """When the Client start this runner call is part of ends (time.monotonic()); None: no Client's start
    (a direct call, or one after the start: a brokered server's address, a reconnect)."""
    return _start_deadline.get()


def attach_time_left() -> float | None:
    """Seconds left of the Client start this reattach is part of (None: no Client's, e.g. a direct attach())."""
    deadline = _start_deadline.get()
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)
