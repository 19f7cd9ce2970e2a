"""hclog, go-plugin's log format: levels both ways and the JSON line a plugin writes to stderr."""

from __future__ import annotations

import logging
from typing import Any

from plugbay.errors import printable

TRACE = 5  # hclog's Trace, below logging.DEBUG
if logging.getLevelName(TRACE) != "TRACE":
    logging.addLevelName(TRACE, "TRACE")

_LEVELS = {
    "trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
    "warning": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL,
}
PREFIXES = (("[TRACE]", TRACE), ("[DEBUG]", logging.DEBUG), ("[INFO]", logging.INFO),
             ("[WARN]", logging.WARNING), ("[ERROR]", logging.ERROR))
_RESERVED = ("@level", "@message", "@module", "@timestamp", "@caller")


def parse_hclog(line: str) -> tuple[int, str, dict[str, Any]] | None:
    """(level, message, extra) for an hclog JSON line, None for anything else."""
    found = hclog_entry(line)
    if found is None:
        return None
    return (found[0], *hclog_record(found[1]))


def shown_line(line: str) -> str:
    """A plugin's stderr line as plugbay's messages show it: "[LEVEL] message k=v" for an hclog entry, else
    the line, controls escaped. The host's errors and the runners' diagnose() show the same words."""
    parsed = parse_hclog(line)
    return printable(line) if parsed is None else f"[{logging.getLevelName(parsed[0])}] {parsed[1]}"


_LEVEL_OPENING = '{"@level":"'


def hclog_level_hint(line: str) -> int | None:
    """The level a line opening as Go's hclog JSON does (``{"@level":"debug",...``) claims, else None.

    A look at the first key only, no decoding: enough to drop a line below the
    logger's level without parsing it. None means "parse it to know".
    """
    if not line.startswith(_LEVEL_OPENING) or not line.endswith("}") or '"@message":' not in line:
        return None
    end = line.find('"', len(_LEVEL_OPENING))
    return _LEVELS.get(line[len(_LEVEL_OPENING):end].lower()) if end > 0 else None


def hclog_entry(line: str) -> tuple[int, dict[str, Any]] | None:
    """(level, decoded object) for an hclog JSON line, None for anything else.

    The cheap half of :func:`parse_hclog`: a host drops most plugin lines (a
    debug line per call) at its logger's level, so the message is built only
    for lines that are logged (:func:`hclog_record`).
    """
    if not line.startswith("{"):
        return None
    import json  # here, not at the top: a plugin process only writes hclog (~2 ms of its start)

    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):  # a line nested deeper than the parser's recursion: plain text
        return None
    if not isinstance(entry, dict) or "@message" not in entry:
        return None
    level = _LEVELS.get(str(entry.get("@level", "")).lower())
    if level is None:
        return None  # JSON, but not hclog's: go-plugin shows it verbatim
    return level, entry


