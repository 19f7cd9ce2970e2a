"""The root of plugbay's error hierarchy (PlugbayError, and ConfigError, which every layer raises) and how its
errors are pickled: below plugbay.errors, which holds the rest of the hierarchy and re-exports these. Import
them from plugbay.errors; they say that is where they live (``__module__``), as tracebacks and pickles name them.
"""

from __future__ import annotations

from typing import Any


class PlugbayError(Exception):
    """Base class of every error raised by plugbay."""

    __module__ = "plugbay.errors"

    def __reduce__(self) -> tuple[Any, ...]:  # rebuilt without an __init__ that takes parts, not args
        return _rebuilt, (type(self), self.args), dict(self.__dict__)


def _rebuilt(cls: type[PlugbayError], args: tuple[Any, ...]) -> PlugbayError:
    error = cls.__new__(cls, *args)  # an OSError's (a TimeoutError's) errno and strerror come from its args
    error.args = args
    return error


_rebuilt.__module__ = "plugbay.errors"  # pickles name it there (re-exported), so a plugbay before the move loads them


class ConfigError(PlugbayError, ValueError):
    """The caller passed options that cannot work together or are malformed."""

    __module__ = "plugbay.errors"
