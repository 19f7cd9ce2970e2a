"""The grpc.Channel face of the endpoint pool, one endpoint's bookkeeping, and the pinned channel.

Kept apart from plugbay.network.pool so that each file stays one concern: the
pool decides; these are the shapes it hands out.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc

from plugbay._proto.grpc.health.v1 import health_pb2_grpc
from plugbay.core.transport.secure import Redial
from plugbay.network.ejection import EjectionState
from plugbay.network.poolcalls import PoolCallable
from plugbay.network.resolver import Endpoint
from plugbay.network.tlsprobe import Unreached


class Member:
    """One endpoint: its channel, health, outlier state and counters."""

    def __init__(self, endpoint: Endpoint, channel: grpc.Channel, redial: Redial | None = None,
                 tls_set: object = None) -> None:
        self.endpoint = endpoint
        self.key = endpoint.key
        self.channel = channel
        self.redial = redial  # how to dial it again on grpc.aio (AsyncRemoteClient): None where that cannot be
        self.health_stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        self.healthy: bool | None = None  # None: not checked yet
        # until then (set when it joins the pool), while no check has answered, calls go elsewhere or wait
        self.first_check_by = 0.0
        self.first_round = False  # found by the pool's start: calls wait for its first check (PoolHealth.welcome)
        self.health_detail = ""  # why its last health check failed, with what that means for TLS
        self.check_error = ""  # that check's own failure, as gRPC worded it
        self.refused_since: float | None = None  # its checks failed with a refused connection since then
        self.outlier = EjectionState()
        self.picks = 0
        self.failures = 0
        self.inflight = 0
        self.draining_since: float | None = None
        self.checking = False
        self.tls_failure: str | None = None  # what the last health check or TLS probe said about TLS
        # the last definite TLS failure found, kept through failures that say nothing about TLS (a refused
        # connection) until the endpoint answers over TLS (PoolTLS.tls_answered); named in its health detail
        self.tls_learned: str | None = None
        self.tls_warned: str | None = None  # the last TLS failure logged as a warning
        self.tls_suspect = False  # its connection closed during setup: a TLS probe is to tell why
        self.probed_at: float | None = None
        self.tls_proven = False  # a health check answered over TLS: it takes this host's certificate
        self.closing_since: float | None = None  # first probe that saw a close right after the handshake
        self.unreached: Unreached | None = None  # the last probe's own dial was refused (tlsprobe.Unreached)
        self.closed = False  # set (under ``lock``) before its channel closes: see build() and retire()
        self.lock = threading.Lock()
        self.tls_set = tls_set  # the NetworkTLS files its channel presents (tlsfiles.ClientSet)
        self.renewed = False  # replaced by a channel with renewed files: it closes when its calls end
        self.drained = False  # closed by the drain (it left): calls it cuts fail typed (poolcalls.drain_cut)

    def carry_over(self, old: Member) -> None:
        """Take the place of ``old``, the same endpoint dialed with other TLS files: its standing (health,
        ejection, counters) stays; what it said about TLS was said of the old files."""
        self.endpoint = old.endpoint
        self.healthy, self.check_error, self.refused_since = old.healthy, old.check_error, old.refused_since
        said_tls = old.tls_failure is not None or old.tls_learned is not None  # of the old files: not carried
        self.health_detail = old.check_error if said_tls else old.health_detail
        self.first_check_by = old.first_check_by
        self.outlier = old.outlier  # shared: calls still on the old channel count toward it
        self.picks, self.failures = old.picks, old.failures

    def build(self, kind: str, method: str, ser: Any, de: Any) -> Any:
        """A call object on its channel; ValueError("closed channel") once retire() began. Under the lock
        that retire() takes: grpcio crashes the process (SIGSEGV) when one is built on a closed channel,
        and the pool or its health thread may close the channel just after a call picked this endpoint."""
        with self.lock:
            if self.closed:
                raise ValueError(f"closed channel (endpoint {self.key})")
            factory = getattr(self.channel, kind)
            return factory(method, request_serializer=ser, response_deserializer=de, _registered_method=True)

    def retire(self) -> None:
        """Close its channel; calls built on it before then fail with grpcio's ValueError (not sent)."""
        with self.lock:
            self.closed = True
        self.channel.close()

    def pickable(self, now: float, ejected_too: bool = False) -> bool:
        ep = self.endpoint
        return (self.draining_since is None and ep.ready and not ep.terminating
                and self.healthy is not False and (ejected_too or not self.outlier.ejected(now)))

    def awaiting_check(self, now: float) -> bool:
        """Whether its first health check is still to answer, within its bound (``first_check_by``)."""
        return self.healthy is None and now < self.first_check_by

    def holds_calls(self, now: float) -> bool:
        """Found by the pool's start and awaiting its first check: every call waits (PoolHealth.welcome)."""
        return self.first_round and self.awaiting_check(now) and self.pickable(now)


class CallChannel(grpc.Channel):  # type: ignore[misc]
    """A grpc.Channel whose four multicallable factories go through ``_make``."""

    def _make(self, kind: str, method: str, ser: Any, de: Any) -> Any:
        raise NotImplementedError

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool = False) -> Any:
        return self._make("unary_unary", method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> Any:
        return self._make("unary_stream", method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> Any:
        return self._make("stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool = False) -> Any:
        return self._make("stream_stream", method, request_serializer, response_deserializer)




class PinnedChannel(CallChannel):
    """The pool, restricted to one endpoint (brokered stubs stay on the endpoint they came from)."""

    def __init__(self, pool: Any, key: str) -> None:
        self.pool, self.key = pool, key

    def _make(self, kind: str, method: str, ser: Any, de: Any) -> Any:
        return PoolCallable(self.pool, kind, method, ser, de, pin=self.key)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self.pool.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self.pool.unsubscribe(callback)

    def close(self) -> None:
        """The pool owns the connection."""
