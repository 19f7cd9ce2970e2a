"""One endpoint of a brokering remote plugin: ONE TLS connection carrying a yamux session.

go-plugin's multiplexed broker, over the network: for each endpoint the host
opens one TLS connection (a TLSRelay in originate mode: OpenSSL, on the
shared I/O loop, so yamux never touches an ssl.SSLSocket from two threads) and runs a
HostMux over it. The endpoint's main gRPC channel is a stream of that session;
its GRPCBroker(multiplex=True) knocks for brokered streams in the same
session, so the plugin instance serving this host (plugbay.core.plugin.netmux:
one per session) reaches the host's brokered servers and the other way round.

A lost connection is made again when gRPC reconnects (a new session: the
plugin gives it a new instance), so ``broker()`` starts a new broker once the
old one's stream ended.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc

from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.stream import host_broker
from plugbay.core.transport.keepalive import Keepalive
from plugbay.core.transport.muxhost import HostMux
from plugbay.core.transport.yamux import Session
from plugbay.core.transport.relay import DRAIN_TIMEOUT, ContextSource, TLSRelay
from plugbay.core.transport.grpcoptions import with_defaults
from plugbay.core.transport.secure import CHANNEL_OPTIONS, Redial, grpc_target
from plugbay.core.transport.sockets import open_listener
from plugbay.errors import BrokerClosedError, BrokerError, SessionRefusedError
from plugbay.network.resolver import Endpoint
from plugbay.core.transport.channels import DelegatingChannel
from plugbay.core.transport.tempdirs import make_tempdir
from plugbay.core.transport.yrefuse import REFUSALS, REFUSED, REFUSED_PEER

_TLS_TIMEOUT = 10.0
# broker()'s wait for the channel: any answer (grpc.health.v1 serves it in every plugin instance and
# go-plugin child) means the connection is up; wait_for_ready holds the call until it is
_READY_PROBE = "/grpc.health.v1.Health/Check"
_REFUSAL_CHECK = 0.1  # how often that wait looks whether the plugin refused the session


def refused_error(where: str, reason: str) -> SessionRefusedError:
    """The error of a brokering session the plugin at ``where`` refused for ``reason`` (yrefuse's)."""
    per_address = REFUSALS[REFUSED_PEER] in reason
    raise_it = ("raise the plugin's cap on sessions from one address (NetworkServe(max_peer_sessions=N),"
                " PLUGBAY_NETWORK_MAX_PEER_SESSIONS, or the gateway's --max-peer-sessions), close unused"
                " clients of hosts at this address," if per_address else "close unused clients of its hosts,")
    return SessionRefusedError(
        f"remote plugin {where} refused this host's brokering (multiplexed) session:"
        f" {reason.removeprefix(REFUSED + ': ')}. Brokered"
        f" connections (callbacks) need one: {raise_it} or connect with RemoteConfig(brokered=False) for"
        " plain gRPC calls, which need no session", reason)


def refusal_of(muxes: Iterable[MuxEndpoint], where: str) -> SessionRefusedError | None:
    """The error to raise when the plugin refused every one of ``muxes``' sessions (an endpoint it
    accepted, or has yet to answer, may still carry the calls); None otherwise."""
    found = [(mux, mux.refusal) for mux in muxes]
    if not found or any(reason is None for _, reason in found):
        return None
    mux, reason = found[0]
    assert reason is not None
    return refused_error(f"{where} (endpoint {mux.endpoint.key})" if where else f"at {mux.endpoint.key}",
                         reason)


class _Ended:
    """The session of a broker replaced since (MuxEndpoint.session_for): it ended."""

    closed = True
    close_reason = "a later session replaced it"


_ENDED = _Ended()


class Sessions:
    """The MuxEndpoints a client made (weakly: the pool holds the live ones), safe to list from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: weakref.WeakSet[MuxEndpoint] = weakref.WeakSet()

    def add(self, mux: MuxEndpoint) -> MuxEndpoint:
        with self._lock:
            self._made.add(mux)
        return mux

    def __iter__(self) -> Iterator[MuxEndpoint]:
        with self._lock:
            return iter(list(self._made))


class RefusalWatch:
    """``with RefusalWatch(muxes, stop):`` calls ``stop()`` (closing the pool, which ends a wait for an
    endpoint) once the plugin refused every one of ``muxes``' sessions: a refused session is dialed
    again and again, and the wait went on to the client's start_timeout."""

    def __init__(self, muxes: Iterable[MuxEndpoint], stop: Callable[[], None]) -> None:
        self._muxes = muxes
        self._stop = stop
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="plugbay-refusal-watch", daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(_REFUSAL_CHECK):
            if refusal_of(self._muxes, "") is not None:
                self._stop()
                return

    def __enter__(self) -> RefusalWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


class MuxEndpoint(DelegatingChannel):
    """A grpc.Channel to one endpoint through its yamux session, plus that session's broker."""

    def __init__(self, endpoint: Endpoint, context: ContextSource, server_name: str | None,
                 options: Sequence[tuple[str, Any]] = (), keepalive: Keepalive | None = None,
                 reconnect: Sequence[tuple[str, Any]] = ()) -> None:
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._broker: GRPCBroker | None = None
        self._broker_session: Session | None = None  # the yamux session the broker's stream rides
        self._waits: set[grpc.Future] = set()  # broker()'s waits for the session, which close() ends
        self._closed = False
        self._redialing: grpc.Future | None = None  # redial_soon()'s probe
        self._dial_checked: float | None = None  # when check_dial() last had the relay dial (time.monotonic())
        self._dir = make_tempdir("plugbay-netmux-")
        self._relay: TLSRelay | None = None
        self._mux: HostMux | None = None
        try:
            path = self._relay_path = os.path.join(self._dir, "tls.sock")
            listener = open_listener("unix", path)
            os.chmod(path, 0o600)
            host = server_name or endpoint.address.rpartition(":")[0].strip("[]")
            # the relay gives a silent peer as long as the keepalive does
            self._relay = TLSRelay(listener, (endpoint.network, endpoint.address), context, "originate",
                                   server_hostname=host, handshake_timeout=_TLS_TIMEOUT,
                                   drain_timeout=keepalive.timeout if keepalive is not None else DRAIN_TIMEOUT)
            # the relay accepts at once and dials the plugin per connection: nothing blocks here
            self._mux = HostMux("unix", path, timeout=_TLS_TIMEOUT, max_redials=None, keepalive=keepalive)
            local = self._mux.local_address
            # plugbay's message limits as every other channel of its has (grpc's own: 4 MiB received); the
            # pool's reconnect backoff (poolhealth.reconnect_backoff): gRPC's redials pace the session's
            opts = with_defaults([*CHANNEL_OPTIONS, *reconnect], options)
            self._channel = grpc.insecure_channel(grpc_target(*local), options=opts)
            self.redial = Redial(grpc_target(*local), None, opts)  # an AsyncRemoteClient's way in
        except BaseException:
            self.close()
            raise

    @property
    def session_up(self) -> bool:
        """Whether this endpoint's yamux session is up: the plugin answered on it, and it has not read the
        end of its connection (a replica killed or stopped is seen here at once, not at a health check)."""
        mux = self._mux
        session = mux.session if mux is not None else None
        return not self._closed and session is not None and not session.closed and session.answered

    @property
    def redial_refused_at(self) -> float | None:
        """When (time.monotonic()) the newest dial to this endpoint that was refused or reset began (nothing listened);
        None when it connected. A session only lost (a cut connection) is dialed again by the next call, and this
        is None again once that dial connects."""
        relay = self._relay
        return relay.dial_refused_at if relay is not None else None

    def check_dial(self, since: float) -> None:
        """Have the relay dial this endpoint's address once more now, unless it was had to at or after ``since``
        (time.monotonic()): a pinned call judges its replica by a refusal met after the call began (pinkey), and
        gRPC's own next redial may be a reconnect backoff away. The connection made to the relay for it is closed
        at once: the relay's dial runs all the same and stamps its outcome (redial_refused_at); a dial that
        connects ends after its TLS handshake, with nothing to carry. One knock at a time: while the last one's
        dial has no outcome (an address that answers nothing), no other is made until the relay gave up on it
        (its handshake timeout). Cheap and non-blocking (the caller holds the pool's lock)."""
        relay = self._relay
        with self._lock:
            checked, now = self._dial_checked, time.monotonic()
            if self._closed or relay is None or (checked is not None and checked >= since):
                return
            if checked is not None and relay.dial_outcome_begun < checked and now - checked < _TLS_TIMEOUT:
                return  # the last knock's dial is still under way
            self._dial_checked = now
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as knock:
                knock.setblocking(False)
                try:
                    knock.connect(self._relay_path)
                except OSError:  # the relay's backlog full, or closed: the call's next look asks again
                    self._dial_checked = checked

    def redial_soon(self) -> None:
        """Have this endpoint's session made again if it was lost, without waiting (the caller may hold the pool's
        lock): gRPC redials only when something calls, and a pinned call waits for the session (pinkey.Pin) before
        it is sent. The ready probe broker() waits on is sent, held until the connection is up; one under way is
        not doubled, and close() ends it."""
        with self._lock:
            if self._closed or (self._redialing is not None and not self._redialing.done()):
                return
            probe = self._channel.unary_unary(_READY_PROBE).future(b"", timeout=_TLS_TIMEOUT, wait_for_ready=True)
            self._redialing = probe
            self._waits.add(probe)

        def done(_: object) -> None:
            with self._lock:
                self._waits.discard(probe)

        probe.add_done_callback(done)

    def broker(self, timeout: float, limit: str = "call_timeout", wait: float | None = None,
               give_up: Callable[[], bool] | None = None) -> GRPCBroker | None:
        """This endpoint's broker (a new one when the session, and so the old broker's stream, was lost).

        A new one waits up to ``wait`` (``timeout``, the figure an error names, when None) for the session
        to come up, without holding this endpoint's lock, so close() from another thread ends that wait at
        once instead of waiting it out; so does ``give_up()`` turning True (then None: pin elsewhere)."""
        with self._lock:
            broker = self._alive_broker()
            if broker is not None:
                return broker
            # the broker's stream is opened once, without waiting: the channel must be up first. Not
            # grpc.channel_ready_future: its connectivity poll (0.2 s watches) outlives the wait, and
            # closing the channel waits for the watch in flight (every brokered close took 0.2 s more)
            ready = self._channel.unary_unary(_READY_PROBE).future(
                b"", timeout=timeout if wait is None else wait, wait_for_ready=True)
            self._waits.add(ready)
        try:
            while True:  # a refused session keeps being dialed again: it is told apart, and said, at once
                try:
                    ready.result(timeout=_REFUSAL_CHECK)
                    break
                except grpc.FutureTimeoutError:
                    refused = refusal_of([self], "")
                    if refused is not None:
                        raise refused from None
                    if give_up is not None and give_up():
                        return None
        except grpc.FutureCancelledError:
            raise self._closed_error() from None
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code == grpc.StatusCode.CANCELLED:
                raise self._closed_error() from None
            refused = refusal_of([self], "")  # the session was cut under the wait
            if refused is not None:
                raise refused from None
            if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                raise BrokerError(f"the multiplexed connection to endpoint {self.endpoint.key} did not come up"
                                  f" within {timeout:g}s (the client's {limit}), so it has no broker; check that"
                                  " the plugin runs there and dispense() again") from None
            # any other answer (UNIMPLEMENTED from a plugin without health) came over a ready connection
        finally:
            with self._lock:
                self._waits.discard(ready)
            ready.cancel()  # refused: the call must not wait on for the connection (done: a no-op)
        with self._lock:
            broker = self._alive_broker()  # another dispense() may have made it meanwhile
            if broker is not None:
                return broker
            if self._broker is not None:
                self._broker.close()
            assert self._mux is not None
            self._broker = host_broker(self._channel, BrokerTransport(multiplex=True, mux=self._mux))
            self._broker_session = self._mux.session  # the one the ready probe just answered on
            return self._broker

    def session_for(self, broker: object | None) -> Session | _Ended | None:
        """The yamux session ``broker`` (one of this endpoint's) rides, what a stub built with it is tied to
        (plugbay.network.pinkey); None for ``broker`` None: the session up now. A broker replaced since rode an
        earlier session, which ended: a closed stand-in says so."""
        with self._lock:
            if broker is None:
                mux = self._mux
                return mux.session if mux is not None else None
            return self._broker_session if broker is self._broker else _ENDED

    def client_closed(self, error: Callable[[str], BrokerClosedError]) -> None:
        """Its client is being closed: what its broker's use raises from now on (GRPCBroker.closed_error)."""
        with self._lock:
            if self._broker is not None:
                self._broker.closed_error = error

    @property
    def serving(self) -> bool:
        """Whether this session's broker serves brokered servers (a callback of the plugin's may be under way)."""
        broker = self._broker
        return broker is not None and broker.serving

    @property
    def refusal(self) -> str | None:
        """Why the plugin refused this endpoint's session (a cap of its on sessions), until it accepts one."""
        mux = self._mux
        return mux.refusal if mux is not None else None

    def _alive_broker(self) -> GRPCBroker | None:
        if self._closed:
            raise self._closed_error()
        broker = self._broker
        return broker if broker is not None and not broker.closed and broker.lost_reason is None else None

    def _closed_error(self) -> BrokerError:
        return BrokerError(f"the connection to endpoint {self.endpoint.key} was closed (its client was closed,"
                           " or discovery dropped the endpoint) while a stub waited for its broker; dispense()"
                           " again on an open client")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            broker, self._broker = self._broker, None
            for ready in self._waits:  # ends broker()'s waits now, not at their timeout
                ready.cancel()
            self._waits.clear()
        if broker is not None:
            broker.close()
        channel = getattr(self, "_channel", None)
        if channel is not None:
            channel.close()
        if self._mux is not None:
            self._mux.close()
        if self._relay is not None:
            self._relay.close()
        shutil.rmtree(self._dir, ignore_errors=True)
