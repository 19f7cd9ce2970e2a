"""Plumbing of brokered connections: served servers, dialed channels, socket sharing."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import grpc

from plugbay.core.broker.capturedcalls import CapturedStreamStream, CapturedStreamUnary
from plugbay.core.protocol.handshake import ENV_UNIX_SOCKET_GROUP
from plugbay.core.transport.sockets import give_to_group, group_id
from plugbay.errors import BrokerClosedError, BrokerError, ConfigError
from plugbay.core.transport.channels import DelegatingChannel

log = logging.getLogger("plugbay.broker")


@dataclass
class Served:
    id: int
    server: grpc.Server
    executor: Executor
    cleanup: list[Callable[[], None]]

    def stop(self) -> None:
        stop_served(self)


class BrokeredChannel(DelegatingChannel):
    """What dial() returns: a grpc.Channel that also frees the broker's resources for it on close().

    Closing it (or the broker) closes the gRPC channel and whatever carried it:
    a TLS relay, or in multiplexed mode the local bridge listener.
    """

    def __init__(self, channel: grpc.Channel, cleanup: list[Callable[[], None]],
                 untrack: Callable[[BrokeredChannel], None]) -> None:
        self._channel = channel
        self._cleanup = cleanup
        self._untrack = untrack
        self._lock = threading.Lock()
        self._closed = False

    def connect_now(self) -> None:
        """Start connecting now rather than at the first call (best effort: grpcio's own channel only)."""
        core = getattr(self._channel, "_channel", None)  # grpcio's cygrpc channel
        check = getattr(core, "check_connectivity_state", None)
        if check is not None:
            check(True)

    def close(self) -> None:
        with self._lock:  # after any call factory being built (see _open): grpcio crashes otherwise
            if self._closed:
                return
            self._closed = True
        self._channel.close()
        for func in reversed(self._cleanup):
            func()
        self._untrack(self)

    # A call factory built on a closed grpcio channel crashes the process (SIGSEGV): a stub
    # made on this channel after it, or its broker, closed gets a typed error instead.
    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._open(method).unary_unary(method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._open(method).unary_stream(method, *args, **kwargs)

    # A request iterator's error is raised as the call's, as on a Client's channel (see capturedcalls)
    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return CapturedStreamUnary(self._open(method).stream_unary(method, *args, **kwargs))

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return CapturedStreamStream(self._open(method).stream_stream(method, *args, **kwargs))

    def _open(self, method: str) -> grpc.Channel:
        """The gRPC channel, or BrokerClosedError once closed (the lock held)."""
        if self._closed:
            raise BrokerClosedError(
                f"cannot call {method}: this brokered channel was closed (by close() or its broker's"
                " Client ending); dial the broker id again on a live Client")
        return self._channel


def share_socket(path: str, folder_path: str | None = None) -> None:
    """Let the socket folder's group connect, as go-plugin does with a socket group.

    A folder shared with a container user is setgid (sockets inherit its
    group); PLUGIN_UNIX_SOCKET_GROUP names the group explicitly. ``folder_path``:
    the folder the socket is about to be linked into (a spare, shared before it
    gets a name there).
    """
    import stat

    group = os.environ.get(ENV_UNIX_SOCKET_GROUP, "")
    try:
        if group:
            give_to_group(path, group_id(group, f"set {ENV_UNIX_SOCKET_GROUP} to a group name or gid"), 0o660)
        elif (folder := os.stat(folder_path or os.path.dirname(path))).st_mode & stat.S_ISGID:
            # a socket made there inherits the folder's group; one moved there (a spare) is given it
            give_to_group(path, folder.st_gid, 0o660)
    except (OSError, ConfigError) as exc:
        log.warning("could not make broker socket %s group-accessible: %s", path, exc)


def stop_served(served: Served, grace: float | None = 1.0,
                reap: Callable[[Callable[[], None]], None] | None = None,
                recycle: Callable[[Executor], bool] | None = None) -> None:
    """Stop a brokered server, free its sockets and join its workers (or hand that to ``reap``).

    ``grace=None`` cancels calls still running at once: what go-plugin's host
    does (``Stop()``) once the call that needed the server returned. Its
    listeners (and socket files, and a TLS relay) are gone and its calls
    cancelled before this returns; with ``reap``, waiting for grpcio's
    shutdown to complete and shutting the workers down happen in the
    background (a callback's caller does not wait for them), and workers
    still running a handler are not joined: each ends once its handler
    returns, as go-plugin's ``Stop()`` does not wait for handlers either.
    ``recycle`` may take the stopped server's worker pool, idle once the
    server has stopped, for a later server (True: taken, not shut down here).
    """
    stopped = served.server.stop(grace=grace)
    if grace is None:  # nothing left to finish: no name for a new peer to find
        _free(served)

    def finish() -> None:
        done = stopped.wait(timeout=10)
        if grace is not None:  # calls may still be finishing over a relay
            _free(served)
        if not (done and recycle is not None and recycle(served.executor)):
            # reaped, this runs on the process's one spare builder thread: waiting there for a
            # handler still running (slow, stuck) stopped every later server's pool from being
            # recycled (a new worker thread per callback) and held up the last Client's close
            served.executor.shutdown(wait=reap is None)

    if reap is not None:
        reap(finish)
    else:
        finish()


CLOSE_GRACE = 1.0  # what calls still running on a closing broker's servers get to answer


def stop_all_served(served: list[Served], ends: float | None = None) -> None:
    """Stop a closing broker's servers: calls get CLOSE_GRACE (one for all; less when the close must end by
    ``ends``, a time.monotonic(): a Client's kill_grace), then are cancelled.

    Their sockets are freed before this returns, but workers still running a handler are not
    joined: each ends once its handler returns, its reply going nowhere. A Client's close() or
    kill() otherwise waited for as long as a host callback handler ran (for ever: a stuck one),
    with the plugin not killed meanwhile; go-plugin's broker Close() does not wait for handlers.
    """
    grace = CLOSE_GRACE if ends is None else min(CLOSE_GRACE, max(ends - time.monotonic(), 0.0))
    stopping = [(s, s.server.stop(grace=grace)) for s in served]
    for s, stopped in stopping:
        stopped.wait(timeout=grace + 10)  # the handlers' calls are cancelled after grace
        _free(s)
        s.executor.shutdown(wait=False)


def abandon_served(served: Served) -> None:
    """Stop a brokered server at once, free its sockets and leave its workers to end on their own.

    For a process that is exiting: its calls are cancelled, and a handler that does not return
    runs on a daemon thread (a DaemonPool's) that the exit does not wait for.
    """
    served.server.stop(grace=None)
    _free(served)
    served.executor.shutdown(wait=False, cancel_futures=True)


def _free(served: Served) -> None:
    for func in reversed(served.cleanup):
        func()


def local_socket_error(what: str, exc: OSError, closed: bool = False) -> BrokerError:
    """A typed error for a socket or folder this side could not make for a brokered connection.

    ``closed``: the broker has closed meanwhile, removing the folder it was made in (not a TMPDIR problem)."""
    if closed:
        return BrokerClosedError(f"the broker closed while it would {what}; start a new Client")
    return BrokerError(
        f"could not {what}: {exc}; brokered connections need unix sockets in a private folder made in"
        " the temp dir: set TMPDIR to an existing, writable folder with a short path (a unix socket"
        " path has at most 107 bytes)")
