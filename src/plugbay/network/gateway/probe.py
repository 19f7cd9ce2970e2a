"""Whether the gateway's shared child still answers: a grpc.health.v1 Check now and then.

A child that stopped answering (SIGSTOP, a deadlock, a stuck scheduler) has not exited, so the
keeper's exit check never sees it: health stayed SERVING and every forwarded call waited for its
deadline (one without a deadline held a forwarding slot for good). The keeper's thread ticks a
ChildProbe each poll. After ``interval`` seconds it sends a Check for "plugin" (what go-plugin's health
server registers) over the gateway's channel to the child, and polls its future, so the exit checks
go on meanwhile. A Check with no answer within ``timeout`` is a miss; it is sent again at once. After
MISSES misses in a row the child is reported not answering (the gateway's health turns NOT_SERVING, so
pools eject this gateway); the first answer after that reports it answering again (SERVING).

The child is never restarted for misses: one that is merely slow (a long GC pause, a busy machine)
must not be killed with the calls it is working on; one that exits is restarted by the keeper.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import grpc

from plugbay._proto.grpc.health.v1 import health_pb2

log = logging.getLogger("plugbay.gateway")

MISSES = 2
_CHECK = "/grpc.health.v1.Health/Check"
# grpcio fails a call at once whose deadline it cannot hold (1e10 s, inf: DEADLINE_EXCEEDED), and a
# keepalive TIMEOUT may be inf ("no limit"): an hour stands for it
_MAX_DEADLINE = 3600.0
# past its deadline, the call's own future gets this long to end before it is counted a miss anyway
_LATE = 1.0
# answers of a server without a health entry for "plugin": still a child that answers
_ANSWERED = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND)


class ChildProbe:
    """Health checks of one child at a time; ``reset`` when the child changes. ``on_change(False)``
    after MISSES misses in a row, ``on_change(True)`` at the first answer after that."""

    def __init__(self, interval: float, timeout: float, on_change: Callable[[bool], None]) -> None:
        self.interval, self.timeout = interval, timeout
        self._on_change = on_change
        self._call: grpc.Future | None = None
        self._sent = 0.0
        self._next = math.inf
        self._misses = 0
        self.answering = True

    def reset(self, now: float) -> None:
        """A new child (or none): it counts as answering, and is first checked ``interval`` from now."""
        if self._call is not None:
            self._call.cancel()
        self._call, self._misses, self.answering = None, 0, True
        self._next = now + self.interval  # math.inf: the check is off

    def tick(self, channel: grpc.Channel | None, now: float) -> None:
        """Count an ended Check, or send one when due; never blocks."""
        call = self._call
        if call is not None:
            if not call.done():
                if now - self._sent < self.timeout + _LATE:
                    return
                call.cancel()
            self._call = None
            self._settle(call.done() and _answered(call), now)
        if channel is None or now < self._next:
            return
        # an unregistered method, as forward.py's: registering one on a channel closed meanwhile (the
        # child killed) crashes grpcio, while a call on it raises ValueError
        check = channel.unary_unary(_CHECK, request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                    response_deserializer=health_pb2.HealthCheckResponse.FromString)
        try:
            self._call = check.future(health_pb2.HealthCheckRequest(service="plugin"),
                                      timeout=min(self.timeout, _MAX_DEADLINE))
        except ValueError:  # closed: the child is being replaced, and the next one's channel is checked
            return
        self._sent = now

    def _settle(self, answered: bool, now: float) -> None:
        if answered:
            self._misses = 0
            self._next = self._sent + self.interval
            if not self.answering:
                self.answering = True
                log.info("gateway: the plugin answers its health check again; serving it again")
                self._on_change(True)
            return
        self._misses += 1
        self._next = now  # confirmed (or the recovery seen) at once, not an interval later
        if self.answering and self._misses >= MISSES:
            self.answering = False
            log.warning("gateway: the plugin did not answer %d health checks in a row (%.1fs each) though it"
                        " is running (stopped or wedged?); health is NOT_SERVING until it answers again. It"
                        " is not restarted: one that is only slow keeps its calls", self._misses, self.timeout)
            self._on_change(False)


def _answered(call: grpc.Future) -> bool:
    """Any answer of the child's, whatever the status it reports: this checks that it answers."""
    try:
        call.result(timeout=0)
    except grpc.RpcError as exc:
        return exc.code() in _ANSWERED
    except grpc.FutureCancelledError:
        return False
    return True
