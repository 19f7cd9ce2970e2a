"""The network configs' checks of single values: seconds, counts and switches.

A wait given math.inf, 1e300 or an int too large for a float passes a plain ``> 0`` test and then
kills the thread that waits on it (Event.wait raises OverflowError), and a switch given the
str "false" is true: so these are refused when the config is made, with a ConfigError
naming the setting and what to pass.
"""

from __future__ import annotations

import numbers
from typing import Any

from plugbay.core.protocol.checks import check_count as check_count  # re-exported: the network configs'
from plugbay.core.protocol.checks import check_seconds as check_seconds
from plugbay.core.protocol.checks import finite_float
from plugbay.errors import ConfigError


def check_percent(value: Any, what: str) -> int | float:
    """``value`` as an int or float: a percentage from 0 to 100 (50.0 and 33.3 too); ConfigError otherwise."""
    percent = finite_float(value)
    if percent is None or not 0 <= percent <= 100:
        raise ConfigError(f"{what} must be a percentage from 0 to 100, got {value!r:.80}")
    return int(value) if isinstance(value, numbers.Integral) else percent


def check_switch(value: Any, what: str) -> None:
    """``value`` is True or False: a str such as "false" would count as true."""
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be True or False, got {value!r:.80}; pass a bool (a str such as"
                          " 'false' read from a file or the environment counts as true)")


def both_transports(owner: str) -> ConfigError:
    """The error of ``owner`` (RemoteConfig, EndpointPool) given both tls= and insecure=True."""
    return ConfigError(f"{owner} takes tls=NetworkTLS(...) (mutual TLS) or insecure=True (plaintext), not both:"
                       " choose one (drop insecure=True to reach the plugin over mTLS with those files, or drop"
                       " tls= for plaintext on a network you trust)")


def no_transport(owner: str) -> ConfigError:
    """The error of ``owner`` (RemoteConfig, EndpointPool) given neither tls= nor insecure=True."""
    return ConfigError(f"{owner}: a remote plugin is reached with mTLS (tls=NetworkTLS(cert_file, key_file,"
                       " ca_file)) or, deliberately, in plaintext (insecure=True); pass one")


def check_transport(owner: str, tls: Any, insecure: Any, *, neither_allowed: bool = False) -> None:
    """mTLS or plaintext, exactly one of the two, for ``owner`` (RemoteConfig, EndpointPool): the one
    place of that rule. ``neither_allowed``: as a RemoteConfig is made, only both together is refused (the
    line that asks for both is the one to fix); RemoteClient() refuses neither too, the fields may be set
    meanwhile. The callers check first that ``insecure`` is a bool (check_switch); this looks only at
    whether ``tls`` is given and ``insecure`` is True."""
    if tls is not None and insecure is True:
        raise both_transports(owner)
    if not neither_allowed and tls is None and not insecure:
        raise no_transport(owner)


def check_pool(policy: Any, policies: tuple[str, ...], tls: Any, insecure: Any, health_interval: Any,
               health_timeout: Any, unhealthy_after: Any) -> tuple[float, float, int]:
    """EndpointPool's own arguments (RemoteConfig's are checked by plugbay.network.remotecheck); returns
    its health settings as float, float and int."""
    check_switch(insecure, "EndpointPool.insecure")
    if policy not in policies:
        raise ConfigError(f"unknown pick policy {policy!r}; use one of {', '.join(policies)}")
    check_transport("EndpointPool", tls, insecure)
    return (check_seconds(health_interval, "EndpointPool.health_interval", 1.0),
            check_seconds(health_timeout, "EndpointPool.health_timeout", 1.0),
            check_count(unhealthy_after, "EndpointPool.unhealthy_after", 1))
