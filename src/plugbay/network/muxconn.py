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
import threading
from collections.abc import Sequence
from typing import Any

import grpc

from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.stream import host_broker
from plugbay.core.transport.keepalive import Keepalive
from plugbay.core.transport.muxhost import HostMux
from plugbay.core.transport.relay import DRAIN_TIMEOUT, ContextSource, TLSRelay
from plugbay.core.transport.grpcoptions import with_defaults
from plugbay.core.transport.secure import CHANNEL_OPTIONS, Redial, grpc_target
from plugbay.core.transport.sockets import open_listener
from plugbay.errors import BrokerError
from plugbay.network.resolver import Endpoint
from plugbay.core.transport.channels import DelegatingChannel
from plugbay.core.transport.tempdirs import make_tempdir

_TLS_TIMEOUT = 10.0


class MuxEndpoint(DelegatingChannel):
    """A grpc.Channel to one endpoint through its yamux session, plus that session's broker."""

    def __init__(self, endpoint: Endpoint, context: ContextSource, server_name: str | None,
                 options: Sequence[tuple[str, Any]] = (), keepalive: Keepalive | None = None) -> None:
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._broker: GRPCBroker | None = None
        self._waits: set[grpc.Future] = set()  # broker()'s waits for the session, which close() ends
        self._closed = False
        self._dir = make_tempdir("plugbay-netmux-")
        self._relay: TLSRelay | None = None
        self._mux: HostMux | None = None
        try:
            path = os.path.join(self._dir, "tls.sock")
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
            # plugbay's message limits as every other channel of its has (grpc's own: 4 MiB received)
            opts = with_defaults(CHANNEL_OPTIONS, options)
            self._channel = grpc.insecure_channel(grpc_target(*local), options=opts)
            self.redial = Redial(grpc_target(*local), None, opts)  # an AsyncRemoteClient's way in
        except BaseException:
            self.close()
            raise

    def broker(self, timeout: float, limit: str = "call_timeout") -> GRPCBroker:
        """This endpoint's broker (a new one when the session, and so the old broker's stream, was lost).

        A new one waits up to ``timeout`` for the session to come up, without holding this endpoint's
        lock, so close() from another thread ends that wait at once instead of waiting it out."""
        with self._lock:
            broker = self._alive_broker()
            if broker is not None:
                return broker
            ready = grpc.channel_ready_future(self._channel)
            self._waits.add(ready)
        try:
            # the broker's stream is opened once, without waiting: the session must be up first
            ready.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise BrokerError(f"the multiplexed connection to endpoint {self.endpoint.key} did not come up"
                              f" within {timeout:g}s (the client's {limit}), so it has no broker; check that"
                              " the plugin runs there and dispense() again") from None
        except grpc.FutureCancelledError:
            raise self._closed_error() from None
        finally:
            with self._lock:  # once: grpc's future fails a second cancel(), so close() cancels the rest
                if ready in self._waits:
                    self._waits.discard(ready)
                    ready.cancel()  # a wait that timed out must not keep watching the channel
        with self._lock:
            broker = self._alive_broker()  # another dispense() may have made it meanwhile
            if broker is not None:
                return broker
            if self._broker is not None:
                self._broker.close()
            assert self._mux is not None
            self._broker = host_broker(self._channel, BrokerTransport(multiplex=True, mux=self._mux))
            return self._broker

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
