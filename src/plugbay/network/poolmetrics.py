"""What EndpointPool.metrics() (and a RemoteClient's, an AsyncRemoteClient's) returns: a plain dict, typed.

TypedDicts, so a user's code that indexes the snapshot (``metrics["healthy"]``) runs unchanged and a type
checker knows each value's type and catches a misspelled key. tests/test_typed_api.py checks that the keys a
real pool returns are exactly these.
"""

from __future__ import annotations

from typing import TypedDict


class EndpointMetrics(TypedDict):
    """One endpoint of PoolMetrics["endpoints"]."""

    healthy: bool | None  # its last health check answered SERVING; None: not checked yet
    ejected: bool  # taken out as an outlier (OutlierPolicy) for now
    picks: int  # calls sent to it
    failures: int  # calls that failed on it
    ejections: int  # times it was ejected
    inflight: int  # calls on it now
    ready: bool  # as discovery reports it (a Kubernetes EndpointSlice's conditions; True elsewhere)
    terminating: bool  # as discovery reports it: it gets no new calls
    health_detail: str  # why its last health check failed ("" when it answered)


class PoolMetrics(TypedDict):
    """A snapshot of the endpoint pool: counts over all endpoints, and each endpoint's by its key
    ("tcp:10.0.0.5:7001")."""

    known: int  # endpoints discovery lists
    healthy: int  # of those, answering health checks
    ejected: int  # of those, ejected as outliers
    available: int  # that a call may go to now
    draining: int  # left discovery or terminating, their calls in flight not ended yet
    ejections: int  # ejections since the pool started
    resends: int  # unary calls an endpoint refused unsent that were sent to another (docs/network-host.md)
    endpoints: dict[str, EndpointMetrics]
