"""Plugin-side logging: Python logging records written as hclog JSON lines.

A go-plugin host reads the plugin's stderr line by line and turns every hclog
JSON object into a structured log entry (go-plugin's ``parseJSON``); plugbay's
host does the same (plugbay.core.host.logs). So a plugin served by plugbay writes
its log records as hclog does::

    {"@level":"info","@message":"...","@module":"kv","@timestamp":"2026-01-02T15:04:05.000000Z","key":"v"}

Key/value pairs come from ``extra=``: ``log.info("stored", extra={"key": k})``.
The timestamp layout is exactly the one go-plugin 1.0.1 parses
("2006-01-02T15:04:05.000000Z07:00"); any other layout makes a Go host drop the
line to a plain debug message.
"""

from __future__ import annotations

import datetime
import logging
import threading
from typing import IO, Any

from plugbay.core.protocol.hclog import hclog_level

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}


class HclogFormatter(logging.Formatter):
    """Formats a record as one hclog JSON line (without the newline)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        entry: dict[str, Any] = {
            "@level": hclog_level(record.levelno),
            "@message": record.getMessage(),
            "@timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        if record.name and record.name != "root":
            entry["@module"] = record.name
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        import json  # at the first record (after the handshake line), not on the plugin's start path

        return json.dumps(entry, default=str, ensure_ascii=False, separators=(",", ":"))


class HclogHandler(logging.Handler):
    """Writes hclog JSON lines to a text stream (the plugin's original stderr)."""

    def __init__(self, stream: IO[str], level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.stream = stream
        self.setFormatter(HclogFormatter())
        # Reentrant: a signal handler (serve()'s SIGTERM) logs on the main thread, possibly while
        # that thread is inside this very emit; a plain Lock deadlocked the plugin there.
        self._write_lock = threading.RLock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).replace("\n", "\\n") + "\n"
            with self._write_lock:
                self.stream.write(line)
                self.stream.flush()
        except Exception:  # logging must never take the plugin down
            self.handleError(record)
