"""What a DockerRunner.start() has left of the Client's start_timeout (LaunchSpec.deadline).

engine_timeout bounds one engine request, and a start makes several (the image, the create, the
start, the logs): an engine slow enough to answer each within it could hold the Client's start
several engine_timeouts past start_timeout. So each request of a start is bounded by engine_timeout
or by the time left, whichever is less, and one that the deadline cut (or one due after it passed)
is the HandshakeTimeoutError the Client raises for start_timeout, naming that request. start()
then removes what it made, with the runner's whole engine_timeout per request: a container left
behind would be worse than an error that comes late.

The start's requests go through a client of their own (:attr:`StartBudget.client`), as its bound
shrinks with the time left: the runner's client keeps engine_timeout for the log streams and for a
kill() from another thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from plugbay.errors import EngineUnavailableError, HandshakeTimeoutError
from plugbay.runners.docker.connect import engine, engine_call, engine_host

T = TypeVar("T")


class StartBudget:
    """The bounds of one start()'s engine requests. ``deadline``: a time.monotonic() time, or None
    (a start() made by hand): then every request has engine_timeout, as before there was a deadline."""

    def __init__(self, who: str, engine_timeout: float, deadline: float | None) -> None:
        self._who = who
        self._engine_timeout = engine_timeout
        self._deadline = deadline
        self.client: Any = None

    def left(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def bound(self, what: str) -> float:
        """The bound of the next wait on the engine (to ``what``); HandshakeTimeoutError once no time is left."""
        left = self.left()
        if left is None:
            return self._engine_timeout
        if left <= 0:
            raise self.expired(what, asking=False)
        return min(self._engine_timeout, left)

    def open(self) -> Any:
        """The start's engine client (its API version asked for within the bound, the first time)."""
        self.client = self._bounded(lambda bound: engine(bound), "tell its API version")
        return self.client

    def call(self, func: Callable[[], T], what: str) -> T:
        """One engine request of the start (``func``, through :attr:`client`), asking it to ``what``."""
        def request(bound: float) -> T:
            self.client.api.timeout = bound  # the SDK hands its client's timeout to each request
            return engine_call(func, what, bound)
        return self._bounded(request, what)

    def wait(self, done: Callable[[float], bool], what: str) -> bool:
        """``done(timeout)`` (an event's wait: the engine's answer to ``what``, made on another thread)
        within the bound; False when only engine_timeout ran out."""
        if done(self.bound(what)):
            return True
        left = self.left()
        if left is not None and left <= 0:
            raise self.expired(what, asking=True)
        return False

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()

    def _bounded(self, func: Callable[[float], T], what: str) -> T:
        bound = self.bound(what)
        try:
            return func(bound)
        except EngineUnavailableError as exc:
            left = self.left()
            # the deadline, not the engine's own bound, ended the wait: the Client's start_timeout ran out
            if bound < self._engine_timeout and left is not None and left <= 0:
                raise self.expired(what, asking=True) from exc
            raise

    def expired(self, what: str, *, asking: bool) -> HandshakeTimeoutError:
        when = "while it asked" if asking else "before it could ask"
        return HandshakeTimeoutError(
            f"the Client's start_timeout ran out {when} the Docker engine at {engine_host()} to {what}, so"
            f" {self._who} gave up starting the plugin; the container it made, if any, is removed. The engine"
            " answers too slowly for start_timeout: check that `docker info` answers promptly (the daemon's log:"
            " `journalctl -u docker`), or raise ClientConfig.start_timeout")
