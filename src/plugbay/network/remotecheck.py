"""A RemoteConfig's checks, made when a RemoteClient is made: a wrong option fails there, before anything
runs, rather than as an AttributeError deep in start()."""

from __future__ import annotations

from typing import Any

from plugbay.core.transport import grpcping
from plugbay.core.transport.keepalive import Keepalive
from plugbay.errors import ConfigError
from plugbay.network.ejection import OutlierPolicy
from plugbay.network.pool import POLICIES
from plugbay.network.tls import NetworkTLS


def check_remote(config: Any) -> None:
    """Raise a ConfigError saying what to pass instead when ``config``'s options cannot work."""
    if config.tls is not None and not isinstance(config.tls, NetworkTLS):
        raise ConfigError(f"RemoteConfig.tls must be a NetworkTLS or None, got {type(config.tls).__name__}; pass"
                          " tls=NetworkTLS(ca_file=..., cert_file=..., key_file=...)")
    if config.outlier is not None and not isinstance(config.outlier, OutlierPolicy):
        raise ConfigError(f"RemoteConfig.outlier must be an OutlierPolicy or None, got"
                          f" {type(config.outlier).__name__}; pass outlier=OutlierPolicy(consecutive_failures=5)")
    if config.multiplex and not config.brokered:
        raise ConfigError("RemoteConfig(multiplex=True) insists on brokered connections and brokered=False"
                          " declines them; pass one of the two")
    if config.multiplex and config.insecure:
        raise ConfigError("RemoteConfig(multiplex=True) needs TLS: brokered connections travel in one"
                          " TLS connection per endpoint; pass tls=NetworkTLS(...) instead of insecure=True")
    Keepalive.of(config.mux_keepalive, "mux_keepalive")
    grpcping.check(config.grpc_keepalive, "RemoteConfig.grpc_keepalive")
    if config.policy not in POLICIES:
        raise ConfigError(f"RemoteConfig.policy: unknown pick policy {config.policy!r}; pass policy="
                          f"{' or '.join(repr(p) for p in POLICIES)}")
    for name, default in (("health_interval", 1.0), ("health_timeout", 1.0), ("dns_refresh", 30.0)):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"RemoteConfig.{name} must be a number of seconds > 0, got {value!r};"
                              f" pass e.g. {name}={default}")
