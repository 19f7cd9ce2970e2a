"""Whether grpc.aio works in this process: not in a fork of a process where it was running.

grpcio's asyncio stack keeps process-wide state: a completion queue that a
thread of its own polls, begun by the first grpc.aio channel or server and
ended with the last. A forked child inherits that state as running but not
the thread, so nothing ever completes its grpc.aio calls there (a host's
broker stream sent nothing and the plugin's dial waited out its timeout),
and grpcio's fork support does not cover grpc.aio. A child forked while the
poller ran, and every fork of that child, keeps to grpcio's sync API.
A fork made while it did not run (nothing on grpc.aio yet, or all of it
closed) begins it afresh when needed, and uses it.
"""

from __future__ import annotations

import os
import threading

_running_at_fork = False  # the parent's poller ran as this process forked (set before, read after)
_broken = False  # this process is such a fork, or a fork of one


def _poller_running() -> bool:
    """True while grpc.aio's poller thread runs (grpcio keeps no public sign of its asyncio state)."""
    try:
        from grpc._cython import cygrpc

        poller = cygrpc.PollerCompletionQueue
    except (ImportError, AttributeError):  # pragma: no cover - a grpcio without the poller engine
        return False
    for thread in threading.enumerate():
        target = getattr(thread, "_target", None)  # a running thread keeps it: the bound poll method
        if isinstance(getattr(target, "__self__", None), poller):
            return True
    return False


def _before_fork() -> None:
    global _running_at_fork
    _running_at_fork = _poller_running()


def _after_in_child() -> None:
    global _broken
    _broken = _broken or _running_at_fork


os.register_at_fork(before=_before_fork, after_in_child=_after_in_child)


def grpc_aio_usable() -> bool:
    """False in a forked child whose parent (or an ancestor) had grpc.aio running at the fork."""
    return not _broken
