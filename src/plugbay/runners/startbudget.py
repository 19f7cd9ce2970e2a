"""What a runner's start() has left of the Client's start_timeout (LaunchSpec.deadline).

A runner bounds each request to its service (the Docker engine, the Kubernetes API) by its own
per-request timeout, and a start makes several: a service slow enough to answer each within it could
hold the Client's start several timeouts past start_timeout. So each request of a start is bounded by
the runner's timeout or by the time left, whichever is less, and one that the deadline cut (or one due
after it passed) is the HandshakeTimeoutError the Client raises for start_timeout, naming that request.

:class:`StartBudget` is that shared part; each runner's budget (runners/docker/budget.py,
runners/kubernetes/budget.py) says which service it asks, what becomes of what the start made, and
what to check, and adds what only its start needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from plugbay.errors import EngineUnavailableError, HandshakeTimeoutError

T = TypeVar("T")


class StartBudget:
    """The bounds of one start()'s requests. ``deadline``: a time.monotonic() time, or None (a start()
    made by hand): then every request has ``request_timeout``, as before there was a deadline."""

    #: what becomes of what the start made when the deadline cuts it (said in the error)
    FATE = ""
    #: why the start ran out and what to check (said in the error, before "or raise start_timeout")
    ADVICE = ""

    def __init__(self, who: str, request_timeout: float, deadline: float | None) -> None:
        self._who = who
        self._request_timeout = request_timeout
        self._deadline = deadline

    def service(self) -> str:
        """The service the start asks, with where it is (e.g. "the Docker engine at unix:///...")."""
        raise NotImplementedError

    def left(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def bound(self, what: str, fate: str | None = None) -> float:
        """The bound of the next request (to ``what``); HandshakeTimeoutError once no time is left."""
        left = self.left()
        if left is None:
            return self._request_timeout
        if left <= 0:
            raise self.expired(what, asking=False, fate=fate)
        return min(self._request_timeout, left)

    def _bounded(self, func: Callable[[float], T], what: str, fate: str | None = None) -> T:
        """``func(bound)``: one request of the start, asking the service to ``what``."""
        bound = self.bound(what, fate)
        try:
            return func(bound)
        except EngineUnavailableError as exc:
            left = self.left()
            # the deadline, not the request's own timeout, ended the wait: the Client's start_timeout ran out
            if bound < self._request_timeout and left is not None and left <= 0:
                raise self.expired(what, asking=True, fate=fate) from exc
            raise

    def expired(self, what: str, *, asking: bool, fate: str | None = None) -> HandshakeTimeoutError:
        """The error for a request to ``what`` the deadline cut (``asking``) or left no time for."""
        when = "while it asked" if asking else "before it could ask"
        return HandshakeTimeoutError(
            f"the Client's start_timeout ran out {when} {self.service()} to {what}, so {self._who} gave up"
            f" starting the plugin; {self.FATE if fate is None else fate}. {self.ADVICE}, or raise"
            " ClientConfig.start_timeout")
