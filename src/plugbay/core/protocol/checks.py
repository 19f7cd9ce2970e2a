"""Checks that host and plugin configurations share (ClientConfig and ServeConfig take the same
gRPC options and loggers), and the one test of a number setting that every layer makes.

Here, at the bottom layer, so both sides use one wording: a wrong value is a ConfigError naming the
field at construction, not a TypeError from grpcio's Cython or an AttributeError at the first log line.
Light on imports: the plugin side loads it at every start.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections.abc import Mapping, Sequence
from typing import Any, SupportsFloat, cast

from plugbay.errors import ConfigError


def kind(value: Any) -> str:
    """A wrong value as a message shows it: its type, and the value itself when it is short to print."""
    return f"{type(value).__name__} {value!r}" if isinstance(value, (str, bytes, int, float)) else type(value).__name__


def finite_float(value: Any, *, types: type | tuple[type, ...] = numbers.Real) -> float | None:
    """``value`` as a float when it is a real number of ``types`` (never a bool) whose float is finite;
    None otherwise: nan, an infinity, an int too large for a float, a str, a Real without a float.

    Each caller keeps its own types, range and wording: this is what a plain ``> 0`` test misses
    (math.inf and 10**400 pass it, then break the wait or deadline they are given).
    """
    if isinstance(value, bool) or not isinstance(value, types):
        return None
    try:
        number = float(cast(SupportsFloat, value))  # cast: a types= argument narrows value to object only
    except (OverflowError, TypeError, ValueError):  # too large for a float, or a Real whose float() fails
        return None
    return number if math.isfinite(number) else None


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


# grpcio stores an int option in a C int: a larger one is an OverflowError from grpc.server() or a channel
_C_INT = (-(1 << 31), (1 << 31) - 1)


def check_grpc_options(options: Any, name: str) -> None:
    """``options`` must be grpcio's list of (name, value) pairs; a dict or a str is refused (a dict's
    iteration gives its keys only). Each value must be one grpcio takes (see _option_value_ok)."""
    if isinstance(options, (str, bytes, Mapping)) or not isinstance(options, Sequence) or not all(
            isinstance(o, (tuple, list)) and len(o) == 2 and isinstance(o[0], (str, bytes)) for o in options):
        raise ConfigError(f"{name} must be a list of (name, value) pairs, such as"
                          f" [('grpc.max_receive_message_length', 16 << 20)]; got {kind(options)}")
    for option, value in options:
        if not _option_value_ok(value):
            raise ConfigError(f"{name}: option {option!r} has the value {kind(value)}; a gRPC option's value is"
                              f" an int from {_C_INT[0]} to {_C_INT[1]}, a str or bytes")


def _option_value_ok(value: Any) -> bool:
    """What grpcio's channel arguments take: an int in a C int, str, bytes, or a pointer object (one with
    ``__int__`` that is no number, as grpc.experimental's SSLSessionCache). A float is refused: grpcio
    would read it as a pointer's address."""
    if isinstance(value, int):
        return _C_INT[0] <= value <= _C_INT[1]
    if isinstance(value, (str, bytes)):
        return True
    if isinstance(value, numbers.Number) or hasattr(value, "dtype"):  # numpy's bool_ is no Number
        return False
    return hasattr(value, "__int__") or type(value).__name__ == "_GrpcArgWrapper"  # grpcio's own wrapped arg


def check_logger(logger: Any, name: str) -> None:
    """``logger`` must be None or a logging.Logger (a LoggerAdapter too)."""
    if logger is not None and not isinstance(logger, (logging.Logger, logging.LoggerAdapter)):
        raise ConfigError(f"{name} must be a logging.Logger, got {kind(logger)}; pass logging.getLogger(name)")


# what Go's strings.TrimSpace trims (unicode.IsSpace): str.strip() trims U+001C-U+001F too, which Go keeps
GO_SPACE = ("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
            "\u2028\u2029\u202f\u205f\u3000")
_INT64 = 2**63


def go_atoi(text: str) -> int | None:
    """``text`` as Go's strconv.Atoi reads it (go-plugin's host reads a handshake's versions so), None where
    Atoi fails: an optional '+' or '-', then ASCII digits (any number of leading zeros), within int64; no
    spaces, '_', '0x' or other scripts' digits."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    digits = digits.lstrip("0") or "0"
    if len(digits) > 19:  # past int64 (and int()'s 4300-digit limit)
        return None
    value = -int(digits) if text[0] == "-" else int(digits)
    return value if -_INT64 <= value < _INT64 else None
