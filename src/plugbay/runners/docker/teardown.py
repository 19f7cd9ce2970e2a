"""ContainerTeardown, a base of DockerRunner: how it stops and removes its container, or
leaves it running (detach), and frees what this host holds for it."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from typing import Any

from plugbay.runners.attached import UNKNOWN_EXIT_CODE
from plugbay.runners.docker.adopt import give_back
from plugbay.runners.docker.engine import (SOCKET_DIR, SOCKET_OWNED, SOCKET_TOKEN, end_container, engine_call,
                                            end_socket_dir, engine, give_back_socket_dir)
from plugbay.runners.docker.logs import ContainerLogStream
from plugbay.runners.docker.madehere import forget_made
from plugbay.runners.docker.sockethandles import SocketHandles
from plugbay.runners.docker.unanswered import wait_late_creates
from plugbay.runners.docker.waiter import ExitWaiter

_log = logging.getLogger("plugbay.runners.docker")

class ContainerTeardown:
    """detach(), kill(), force_kill() and their close up; DockerRunner sets the attributes."""

    _lock: threading.Lock
    _killed: bool
    _detached: bool
    _attached: bool
    _client: Any
    _container_id: str
    container_name: str
    _host_socket_dir: str | None
    _socket_handles: SocketHandles
    _owns_socket_dir: bool
    _given_dir: os.stat_result | None
    _socket_token: str
    _claimed: tuple[str, str] | None
    stop_timeout: float | None
    engine_timeout: float
    _pumps: dict[str, ContainerLogStream]
    _waiter: ExitWaiter | None
    _final_state: dict[str, Any] | None

    def _inspect(self) -> dict[str, Any] | None:
        from docker.errors import NotFound

        if self._client is None or not self._container_id:
            return None
        try:
            state: dict[str, Any] = engine_call(
                lambda: self._client.api.inspect_container(self._container_id), "inspect the container",
                self.engine_timeout)["State"]
        except NotFound:
            return None
        return state

    def _running(self) -> bool | None:
        """Whether the container still runs, for a log pump whose stream broke (None: cannot tell)."""
        with self._lock:
            if self._killed or self._detached:
                return False
        state = self._inspect()
        return bool(state and state.get("Running"))

    def wait(self, timeout: float | None = None) -> int | None:
        if self._waiter is None:
            return None
        return self._waiter.wait(timeout)

    def frozen(self) -> bool:
        """A paused container (`docker pause`): one inspect, none once it was killed or let go."""
        with self._lock:
            if self._killed or self._detached:
                return False
        state = self._inspect()
        return bool(state and state.get("Paused") is True)

    def detach(self) -> None:
        """Leave the container running and free what this host holds for it (the exit watch, log
        pumps, engine client); start() refuses from now on, kill() still removes the container.
        Without a watch, wait() reports no exit until a kill(): the one that removes the container
        records its exit code (the last inspect's, or -1 if the container was gone already)."""
        with self._lock:
            self._detached = True
            client, self._client = self._client, None
            claimed, self._claimed = self._claimed, None
        if claimed is not None and client is not None:  # left running: to the host that had it before
            give_back(client, self._container_id, claimed)
        if self._waiter is not None:
            self._waiter.stop()
        for pump in list(self._pumps.values()):
            pump.close()
        if client is not None:
            client.close()
        self._socket_handles.close()

    def kill(self, grace: float | None = None) -> None:
        """Stop the container (SIGTERM, SIGKILL after ``grace`` seconds: by default the runner's
        stop_timeout, else 2) and remove it. Idempotent."""
        if grace is None:
            grace = 2.0 if self.stop_timeout is None else self.stop_timeout
        # a create a failed start gave up on (start_timeout, Ctrl-C) may make its container late: that start
        # ended killed, so here, once the container is gone or engine_timeout has passed (unanswered.py)
        wait_late_creates(self.container_name)
        with self._lock:
            if self._killed:
                return
            self._killed = True
            reopen = self._detached and self._container_id and self._client is None
        if reopen:  # detach() closed the engine client
            self._client = engine(self.engine_timeout)
        self._cleanup(remove=True, grace=grace)

    def force_kill(self) -> None:
        with self._lock:
            self._killed = True
        if self._container_id:
            old, self._client = self._client, engine(self.engine_timeout)  # a cut-short kill() may have closed it
            if old is not None:
                try:
                    old.close()  # its connection pool's sockets only: no engine request
                except Exception as exc:
                    _log.debug("closing the replaced engine client: %s", exc)
        self._cleanup(remove=True, grace=0)  # again if a kill() was cut short: stop now, remove

    def _cleanup(self, *, remove: bool, grace: float) -> None:
        client = self._client
        ended = False
        try:
            if client is not None and self._container_id:
                if end_container(client.api, self._container_id, grace=grace, remove=remove, inspect=self._inspect,
                                 stopped=self._keep_final_state):
                    forget_made(self._container_id)  # kept while it may still exist: the sweep's proof
                ended = remove
        finally:
            for pump in list(self._pumps.values()):  # a start() on another thread may add one meanwhile
                pump.close()
            if self._waiter is not None:
                # as long as the engine may take to answer its wait (the runner's engine_timeout): a slow
                # engine's answer still gives the exit code the plugin ended with; a hung one, the removal's
                self._waiter.join(self._waiter.report_time)
                if ended:  # the watch's own report wins; a stopped one (detach) reports nothing
                    code = (self._final_state or {}).get("ExitCode")
                    self._waiter.ended(code if isinstance(code, int) else UNKNOWN_EXIT_CODE)
            self._socket_handles.close()
            if self._owns_socket_dir and self._host_socket_dir and not self._attached:
                shutil.rmtree(self._host_socket_dir, ignore_errors=True)
            elif self._given_dir is not None and self._host_socket_dir and not self._attached:
                give_back_socket_dir(self._host_socket_dir, self._given_dir)
            elif self._attached and self._host_socket_dir:  # its first host is gone and left it behind
                labels = {SOCKET_DIR: self._host_socket_dir, SOCKET_TOKEN: self._socket_token,
                          SOCKET_OWNED: str(self._owns_socket_dir).lower()}
                unproven = end_socket_dir(self._host_socket_dir, labels)
                if unproven is not None:  # the proof attach() made no longer holds: not ours to touch now
                    _log.debug("left the socket folder as it is: %s", unproven)
            if client is not None:
                client.close()

    def _keep_final_state(self, state: dict[str, Any]) -> None:
        self._final_state = state  # set before the removal, as diagnose() and the exit waiter read it
