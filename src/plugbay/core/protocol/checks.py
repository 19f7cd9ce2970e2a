"""Checks that host and plugin configurations share (ClientConfig and ServeConfig take the same
gRPC options and loggers).

Here, at the bottom layer, so both sides use one wording: a wrong value is a ConfigError naming the
field at construction, not a TypeError from grpcio's Cython or an AttributeError at the first log line.
Light on imports: the plugin side loads it at every start.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from plugbay.errors import ConfigError


def kind(value: Any) -> str:
    """A wrong value as a message shows it: its type, and the value itself when it is short to print."""
    return f"{type(value).__name__} {value!r}" if isinstance(value, (str, bytes, int, float)) else type(value).__name__


def check_grpc_options(options: Any, name: str) -> None:
    """``options`` must be grpcio's list of (name, value) pairs; a dict or a str is refused (a dict's
    iteration gives its keys only)."""
    if isinstance(options, (str, bytes, Mapping)) or not isinstance(options, Sequence) or not all(
            isinstance(o, (tuple, list)) and len(o) == 2 and isinstance(o[0], (str, bytes)) for o in options):
        raise ConfigError(f"{name} must be a list of (name, value) pairs, such as"
                          f" [('grpc.max_receive_message_length', 16 << 20)]; got {kind(options)}")


def check_logger(logger: Any, name: str) -> None:
    """``logger`` must be None or a logging.Logger (a LoggerAdapter too)."""
    if logger is not None and not isinstance(logger, (logging.Logger, logging.LoggerAdapter)):
        raise ConfigError(f"{name} must be a logging.Logger, got {kind(logger)}; pass logging.getLogger(name)")
