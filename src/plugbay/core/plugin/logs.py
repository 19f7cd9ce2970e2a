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
import os
import threading
from collections.abc import Callable, Iterable
from typing import IO, Any

from plugbay.core.protocol.hclog import hclog_json, hclog_key, hclog_level, hclog_str

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}


class HclogFormatter(logging.Formatter):
    """Formats a record as one hclog JSON line (without the newline)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        entry: dict[str, Any] = {
            "@level": hclog_level(record.levelno),
            "@message": _message(record),
            "@timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        if record.name and record.name != "root":
            entry["@module"] = record.name
        for key, value in record.__dict__.items():
            key = hclog_key(key)  # extra={1: ...} too: hclog writes any key with %s
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return hclog_json(entry)  # no json import for flat records (the first one meets the first call)


def _message(record: logging.LogRecord) -> str:
    """The record's message; one whose arguments do not fit its format (log.info("%d", "x")) is written
    with its arguments beside it, as hclog writes %!d(string=x), not lost to logging's error path."""
    try:
        return record.getMessage()
    except Exception:  # noqa: BLE001 - the program's own format and arguments
        return f"{hclog_str(record.msg)} (arguments that do not fit it: {hclog_str(record.args)})"


class _HostStderr:
    """The original fd 2 as plugbay's handler and the program's own moved StreamHandlers write to it:
    once the host's end is closed (a broken pipe) writes are dropped, as a retry would fail again; no
    write error reaches logging, whose "--- Logging error ---" traceback would land in that same dead
    stderr or the captured one, nor close(), whose setStream flushes. Another error (a full disk behind
    a redirected stderr, say) loses what is written now; later writes are tried again."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.gone = False
        self.on_gone: Callable[[], None] | None = None  # serve(): the host died, stop (once)

    def write(self, text: str) -> int:
        self._do(self._stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._do(self._stream.flush)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def fileno(self) -> int:
        return self._stream.fileno()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty(), closed...: the stream's own, as before
        return getattr(self._stream, name)

    def _do(self, step: Any, *args: Any) -> None:
        if self.gone:
            return
        try:
            step(*args)
        except BrokenPipeError:
            self.gone = True
            if self.on_gone is not None:
                self.on_gone()
        except OSError:
            pass  # as HclogHandler: a full disk, say, loses what is written now


class HclogHandler(logging.Handler):
    """Writes hclog JSON lines to a text stream (the plugin's original stderr)."""

    def __init__(self, stream: IO[str] | _HostStderr, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.stream = stream if isinstance(stream, _HostStderr) else _HostStderr(stream)
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


class PluginLogging:
    """Where serve() sends log records, and how it puts logging back when it returns.

    Log records must not end up in the captured stderr: they go to a duplicate
    of the original fd 2, taken here, before the redirection.
    """

    def __init__(self, given: logging.Logger | None) -> None:
        self._stream: IO[str] = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8",
                                          errors="backslashreplace")
        self._handlers: list[tuple[logging.Logger, logging.Handler]] = []
        self._restore_root_level = False
        self._host = _HostStderr(self._stream)  # every writer's: once it is gone, it is gone for all
        self.log = self._setup(given)
        self._moved: list[tuple[logging.StreamHandler[Any], Any]] = []
        self._old_thread_hook: Any = None
        self._faulthandler = False

    def keep_stderr_writers(self) -> None:
        """Once fd 2 is captured: what the program set up to write to stderr before serve() keeps
        writing to the host's log, as a Go plugin's ``log`` package and panics do (only os.Stderr
        is swapped there). Its logging StreamHandlers and faulthandler move to the original fd 2,
        and an exception that ends a thread is logged as an error record there."""
        import faulthandler
        import sys

        with getattr(logging, "_lock", threading.RLock()):  # logging's own: another thread may add a logger
            known = list(logging.Logger.manager.loggerDict.values())
        loggers = [logging.getLogger()] + [x for x in known if isinstance(x, logging.Logger)]
        ours = {id(h) for _, h in self._handlers}
        for logger in loggers:
            for handler in logger.handlers:
                if (type(handler) is logging.StreamHandler and id(handler) not in ours
                        and handler.stream in (sys.stderr, sys.__stderr__)):
                    self._moved.append((handler, handler.setStream(self._host)))
        # faulthandler on stderr from the start (PYTHONFAULTHANDLER, -X faulthandler): follow it to
        # the original fd 2; one the program pointed at a file of its own is left where it is
        if faulthandler.is_enabled() and (os.environ.get("PYTHONFAULTHANDLER") or "faulthandler" in sys._xoptions):
            faulthandler.enable(file=self._stream)
            self._faulthandler = True
        if threading.excepthook is threading.__excepthook__:  # a hook of the program's own stays
            self._old_thread_hook = threading.excepthook
            threading.excepthook = self._thread_died

    def stop_when_host_gone(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` when a write to the host's stderr finds it closed (a socket's or a pipe's
        that the stdio pump's poll has not reported yet)."""
        self._host.on_gone = stop

    def _thread_died(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        error = args.exc_value if args.exc_value is not None else args.exc_type()
        self.log.error("unhandled exception in thread %s", name, exc_info=(args.exc_type, error, args.exc_traceback))

    def _setup(self, given: logging.Logger | None) -> logging.Logger:
        handler = HclogHandler(self._host)
        root = logging.getLogger()
        ours = not root.handlers
        if ours:  # logging is not configured: the plugin's own records go to the host too
            self._add_handler(root, handler)
            if root.level == logging.WARNING:  # untouched default: let info through
                root.setLevel(logging.INFO)
                self._restore_root_level = True
        if given is not None:
            if not given.hasHandlers():
                self._add_handler(given, handler)
            return given
        log = logging.getLogger("plugbay.server")
        if not log.hasHandlers():
            self._add_handler(log, handler)
        elif ours and log.level == logging.NOTSET:
            log.setLevel(logging.DEBUG)  # like go-plugin's default logger; the host filters
        return log

    def _add_handler(self, logger: logging.Logger, handler: logging.Handler) -> None:
        logger.addHandler(handler)
        self._handlers.append((logger, handler))

    def close(self) -> None:
        """Remove the handlers added, restore the root level and the moved writers, close the duplicate of fd 2."""
        import faulthandler
        import sys

        for moved, old in self._moved:
            if moved.stream is self._host:
                moved.setStream(old)
        if self._faulthandler:
            faulthandler.enable(file=sys.stderr)
        if self._old_thread_hook is not None and threading.excepthook == self._thread_died:
            threading.excepthook = self._old_thread_hook
        for logger, handler in self._handlers:
            logger.removeHandler(handler)
        if self._restore_root_level:
            logging.getLogger().setLevel(logging.WARNING)
        try:
            self._stream.close()  # the fd is closed even when the final flush fails
        except OSError:
            pass  # records the host's closed stderr refused: nobody is left to read them
