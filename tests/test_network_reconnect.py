"""A replica back after a long outage is used again within a few health ticks (the pool's reconnect backoff).

gRPC's default backoff (1 s, x1.6, +-20%, capped at 120 s) tries the address of a replica killed at
t=0 again at about 1, 2.6, 5.2, 9.3, 15.8, 26.3, 43.1 s: past 20 s down, its next try comes at least
13 s after the one before, and the pool's health checks fail at once meanwhile, without a connection
tried. While the replica is down its port is held by a stand-in that takes each connection attempt and
drops it (gRPC backs off the same as on a refusal): the replica then comes back right after one of
gRPC's attempts, the worst moment, and the wait the test sees is the backoff's, not luck's (the pool's
TLS probes of a connection closed during setup are told apart and ignored). No FAST_RECONNECT here.
"""

from __future__ import annotations

import socket
import ssl
import time

from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, Replica

from plugbay import RemoteClient, RemoteConfig
from plugbay.network.muxconn import MuxEndpoint
from plugbay.network.pool import EndpointPool
from plugbay.network.resolver import Endpoint
from plugbay.network.static import StaticResolver

TICK = 0.5  # health_interval: the pool caps the backoff at two of them (1 s, +-20%)
DOWN = 20.0  # gRPC's own next try is then 13+ s away; 1.2 s at most with the pool's cap
BOUND = 8  # health ticks from the replica's return to a served call: 4 s (the old code: 10 s or more)


def _hold(port: int, until: float) -> float | None:
    """Take and drop connections to ``port`` until gRPC tries one past ``until``: when (None: not by +60 s)."""
    with socket.socket() as stand_in:
        stand_in.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        stand_in.bind(("127.0.0.1", port))
        stand_in.listen(16)
        stand_in.settimeout(0.5)
        while time.monotonic() < until + 60:
            try:
                conn, _ = stand_in.accept()
            except TimeoutError:
                continue
            with conn:  # gRPC's own attempt opens with HTTP/2's preface; the pool's TLS probe with a ClientHello
                conn.settimeout(1.0)
                try:
                    grpc_attempt = conn.recv(4) == b"PRI "
                except OSError:
                    grpc_attempt = False
            if grpc_attempt and time.monotonic() >= until:
                return time.monotonic()
    return None


def test_a_replica_back_after_a_long_outage_serves_within_a_few_health_ticks() -> None:
    replica = Replica("127.0.0.1:0")
    port = replica.port
    cfg = RemoteConfig(target=f"static:///127.0.0.1:{port}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                       health_interval=TICK, health_timeout=0.5, call_timeout=0.5, name="kv-back")
    try:
        with RemoteClient(cfg) as client:
            kv = client.dispense(PLUGIN_NAME)
            kv.put("k", b"v")
            replica.kill9()
            replica.stop()
            attempt = _hold(port, time.monotonic() + DOWN)
            assert attempt is not None, "the pool made no connection attempt to the replica's address"
            replica = Replica(f"127.0.0.1:{port}")
            back, served = time.monotonic(), None
            while served is None and time.monotonic() < back + BOUND * TICK:
                try:
                    kv.put("k", b"again")  # each try bounded by call_timeout
                    served = True
                except Exception:  # NoEndpointsError while the pool has not seen it back
                    time.sleep(0.05)
            waited = time.monotonic() - back
            assert served is not None, (f"no call served {waited:.1f}s ({waited / TICK:.0f} health ticks) after"
                                        f" the replica came back: {client.metrics()['endpoints']}")
    finally:
        replica.stop()


def test_the_reconnect_cap_follows_the_health_interval_and_a_callers_options_win() -> None:
    from plugbay.network.poolhealth import reconnect_backoff

    assert reconnect_backoff(1.0) == [("grpc.initial_reconnect_backoff_ms", 1000),
                                      ("grpc.max_reconnect_backoff_ms", 2000)]
    assert reconnect_backoff(0.1) == [("grpc.initial_reconnect_backoff_ms", 500),
                                      ("grpc.max_reconnect_backoff_ms", 500)]
    assert dict(reconnect_backoff(600))["grpc.max_reconnect_backoff_ms"] == 120_000
    mine = ("grpc.max_reconnect_backoff_ms", 30_000)
    pool = EndpointPool(StaticResolver([Endpoint("tcp", "127.0.0.1:1")]), insecure=True, health_interval=0.5,
                        options=[mine])
    try:
        pool.start()
        member = pool.member("tcp:127.0.0.1:1")
        assert member is not None and member.redial is not None
        # the asyncio pool dials each endpoint with the sync member's Redial (aiopool.AioEndpoints.channel)
        options = dict(member.redial.options)
        assert options["grpc.initial_reconnect_backoff_ms"] == 1000
        assert options["grpc.max_reconnect_backoff_ms"] == 30_000
        assert [name for name, _ in member.redial.options].count("grpc.max_reconnect_backoff_ms") == 1
        # a multiplexed endpoint's channel (RemoteClient passes it the pool's cap): gRPC's redials pace its session's
        mux = MuxEndpoint(Endpoint("tcp", "127.0.0.1:1"), ssl.create_default_context(), "localhost", [mine],
                          reconnect=pool.reconnect)
        try:
            muxed = dict(mux.redial.options)
            assert muxed["grpc.initial_reconnect_backoff_ms"] == 1000
            assert muxed["grpc.max_reconnect_backoff_ms"] == 30_000
        finally:
            mux.close()
    finally:
        pool.close()
