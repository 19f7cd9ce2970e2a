"""What a DockerRunner.start() has left of the Client's start_timeout (LaunchSpec.deadline).

engine_timeout bounds one engine request, and a start makes several (SecureConfig's image check
before start(), the image, the create, the start, the logs): each is bounded by engine_timeout or by
the time left, whichever is less, and one the deadline cut is the HandshakeTimeoutError the Client
raises for start_timeout (runners/startbudget.py). start() then removes what it made, with the
runner's whole engine_timeout per request: a container left behind would be worse than an error
that comes late.

The start's requests go through a client of their own (:attr:`StartBudget.client`), as its bound
shrinks with the time left: the runner's client keeps engine_timeout for the log streams and for a
kill() from another thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from plugbay.runners.docker.connect import engine, engine_call, engine_host
from plugbay.runners.startbudget import StartBudget as _Budget

T = TypeVar("T")


class StartBudget(_Budget):
    """The bounds of one start()'s engine requests. ``deadline``: a time.monotonic() time, or None
    (a start() made by hand): then every request has engine_timeout, as before there was a deadline."""

    FATE = "the container it made, if any, is removed (one the engine makes late too, within engine_timeout)"
    ADVICE = ("The engine answers too slowly for start_timeout: check that `docker info` answers promptly"
              " (the daemon's log: `journalctl -u docker`)")

    def __init__(self, who: str, engine_timeout: float, deadline: float | None) -> None:
        super().__init__(who, engine_timeout, deadline)
        self.client: Any = None

    def service(self) -> str:
        return f"the Docker engine at {engine_host()}"

    def open(self, fate: str | None = None) -> Any:
        """The start's engine client (its API version asked for within the bound, the first time).
        ``fate``: what becomes of what the start made when the deadline cuts it (FATE when None)."""
        self.client = self._bounded(lambda bound: engine(bound), "tell its API version", fate)
        return self.client

    def call(self, func: Callable[[], T], what: str, fate: str | None = None) -> T:
        """One engine request of the start (``func``, through :attr:`client`), asking it to ``what``."""
        def request(bound: float) -> T:
            self.client.api.timeout = bound  # the SDK hands its client's timeout to each request
            return engine_call(func, what, bound)
        return self._bounded(request, what, fate)

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
