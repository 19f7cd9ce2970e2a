"""Text helpers for what plugins say (their output, their handshake lines) entering plugbay's log records and
error messages: below plugbay.errors, which uses them and re-exports them (``from plugbay.errors import clip``)."""

from __future__ import annotations

from collections.abc import Sequence

# C0 controls but tab, DEL, C1 controls, and the Unicode line and paragraph separators: what lets a
# plugin's text start a forged line of the host's log or drive its terminal (cursor moves, titles).
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0))}
_CONTROLS.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
# The bidirectional formatting characters: they reorder what a line shows ("\u202egnp.exe" reads
# "exe.png"). Other format characters stay: ZWJ and ZWNJ belong to emoji and to words of many scripts.
_CONTROLS.update({c: f"\\u{c:04x}" for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))})


def printable(text: str) -> str:
    """``text`` with its control and bidi formatting characters (tab aside) as ``\\xNN``/``\\uNNNN`` escapes.

    For plugin output entering host log records and error messages. It lives below plugbay.errors, the
    bottom layer, so that error messages can use it too. It runs on every plugin log line, on the shared
    I/O thread: most lines are printable, and isprintable() tells so in C without copying them
    (it is False for every character escaped here).
    """
    return text if text.isprintable() else text.translate(_CONTROLS)


def clip(text: str, keep: int = 300) -> str:
    """``text`` with its middle cut to ``keep`` characters in all (both ends say the most)."""
    if len(text) <= keep:
        return text
    half = keep // 2
    return f"{text[:half]}...({len(text) - 2 * half} characters cut)...{text[-half:]}"


_TAIL_LINE = 500  # characters of one stderr line in an error's message


def tail_text(lines: Sequence[str]) -> str:
    """A plugin's stderr ``lines`` for an error's message, indented. Runners other than the LogPump's (a pod's
    log, a container's) hand their lines as read; a line may be up to the line cap (64 KiB) long: the message
    keeps both ends of each (cut before escaping, so that no escape is split), the error's attribute all of it."""
    return "\n".join("    " + printable(clip(line, _TAIL_LINE)) for line in lines)


def listed(values: Sequence[int], keep: int = 20) -> str:
    """``values`` as a list, its first ``keep`` only: a network plugin's Discovery answer (its word) may
    list hundreds of thousands of versions, which made a message of megabytes."""
    values = list(values)
    if len(values) <= keep:
        return str(values)
    return f"{str(values[:keep])[:-1]}, ... ({len(values) - keep} more)]"
