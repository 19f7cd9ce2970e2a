"""The network configs' checks of single values: seconds, counts and switches.

A wait given math.inf, 1e300 or an int too large for a float passes a plain ``> 0`` test and then
kills the thread that waits on it (Event.wait raises OverflowError), and a switch given the
str "false" is true: so these are refused when the config is made, with a ConfigError
naming the setting and what to pass.
"""

from __future__ import annotations

import math
import numbers
import threading
from typing import Any

from plugbay.core.protocol.checks import finite_float
from plugbay.errors import ConfigError


def check_seconds(value: Any, what: str, example: float, maximum: float = threading.TIMEOUT_MAX,
                  endless: bool = False) -> float:
    """``value`` as a float: a finite number of seconds > 0 up to ``maximum`` that a wait takes (or,
    with ``endless``, math.inf); ConfigError naming ``what`` otherwise."""
    # Event.wait() refuses more than threading.TIMEOUT_MAX (292 years) with OverflowError too, and any
    # number but an int or float (np.float32, Fraction) with TypeError: so the float is what is kept
    if endless and _is_inf(value):
        return math.inf
    # any real number (not a bool: an int, a float, a Fraction, a numpy scalar) whose float is finite
    seconds = finite_float(value)
    if seconds is None or not 0 < seconds <= maximum:
        raise ConfigError(f"{what} must be a number of seconds > 0, got {value!r:.80}; pass e.g."
                          f" {what.rpartition('.')[2]}={example} (finite{' or math.inf' if endless else ''}, at most"
                          f" {maximum:.0f}: the waits it sets take no more)")
    return seconds


def _is_inf(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == math.inf


def check_count(value: Any, what: str, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int: a whole number (an int or numpy integer, not a bool) from ``minimum`` to
    ``maximum``; ConfigError naming ``what`` otherwise."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum
            or (maximum is not None and int(value) > maximum)):
        bound = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise ConfigError(f"{what} must be a whole number {bound}, got {value!r:.80}")
    return int(value)


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


def check_pool(policy: Any, policies: tuple[str, ...], tls: bool, insecure: Any, health_interval: Any,
               health_timeout: Any, unhealthy_after: Any) -> tuple[float, float, int]:
    """EndpointPool's own arguments (RemoteConfig's are checked by plugbay.network.remotecheck); returns
    its health settings as float, float and int."""
    check_switch(insecure, "EndpointPool.insecure")
    if policy not in policies:
        raise ConfigError(f"unknown pick policy {policy!r}; use one of {', '.join(policies)}")
    if not tls and not insecure:
        raise ConfigError("a remote plugin is reached with mTLS (tls=NetworkTLS(cert_file, key_file,"
                          " ca_file)) or, deliberately, in plaintext (insecure=True); pass one")
    if tls and insecure:
        raise ConfigError("pass tls=NetworkTLS(...) or insecure=True, not both")
    return (check_seconds(health_interval, "EndpointPool.health_interval", 1.0),
            check_seconds(health_timeout, "EndpointPool.health_timeout", 1.0),
            check_count(unhealthy_after, "EndpointPool.unhealthy_after", 1))
