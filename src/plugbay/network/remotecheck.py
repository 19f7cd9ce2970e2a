"""A RemoteConfig's checks, made when a RemoteClient is made: a wrong option fails there, before anything
runs, rather than as an AttributeError deep in start()."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

from plugbay.core.broker.plugin import check_plugin_fields
from plugbay.core.host.deadline import NO_DEADLINE
from plugbay.core.protocol.checks import check_grpc_options, check_logger
from plugbay.core.transport import grpcping
from plugbay.core.transport.keepalive import Keepalive
from plugbay.errors import ConfigError, ProtocolMismatchError
from plugbay.network.ejection import OutlierPolicy
from plugbay.network.figures import check_count, check_seconds, check_switch, check_transport
from plugbay.network.pool import POLICIES
from plugbay.network.resolver import parse_dns_server
from plugbay.network.tls import NetworkTLS


def check_remote(config: Any) -> None:
    """Raise a ConfigError saying what to pass instead when ``config``'s options cannot work."""
    _check_client_fields(config)
    if config.tls is not None and not isinstance(config.tls, NetworkTLS):
        raise ConfigError(f"RemoteConfig.tls must be a NetworkTLS or None, got {type(config.tls).__name__}; pass"
                          " tls=NetworkTLS(ca_file=..., cert_file=..., key_file=...)")
    if config.outlier is not None and not isinstance(config.outlier, OutlierPolicy):
        raise ConfigError(f"RemoteConfig.outlier must be an OutlierPolicy or None, got"
                          f" {type(config.outlier).__name__}; pass outlier=OutlierPolicy(consecutive_failures=5)")
    for switch in ("insecure", "allow_loopback", "multiplex", "brokered"):
        check_switch(getattr(config, switch), f"RemoteConfig.{switch}")
    # after the switches (insecure='false' is that error). A config with neither tls= nor insecure=True, which
    # RemoteConfig() let by, is refused here, as RemoteClient() is made: not left for start() to find
    check_transport("RemoteConfig", config.tls, config.insecure)
    if config.multiplex and not config.brokered:
        raise ConfigError("RemoteConfig(multiplex=True) insists on brokered connections and brokered=False"
                          " declines them; pass one of the two")
    if config.multiplex and config.insecure:
        raise ConfigError("RemoteConfig(multiplex=True) needs TLS: brokered connections travel in one"
                          " TLS connection per endpoint; pass tls=NetworkTLS(...) instead of insecure=True")
    Keepalive.of(config.mux_keepalive, "RemoteConfig.mux_keepalive")
    grpcping.check(config.grpc_keepalive, "RemoteConfig.grpc_keepalive")
    if config.policy not in POLICIES:
        raise ConfigError(f"RemoteConfig.policy: unknown pick policy {config.policy!r}; pass policy="
                          f"{' or '.join(repr(p) for p in POLICIES)}")
    # finite: the pool's and the resolver's threads wait these out (an infinite wait kills the thread)
    for name, default in (("health_interval", 1.0), ("health_timeout", 1.0), ("dns_refresh", 30.0)):
        setattr(config, name, check_seconds(getattr(config, name), f"RemoteConfig.{name}", default))
    if config.dns_server is not None:
        if not isinstance(config.dns_server, str):
            raise ConfigError(f"RemoteConfig.dns_server must be 'IP' or 'IP:PORT' as a str, or None (the system's),"
                              f" got {config.dns_server!r:.80}; pass for example dns_server='10.0.0.10:53'")
        parse_dns_server(config.dns_server)
    check_kubernetes(config.kubernetes)


def _check_client_fields(config: Any) -> None:
    """The fields RemoteConfig.client_config() passes on to a ClientConfig, checked here so that a wrong
    one is named as the user wrote it (RemoteConfig.start_timeout), not as ClientConfig's."""
    check_plugin_fields("RemoteConfig", config.handshake, config.plugins, config.versioned_plugins,
                        "pass HandshakeConfig(protocol_version, magic_cookie_key, magic_cookie_value)")
    # kept as floats (a Fraction, a numpy scalar): the ClientConfig's own check takes int or float only
    config.start_timeout = check_seconds(config.start_timeout, "RemoteConfig.start_timeout", 30.0, NO_DEADLINE)
    if config.call_timeout is not None:  # None: no deadline
        config.call_timeout = check_seconds(config.call_timeout, "RemoteConfig.call_timeout", 30.0, NO_DEADLINE)
    if config.name is not None and not isinstance(config.name, str):  # "" stays the default, "remote"
        raise ConfigError(f"RemoteConfig.name must be a str or None, got {config.name!r:.80}")
    check_grpc_options(config.grpc_options, "RemoteConfig.grpc_options")
    check_logger(config.logger, "RemoteConfig.logger")


def check_kubernetes(options: Any) -> None:
    """RemoteConfig.kubernetes: keyword arguments of plugbay.network.kubernetes.EndpointSliceResolver."""
    if options is None:  # no options, as before these checks
        return
    if not isinstance(options, Mapping):
        raise ConfigError(f"RemoteConfig.kubernetes must be a dict of the Kubernetes resolver's options, got"
                          f" {options!r:.80}; pass for example kubernetes={{'kubeconfig': '/etc/plugbay/kubeconfig',"
                          " 'context': 'prod'}")
    if not options:
        return
    try:
        from plugbay.network.kubernetes import EndpointSliceResolver
    except ImportError:  # the kubernetes extra is missing: a kubernetes:/// target says so when it is made
        return
    known = [name for name, p in inspect.signature(EndpointSliceResolver).parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY]
    for key, value in options.items():
        if key not in known:
            raise ConfigError(f"RemoteConfig.kubernetes has {key!r:.80}, which the Kubernetes resolver does not"
                              f" take; its options are {', '.join(known)}")
        # the client library splits kubeconfig as a str (KUBECONFIG's list), and looks context up by name
        if key in ("kubeconfig", "context") and value is not None and not isinstance(value, str):
            raise ConfigError(f"RemoteConfig.kubernetes[{key!r}] must be a str (a kubeconfig file's path, a context's"
                              f" name) or None, got {value!r:.80}")
        if key in ("watch_timeout", "max_endpoints"):
            check_count(value, f"RemoteConfig.kubernetes[{key!r}]", 1)
        if key == "allow_loopback":
            check_switch(value, "RemoteConfig.kubernetes['allow_loopback']")


def wants_broker(config: Any, answer: Any, name: str, target: str) -> bool:
    """Whether a RemoteClient (``name``, at ``target``) is to reach the endpoints through yamux sessions for
    brokered connections, by ``config`` (a RemoteConfig) and Discovery's ``answer`` (None: not served)."""
    offered = answer is not None and answer.multiplex
    if not config.brokered:
        return False
    if config.multiplex and not offered:
        raise ProtocolMismatchError(
            f"RemoteConfig(multiplex=True) asks for brokered connections but remote plugin {name!r}"
            f" at {target!r} does not multiplex them (Discovery says multiplex=false"
            f"{' or is not served' if answer is None else ''}); serve it with plugbay's network mode over"
            " TLS (NetworkServe(multiplex=True), the default), or drop multiplex=True")
    if offered and config.tls is None:
        logging.getLogger("plugbay.network").warning(
            "remote plugin %s offers brokered connections, but they need TLS; serving plain gRPC calls only"
            " (insecure=True)", name)
        return False
    return bool(offered)
