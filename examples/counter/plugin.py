"""A Python counter plugin, drop-in for go-plugin's examples/bidirectional plugin.

Put reads the key's current value (0 when absent or unreadable, as the Go
example's ``v, _ := k.Get(key)``), asks the HOST's AddHelper (reached through
the GRPCBroker) for current + value, and stores the result in the file
``kv_<key>`` (JSON ``{"Value":N}``, as the Go example) in its working
directory. Get reads the file as Go's ``json.Unmarshal`` into
``struct{Value int64}`` does (see parse_stored). Run it from a host
(examples/counter/host.py, or go-plugin's Go host) with
COUNTER_PLUGIN="python examples/counter/plugin.py".
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))  # counter_plugin_def and counterproto
if (_HERE.parent.parent / "src" / "plugbay").is_dir():  # a source checkout: no install needed
    sys.path.insert(0, str(_HERE.parent.parent / "src"))

from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, AddHelper, CounterPlugin  # noqa: E402

from plugbay import ServeConfig, serve  # noqa: E402

log = logging.getLogger("counter")


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class StoredValueError(ValueError):
    """kv_<key> holds something the Go plugin's json.Unmarshal into struct{Value int64} refuses."""


class _Object(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs: duplicates kept, order kept, unlike a dict."""


def _no_constant(name: str) -> NoReturn:
    # Python's json accepts NaN and Infinity; Go's rejects them as invalid JSON
    raise StoredValueError(f"invalid JSON: {name}")


class _OutOfRange(int):
    """An integer literal too long for int64, kept unconverted (Python refuses 4300+ digits; Go ignores
    such a field, and refuses it only as the Value)."""


def _integer(literal: str) -> int:
    return _OutOfRange(0) if len(literal.lstrip("-")) > 19 else int(literal)


def parse_stored(raw: bytes) -> int:
    """The Value Go's counter plugin reads from these bytes, or StoredValueError where Go errs.

    The file store is shared with go-plugin's Go counter plugin, so this follows encoding/json
    (checked against Go 1.19) rather than Python's json:
    - the top level must be an object or null (null and {} give 0); other fields are ignored;
    - "Value" matches any ASCII case ("value", "VALUE"), after unescaping; the last match wins,
      and a null match leaves the value as it was;
    - the value must be an integer literal within int64: 3.0, 1e2, "3", true, [1], {} or
      9223372036854775808 is an error (Go's UnmarshalTypeError), even when a later match is good;
    - invalid UTF-8 inside strings is not an error (Go reads it as U+FFFD); a BOM, trailing data,
      NaN or Infinity is; so is nesting deeper than Python's recursion limit (Go allows 10000
      levels), the one place this is stricter than Go.
    Go's Get returns such an error; its Put counts it as 0, as it does any read error.
    """
    try:
        doc = json.loads(raw.decode("utf-8", errors="replace"), object_pairs_hook=_Object,
                         parse_constant=_no_constant, parse_int=_integer)
    except StoredValueError:
        raise
    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError
        raise StoredValueError(f"invalid JSON: {exc}") from None
    if doc is None:
        return 0
    if not isinstance(doc, _Object):
        raise StoredValueError("the top level is not a JSON object")
    value, refused = 0, ""
    for name, item in doc:
        if not (name.isascii() and name.lower() == "value") or item is None:
            continue
        if type(item) is int and INT64_MIN <= item <= INT64_MAX:  # bool and _OutOfRange are subclasses: excluded
            value = item
        elif not refused:  # Go reports the first mismatch once the whole document is read
            refused = f"its {name!r} is not an integer within int64"
    if refused:
        raise StoredValueError(refused)
    return value


class FileCounter:
    """Each key is a file kv_<key> holding {"Value": N}, the Go example's format (files are shared)."""

    def get(self, key: str) -> int:
        path = Path(f"kv_{key}")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        try:
            return parse_stored(raw)
        except StoredValueError as exc:
            raise StoredValueError(f"{path} does not hold a counter value: {exc}") from None

    def put(self, key: str, value: int, helper: AddHelper) -> None:
        # as the Go plugin's `v, _ := k.Get(key)`: whatever the file holds, if it is not a value it
        # is 0 and gets overwritten (the KV example stores raw bytes under the same kv_<key> names)
        try:
            current = self.get(key)
        except KeyError:
            current = 0
        except (OSError, ValueError) as exc:
            log.warning("put: counting the stored value as 0", extra={"key": key, "reason": str(exc)})
            current = 0
        result = helper.sum(current, value)
        Path(f"kv_{key}").write_text(json.dumps({"Value": result}, separators=(",", ":")))
        log.info("put", extra={"key": key, "value": result})


def main() -> None:
    serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin(FileCounter())}))


if __name__ == "__main__":
    main()
