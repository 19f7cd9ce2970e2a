"""A stub pinned to one endpoint (a brokered session's) that cannot take a call says why, with what the
endpoint's health checks saw, as an unpinned call's error does."""

from __future__ import annotations

import socket
import time

import pytest

from plugbay.errors import NoEndpointsError
from plugbay.network.pool import EndpointPool
from plugbay.network.resolver import Endpoint
from plugbay.network.unsent import Tried
from tests.test_network_tls_renewal import _Steered
from tests.resilience_util import wait_until


def test_a_pinned_stubs_no_endpoint_error_carries_the_health_detail() -> None:
    with socket.socket() as held:  # a port nothing listens on (bound, never listening: refuses)
        held.bind(("127.0.0.1", 0))
        endpoint = Endpoint("tcp", f"127.0.0.1:{held.getsockname()[1]}")
        pool = EndpointPool(_Steered([endpoint]), insecure=True, health_interval=0.1, health_timeout=1.0,
                            unhealthy_after=1)
        try:
            pool.start()
            member = pool.member(endpoint.key)
            assert member is not None
            assert wait_until(lambda: member.healthy is False and member.health_detail != "", 10)
            with pytest.raises(NoEndpointsError) as err:
                pool.pick(time.monotonic() + 0.2, Tried(), pin=endpoint.key)
            assert "pinned" in str(err.value) and member.health_detail in str(err.value), str(err.value)
        finally:
            pool.close()
