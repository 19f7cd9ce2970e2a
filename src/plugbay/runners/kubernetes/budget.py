"""What a KubernetesRunner.start() has left of the Client's start_timeout (LaunchSpec.deadline).

The runner's own start_timeout (default 120 s) bounds its wait for the pod to run, and api_timeout
each API call; the Client's start_timeout (default 60 s) may run out well before either. So the wait
for the pod ends at whichever deadline comes first (a PodStartTimeoutError saying whose it was), and
each API call of the start (the pod's create, its log's open and the read proving the log the pod's)
is bounded by api_timeout or by the time left, whichever is less: a call the Client's deadline cut, or
one due after it passed, is the HandshakeTimeoutError the Client raises for start_timeout, naming the
call, as the Docker runner's are (runners/startbudget.py). start() then deletes the pod it made with
the runner's whole api_timeout: a pod left running would be worse than an error that comes late.

The reads that only explain a failure (the pod, its events, its log tail) get what is left, but at
least DIAGNOSIS_WAIT each: an error saying why the pod did not run, a little late, helps more than
one that says nothing, and a stalled API server holds it no longer than that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from plugbay.runners.startbudget import StartBudget as _Budget

T = TypeVar("T")
DIAGNOSIS_WAIT = 2.0  # seconds each explaining read may take once the Client's deadline is (nearly) over


class StartBudget(_Budget):
    """The bounds of one start(). ``deadline``: the Client's (a time.monotonic() time), or None (a start()
    made by hand): then the runner's own start_timeout and api_timeout alone bound it, as before."""

    FATE = "the pod it made is deleted"
    ADVICE = ("The API server answers too slowly for start_timeout: check that it (and any proxy in front"
              " of it) is up and not overloaded (kubectl get --raw /readyz)")

    def __init__(self, who: str, host: str, api_timeout: float, start_timeout: float,
                 deadline: float | None) -> None:
        super().__init__(who, api_timeout, deadline)
        self._host = host
        self._own = time.monotonic() + start_timeout

    def service(self) -> str:
        return f"the Kubernetes API at {self._host}"

    @property
    def wait_until(self) -> float:
        """When the wait for the pod to run ends: the runner's start_timeout or the Client's, the sooner."""
        return self._own if self._deadline is None else min(self._own, self._deadline)

    @property
    def ended_by_client(self) -> bool:
        """Whether the Client's deadline, not the runner's own start_timeout, ends the wait."""
        return self._deadline is not None and self._deadline < self._own

    def call(self, func: Callable[[float], T], what: str, fate: str | None = None) -> T:
        """``func(bound)``: one API call of the start, asking the API server to ``what``. ``fate``: what
        becomes of the pod when the deadline cuts it (said in the error; FATE when None)."""
        return self._bounded(func, what, fate)

    def diagnosis_timeout(self) -> float:
        """The bound of a read that only explains a failure (see the module's doc)."""
        left = self.left()
        api_timeout = self._request_timeout
        return api_timeout if left is None else min(api_timeout, max(left, DIAGNOSIS_WAIT))
