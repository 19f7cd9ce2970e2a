"""The broker a RemoteClient as a whole offers: none, refused with a typed error saying what works instead."""

from __future__ import annotations

from typing import Any, Callable

import grpc

from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.errors import BrokerError


class NetworkBroker(GRPCBroker):
    """The broker of a RemoteClient as a whole: refused, saying why and what works instead."""

    def __init__(self, why: str) -> None:
        super().__init__(BrokerTransport(), "host")
        self.why = why

    def _refuse(self) -> BrokerError:
        return BrokerError(self.why)

    def accept_and_serve(self, id: int, register: Callable[[grpc.Server], None], *, loop: Any = None) -> None:
        raise self._refuse()

    def dial(self, id: int, timeout: float | None = None) -> grpc.Channel:
        raise self._refuse()


NO_BROKER_ASKED = ("this RemoteClient was made with RemoteConfig(brokered=False), which reaches the plugin over"
                    " plain gRPC without brokered connections (callbacks such as the counter example's"
                    " AddHelper); drop brokered=False to use them")
NO_BROKER = ("brokered connections (callbacks such as the counter example's AddHelper) need a remote plugin"
              " that multiplexes them (Discovery multiplex=true: a plugbay plugin served with TLS and"
              " NetworkServe(multiplex=True), the default); this one serves plain gRPC calls only. Serve it"
              " that way, or use a launched plugin (Client with cmd= or a runner)")
POOL_BROKER = ("a RemoteClient with brokered connections has one broker per endpoint: use the broker the"
                " dispensed stub was built with (RemoteClient.dispense() pins each stub to one endpoint and"
                " its broker; a Supervisor's stubs are spread over endpoints, so take brokered stubs from the"
                " RemoteClient)")
