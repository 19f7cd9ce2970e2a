"""Type and range checks for the runners' options (DockerRunner, KubernetesRunner, PluginContainer, and
ProcessRunner's outlive_grace).

A wrong value is a ConfigError from the constructor that names the option and what to pass, before
anything is created: left to the engine, the Kubernetes client or the OS, it surfaced at start() as a
bare TypeError, OverflowError or AttributeError naming no option (or not at all).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from plugbay.core.protocol.checks import finite_float
from plugbay.core.protocol.outlive import MAX_GRACE, OUTLIVE_GRACE
from plugbay.errors import ConfigError


def _refuse(where: str, wanted: str, value: Any) -> ConfigError:
    return ConfigError(f"{where} must be {wanted}, got {value!r:.80} ({type(value).__name__})")


def optional_str(value: Any, where: str, example: str, *, empty: bool = False) -> str | None:
    """``value`` if it is None or a str (non-empty unless ``empty``) without NUL bytes."""
    if value is None:
        return None
    if not isinstance(value, str) or (not value and not empty) or "\0" in value:
        raise _refuse(where, f"a non-empty str such as {example!r} (or None)", value)
    return value


def required_str(value: Any, where: str, example: str) -> str:
    if value is None:
        raise _refuse(where, f"a non-empty str such as {example!r}", value)
    return optional_str(value, where, example) or ""


def str_list(value: Any, where: str, example: Sequence[str], *, ordered: bool = False) -> list[str]:
    """``value`` as a list of str: any iterable of strings (a list, tuple, set, generator), not one str (its
    characters would be the items) nor a dict; ``ordered`` (a command line) refuses a set, which has no order."""
    if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
        raise _refuse(where, f"a list of strings such as {list(example)!r}", value)
    if ordered and isinstance(value, (set, frozenset)):
        raise _refuse(where, f"a list of strings in order such as {list(example)!r} (a set has no order)", value)
    items = list(value)  # once: a generator is read here
    if not all(isinstance(item, str) and "\0" not in item for item in items):
        raise _refuse(where, f"a list of strings such as {list(example)!r}", items)
    return items


def optional_str_list(value: Any, where: str, example: Sequence[str]) -> list[str] | None:
    """A command line's words (None stays None): ordered, so a set is refused."""
    return None if value is None else str_list(value, where, example, ordered=True)


def str_mapping(value: Any, where: str, example: Mapping[str, str]) -> dict[str, str]:
    """``value`` (None: empty) as a dict of str -> str."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _refuse(where, f"a dict of str -> str such as {dict(example)!r} (or None)", value)
    return dict(value)


def optional_mapping(value: Any, where: str, example: str) -> Mapping[str, Any] | None:
    if value is not None and not isinstance(value, Mapping):
        raise _refuse(where, f"a dict such as {example} (or None)", value)
    return value


def flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _refuse(where, "True or False", value)
    return value


def optional_int(value: Any, where: str, low: int, high: int, meaning: str) -> int | None:
    """``value`` as an int if it is None or a whole number (an int or numpy integer, not a bool) in
    ``low``..``high``; ``meaning`` says what it counts."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= int(value) <= high:
        raise _refuse(where, f"{meaning}, an int from {low} to {high} (or None)", value)
    return int(value)


def seconds(value: Any, where: str, high: float, example: float, *, optional: bool = False) -> float | None:
    """``value`` as a float: a number of seconds > 0 and at most ``high`` (None too when ``optional``)."""
    if value is None and optional:
        return None
    # any real number whose float is finite: an int, a float, a Fraction or a numpy scalar, not a bool
    number = finite_float(value)
    if number is None or not 0 < number <= high:
        wanted = f"a number of seconds > 0 and at most {high:.0f}, e.g. {example}" + (" (or None)" if optional else "")
        raise _refuse(where, wanted, value)
    return number


def check_grace(grace: object, what: str) -> float | None:
    """``grace`` as an outlive grace (seconds, 0 to MAX_GRACE; None: no bound), else a ConfigError.

    ProcessRunner's outlive_grace: a seconds validator like seconds() above, different on purpose.
    - 0 is a grace: the plugin stops as soon as its host died and no other host is connected (seconds()
      wants more than 0); None is always allowed: no bound, the plugin serves on until a host stops it.
    - Only an int or a float, not a bool, rather than any real number finite_float() takes: a Fraction,
      numpy.float32 or numpy.int64 is refused (numpy.float64, a float subclass, passes). The grace has
      taken these only since it came; what ProcessRunner accepts does not change with where its check
      lives.
    - Its message says what the grace does and its default, and, for too long a grace, to pass None.
    """
    if grace is None:
        return None
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace <= MAX_GRACE:
        too_long = isinstance(grace, (int, float)) and not isinstance(grace, bool) and grace > MAX_GRACE
        raise ConfigError(f"{what} must be a number of seconds from 0 to {MAX_GRACE:g} or None, got {grace!r:.40}:"
                          " how long the plugin serves on with no host once its host died (default"
                          f" {OUTLIVE_GRACE:g}); " + ("pass None for no limit" if too_long else
                                                       "None serves on until a host stops it"))
    return float(grace)


MAX_DEPTH = 64  # far deeper than any manifest; a deeper (or self-containing) value is refused, not recursed into


def plain_data(value: Any, where: str, _depth: int = 0, _path: str = "") -> Any:
    """``value`` as plain JSON-like data, copied: dicts with str keys, lists, str, int, float, bool, None.

    Any Mapping becomes a dict and a tuple a list; anything else is refused naming its path. A manifest's
    rules (pods.merge, the template checks) test ``isinstance(x, dict)``: a UserDict or a MappingProxyType
    was taken whole, its defaults and forced fields lost, and deepcopy raised a bare TypeError for one."""
    here = where + _path
    if _depth > MAX_DEPTH:
        raise ConfigError(f"{where} nests deeper than {MAX_DEPTH} levels (or contains itself), at {here:.160}...;"
                          " pass plain dicts and lists, as yaml.safe_load or json.load gives")
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise ConfigError(f"{here:.200} has the key {key!r:.80} ({type(key).__name__}), but its keys must"
                                  " be str; pass plain dicts and lists, as yaml.safe_load or json.load gives")
            out[key] = plain_data(item, where, _depth + 1, f"{_path}[{key!r:.60}]")
        return out
    if isinstance(value, (list, tuple)):
        return [plain_data(item, where, _depth + 1, f"{_path}[{i}]") for i, item in enumerate(value)]
    raise ConfigError(f"{here:.200} is {value!r:.80} ({type(value).__name__}), which is no JSON value: pass plain"
                      " dicts, lists, str, int, float, bool and None, as yaml.safe_load or json.load gives")
