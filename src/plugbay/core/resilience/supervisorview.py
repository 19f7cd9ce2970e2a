"""What a Supervisor tells of itself: its state, its current Client and channel, its metrics.

Read by any thread, never blocking; the restarting itself is plugbay.core.resilience.supervisor's.
"""

from __future__ import annotations

import collections
from typing import TypedDict

import grpc

from plugbay.core.host.client import Client
from plugbay.core.host.reattach import ReattachConfig
from plugbay.core.resilience.circuit import CircuitBreaker
from plugbay.core.resilience.followbroker import FollowingBroker
from plugbay.core.resilience.healthwatch import HealthWatcher
from plugbay.core.resilience.readygate import plugin_gone, restart_advice
from plugbay.core.resilience.restart import SupervisorEvent
from plugbay.core.resilience.sources import ConfigSource, not_running, reattach_only
from plugbay.core.resilience.waiting import PluginWaits
from plugbay.errors import ClientStateError


class SupervisorMetrics(TypedDict):
    """What Supervisor.metrics() and AsyncSupervisor.metrics() return: a plain dict, typed (the keys are these,
    tests/test_typed_api.py checks it)."""

    state: str  # one of SupervisorState's words (str: it changes under the caller, see waiting.py)
    restarts: int  # restarts that brought a plugin up
    failures: int  # failures seen (a failed start, a death, an unhealthy plugin)
    last_failure: str | None  # what the last one was; None before any
    health: str | None  # the health watcher's state (SERVING, ...); None without health_interval
    circuit: str | None  # the breaker's CircuitState; None without a breaker


class SupervisorView(PluginWaits):
    """The Supervisor's public reads (its base)."""

    kind = "Supervisor"  # what its errors call it (the one an AsyncSupervisor runs says "AsyncSupervisor")
    name: str
    restarts: int
    failures: int
    last_failure: str | None
    breaker: CircuitBreaker | None
    _watcher: HealthWatcher | None
    _broker: FollowingBroker
    _source: ConfigSource
    _reattach: ReattachConfig | None
    _events: collections.deque[SupervisorEvent]

    @property
    def events(self) -> list[SupervisorEvent]:
        """The events so far (the latest 500), oldest first: a copy, so a caller can iterate, index and slice it
        while the Supervisor's thread records more (the deque it keeps raised "deque mutated during iteration"
        in a loop over it when a restart's events came meanwhile, and refused a slice)."""
        return list(self._events)  # one C-level pass under the GIL: no append lands midway

    @property
    def state(self) -> str:  # a SupervisorState (see waiting.py: why not that Literal)
        return self._state

    @property
    def max_restarts(self) -> int:
        return self.restart_policy.max_restarts

    @property
    def can_restart(self) -> bool:
        """Whether it can start a plugin to replace a failed one: not when it was given reattach= and a
        ClientConfig without cmd= (a factory may return cmd= at the next restart: it counts as able)."""
        return not reattach_only(self._source, self._reattach)

    @property
    def client(self) -> Client:
        self.raise_if_failed()
        client = self._client
        if client is None:
            raise not_running(self.name, self._state, self.last_failure, self.kind)
        return client

    @property
    def current_client(self) -> Client | None:
        """The Client in use now; None while restarting, after giving up or stopping."""
        return self._client

    @property
    def call_timeout(self) -> float | None:
        return self._channel.call_timeout if self._channel is not None else None

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            raise ClientStateError(f"Supervisor of {self.name!r} is not started; call start() first")
        return self._channel

    @property
    def broker(self) -> FollowingBroker:  # the stubs' broker: each use goes to the current Client's
        return self._broker

    @property
    def health(self) -> str | None:
        watcher = self._watcher
        return watcher.state if watcher is not None else None

    def metrics(self) -> SupervisorMetrics:
        return SupervisorMetrics(state=self._state, restarts=self.restarts, failures=self.failures,
                                 last_failure=self.last_failure, health=self.health,
                                 circuit=self.breaker.state if self.breaker is not None else None)

    def reattach_config(self) -> ReattachConfig:
        """What another host needs to attach to the running plugin (a restart gives it a new one)."""
        client = self.client
        try:
            return client.reattach_config()
        except ClientStateError as exc:
            if not plugin_gone(client):
                raise
            # died before the monitor saw it: the Client's own advice ("make a new Client") is wrong here
            raise ClientStateError(f"plugin {self.name!r} has exited, so there is nothing to reattach to; "
                                   + restart_advice(self, "reattach_config()")) from exc
