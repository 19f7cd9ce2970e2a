"""A gate in front of the plugin's own handlers, so plugbay's services always answer.

grpcio binds one executor to a server, and a second server cannot share the plugin's port (or its one
multiplexed connection), so health and the controller cannot get a pool of their own. Instead the
executor has ``max_workers`` threads for the plugin's handlers plus ``RESERVED`` more, and the gate lets
at most ``max_workers`` of the plugin's handlers run at once (GatedServer wraps each handler the plugin
registers). A handler that outlives the host's deadline keeps its slot until it returns (an ``async def``
one until its coroutine ends, though its thread stops waiting for it: aiohandlers.Outlived). Once every
slot is taken, a new call waits for one (core/plugin/slotwait.py), at most SLOT_WAIT seconds and its
deadline: a Go plugin has no cap and a Go host does not retry RESOURCE_EXHAUSTED. At most ``limit``
calls wait, on ``limit`` more threads (never the reserved ones); past that, or after the wait, the call
is refused with RESOURCE_EXHAUSTED and the caller's NOT_SENT metadata echoed as a trailer
(core/protocol/notsent.py): the handler never ran, so a host's pool sends the call to another replica
(so is a waiting call once the plugin stops, with UNAVAILABLE). On the network calls do not wait
(saturation is load: another replica serves it at once). Health, GRPCController, GRPCStdio,
GRPCBroker and (network mode) Discovery pass the gate, so the host's health checks and Shutdown answer
whatever the plugin's handlers do. (grpcio's ``maximum_concurrent_rpcs`` counts every service alike, so
it cannot reserve anything for health.)

On the network (serve() with NetworkServe) a peer may open streams and never send their request
message. grpcio's sync server reads a unary request on a pool thread *before* any handler runs, so
such streams held threads no gate saw, until health and every call froze. There
(``read_first=True``) unary-request handlers are registered as stream-request ones that read their
one message under a budget of their own: the plugin's handlers read it holding one of NETWORK_READS
tokens and take their slot once it came (a call waiting for its request holds no handler slot), and
plugbay's own services (``own=True``) take one of NETWORK_OWN_CALLS slots first. The server lets one
connection open at most NETWORK_MAX_STREAMS streams, fewer than either budget: one connection's
stalled streams never take all of one. And one peer address (several connections) holds at most a share
of each budget, the reads', the own calls' and the health Watches' (core/plugin/peershare.py): a host at
another address is still read and answered (a runaway host is bounded, not one holding many addresses).
A host launched locally keeps grpcio's unary path (its unary latency is a benchmarked target).

A handler's failures grpcio answers badly are answered as a Go plugin's (core/transport/handlerfail.py).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from itertools import repeat
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from plugbay.core.transport.handlerfail import answer_failure, called, responses
from plugbay.core.plugin.slotwait import GONE, SLOT_WAIT, STOPPING, WAITED, Slots, take_token
from plugbay.core.plugin.peershare import PeerShares, peer_address, share_of
from plugbay.core.protocol.notsent import echo_not_sent
from plugbay.core.transport.handlerkind import is_async

if TYPE_CHECKING:
    from plugbay.core.transport.aiohandlers import Outlived
    from plugbay.core.transport.handlerloop import Release

# an async handler's call: its coroutines that outlive it hold its slot on (aiohandlers.Outlived)
Tracking = Callable[[grpc.ServicerContext], AbstractContextManager["Outlived"]]

# Threads kept for plugbay's own services: the GRPCStdio and broker streams,
# health Watch streams, health checks, Shutdown, and refusing gated calls.
RESERVED = 16
# Of those, the most that health Watch streams (each holding its thread while open) may take.
MAX_WATCHES = 4
# Network mode. Streams one HTTP/2 connection may have open at once (the server's
# SETTINGS_MAX_CONCURRENT_STREAMS; grpcio resets the ones past it). RFC 9113's advice ("no smaller
# than 100"), and far above what a host keeps open: grpcio's clients do not queue calls reliably near
# the peer's limit (with 16, a host with 15 callers on one connection saw some fail UNAVAILABLE).
NETWORK_MAX_STREAMS = 100
# ... health Watch streams at once on a network server (shared by many hosts, each of which may hold one:
# gRPC's client-side health checking does, one per connection; MAX_WATCHES is a local plugin's).
NETWORK_WATCHES = 32
# ... the plugin's calls waiting for their request message at once (each holds a thread meanwhile).
NETWORK_READS = NETWORK_MAX_STREAMS + 16
# ... plugbay's own calls at once (health, Discovery, Shutdown, stdio, refused broker streams),
# those still waiting for their request included: more than one connection's streams, Watches too.
NETWORK_OWN_CALLS = NETWORK_MAX_STREAMS + NETWORK_WATCHES + 4
# ... and the threads the pool has beyond max_workers: the own calls', the reads', some to refuse calls on.
NETWORK_RESERVED = NETWORK_OWN_CALLS + NETWORK_READS + 4
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
PLUGBAY_SERVICES = ("/grpc.health.v1.Health/", "/plugin.GRPCController/", "/plugin.GRPCStdio/",
                    "/plugin.GRPCBroker/", "/plugbay.network.v1.Discovery/")


class HandlerGate:
    """Refuses a call to the plugin's services while ``limit`` of them are running.

    ``refusal``: the RESOURCE_EXHAUSTED details, for a server whose limit is set elsewhere than
    ServeConfig.max_workers (the gateway's). ``peer_limit``: at most that many of them from one peer IP
    address (see peer_address: peers without one share only ``limit``), refused with ``peer_refusal``
    (formatted with ``peer`` and ``held``), so one caller holding calls open cannot take every slot.
    ``read_first``: a unary request is read by the gate (network mode: see the module's doc), after the
    slot is taken, or before it holding one of ``reads`` tokens when given (one peer address at most
    ``peer_reads`` of them). ``own``: gate plugbay's services (PLUGBAY_SERVICES) and pass the others,
    instead of the reverse; ``peer_watches``: then at most that many health Watches per peer address.
    ``wait``: seconds ``limit`` calls at most wait for a slot (on ``limit`` more threads) before refusal."""

    def __init__(self, limit: int, refusal: str | None = None, *, peer_limit: int | None = None,
                 peer_refusal: str = "{peer} is running {held} calls, the most one peer address may",
                 read_first: bool = False, own: bool = False, reads: int | None = None,
                 peer_reads: int | None = None, peer_watches: int | None = None, wait: float = 0.0) -> None:
        self.limit = limit
        self.wait = wait
        self.read_first = read_first
        self._reading = _Reading(reads, peer_reads) if reads is not None and read_first else None
        self.own = own
        self.peer_limit = peer_limit
        self._peer_refusal = peer_refusal
        self._peers = PeerShares(peer_limit) if peer_limit is not None else None  # running calls per peer
        self._watches = PeerShares(peer_watches) if peer_watches is not None and own else None
        self._refusal = refusal or (
            f"the plugin is already running {limit} calls (ServeConfig.max_workers); earlier calls have"
            " not returned. Retry later; handlers that outlive their deadline should check context.is_active()")
        self._waited = self._refusal
        if wait > 0:
            self._waited = f"{self._refusal} (this call waited {wait:g} s for a slot, or until its deadline)"
            self._refusal += f" ({limit} more calls wait for a slot already)"
        self._slots = Slots(limit, wait)
        self._lock = threading.Lock()
        self._release: Release | None = None  # the asyncio handlers' loop, held for this server
        self._closed = False

    def gated(self, method: str, handler: Any) -> Any:
        """``handler`` for ``method`` ("/pkg.Service/Method") behind the gate; plugbay's services pass
        (only they are gated: ``own``). An ``async def`` handler runs on the process's handler loop
        (transport/aiohandlers.py), which this gate holds until close()."""
        if method.startswith(PLUGBAY_SERVICES) != self.own:
            return handler
        track: Tracking | None = None
        if is_async(handler):
            from plugbay.core.transport.aiohandlers import LOOP, outlived, sync_handler

            handler, track = sync_handler(method, handler, LOOP), outlived
            with self._lock:
                if self._release is None and not self._closed:
                    self._release = LOOP.hold()
        if method == HEALTH_WATCH and self._watches is not None and handler.unary_stream is not None:
            handler = grpc.unary_stream_rpc_method_handler(
                _watch_share(handler.unary_stream, self._watches), handler.request_deserializer,
                handler.response_serializer)
        return self._gate(method, handler, track)

    def close(self, within: float | None = None) -> None:
        """The server has stopped: let go of the asyncio handlers' loop (the last holder ends it, in
        ``within`` seconds at most when given: see handlerloop.Release)."""
        with self._lock:
            self._closed = True
            release, self._release = self._release, None
        if release is not None:
            release(within)

    def _gate(self, method: str, handler: Any, track: Tracking | None) -> Any:
        def unary(behavior: Any) -> Callable[..., Any]:
            return self._unary(behavior, track)

        def streaming(behavior: Any) -> Callable[..., Any]:
            return self._streaming(behavior, track)

        if handler.unary_unary is not None:
            if self.read_first:  # the request arrives as raw bytes, read by the gate
                return grpc.stream_unary_rpc_method_handler(
                    self._read_one(method, unary, handler.unary_unary, handler.request_deserializer),
                    None, handler.response_serializer)
            return grpc.unary_unary_rpc_method_handler(
                unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream is not None:
            if self.read_first:
                return grpc.stream_stream_rpc_method_handler(
                    self._read_one(method, streaming, handler.unary_stream, handler.request_deserializer),
                    None, handler.response_serializer)
            return grpc.unary_stream_rpc_method_handler(
                streaming(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            streaming(handler.stream_stream), handler.request_deserializer, handler.response_serializer)

    def _read_one(self, method: str, slot: Callable[[Any], Any], behavior: Any,
                  deserialize: Callable[[bytes], Any] | None) -> Any:
        """``behavior`` (a unary-request one) behind ``slot`` (_unary or _streaming), its one request read
        by the gate: before the slot holding a read token when the gate has a read budget, else under it."""
        if self._reading is not None:
            return _one_request(method, slot(behavior), deserialize, self._reading)
        return slot(_one_request(method, behavior, deserialize))

    def stop_waiting(self) -> None:
        """The plugin is stopping: calls waiting for a slot are refused (marked not sent), not started."""
        self._slots.stop_waiting()

    def _enter(self, context: grpc.ServicerContext) -> str | None:
        """Take a slot (and the caller's peer's, returned), or abort the call."""
        why = self._slots.take(context)
        if why is not None:
            self._refuse(context, why)
        if self._peers is None:
            return None
        peer = peer_address(str(context.peer()))
        held = self._peers.take(peer)
        if held is not None:
            self._slots.release()
            refuse_unsent(context, self._peer_refusal.format(peer=peer, held=held))
        return peer

    def _refuse(self, context: grpc.ServicerContext, why: str) -> NoReturn:
        """Abort a call that got no slot, ``why`` (slotwait's reasons)."""
        if why == STOPPING:
            refuse_unsent(context, "the plugin is stopping; the call waited for a slot and never ran",
                          grpc.StatusCode.UNAVAILABLE)
        if why == GONE:  # its caller cancelled while it waited: nobody reads this
            context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled while it waited for a slot")
            raise AssertionError("abort() raises")
        # all taken: that is the reason, whoever holds them
        refuse_unsent(context, self._waited if why == WAITED else self._refusal)

    def _leave(self, peer: str | None) -> None:
        self._slots.release()
        if self._peers is not None:
            self._peers.give(peer)

    def _unary(self, behavior: Callable[[Any, grpc.ServicerContext], Any],
               track: Tracking | None = None) -> Callable[..., Any]:
        """``behavior`` holding a slot; until its coroutines end, too, when ``track`` (an async handler)."""
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            peer = self._enter(context)
            if track is None:
                try:
                    return behavior(request, context)
                except BaseException as exc:
                    answer_failure(context, exc)
                    raise
                finally:
                    self._leave(peer)
            with track(context) as outlived:
                try:
                    return behavior(request, context)
                except BaseException as exc:
                    answer_failure(context, exc)
                    raise
                finally:
                    outlived.then(lambda: self._leave(peer))
        return run

    def _streaming(self, behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
                   track: Tracking | None = None) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            peer = self._enter(context)
            if track is None:
                try:
                    yield from responses(called(behavior, request, context), context)
                except BaseException as exc:
                    answer_failure(context, exc, closed=True)
                    raise
                finally:
                    self._leave(peer)
                return
            with track(context) as outlived:
                try:
                    yield from responses(called(behavior, request, context), context)
                except BaseException as exc:
                    answer_failure(context, exc, closed=True)
                    raise
                finally:
                    outlived.then(lambda: self._leave(peer))
        return run


def refuse_unsent(context: grpc.ServicerContext, why: str,
                  code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED) -> NoReturn:
    """End a call none of which reached the plugin's code (RESOURCE_EXHAUSTED: a gate turned it away),
    marked as one that was not sent (core/protocol/notsent.py), so a host's pool tries its other replicas."""
    echo_not_sent(context)
    context.abort(code, why)
    raise AssertionError("abort() raises")


class _Reading:
    """Calls waiting for their request message: at most ``limit`` at once, ``peer_limit`` of them from one
    peer address, the rest refused at once."""

    def __init__(self, limit: int, peer_limit: int | None = None) -> None:
        self.limit = limit
        self._tokens: deque[None] = deque(repeat(None, limit))  # taken and given without a lock (slotwait.py)
        self._peers = PeerShares(peer_limit) if peer_limit is not None else None

    def read(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes | None:
        if not take_token(self._tokens):
            refuse_unsent(context, (
                f"the plugin has {self.limit} calls waiting for their request message, the most it may at once"
                " (their callers have not sent it). Retry later"))
        peer = None
        if self._peers is not None:
            peer = peer_address(str(context.peer()))
            held = self._peers.take(peer)
            if held is not None:
                self._tokens.append(None)
                refuse_unsent(context, (
                    f"{peer} has {held} calls to the plugin waiting for their request message, the most one"
                    " peer address may at once (its callers have not sent it). Retry later"))
        try:
            return next(requests, None)  # a cancelled call raises here, an error grpcio keeps quiet
        finally:
            self._tokens.append(None)
            if self._peers is not None:
                self._peers.give(peer)


def _watch_share(behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
                 shares: PeerShares) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """A health Watch, at most ``shares.share`` of them open per peer address."""
    def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        peer = peer_address(str(context.peer()))
        held = shares.take(peer)
        if held is not None:
            refuse_unsent(context, f"{peer} holds {held} health Watch streams, the most one peer address may;"
                          " close one, or poll with Check")
        try:
            yield from behavior(request, context)
        finally:
            shares.give(peer)
    return run


def _one_request(method: str, behavior: Callable[[Any, grpc.ServicerContext], Any],
                 deserialize: Callable[[bytes], Any] | None,
                 reading: _Reading | None = None) -> Callable[[Iterator[bytes], grpc.ServicerContext], Any]:
    """``behavior`` (a unary-request one) called with the one request read off a request stream, as
    grpcio's unary path reads it (its status and details when there is none, or it cannot be read);
    read holding one of ``reading``'s tokens, when given."""
    def run(requests: Iterator[bytes], context: grpc.ServicerContext) -> Any:
        # a cancelled call raises in next(), an error grpcio keeps quiet
        data = next(requests, None) if reading is None else reading.read(requests, context)
        if data is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f'"{method}" requires exactly one request message.')
            raise AssertionError("abort() raises")
        if deserialize is None:
            return behavior(data, context)
        try:
            request = deserialize(data)
        except Exception:
            context.abort(grpc.StatusCode.INTERNAL, "Exception deserializing request!")
            raise AssertionError("abort() raises") from None
        return behavior(request, context)
    return run


def serve_gates(max_workers: int, network: bool) -> tuple[HandlerGate, HandlerGate | None, int]:
    """serve()'s gates: the plugin's handlers', plugbay's own services' (network mode only; see the
    module's doc), and how many threads its server's pool has."""
    if not network:
        return HandlerGate(max_workers, wait=SLOT_WAIT), None, 2 * max_workers + RESERVED
    gate = HandlerGate(max_workers, read_first=True, reads=NETWORK_READS, peer_reads=share_of(NETWORK_READS))
    return gate, own_gate("plugin", per_peer=True), max_workers + NETWORK_RESERVED


def own_gate(who: str, *, per_peer: bool = False) -> HandlerGate:
    """The gate of plugbay's own services on a network server (NETWORK_OWN_CALLS slots, taken before the
    request is read); ``who`` answers them ("plugin", "gateway"). Its server needs as many threads more.
    ``per_peer``: one peer address holds at most a share of the slots, and of NETWORK_WATCHES."""
    return HandlerGate(NETWORK_OWN_CALLS, (
        f"the {who} is already answering {NETWORK_OWN_CALLS} calls to plugbay's own services (health,"
        " Discovery, GRPCController, GRPCStdio, GRPCBroker), the most it may at once: earlier ones have not"
        " ended (or not sent their request). Retry later"), read_first=True, own=True,
        peer_limit=share_of(NETWORK_OWN_CALLS) if per_peer else None,
        peer_refusal=("{peer} has {held} calls to plugbay's own services open or waiting for their request,"
                      " the most one peer address may. Retry later"),
        peer_watches=share_of(NETWORK_WATCHES) if per_peer else None)
