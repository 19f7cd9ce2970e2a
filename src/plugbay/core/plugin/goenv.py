"""Numbers in the host's environment, read as a go-plugin 1.0.1 plugin reads them (Go's strconv).

The same setting must mean the same to a Python plugin as to a Go one: go-plugin reads
PLUGIN_MIN_PORT/PLUGIN_MAX_PORT with strconv.ParseInt(s, 10, 32) and each PLUGIN_PROTOCOL_VERSIONS
piece with strconv.Atoi. Go takes an optional sign, then ASCII digits only; int() also takes
surrounding spaces, '_' between digits and other scripts' digits. The host reads the plugin's
handshake line with plugbay.core.protocol.handshake, stricter: no sign there.
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


def host_versions(value: str) -> tuple[list[int], list[str]]:
    """PLUGIN_PROTOCOL_VERSIONS as go-plugin's protocolVersion() reads it, and the pieces it refuses.

    Each comma-separated piece goes through strconv.Atoi as it is: ' 2' and '' are no version,
    '+2' is 2. The caller reports the refused pieces and serves the versions read, as go-plugin does.
    """
    if not value:
        return [], []
    versions: list[int] = []
    refused: list[str] = []
    for piece in value.split(","):
        number = go_int(piece)
        if number is None:
            refused.append(piece)
        else:
            versions.append(number)
    return versions, refused


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               "\\": "\\\\", '"': '\\"'}


def go_quote(text: str) -> str:
    """Go's %q (strconv.Quote): how go-plugin quotes a refused piece in its message."""
    out = []
    for char in text:
        code = ord(char)
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # an environment byte that was no UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'
