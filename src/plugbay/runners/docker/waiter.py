"""The Docker runner's exit watch: one blocking wait request per container, not polling.

The Client asks wait(0) often, and the engine answers a wait request the moment
the container ends. The request can also end without an exit: the engine's
connection dropped (a restart with live-restore, a proxy's idle timeout). An
inspect then says whether the container still runs: if so the wait is made again
(with a growing pause while the engine does not answer at all), and an exit is
reported only once the engine says the container is not running, or is gone,
or after ``_MAX_FAILURES`` failed tries in a row (its exit code unknown then).

The waiter has an engine client of its own, and :meth:`ExitWaiter.stop` shuts
the wait request's socket, so a host that lets go of the container (detach)
keeps no thread and no connection for it. That socket is only known once the
engine sent the response head, so the head must come within ``_HEAD_WAIT``:
otherwise (a hung engine, a proxy holding the head until the exit) the
request is made again, after an inspect that tells an exit such a proxy held
back, and a stop() meanwhile ends the watch at that point.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from plugbay.core.transport.backoff import doubling_pause
from plugbay.runners.attached import UNKNOWN_EXIT_CODE
from plugbay.runners.docker.engine import ENGINE_TIMEOUT, engine

_log = logging.getLogger("plugbay.runners.docker")
_MAX_FAILURES = 12  # about a minute of pauses (0.25 s doubling, at most 8 s) with no wait answered
_MAX_PAUSE = 8.0
# the engine sends the wait's head at once; the body (the exit) may take days and has no read timeout
_HEAD_WAIT = 2.0


def reconnect_pause(failures: int) -> float:
    """The pause before engine request number ``failures + 1`` after ``failures`` in a row broke."""
    return doubling_pause(failures, 0.25, _MAX_PAUSE)


class ExitWaiter:
    """Waits for one container's exit in a daemon thread; :meth:`wait` reads the result."""

    def __init__(self, container_id: str, inspect: Callable[[], dict[str, Any] | None],
                 final_state: Callable[[], dict[str, Any] | None], engine_timeout: float = ENGINE_TIMEOUT) -> None:
        self._id = container_id
        self._engine_timeout = engine_timeout  # its wait request's connect bound (the runner's)
        self._inspect = inspect  # the container's State; None: the engine says it is gone
        self._final_state = final_state  # kept by kill() before it removed the container
        self._exited = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._sock: Any = None
        self._client: Any = None
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, name=f"plugbay-docker-wait-{container_id[:12]}",
                                        daemon=True)

    def start(self) -> None:
        self._client = engine(self._engine_timeout)
        self._thread.start()

    def wait(self, timeout: float | None) -> int | None:
        if not self._exited.wait(None if timeout is None else max(timeout, 0)):
            return None
        return self.exit_code

    def ended(self, code: int) -> None:
        """The container's end as its removal saw it, for a watch that never will (detach() stopped it,
        or the engine did not answer it in time); a no-op once the watch reported one."""
        with self._lock:
            if not self._exited.is_set():
                self.exit_code = code
                self._exited.set()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def report_time(self) -> float:
        """How long the watch may take to report an exit the engine knows (the container is removed): the
        wait request it is in ends once answered, within the engine's bound (the runner's engine_timeout),
        or, made just then, once its head is late (``_HEAD_WAIT``), the removal's state then telling the exit."""
        return self._engine_timeout + _HEAD_WAIT

    def stop(self, timeout: float = 5.0) -> None:
        """End the watch without an exit (the host lets the container go): its request and client too."""
        self._stopped.set()
        with self._lock:
            sock = self._sock
        _shut(sock)
        self.join(timeout)

    def _run(self) -> None:
        from requests.exceptions import ReadTimeout

        code, failures, answered_in_a_row = UNKNOWN_EXIT_CODE, 0, 0
        try:
            while not self._stopped.is_set():
                try:
                    code = self._wait_once()
                    break
                except Exception as exc:  # noqa: BLE001 - the request broke: ask the engine what that means
                    if self._stopped.is_set():
                        return
                    ended, code, answered = self._ended()
                    if ended:
                        break
                    # the engine said it runs: a broken request (a proxy's idle timeout, a
                    # live-restore), not an engine gone; count only tries it did not answer
                    failures = 0 if answered else failures + 1
                    if answered and isinstance(exc, ReadTimeout):  # no head in time: the head wait was the pause
                        answered_in_a_row = 0
                        continue
                    if answered:  # never an exit while it runs; but no busy loop on a wait refused at once
                        answered_in_a_row += 1
                        if answered_in_a_row == _MAX_FAILURES:
                            _log.warning("container %s runs, but %d wait requests in a row broke (%s); still"
                                         " watching it", self._id[:12], answered_in_a_row, exc)
                        self._stopped.wait(reconnect_pause(answered_in_a_row))
                        continue
                    answered_in_a_row = 0
                    if failures >= _MAX_FAILURES:
                        _log.warning("container %s: the engine answered no wait request in %d tries (%s);"
                                     " its exit code is unknown", self._id[:12], failures, exc)
                        break
                    self._stopped.wait(reconnect_pause(failures))
            if not self._stopped.is_set():
                self.ended(code)
        finally:
            client, self._client = self._client, None
            if client is not None:
                client.close()

    def _wait_once(self) -> int:
        api = self._client.api
        # streamed: the engine sends the head at once, so the socket is known while the wait blocks;
        # the connect keeps the client's own bound (an ssh engine's handshake may take seconds)
        response = api._post(api._url("/containers/{0}/wait", self._id), stream=True,
                             timeout=(api.timeout, _HEAD_WAIT))
        try:
            with self._lock:
                self._sock = api._get_raw_response_socket(response)  # raises for an error status
            _no_read_timeout(self._sock)
            if self._stopped.is_set():
                _shut(self._sock)
            return int(response.json().get("StatusCode", UNKNOWN_EXIT_CODE))
        finally:
            with self._lock:
                self._sock = None
            response.close()

    def _ended(self) -> tuple[bool, int, bool]:
        """(whether the container no longer runs, its exit code, whether the engine answered)
        after a wait request broke."""
        state = self._final_state()
        if state is None:
            try:
                state = self._inspect()
            except Exception as exc:  # noqa: BLE001 - the engine does not answer either: try again later
                _log.debug("inspecting container %s after its wait broke: %s", self._id[:12], exc)
                return False, UNKNOWN_EXIT_CODE, False
            if state is None:  # removed: no exit code left to read
                return True, UNKNOWN_EXIT_CODE, True
        if state.get("Running"):
            return False, UNKNOWN_EXIT_CODE, True
        return True, int(state.get("ExitCode", UNKNOWN_EXIT_CODE)), True


def _no_read_timeout(sock: Any) -> None:
    """Let the body's read block until the exit (or stop()'s shutdown), as the head's timeout would break it."""
    raw = getattr(sock, "_sock", sock)
    if hasattr(raw, "settimeout"):
        raw.settimeout(None)


def _shut(sock: Any) -> None:
    """Wake a read blocked on ``sock`` (a socket, the SocketIO around one, or an ssh channel)."""
    raw = getattr(sock, "_sock", sock)
    try:
        if hasattr(raw, "shutdown"):
            raw.shutdown(socket.SHUT_RDWR)
        elif hasattr(raw, "close"):
            raw.close()
    except OSError:
        pass
