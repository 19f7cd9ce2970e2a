"""Numbers in the host's environment, read as a go-plugin 1.0.1 plugin reads them (Go's strconv).

The same setting must mean the same to a Python plugin as to a Go one: go-plugin reads
PLUGIN_MIN_PORT/PLUGIN_MAX_PORT with strconv.ParseInt(s, 10, 32). Go takes an optional sign, then
ASCII digits only; int() also takes surrounding spaces, '_' between digits and other scripts' digits.
"""

from __future__ import annotations

# significant digits past any int64; int() itself refuses more than 4300 digits with a bare ValueError
_MAX_DIGITS = 20


def go_int(text: str, bits: int = 64) -> int | None:
    """strconv.ParseInt(text, 10, bits): the number, or None where Go returns an error."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    significant = digits.lstrip("0")  # Go takes any number of leading zeros
    if len(significant) > _MAX_DIGITS:
        return None
    value = -int(significant or "0") if text[:1] == "-" else int(significant or "0")
    limit = 1 << (bits - 1)
    return value if -limit <= value < limit else None
