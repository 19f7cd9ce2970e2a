"""gRPC's HTTP/2 keepalive on a host's plain gRPC connections to a network plugin, and the servers' side of it.

A plugin that stops answering without closing its connection (a stopped or
wedged process, a partition, a host that lost power) leaves a gRPC connection
that looks open: a stream without a deadline waits on it for good, while the
pool's health checks only stop new calls going there. So a connection with
calls in flight and nothing arriving for ``interval`` seconds is pinged, and
closed when the answer does not come within ``timeout``: its calls end with
UNAVAILABLE (a typed plugbay error above), and the next call dials again.
The figures default to the multiplexed connection's (go's yamux: 30 s, 10 s;
plugbay.core.transport.keepalive), which covers multiplexed connections itself.

grpc-core bounds every ping it has sent by its ping timeout, the optional third
figure (``ping_timeout``, default a minute, grpc-core's own once keepalive is
on), and a keepalive ping due while another ping (a flow-control probe) is
unanswered waits on that one: a silent peer is found within ``interval`` +
``ping_timeout``. It is not ``timeout``: a flow-control probe sent as a large
reply starts is answered only once the bytes queued before its answer have
arrived, and on a slow link that buffers (a tunnel, a port-forward) 10 s of
them cut a working download ("ping timeout").

grpc-core servers count pings that come sooner than
``grpc.http2.min_ping_interval_without_data_ms`` (5 minutes) after the last
one while they send nothing, and end the connection with GOAWAY
ENHANCE_YOUR_CALM "too_many_pings" at the third: the servers plugbay runs in
network mode accept them at the keepalive interval (:func:`server_options`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from plugbay.core.protocol.checks import finite_float
from plugbay.errors import ConfigError

INTERVAL = 30.0
TIMEOUT = 10.0
PING_TIMEOUT = 60.0
# the first two as plugbay.core.transport.keepalive.DEFAULT (not imported: that module is yamux's)
DEFAULT = (INTERVAL, TIMEOUT, PING_TIMEOUT)
KEYS = ("grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms", "grpc.http2.ping_timeout_ms",
        "grpc.keepalive_permit_without_calls", "grpc.http2.max_pings_without_data")
PERMIT_KEY = "grpc.http2.min_ping_interval_without_data_ms"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def check(figures: object, what: str) -> tuple[float, float, float] | None:
    """``(INTERVAL, TIMEOUT[, PING_TIMEOUT])`` in seconds, finite and > 0, PING_TIMEOUT (default 60) at least
    TIMEOUT; None or () turn the keepalive off."""
    if figures is None or (isinstance(figures, (tuple, list)) and not figures):
        return None
    if (not isinstance(figures, (tuple, list)) or len(figures) not in (2, 3)
            or not all((seconds := finite_float(x, types=(int, float))) is not None and seconds > 0 for x in figures)
            or (len(figures) == 3 and figures[2] < figures[1])):
        raise ConfigError(f"{what} must be (INTERVAL, TIMEOUT[, PING_TIMEOUT]) in seconds, all > 0, for example"
                          " (30.0, 10.0, 60.0): a connection with calls in flight and nothing arriving for INTERVAL"
                          " is pinged and closed when no answer comes within TIMEOUT, or when any ping (gRPC's"
                          " flow-control probes too) goes unanswered for PING_TIMEOUT (default 60, at least TIMEOUT;"
                          f" keep it above what a slow link may queue); or None to turn it off; got {figures!r}")
    ping_timeout = float(figures[2]) if len(figures) == 3 else max(PING_TIMEOUT, float(figures[1]))
    return float(figures[0]), float(figures[1]), ping_timeout


def channel_options(figures: object, what: str = "grpc_keepalive") -> list[tuple[str, Any]]:
    """A channel's keepalive options for ``figures`` (see :func:`check`); none when it is off."""
    checked = check(figures, what)
    if checked is None:
        return []
    interval, timeout, ping_timeout = checked
    # pings only while calls are in flight (on an idle connection the pool's health checks, with
    # their deadlines, find a silent peer), and as many as it takes without data (grpc-core's
    # default stops after 2)
    return [(KEYS[0], _ms(interval)), (KEYS[1], _ms(timeout)), (KEYS[2], _ms(ping_timeout)), (KEYS[3], 0), (KEYS[4], 0)]


def server_options(keepalive: Sequence[float]) -> list[tuple[str, Any]]:
    """A network server's option that makes hosts' keepalive pings welcome: pings as often as every
    ``keepalive[0]`` seconds (the server's own keepalive interval; at most the hosts' default, 30 s, so a
    default host is never refused). A default: a user's own setting wins (grpcoptions.with_defaults)."""
    interval = keepalive[0] if keepalive and math.isfinite(keepalive[0]) and keepalive[0] > 0 else INTERVAL
    return [(PERMIT_KEY, _ms(min(interval, INTERVAL)))]
