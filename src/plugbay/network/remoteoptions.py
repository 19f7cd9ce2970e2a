"""connect()'s keyword options: RemoteConfig's fields but target and handshake, typed for type checkers.

``connect(target, handshake=..., **options: Unpack[RemoteOptions])`` lets mypy catch a misspelled
option (``insecur=True``) as it does on RemoteConfig itself; at run time ``check_options`` refuses one
with a ConfigError listing the valid names rather than the dataclass's bare TypeError.
tests/test_network_connect_options.py keeps the two lists equal.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from plugbay.core.broker.plugin import PluginSet, VersionedPlugins
from plugbay.core.protocol.optionnames import check_option_names
from plugbay.network.ejection import OutlierPolicy
from plugbay.network.tls import NetworkTLS


class RemoteOptions(TypedDict, total=False):
    """RemoteConfig's fields that connect() takes as keywords (each optional, RemoteConfig's default)."""

    plugins: PluginSet | None
    versioned_plugins: VersionedPlugins | None
    tls: NetworkTLS | None
    insecure: bool
    dns_server: str | None
    dns_refresh: float
    allow_loopback: bool
    kubernetes: Mapping[str, Any]
    policy: str
    outlier: OutlierPolicy | None
    health_interval: float
    health_timeout: float
    start_timeout: float
    call_timeout: float | None
    grpc_options: Sequence[tuple[str, Any]]
    name: str | None
    logger: logging.Logger | None
    multiplex: bool
    brokered: bool
    mux_keepalive: tuple[float, ...]
    grpc_keepalive: tuple[float, ...] | None


def check_options(config_class: Any, options: Mapping[str, Any]) -> None:
    """A ConfigError naming each option ``config_class`` (RemoteConfig) has no field for, and the valid ones
    (connect()'s own arguments, target and handshake, left out)."""
    check_option_names("connect()", options, [f.name for f in dataclasses.fields(config_class)],
                       "RemoteConfig's fields", {"target": "", "handshake": ""})