def hclog_record(entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The message (with its key=value pairs) and the logging ``extra`` of a decoded hclog entry.

    ``plugin_module`` and ``plugin_timestamp`` are str with control and bidi characters escaped, as a
    formatter may show them (``%(plugin_module)s``); ``plugin_fields`` holds the values as decoded (a
    formatter shows a dict by repr(), which escapes them).
    """
    fields = {k: v for k, v in entry.items() if k not in _RESERVED}
    extra = {
        "plugin_module": printable(_text(entry.get("@module", ""))),
        "plugin_fields": fields,
        "plugin_timestamp": printable(_text(entry.get("@timestamp", ""))),
    }
    # decoded JSON: a "\n" in the line is a real newline here, which would start a forged record
    message = printable(str(entry["@message"]))
    if fields:
        message += " " + " ".join(f"{printable(k)}={printable(_fmt(v))}" for k, v in fields.items())
    return message, extra


def _text(value: Any) -> str:
    """A str fact of an entry; hclog writes strings there, another writer may put any JSON value."""
    return value if isinstance(value, str) else _fmt(value)


def _fmt(value: Any) -> str:
    import json

    try:
        text = value if isinstance(value, str) else json.dumps(value)
    except (RecursionError, ValueError):  # nested just under what json.loads took: dumps gives up sooner
        text = "<a value nested too deep to show>"
    return json.dumps(text) if (" " in text or not text) else text


def hclog_level(levelno: int) -> str:
    if levelno < logging.DEBUG:
        return "trace"
    if levelno < logging.INFO:
        return "debug"
    if levelno < logging.WARNING:
        return "info"
    if levelno < logging.ERROR:
        return "warn"
    return "error"


# json.dumps(ensure_ascii=False)'s escapes: '"', '\\' and the control characters, nothing else.
_ESCAPES = {c: f"\\u{c:04x}" for c in range(0x20)}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\", ord("\b"): "\\b", ord("\f"): "\\f",
                 ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_FLOAT_OK = frozenset("0123456789.e+-")


def hclog_json(entry: dict[Any, Any]) -> str:
    """``json.dumps(entry, default=str, ensure_ascii=False, separators=(",", ":"))``, the same text.

    A plugin's log records are flat (strings, numbers, booleans, None, objects
    shown by str()): those are written here; only a record holding a container
    (list, tuple, dict) or an odd float loads the json module. json's import is
    milliseconds, spent at a plugin's first record, which is when its host's
    first call arrives. A value JSON cannot hold (a dict with tuple keys, an int
    past Python's digit limit, a cycle) is written as its repr, a str() that
    fails as ``<unprintable TYPE>``: the record is never lost, as hclog's is not.
    """
    parts = []
    for key, value in entry.items():
        encoded = _scalar(value)
        if encoded is None or type(key) is not str:
            return _json_line(entry)
        parts.append(f'"{key.translate(_ESCAPES)}":{encoded}')
    return "{" + ",".join(parts) + "}"


def _json_line(entry: dict[Any, Any]) -> str:
    import json

    try:
        return json.dumps(entry, default=hclog_str, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):  # NaN, infinities or a value JSON has no spelling for
        pass
    parts = []
    for key, value in entry.items():  # one value at a time: only what JSON cannot hold is shown another way
        try:
            encoded = json.dumps(_finite(value), default=hclog_str, ensure_ascii=False, separators=(",", ":"),
                                 allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            encoded = json.dumps(_shown(value, repr), ensure_ascii=False)
        parts.append(json.dumps(hclog_key(key), ensure_ascii=False) + ":" + encoded)
    return "{" + ",".join(parts) + "}"


def _shown(value: Any, how: Any) -> str:
    """str(value) or repr(value), never an exception: the record carrying it must still be written."""
    try:
        return str(how(value))
    except Exception:  # noqa: BLE001 - a __str__ or __repr__ of the plugin's own that raises
        if isinstance(value, int):
            return hex(value)  # past Python's int-to-str digit limit; hex has none
        return f"<unprintable {type(value).__name__}>"


def hclog_str(value: Any) -> str:
    """str(value), never an exception (see _shown)."""
    return _shown(value, str)


def hclog_key(key: Any) -> str:
    """A record's key as text: hclog writes any key with %s."""
    return key if isinstance(key, str) else hclog_str(key)


_NON_FINITE = {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}  # as strings, as Go's strconv spells them


def _finite(value: Any) -> Any:
    """``value`` with every NaN and infinity inside it written as a string."""
    if isinstance(value, float) and float.__repr__(value) in _NON_FINITE:
        return _NON_FINITE[float.__repr__(value)]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _scalar(value: Any) -> str | None:
    kind = type(value)
    if kind is str:
        return f'"{value.translate(_ESCAPES)}"'
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        try:
            return int.__repr__(value)
        except ValueError:  # past Python's int-to-str digit limit
            return None
    if kind is float:
        text = float.__repr__(value)
        if _FLOAT_OK.issuperset(text):
            return text
        return f'"{_NON_FINITE.get(text, text)}"' if text in _NON_FINITE else None  # JSON has no NaN
    if isinstance(value, (list, tuple, dict, str, int, float)):
        return None  # containers and subclasses: json decides
    return f'"{hclog_str(value).translate(_ESCAPES)}"'  # default=str
