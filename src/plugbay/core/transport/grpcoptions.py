"""How plugbay's own gRPC channel and server options meet a user's (grpc_options, grpc_server_options)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def with_defaults(defaults: Sequence[tuple[str, Any]], options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``options`` (a user's) after those of ``defaults`` they do not name: grpcio keeps the first of a
    repeated channel argument (1.85), so a default given as well would override the user's choice."""
    named = {key.decode() if isinstance(key, bytes) else key for key, _ in options}
    return [*(option for option in defaults if option[0] not in named), *options]
