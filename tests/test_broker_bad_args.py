"""A broker id or dial timeout that cannot work is a ConfigError at once, on a real broker pair.

A timeout of nan waited for ever, inf or 1e300 raised OverflowError from the lock's wait, "2" a
TypeError, -1 "timed out after -1s"; an id that is no uint32 raised protobuf's ValueError or
TypeError after a server was built for it, or was waited for until the dial timed out.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator

import pytest

from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.errors import ConfigError
from tests.test_broker import Pair, _close_pair, _make_pair, register

BAD_TIMEOUTS = [math.nan, math.inf, 1e300, -1, 0, "2", True]
BAD_IDS = [2**32, 2**40, -1, "7", 1.5, True]


@pytest.fixture
def pair() -> Iterator[Pair]:
    folder = tempfile.mkdtemp(prefix="bka", dir="/tmp")  # short: unix socket paths stay under 108 bytes
    p = _make_pair(folder, BrokerTransport(socket_dir=folder), BrokerTransport(socket_dir=folder))
    try:
        yield p
    finally:
        _close_pair(p)
        leftovers = os.listdir(folder)
        os.rmdir(folder) if not leftovers else None
        assert leftovers == [], f"broker left sockets behind: {leftovers}"


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_a_bad_dial_timeout_is_a_config_error(pair: Pair, timeout: object) -> None:
    with pytest.raises(ConfigError, match="seconds > 0"):
        pair.host.dial(4242, timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_a_bad_broker_dial_timeout_is_a_config_error(timeout: object) -> None:
    with pytest.raises(ConfigError, match="dial_timeout"):
        GRPCBroker(BrokerTransport(), "host", dial_timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_a_bad_broker_id_is_a_config_error(pair: Pair, bad: object) -> None:
    with pytest.raises(ConfigError, match="uint32"):
        pair.host.accept_and_serve(bad, register("never"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="uint32"):
        pair.plugin.dial(bad, timeout=30)  # type: ignore[arg-type]


def test_the_largest_id_and_a_good_timeout_still_work(pair: Pair) -> None:
    from plugbay._proto.grpc.health.v1 import health_pb2
    from tests.test_broker import check

    pair.host.accept_and_serve(0xFFFFFFFF, register("top"))
    channel = pair.plugin.dial(0xFFFFFFFF, timeout=10)
    assert check(channel, "top") == health_pb2.HealthCheckResponse.SERVING


def test_an_id_of_numpys_integer_kinds_serves_and_dials(pair: Pair) -> None:
    np = pytest.importorskip("numpy", reason="numpy is not installed")
    from plugbay._proto.grpc.health.v1 import health_pb2
    from tests.test_broker import check

    pair.host.accept_and_serve(np.uint32(77), register("np"))  # protobuf took these before ids were checked
    channel = pair.plugin.dial(np.int64(77), timeout=10)
    assert check(channel, "np") == health_pb2.HealthCheckResponse.SERVING
