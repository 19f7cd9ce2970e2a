"""What a KubernetesRunner.start() has left of the Client's start_timeout (LaunchSpec.deadline).

The runner's own start_timeout (default 120 s) bounds its wait for the pod to run, and api_timeout
each API call; the Client's start_timeout (default 60 s) may run out well before either. So the wait
for the pod ends at whichever deadline comes first (a PodStartTimeoutError saying whose it was), and
each API call of the start (the pod's create, its log's open and the read proving the log the pod's)
is bounded by api_timeout or by the time left, whichever is less: a call the Client's deadline cut, or
one due after it passed, is the HandshakeTimeoutError the Client raises for start_timeout, naming the
call, as the Docker runner's are (runners/docker/budget.py). start() then deletes the pod it made with
the runner's whole api_timeout: a pod left running would be worse than an error that comes late.

The reads that only explain a failure (the pod, its events, its log tail) get what is left, but at
least DIAGNOSIS_WAIT each: an error saying why the pod did not run, a little late, helps more than
one that says nothing, and a stalled API server holds it no longer than that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from plugbay.errors import EngineUnavailableError, HandshakeTimeoutError

T = TypeVar("T")
DIAGNOSIS_WAIT = 2.0  # seconds each explaining read may take once the Client's deadline is (nearly) over


class StartBudget:
    """The bounds of one start(). ``deadline``: the Client's (a time.monotonic() time), or None (a start()
    made by hand): then the runner's own start_timeout and api_timeout alone bound it, as before."""

    def __init__(self, who: str, host: str, api_timeout: float, start_timeout: float,
                 deadline: float | None) -> None:
        self._who = who
        self._host = host
        self._api_timeout = api_timeout
        self._own = time.monotonic() + start_timeout
        self._deadline = deadline

    @property
    def wait_until(self) -> float:
        """When the wait for the pod to run ends: the runner's start_timeout or the Client's, the sooner."""
        return self._own if self._deadline is None else min(self._own, self._deadline)

    @property
    def ended_by_client(self) -> bool:
        """Whether the Client's deadline, not the runner's own start_timeout, ends the wait."""
        return self._deadline is not None and self._deadline < self._own

    def left(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def bound(self, what: str, fate: str) -> float:
        """The bound of the next API call (to ``what``); HandshakeTimeoutError once no time is left."""
        left = self.left()
        if left is None:
            return self._api_timeout
        if left <= 0:
            raise self.expired(what, asking=False, fate=fate)
        return min(self._api_timeout, left)

    def call(self, func: Callable[[float], T], what: str, fate: str = "the pod it made is deleted") -> T:
        """``func(bound)``: one API call of the start, asking the API server to ``what``. ``fate``: what
        becomes of the pod when the deadline cuts it (said in the error)."""
        bound = self.bound(what, fate)
        try:
            return func(bound)
        except EngineUnavailableError as exc:
            left = self.left()
            # the deadline, not the call's own api_timeout, ended the wait: the Client's start_timeout ran out
            if bound < self._api_timeout and left is not None and left <= 0:
                raise self.expired(what, asking=True, fate=fate) from exc
            raise

    def diagnosis_timeout(self) -> float:
        """The bound of a read that only explains a failure (see the module's doc)."""
        left = self.left()
        return self._api_timeout if left is None else min(self._api_timeout, max(left, DIAGNOSIS_WAIT))

    def expired(self, what: str, *, asking: bool, fate: str) -> HandshakeTimeoutError:
        when = "while it asked" if asking else "before it could ask"
        return HandshakeTimeoutError(
            f"the Client's start_timeout ran out {when} the Kubernetes API at {self._host} to {what}, so"
            f" {self._who} gave up starting the plugin; {fate}. The API server answers too slowly for"
            " start_timeout: check that it (and any proxy in front of it) is up and not overloaded"
            " (kubectl get --raw /readyz), or raise ClientConfig.start_timeout")
