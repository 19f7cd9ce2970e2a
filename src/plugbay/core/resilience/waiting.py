"""A Supervisor's states, and its waits for its plugin: to run, and to be replaced.

The ReadyGate and the following broker wait through these (a call made while the plugin
restarts waits for its successor); users call wait_running() before opening a stream again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final, Literal, TypeAlias

from plugbay.core.host.client import Client
from plugbay.core.resilience.calls import wait_timeout, wait_until
from plugbay.core.resilience.readygate import SupervisedChannel, gone_unseen
from plugbay.core.resilience.restart import RestartBudget, RestartPolicy
from plugbay.core.resilience.wakeups import StateCondition

# The words of Supervisor.state; the property itself says str (see CircuitState in circuit.py: a Literal
# property is narrowed by one comparison for the rest of the function, across stop() or a restart)
SupervisorState: TypeAlias = Literal["starting", "running", "restarting", "failed", "stopped"]
STARTING: Final = "starting"
RUNNING: Final = "running"
RESTARTING: Final = "restarting"
FAILED: Final = "failed"
STOPPED: Final = "stopped"


class PluginWaits:
    """wait_running() and changed_since() of a Supervisor, on its condition and state."""

    _cond: StateCondition  # notified on every change of the state or the current Client
    _state: SupervisorState
    _client: Client | None
    _channel: SupervisedChannel | None
    _stop: threading.Event
    _wake: threading.Event  # set: the monitor looks at the plugin now
    _budget: RestartBudget
    restart_policy: RestartPolicy

    def restarts_left(self) -> int:
        """How many more restarts the RestartPolicy allows within its window now (0: the next death is
        the last one the Supervisor sees through)."""
        return self._budget.left(self.restart_policy) if self._state != FAILED else 0

    def raise_if_failed(self) -> None:
        """Raise RestartBudgetExhaustedError once the Supervisor has given up."""
        self._budget.raise_if_exhausted()

    def wait_running(self, timeout: float) -> bool:
        """Block until the plugin runs, ``timeout`` seconds at most (math.inf: no bound); raises when
        the restart budget is spent."""
        seconds = wait_timeout(timeout, "Supervisor.wait_running()")
        return wait_until(self._cond, self._running, seconds, 0.5, self._over)

    async def until_async(self, check: Callable[[], bool], timeout: float) -> bool:
        """On an event loop: whether ``check()`` (never blocking) comes true within ``timeout``, asked again at
        each change of the state or the current Client. Holds no thread (see plugbay.core.resilience.wakeups)."""
        return await self._cond.until(check, timeout)

    def wake_waiters(self) -> None:
        """Ask every waiter again now (something they check changed without a change of state)."""
        with self._cond:
            self._cond.notify_all()

    def _running(self) -> bool:
        return self._state == RUNNING and not gone_unseen(self._client, self._stop, self._wake)

    def _over(self) -> bool:
        """No plugin will run: the Supervisor was stopped, or it gave up (this raises)."""
        self.raise_if_failed()
        return self._state == STOPPED

    def channel_generation(self) -> int:
        return self._channel.generation if self._channel is not None else -1

    def changed_since(self, generation: int, timeout: float) -> bool:
        """Wait (bounded) until the plugin is being or was replaced since ``generation``."""
        seconds = wait_timeout(timeout, "Supervisor.changed_since()")
        self._wake.set()  # let the monitor look now rather than at its next tick
        return wait_until(self._cond, lambda: self._state != RUNNING or self.channel_generation() != generation,
                          seconds, 0.25)
