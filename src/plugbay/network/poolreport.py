"""PoolReport, a base of EndpointPool: what the pool tells of its state, kept apart from plugbay.network.pool:
metrics() (a snapshot, typed by plugbay.network.poolmetrics), the endpoints a call may go to (pickable_keys()),
and each change of its counts, logged on the "plugbay.network" logger and reported to the grpc.Channel
connectivity subscribers (READY while a call may go somewhere, else TRANSIENT_FAILURE)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from plugbay.network.poolmetrics import EndpointMetrics, PoolMetrics

if TYPE_CHECKING:
    from plugbay.network.channelbase import Member

_log = logging.getLogger("plugbay.network")


class PoolReport:
    """The reports of an EndpointPool (which sets these attributes and answers _available())."""

    name: str
    ejections_total: int
    resends: int
    _cond: threading.Condition
    _members: dict[str, Member]
    _draining: list[Member]
    _subscribers: list[Callable[[grpc.ChannelConnectivity], None]]
    _last_summary: tuple[int, int, int] | None

    if TYPE_CHECKING:  # EndpointPool's
        def _available(self, now: float) -> list[Member]: ...

    def metrics(self) -> PoolMetrics:
        """A snapshot: counts, and per endpoint its health, ejection and picks (the keys: poolmetrics)."""
        now = time.monotonic()
        with self._cond:
            endpoints = {
                key: EndpointMetrics(healthy=m.healthy, ejected=m.outlier.ejected(now), picks=m.picks,
                                      failures=m.failures, ejections=m.outlier.total, inflight=m.inflight,
                                      ready=m.endpoint.ready, terminating=m.endpoint.terminating,
                                      health_detail=m.health_detail)
                for key, m in self._members.items()}
            return PoolMetrics(known=len(endpoints), healthy=sum(1 for e in endpoints.values() if e["healthy"]),
                               ejected=sum(1 for e in endpoints.values() if e["ejected"]),
                               available=len(self._available(now)), draining=len(self._draining),
                               ejections=self.ejections_total, resends=self.resends, endpoints=endpoints)

    def pickable_keys(self) -> list[str]:
        """The endpoints a call may go to now (see _available), or once their first health check answers."""
        now = time.monotonic()
        with self._cond:
            waiting = [m.key for m in self._members.values() if m.pickable(now) and m.awaiting_check(now)]
            return [m.key for m in self._available(now)] + waiting

    def _log_if_changed(self) -> None:
        now = time.monotonic()
        with self._cond:  # cheap: this runs after every call
            members = self._members.values()
            summary = (len(self._members), sum(1 for m in members if m.healthy),
                       sum(1 for m in members if m.outlier.ejected(now)))
            if summary == self._last_summary:
                return
            self._last_summary = summary
            subscribers = list(self._subscribers)
            available = bool(self._available(now))
        _log.info("pool %s: %d endpoint(s) known, %d healthy, %d ejected", self.name, *summary)
        state = grpc.ChannelConnectivity.READY if available else grpc.ChannelConnectivity.TRANSIENT_FAILURE
        for callback in subscribers:
            try:
                callback(state)
            except Exception:
                _log.exception("a pool connectivity subscriber failed")

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        with self._cond:
            self._subscribers.append(callback)
            self._last_summary = None  # the next change report reaches the new subscriber

    def unsubscribe(self, callback: Any) -> None:
        with self._cond:
            if callback in self._subscribers:
                self._subscribers.remove(callback)
