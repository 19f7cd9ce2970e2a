"""The network configs' checks of single values: seconds, counts and switches.

A wait given math.inf, 1e300 or an int too large for a float passes a plain ``> 0`` test and then
kills the thread that waits on it (Event.wait raises OverflowError), and a switch given the
str "false" is true: so these are refused when the config is made, with a ConfigError
naming the setting and what to pass.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from plugbay.errors import ConfigError


def finite(value: Any) -> bool:
    """An int or float (not a bool) that is a finite float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def check_seconds(value: Any, what: str, example: float) -> None:
    """``value`` is a finite number of seconds > 0 that a wait takes; ConfigError naming ``what`` otherwise."""
    # Event.wait() refuses more than threading.TIMEOUT_MAX (292 years) with OverflowError too
    if not finite(value) or not 0 < value <= threading.TIMEOUT_MAX:
        raise ConfigError(f"{what} must be a number of seconds > 0, got {value!r:.80}; pass e.g."
                          f" {what.rpartition('.')[2]}={example} (finite, at most {threading.TIMEOUT_MAX:.0f}:"
                          " the waits it sets take no more)")


def check_count(value: Any, what: str, minimum: int, maximum: int | None = None) -> None:
    """``value`` is an int (not a bool) from ``minimum`` to ``maximum``; ConfigError naming ``what``."""
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        bound = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise ConfigError(f"{what} must be a whole number {bound}, got {value!r:.80}")


def check_switch(value: Any, what: str) -> None:
    """``value`` is True or False: a str such as "false" would count as true."""
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be True or False, got {value!r:.80}; pass a bool (a str such as"
                          " 'false' read from a file or the environment counts as true)")


def check_pool(policy: Any, policies: tuple[str, ...], tls: bool, insecure: Any, health_interval: Any,
               health_timeout: Any, unhealthy_after: Any) -> None:
    """EndpointPool's own arguments (RemoteConfig's are checked by plugbay.network.remotecheck)."""
    check_switch(insecure, "EndpointPool.insecure")
    if policy not in policies:
        raise ConfigError(f"unknown pick policy {policy!r}; use one of {', '.join(policies)}")
    if not tls and not insecure:
        raise ConfigError("a remote plugin is reached with mTLS (tls=NetworkTLS(cert_file, key_file,"
                          " ca_file)) or, deliberately, in plaintext (insecure=True); pass one")
    if tls and insecure:
        raise ConfigError("pass tls=NetworkTLS(...) or insecure=True, not both")
    check_seconds(health_interval, "EndpointPool.health_interval", 1.0)
    check_seconds(health_timeout, "EndpointPool.health_timeout", 1.0)
    check_count(unhealthy_after, "EndpointPool.unhealthy_after", 1)
