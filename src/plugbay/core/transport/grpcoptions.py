"""How plugbay's own gRPC channel and server options meet a user's (grpc_options, grpc_server_options)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# A brokered connection riding a yamux stream (multiplexed mode) costs two Python bridge hand-offs per
# HTTP/2 frame each way, and a callback's connection carries few frames: gRPC's BDP probe (a PING
# after the first data each way, each answered) was 3 of a callback's ~13 frames, about 0.3-1 ms of
# CPU per callback over both processes. Without the probe the window does not grow, so it starts
# large: 4 MiB covers what rides the path at once (the yamux window, up to 1 MiB, and the two local
# sockets' buffers), and bulk over such a connection keeps its rate (128 MiB streamed at
# ~700 MB/s with the probe and with these). Every brokered server (a local socket, multiplexed or not)
# runs with them (core/broker/spares.py); a multiplexed broker's dialer too.
BRIDGED_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 4 * 1024 * 1024),
)


def with_defaults(defaults: Sequence[tuple[str, Any]], options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``options`` (a user's) after those of ``defaults`` they do not name: grpcio keeps the first of a
    repeated channel argument (1.85), so a default given as well would override the user's choice."""
    named = {key.decode() if isinstance(key, bytes) else key for key, _ in options}
    return [*(option for option in defaults if option[0] not in named), *options]
